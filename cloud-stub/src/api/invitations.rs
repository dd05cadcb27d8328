//! Invitations: `POST /org/members` answers a one-time token (and a dashboard link) instead
//! of credentials, and the invitee enrols themselves with the two public calls here:
//! `POST /auth/invitations/totp` (a TOTP secret for their authenticator) and
//! `POST /auth/invitations/accept` (their own password, the code proving the authenticator
//! holds the secret, and recovery codes shown once). Only the SHA-256 of a token is stored;
//! accepting deletes it, so it works once. An unknown, used or expired token is answered
//! alike (401 `invitation_invalid`), and each such failure spends the source address's
//! budget of failed authentications.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Ctx};
use crate::scope::Role;
use crate::session;
use crate::store::{Change, InvitationRecord, MemberRecord, Model};

/// 401 for an invitation token that is unknown, already used or expired (never told apart).
pub const INVITATION_INVALID: &str = "invitation_invalid";

/// 400 when the preset requires TOTP of the invitee's role and the accept call has no code.
pub const MFA_ENROLMENT_REQUIRED: &str = session::MFA_ENROLMENT_REQUIRED;

/// Invitation tokens start with this.
pub const TOKEN_PREFIX: &str = "edg_invite_";

/// The longest expiry an invitation may be given: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 86_400;

/// The one answer to an unknown, used or expired token.
pub(crate) fn invalid() -> ApiError {
    ApiError::unauthorized(
        INVITATION_INVALID,
        "the invitation is unknown, already used or expired; ask for a new one",
    )
}

/// A new invitation for `email` and its token (shown once; only its hash is kept).
pub fn new_invitation(
    email: String,
    role: Role,
    created_by: String,
    now: u64,
    ttl_secs: u64,
) -> (InvitationRecord, Secret<String>) {
    let token = Secret::new(format!(
        "{TOKEN_PREFIX}{}",
        token::random_base62(32).expose()
    ));
    let rec = InvitationRecord {
        id: format!("inv_{}", token::random_base62(12).expose()),
        hash: token::hash(token.expose()),
        email,
        role,
        created_at: now,
        expires_at: now.saturating_add(ttl_secs),
        created_by,
        pending_totp: None,
    };
    (rec, token)
}

/// The live invitation whose token is `token`, if any.
pub fn find(m: &Model, token: &str, now: u64) -> Option<InvitationRecord> {
    if !token.starts_with(TOKEN_PREFIX) {
        return None;
    }
    let h = token::hash(token);
    m.invitations
        .values()
        .find(|i| token::hashes_equal(&i.hash, &h))
        .filter(|i| now < i.expires_at)
        .cloned()
}

/// Changes that drop every expired invitation.
pub fn sweep(m: &Model, now: u64) -> Vec<Change> {
    m.invitations
        .values()
        .filter(|i| i.expires_at <= now)
        .map(|i| Change::DeleteInvitation(i.id.clone()))
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpRequest {
    pub token: Secret<String>,
}

#[derive(Debug, Serialize)]
pub struct TotpAnswer {
    pub email: String,
    pub role: Role,
    pub expires_at: u64,
    /// Whether the preset requires TOTP of this role (accept then needs `mfa_code`).
    pub mfa_required: bool,
    pub totp_secret: Secret<String>,
    pub otpauth_uri: Secret<String>,
}

/// `POST /auth/invitations/totp`: step one of TOTP enrolment for an invitee. A new secret
/// each call (the latest one is the one `accept` checks).
pub async fn totp(
    State(state): State<AppState>,
    ctx: Ctx,
    Body(req): Body<TotpRequest>,
) -> ApiResult<Json<TotpAnswer>> {
    let now = state.clock.now_secs();
    let secret = session::new_totp_secret().map_err(ApiError::internal)?;
    let found = state
        .store
        .write({
            let ctx = ctx.clone();
            move |m| {
                let Some(mut inv) = find(m, req.token.expose(), now) else {
                    return Ok::<_, ApiError>((None, vec![]));
                };
                let preset = m
                    .org
                    .as_ref()
                    .map(|o| o.settings.compliance_preset)
                    .unwrap_or(crate::store::CompliancePreset::None);
                inv.pending_totp = Some(secret.clone());
                let answer = TotpAnswer {
                    email: inv.email.clone(),
                    role: inv.role,
                    expires_at: inv.expires_at,
                    mfa_required: preset.requires_mfa(inv.role),
                    totp_secret: Secret::new(session::totp_base32(&secret)),
                    otpauth_uri: Secret::new(session::otpauth_uri("Octomil", &inv.email, &secret)),
                };
                let audit = super::audit::from(
                    &ctx,
                    now * 1000,
                    format!("invitation:{}", inv.id),
                    ctx.origin.unwrap_or("api"),
                    "invitation.totp",
                    &inv.email,
                );
                Ok((Some(answer), vec![Change::Invitation(inv), audit]))
            }
        })
        .await?;
    found
        .map(Json)
        .ok_or_else(|| state.charge_failure(ctx.source.as_deref(), invalid()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    pub token: Secret<String>,
    pub password: Secret<String>,
    /// A code of the secret from `POST /auth/invitations/totp`: enrols TOTP.
    pub mfa_code: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AcceptAnswer {
    pub email: String,
    pub role: Role,
    pub mfa_enrolled: bool,
    /// Shown this once; each works once at login in place of a TOTP code.
    pub recovery_codes: Vec<Secret<String>>,
}

/// `POST /auth/invitations/accept`: the invitee sets their password (and TOTP, mandatory
/// when the preset requires it of their role) and becomes a member; the invitation is gone.
pub async fn accept(
    State(state): State<AppState>,
    ctx: Ctx,
    Body(req): Body<AcceptRequest>,
) -> ApiResult<(StatusCode, Json<AcceptAnswer>)> {
    let now = state.clock.now_secs();
    let found = state.store.read(|m| {
        let preset = m.org.as_ref().map(|o| o.settings.compliance_preset)?;
        Some((find(m, req.token.expose(), now)?, preset))
    });
    let Some((inv, preset)) = found else {
        return Err(state.charge_failure(ctx.source.as_deref(), invalid()));
    };
    if req.password.expose().chars().count() < super::login::MIN_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!(
                "the password must have at least {} characters",
                super::login::MIN_PASSWORD_LEN
            ),
        ));
    }
    let enrol = match (req.mfa_code.as_deref(), &inv.pending_totp) {
        (Some(code), Some(secret)) => match session::totp_step(secret, code, now) {
            Some(step) => Some((secret.clone(), step)),
            None => {
                return Err(state.charge_failure(
                    ctx.source.as_deref(),
                    ApiError::unauthorized(
                        codes::INVALID_CREDENTIALS,
                        "the MFA code does not match the secret of POST /auth/invitations/totp",
                    ),
                ));
            }
        },
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                codes::INVALID_ARGUMENT,
                "no TOTP secret was handed out for this invitation: POST /auth/invitations/totp first",
            ));
        }
        (None, _) if preset.requires_mfa(inv.role) => {
            return Err(ApiError::bad_request(
                MFA_ENROLMENT_REQUIRED,
                "this organization's compliance preset requires TOTP for this role: \
                 POST /auth/invitations/totp, then accept with mfa_code",
            ));
        }
        (None, _) => None,
    };
    // Argon2 is deliberately slow: bounded by the login hash gate, off the async workers.
    let slot = state.hash_gate.acquire().await.map_err(|secs| ApiError {
        retry_after: Some(secs),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "too many password hashes at once; retry shortly",
        )
    })?;
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || {
        let h = session::hash_password(password.expose());
        drop(slot);
        h
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let (codes_shown, code_hashes) = if enrol.is_some() {
        session::new_recovery_codes()
    } else {
        (Vec::new(), Vec::new())
    };
    let email = inv.email.clone();
    let answer = state
        .store
        .write({
            let ctx = ctx.clone();
            move |m| {
                // Re-checked under the store's lock: two accepts racing with one token make one
                // member between them.
                let inv = find(m, req.token.expose(), now)
                    .filter(|i| i.id == inv.id)
                    .ok_or_else(invalid)?;
                if m.members.contains_key(&inv.email) {
                    return Err(ApiError::conflict(
                        codes::CONFLICT,
                        "a member with this email exists",
                    ));
                }
                let rec = MemberRecord {
                    email: inv.email.clone(),
                    role: inv.role,
                    password_hash: hash,
                    totp_secret: enrol.as_ref().map(|(s, _)| s.clone()),
                    created_at: now,
                    last_totp_step: enrol.as_ref().map(|(_, step)| *step),
                    pending_totp: None,
                    recovery_codes: code_hashes,
                };
                let mut audit = super::audit::from(
                    &ctx,
                    now * 1000,
                    format!("invitation:{}", inv.id),
                    ctx.origin.unwrap_or("api"),
                    "invitation.accept",
                    &inv.email,
                );
                if let Change::Audit(r) = &mut audit {
                    r.reason = Some(format!(
                        "role {}, totp {}",
                        inv.role.as_str(),
                        if enrol.is_some() {
                            "enrolled"
                        } else {
                            "not enrolled"
                        }
                    ));
                }
                let answer = AcceptAnswer {
                    email: rec.email.clone(),
                    role: rec.role,
                    mfa_enrolled: rec.has_mfa(),
                    recovery_codes: codes_shown,
                };
                Ok((
                    answer,
                    vec![
                        Change::Member(rec),
                        Change::DeleteInvitation(inv.id.clone()),
                        audit,
                    ],
                ))
            }
        })
        .await?;
    tracing::info!(member = %email, "invitation accepted; member enrolled");
    Ok((StatusCode::CREATED, Json(answer)))
}
