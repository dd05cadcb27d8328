//! `/org/members`: who may log in to the dashboard, and with which role. A new member gets a
//! generated password and TOTP secret, shown once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::scope::Role;
use crate::session;
use crate::store::{Change, MemberRecord};

const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub email: String,
    pub role: Role,
    pub created_at: u64,
}

impl MemberView {
    fn of(m: &MemberRecord) -> Self {
        Self {
            email: m.email.clone(),
            role: m.role,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MemberList {
    pub members: Vec<MemberView>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub email: String,
    pub role: Role,
}

#[derive(Debug, Serialize)]
pub struct AddedMember {
    pub email: String,
    pub role: Role,
    pub created_at: u64,
    pub initial_password: Secret<String>,
    pub totp_secret: Secret<String>,
    pub otpauth_uri: Secret<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    pub role: Role,
}

/// Checks the shape of an email address (one `@`, non-empty parts, no spaces or controls)
/// and lowercases it.
pub fn normalize_email(s: &str) -> ApiResult<String> {
    let s = s.trim().to_ascii_lowercase();
    let ok = s.len() <= MAX_EMAIL_LEN
        && s.split('@').count() == 2
        && s.split('@').all(|p| !p.is_empty())
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    if ok {
        Ok(s)
    } else {
        Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            "email is not a valid address",
        ))
    }
}

pub async fn list(State(state): State<AppState>, _auth: Auth) -> ApiResult<Json<MemberList>> {
    let members = state
        .store
        .read(|m| m.members.values().map(MemberView::of).collect());
    Ok(Json(MemberList { members }))
}

/// A new member record with a generated password and TOTP secret.
pub fn new_member(
    email: String,
    role: Role,
    now: u64,
) -> Result<(MemberRecord, Secret<String>, Vec<u8>), session::SessionError> {
    let password = token::random_base62(24);
    let mut totp_secret = vec![0u8; 20];
    getrandom::fill(&mut totp_secret).map_err(|_| session::SessionError::Totp)?;
    let rec = MemberRecord {
        email,
        role,
        password_hash: session::hash_password(password.expose())?,
        totp_secret: totp_secret.clone(),
        created_at: now,
        last_totp_step: None,
    };
    Ok((rec, password, totp_secret))
}

pub async fn add(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<AddMember>,
) -> ApiResult<(StatusCode, Json<AddedMember>)> {
    let email = normalize_email(&req.email)?;
    let now = state.clock.now_secs();
    let e = email.clone();
    let (rec, password, totp) = tokio::task::spawn_blocking(move || new_member(e, req.role, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let answer = AddedMember {
        email: rec.email.clone(),
        role: rec.role,
        created_at: now,
        initial_password: password,
        totp_secret: Secret::new(session::totp_base32(&totp)),
        otpauth_uri: Secret::new(session::otpauth_uri("Octomil", &rec.email, &totp)),
    };
    // The step runs on the writer thread: it owns what it uses.
    let owned = (auth.clone(), email.clone());
    let pending = state.store.write(move |m| {
        let (auth, email) = owned;
        if m.members.contains_key(&email) {
            return Err(ApiError::conflict(
                codes::CONFLICT,
                "a member with this email exists",
            ));
        }
        let audit = super::audit::change(
            &auth,
            now * 1000,
            "member.add",
            email.clone(),
            Some(format!("role {}", req.role.as_str())),
        );
        Ok(((), vec![Change::Member(rec), audit]))
    });
    pending.await?;
    tracing::info!(member = %email, role = req.role.as_str(), auth = %auth.subject(), "member added");
    Ok((StatusCode::CREATED, Json(answer)))
}

pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(email): Path<String>,
    Body(req): Body<UpdateMember>,
) -> ApiResult<Json<MemberView>> {
    let email = normalize_email(&email)?;
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone(), email.clone());
    let pending = state.store.write(move |m| {
        let (state, auth, email) = owned;
        let mut rec = m
            .members
            .get(&email)
            .cloned()
            .ok_or_else(|| ApiError::not_found("member"))?;
        if rec.role == Role::Owner && req.role != Role::Owner && owners(m) == 1 {
            return Err(ApiError::conflict(
                codes::LAST_OWNER,
                "the organization needs at least one owner",
            ));
        }
        let changed = rec.role != req.role;
        rec.role = req.role;
        let mut changes = vec![
            Change::Member(rec.clone()),
            super::audit::change(
                &auth,
                state.clock.now_ms(),
                "member.role",
                email.clone(),
                Some(format!("role {}", req.role.as_str())),
            ),
        ];
        if changed {
            // A session carries the role it was opened with in its JWT: end it.
            changes.extend(m.end_sessions_of(&email));
        }
        Ok((MemberView::of(&rec), changes))
    });
    let view = pending.await?;
    tracing::info!(member = %email, role = req.role.as_str(), auth = %auth.subject(), "member role changed");
    Ok(Json(view))
}

pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    Path(email): Path<String>,
) -> ApiResult<StatusCode> {
    let email = normalize_email(&email)?;
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone(), email.clone());
    let pending = state.store.write(move |m| {
        let (state, auth, email) = owned;
        let rec = m
            .members
            .get(&email)
            .ok_or_else(|| ApiError::not_found("member"))?;
        if rec.role == Role::Owner && owners(m) == 1 {
            return Err(ApiError::conflict(
                codes::LAST_OWNER,
                "the organization needs at least one owner",
            ));
        }
        let mut changes = vec![
            Change::DeleteMember(email.clone()),
            super::audit::change(
                &auth,
                state.clock.now_ms(),
                "member.remove",
                email.clone(),
                None,
            ),
        ];
        changes.extend(m.end_sessions_of(&email));
        Ok(((), changes))
    });
    pending.await?;
    tracing::info!(member = %email, auth = %auth.subject(), "member removed");
    Ok(StatusCode::NO_CONTENT)
}

fn owners(m: &crate::store::Model) -> usize {
    m.members.values().filter(|m| m.role == Role::Owner).count()
}
