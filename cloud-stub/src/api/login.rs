//! `POST /auth/login` and `POST /auth/logout`: dashboard sessions, each a JWT whose `jti` names
//! a server-side session record. MFA (TOTP) is required by the compliance preset:
//! HIPAA and PCI for everyone, GDPR and SOC 2 for Owners and Admins.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::extract::{Auth, Ctx, Principal};
use crate::session::{self, Claims, SESSION_TTL_SECS};
use crate::store::{Change, SessionRecord};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: Secret<String>,
    pub mfa_code: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LoginResponse {
    pub token: Secret<String>,
    pub expires_at: u64,
}

/// Logs a member in. In order: throttle (429 with `Retry-After` for an (account, address)
/// in backoff or an account past its ceiling; no hash runs), a hash slot (503 with
/// `Retry-After` when too many hashes run and wait), the password (checked against a dummy
/// hash for an unknown email, so the answer takes the same work), the TOTP code (each time
/// step accepted once per member), then the session record.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ctx: Ctx,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let bad = || {
        ApiError::unauthorized(
            codes::INVALID_CREDENTIALS,
            "email, password or MFA code is wrong",
        )
    };
    let email = req.email.trim().to_ascii_lowercase();
    let ip = peer.ip().to_string();
    state
        .login_throttle
        .begin(&email, &ip)
        .map_err(ApiError::rate_limited)?;
    let found = state.store.read(|m| {
        let org = m.org.as_ref().filter(|o| !o.deleted)?;
        Some((
            m.members.get(&email)?.clone(),
            org.id.clone(),
            org.settings.compliance_preset,
        ))
    });
    let mut slot = state.hash_gate.acquire().await.map_err(|secs| ApiError {
        retry_after: Some(secs),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "too many logins at once; retry shortly",
        )
    })?;
    // Argon2 is deliberately slow: keep it off the async workers. An unknown email is
    // checked against a dummy hash, so it costs what a known one costs.
    let phc = found.as_ref().map(|(m, ..)| m.password_hash.clone());
    let password = req.password;
    let ok = tokio::task::spawn_blocking(move || {
        let ok = session::verify_password_in(
            password.expose(),
            phc.as_deref().unwrap_or_else(|| session::dummy_phc()),
            slot.memory(),
        );
        drop(slot);
        ok && phc.is_some()
    })
    .await
    .map_err(ApiError::internal)?;
    let Some((member, org, preset)) = found.filter(|_| ok) else {
        state.login_throttle.failed(&email);
        tracing::info!(member = %email, "login refused: bad email or password");
        return Err(bad());
    };
    let now = state.clock.now_secs();
    let step = match req.mfa_code.as_deref() {
        Some(code) => match session::totp_step(&member.totp_secret, code, now) {
            Some(step) if member.last_totp_step.is_none_or(|last| step > last) => Some(step),
            _ => {
                state.login_throttle.failed(&email);
                tracing::info!(member = %email, "login refused: bad or replayed MFA code");
                return Err(bad());
            }
        },
        None if preset.requires_mfa(member.role) => {
            return Err(ApiError::unauthorized(
                codes::MFA_REQUIRED,
                "this organization's compliance preset requires an MFA code for your role",
            ));
        }
        None => None,
    };
    let expires_at = now + SESSION_TTL_SECS;
    let jti = token::random_base62(24).expose().clone();
    let session = SessionRecord {
        jti: jti.clone(),
        email: member.email.clone(),
        created_at: now,
        expires_at,
        mfa: step.is_some(),
    };
    state.store.write(|m| {
        let mut changes = Vec::new();
        if let Some(step) = step {
            // Re-checked under the store's lock: two logins racing with one code get one
            // session between them.
            let mut rec = m.members.get(&email).cloned().ok_or_else(bad)?;
            if rec.last_totp_step.is_some_and(|last| step <= last) {
                return Err(bad());
            }
            rec.last_totp_step = Some(step);
            changes.push(Change::Member(rec));
        }
        // Sweep this member's expired sessions while we are here.
        changes.extend(
            m.sessions
                .values()
                .filter(|s| s.email == session.email && s.expires_at <= now)
                .map(|s| Change::DeleteSession(s.jti.clone())),
        );
        changes.push(Change::Session(session));
        changes.push(super::audit::from(
            &ctx,
            now * 1000,
            format!("session:{email}"),
            super::audit::origin(),
            "session.login",
            &email,
        ));
        Ok::<_, ApiError>(((), changes))
    })?;
    state.login_throttle.succeeded(&email, &ip);
    let token = state.sessions.issue(&Claims {
        sub: member.email.clone(),
        org,
        role: member.role,
        iat: now,
        exp: expires_at,
        jti,
    });
    tracing::info!(member = %email, "session issued");
    Ok(Json(LoginResponse { token, expires_at }))
}

/// `POST /auth/logout`: ends the calling session server-side; its JWT is refused from now on.
pub async fn logout(State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    let Principal::Session { jti, email, .. } = &auth.0 else {
        return Err(ApiError::forbidden("only a dashboard session may log out"));
    };
    state.store.write(|_| {
        let audit = super::audit::change(
            &auth,
            state.clock.now_ms(),
            "session.logout",
            email.clone(),
            None,
        );
        Ok::<_, ApiError>(((), vec![Change::DeleteSession(jti.clone()), audit]))
    })?;
    tracing::info!(member = %email, "session ended by logout");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: Secret<String>,
    pub new_password: Secret<String>,
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_LEN: usize = 12;

/// `POST /auth/password`: a member changes their own password (giving the current one); every
/// session of the member ends, this one included.
pub async fn change_password(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<ChangePassword>,
) -> ApiResult<StatusCode> {
    let Principal::Session { email, .. } = &auth.0 else {
        return Err(ApiError::forbidden(
            "only a dashboard session may change a password",
        ));
    };
    if req.new_password.expose().chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("the new password must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    let phc = state
        .store
        .read(|m| m.members.get(email).map(|m| m.password_hash.clone()))
        .ok_or_else(|| ApiError::unauthenticated("unknown or revoked credentials"))?;
    let (ok, new_hash) = tokio::task::spawn_blocking(move || {
        let ok = session::verify_password(req.current_password.expose(), &phc);
        let new_hash = ok.then(|| session::hash_password(req.new_password.expose()));
        (ok, new_hash)
    })
    .await
    .map_err(ApiError::internal)?;
    let new_hash = match (ok, new_hash) {
        (true, Some(h)) => h.map_err(ApiError::internal)?,
        _ => {
            return Err(ApiError::unauthorized(
                codes::INVALID_CREDENTIALS,
                "the current password is wrong",
            ));
        }
    };
    state.store.write(|m| {
        let mut rec = m
            .members
            .get(email)
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("unknown or revoked credentials"))?;
        rec.password_hash = new_hash;
        let mut changes = vec![Change::Member(rec)];
        changes.extend(m.end_sessions_of(email));
        changes.push(super::audit::change(
            &auth,
            state.clock.now_ms(),
            "member.password",
            email.clone(),
            None,
        ));
        Ok::<_, ApiError>(((), changes))
    })?;
    tracing::info!(member = %email, "password changed; every session of the member ended");
    Ok(StatusCode::NO_CONTENT)
}
