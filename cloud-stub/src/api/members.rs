//! `/org/members`: who may log in to the dashboard, and with which role. Adding a member
//! answers a one-time invitation (see [`super::invitations`]): the member sets their own
//! password and TOTP, which nobody else ever sees.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use octomil_common::Secret;
use octomil_common::duration;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use super::invitations;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::scope::Role;
use crate::session;
use crate::store::{Change, DEFAULT_INVITATION_TTL_SECS, InvitationRecord, MemberRecord};

const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub email: String,
    pub role: Role,
    pub created_at: u64,
    /// Whether the member has TOTP enrolled.
    pub mfa_enrolled: bool,
    /// How many of the member's recovery codes are still unused.
    pub recovery_codes_left: usize,
}

impl MemberView {
    fn of(m: &MemberRecord) -> Self {
        Self {
            email: m.email.clone(),
            role: m.role,
            created_at: m.created_at,
            mfa_enrolled: m.has_mfa(),
            recovery_codes_left: m.recovery_codes.len(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MemberList {
    pub members: Vec<MemberView>,
    /// Invitations not yet accepted (and not expired).
    pub invitations: Vec<InvitationView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InvitationView {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub created_at: u64,
    pub expires_at: u64,
}

impl InvitationView {
    fn of(i: &InvitationRecord) -> Self {
        Self {
            id: i.id.clone(),
            email: i.email.clone(),
            role: i.role,
            created_at: i.created_at,
            expires_at: i.expires_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub email: String,
    pub role: Role,
    /// How long the invitation lives (`72h` when absent; at most `30d`).
    pub expires_in: Option<String>,
}

/// `POST /org/members` answer: an invitation, never the member's password or TOTP secret.
#[derive(Debug, Serialize)]
pub struct AddedMember {
    pub email: String,
    pub role: Role,
    pub invitation_id: String,
    /// Shown once; hand it to the invitee (`octomil auth accept-invite`).
    pub invitation_token: Secret<String>,
    /// The same token as a dashboard link (`https://HOST/invite#TOKEN`).
    pub invitation_link: Secret<String>,
    pub created_at: u64,
    pub expires_at: u64,
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

/// Members in email order, a page at a time (`limit` 1-1000, default 100; `cursor`).
pub async fn list(
    State(state): State<AppState>,
    _auth: Auth,
    query: Result<
        axum::extract::Query<super::page::PageQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult<Json<MemberList>> {
    use super::page::{Page, unfiltered};
    let now = state.clock.now_secs();
    let invitations = state.store.read(|m| {
        m.invitations
            .values()
            .filter(|i| now < i.expires_at)
            .map(InvitationView::of)
            .collect()
    });
    let (members, next_cursor) = unfiltered(&state, "members", query, 100, 1000, |after, n| {
        state.store.read(|m| {
            Page::collect(Page::<MemberView>::after(&m.members, after), n, |r| {
                Some(MemberView::of(r))
            })
        })
    })?;
    Ok(Json(MemberList {
        members,
        invitations,
        next_cursor,
    }))
}

/// A new member record with a generated password and TOTP secret: only for the first
/// Owner, made at first start (its secrets go to 0600 files of the state dir).
pub fn new_member(
    email: String,
    role: Role,
    now: u64,
) -> Result<(MemberRecord, Secret<String>, Vec<u8>), session::SessionError> {
    let password = token::random_base62(24);
    let totp_secret = session::new_totp_secret()?;
    let rec = MemberRecord {
        email,
        role,
        password_hash: session::hash_password(password.expose())?,
        totp_secret: Some(totp_secret.clone()),
        created_at: now,
        last_totp_step: None,
        pending_totp: None,
        recovery_codes: Vec::new(),
    };
    Ok((rec, password, totp_secret))
}

/// `POST /org/members`: invites `email` with `role`. A new invitation for the same email
/// replaces the previous one (whose token stops working).
pub async fn add(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Body(req): Body<AddMember>,
) -> ApiResult<(StatusCode, Json<AddedMember>)> {
    let email = normalize_email(&req.email)?;
    let ttl = match req.expires_in.as_deref() {
        None => DEFAULT_INVITATION_TTL_SECS,
        Some(s) => duration::parse_secs(s)
            .ok()
            .filter(|s| (1..=invitations::MAX_TTL_SECS).contains(s))
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_ARGUMENT,
                    "expires_in must be a duration between 1s and 30d, such as 72h",
                )
            })?,
    };
    let now = state.clock.now_secs();
    let (inv, token) =
        invitations::new_invitation(email.clone(), req.role, auth.subject(), now, ttl);
    let answer = AddedMember {
        email: email.clone(),
        role: req.role,
        invitation_id: inv.id.clone(),
        invitation_link: Secret::new(format!(
            "https://{}/invite#{}",
            host_of(&headers).unwrap_or("localhost"),
            token.expose()
        )),
        invitation_token: token,
        created_at: now,
        expires_at: inv.expires_at,
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
        let mut changes = invitations::sweep(m, now);
        changes.extend(
            m.invitations
                .values()
                .filter(|i| i.email == email && now < i.expires_at)
                .map(|i| Change::DeleteInvitation(i.id.clone())),
        );
        changes.push(super::audit::change(
            &auth,
            now * 1000,
            "member.invite",
            email.clone(),
            Some(format!(
                "role {}, invitation {}, expires in {}",
                req.role.as_str(),
                inv.id,
                duration::format_secs(ttl)
            )),
        ));
        changes.push(Change::Invitation(inv));
        Ok(((), changes))
    });
    pending.await?;
    tracing::info!(member = %email, role = req.role.as_str(), auth = %auth.subject(), "member invited");
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The host the caller used (HTTP/1.1 `Host`, or the HTTP/2 `:authority`), for the link.
fn host_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
}

/// `POST /org/members/{email}/mfa-reset`: forgets a member's TOTP secret and recovery codes
/// and ends their sessions; they enrol again at their next login (or when they choose, if
/// the preset does not require it). An Admin may not reset an Owner.
pub async fn mfa_reset(
    State(state): State<AppState>,
    auth: Auth,
    Path(email): Path<String>,
) -> ApiResult<StatusCode> {
    let email = normalize_email(&email)?;
    session::require_recent_second_factor(&state, &auth)?;
    state
        .store
        .write({
            let (email, auth, state) = (email.clone(), auth.clone(), state.clone());
            move |m| {
                let mut rec = m
                    .members
                    .get(&email)
                    .cloned()
                    .ok_or_else(|| ApiError::not_found("member"))?;
                if rec.role == Role::Owner && auth.role() < Some(Role::Owner) {
                    return Err(ApiError::forbidden(
                        "only an owner may reset an owner's MFA",
                    ));
                }
                rec.totp_secret = None;
                rec.pending_totp = None;
                rec.recovery_codes.clear();
                let mut changes = vec![
                    Change::Member(rec),
                    super::audit::change(
                        &auth,
                        state.clock.now_ms(),
                        "member.mfa_reset",
                        email.clone(),
                        None,
                    ),
                ];
                changes.extend(m.end_sessions_of(&email));
                Ok(((), changes))
            }
        })
        .await?;
    tracing::info!(member = %email, auth = %auth.subject(), "member MFA reset; sessions ended");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(email): Path<String>,
    Body(req): Body<UpdateMember>,
) -> ApiResult<Json<MemberView>> {
    let email = normalize_email(&email)?;
    session::require_recent_second_factor(&state, &auth)?;
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
    session::require_recent_second_factor(&state, &auth)?;
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone(), email.clone());
    let pending = state.store.write(move |m| {
        let (state, auth, email) = owned;
        // A pending invitation is withdrawn the same way.
        let pending: Vec<Change> = m
            .invitations
            .values()
            .filter(|i| i.email == email)
            .map(|i| Change::DeleteInvitation(i.id.clone()))
            .collect();
        let Some(rec) = m.members.get(&email) else {
            if pending.is_empty() {
                return Err(ApiError::not_found("member"));
            }
            let mut changes = pending;
            changes.push(super::audit::change(
                &auth,
                state.clock.now_ms(),
                "member.invite_withdraw",
                email.clone(),
                None,
            ));
            return Ok(((), changes));
        };
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
        changes.extend(pending);
        Ok(((), changes))
    });
    pending.await?;
    tracing::info!(member = %email, auth = %auth.subject(), "member removed");
    Ok(StatusCode::NO_CONTENT)
}

fn owners(m: &crate::store::Model) -> usize {
    m.members.values().filter(|m| m.role == Role::Owner).count()
}
