//! `POST /auth/login` and `POST /auth/logout`: dashboard sessions, each a JWT whose `jti` names
//! a server-side session record. MFA (TOTP) is required by the compliance preset:
//! HIPAA and PCI for everyone, GDPR and SOC 2 for Owners and Admins.

use axum::Json;
use axum::extract::State;
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
    /// True when the preset requires MFA of a member who has none: the token is good only
    /// for `POST /auth/mfa/totp` and `POST /auth/mfa/confirm`, which turn it into a full
    /// session.
    pub enrolment_required: bool,
}

/// How the second factor of a login was given.
enum Second {
    None,
    Totp(u64),
    Recovery(crate::store::Hash),
    /// The preset requires MFA the member has not enrolled: a session limited to enrolment.
    Enrol,
}

/// Logs a member in. In order: throttle (429 with `Retry-After` for an (account, address)
/// in backoff or an account past its ceiling; no hash runs), a hash slot (503 with
/// `Retry-After` when too many hashes run and wait), the password (checked against a dummy
/// hash for an unknown email, so the answer takes the same work), the second factor (a TOTP
/// code, each time step accepted once per member, or a recovery code, each usable once),
/// then the session record. A member whom the preset requires MFA of and who has none gets
/// a session limited to enrolling it, not a refusal.
pub async fn login(
    State(state): State<AppState>,
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
    let ip = ctx.source.clone().unwrap_or_default();
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
    let second = match (req.mfa_code.as_deref(), &member.totp_secret) {
        (Some(code), Some(_)) if session::looks_like_recovery_code(code) => {
            let h = session::recovery_hash(code);
            if member
                .recovery_codes
                .iter()
                .any(|c| octomil_common::token::hashes_equal(c, &h))
            {
                Second::Recovery(h)
            } else {
                state.login_throttle.failed(&email);
                tracing::info!(member = %email, "login refused: unknown or used recovery code");
                return Err(bad());
            }
        }
        (Some(code), Some(secret)) => match session::totp_step(secret, code, now) {
            Some(step) if member.last_totp_step.is_none_or(|last| step > last) => {
                Second::Totp(step)
            }
            _ => {
                state.login_throttle.failed(&email);
                tracing::info!(member = %email, "login refused: bad or replayed MFA code");
                return Err(bad());
            }
        },
        (Some(_), None) => {
            state.login_throttle.failed(&email);
            tracing::info!(member = %email, "login refused: MFA code but no TOTP enrolled");
            return Err(bad());
        }
        (None, Some(_)) if preset.requires_mfa(member.role) => {
            return Err(ApiError::unauthorized(
                codes::MFA_REQUIRED,
                "this organization's compliance preset requires an MFA code for your role",
            ));
        }
        (None, None) if preset.requires_mfa(member.role) => Second::Enrol,
        (None, _) => Second::None,
    };
    let enrol = matches!(second, Second::Enrol);
    let has_second = matches!(second, Second::Totp(_) | Second::Recovery(_));
    let expires_at = now + SESSION_TTL_SECS;
    let jti = token::random_base62(24).expose().clone();
    let session = SessionRecord {
        jti: jti.clone(),
        email: member.email.clone(),
        created_at: now,
        expires_at: if enrol {
            now + session::ENROLMENT_TTL_SECS
        } else {
            expires_at
        },
        mfa: has_second,
        second_factor_at: has_second.then_some(now),
        enrolment_only: enrol,
    };
    let answer_expiry = session.expires_at;
    // The step runs on the writer thread: it owns what it uses.
    let owned = email.clone();
    let pending = state.store.write(move |m| {
        let email = owned;
        let mut changes = Vec::new();
        match &second {
            Second::Totp(step) => {
                // Re-checked under the store's lock: two logins racing with one code get one
                // session between them.
                let mut rec = m.members.get(&email).cloned().ok_or_else(bad)?;
                if rec.last_totp_step.is_some_and(|last| *step <= last) {
                    return Err(bad());
                }
                rec.last_totp_step = Some(*step);
                changes.push(Change::Member(rec));
            }
            Second::Recovery(h) => {
                let mut rec = m.members.get(&email).cloned().ok_or_else(bad)?;
                let before = rec.recovery_codes.len();
                rec.recovery_codes
                    .retain(|c| !octomil_common::token::hashes_equal(c, h));
                if rec.recovery_codes.len() == before {
                    return Err(bad());
                }
                let left = rec.recovery_codes.len();
                changes.push(Change::Member(rec));
                let mut audit = super::audit::from(
                    &ctx,
                    now * 1000,
                    format!("session:{email}"),
                    "api",
                    "member.recovery_code",
                    &email,
                );
                if let Change::Audit(r) = &mut audit {
                    r.reason = Some(format!("{left} recovery codes left"));
                }
                changes.push(audit);
            }
            Second::None | Second::Enrol => {}
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
            ctx.origin.unwrap_or("api"),
            if enrol {
                "session.login_enrolment"
            } else {
                "session.login"
            },
            &email,
        ));
        Ok::<_, ApiError>(((), changes))
    });
    pending.await?;
    state.login_throttle.succeeded(&email, &ip);
    let token = state.sessions.issue(&Claims {
        sub: member.email.clone(),
        org,
        role: member.role,
        iat: now,
        exp: expires_at,
        jti,
    });
    if enrol {
        tracing::info!(member = %email, "enrolment session issued: the preset requires MFA");
    } else {
        tracing::info!(member = %email, "session issued");
    }
    Ok(Json(LoginResponse {
        token,
        expires_at: answer_expiry,
        enrolment_required: enrol,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: String,
}

/// 409 when a member who already has TOTP asks to enrol (an MFA reset comes first).
pub const MFA_ALREADY_ENROLLED: &str = "mfa_already_enrolled";
/// 409 for a step-up by a member who has no TOTP to give.
pub const MFA_NOT_ENROLLED: &str = "mfa_not_enrolled";

fn session_of(auth: &Auth) -> ApiResult<(&str, &str)> {
    match &auth.0 {
        Principal::Session { email, jti, .. } => Ok((email, jti)),
        _ => Err(ApiError::forbidden(
            "only a dashboard session may make this call",
        )),
    }
}

/// `POST /auth/step-up`: a fresh TOTP code marks the calling session, so destructive calls
/// pass for [`session::STEP_UP_WINDOW_SECS`]. A time step already accepted (at login or an
/// earlier step-up) is refused; failures count against the member's login throttle.
pub async fn step_up(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<CodeRequest>,
) -> ApiResult<StatusCode> {
    let (email, jti) = session_of(&auth)?;
    let ip = auth.1.source.clone().unwrap_or_default();
    state
        .login_throttle
        .begin(email, &ip)
        .map_err(ApiError::rate_limited)?;
    let now = state.clock.now_secs();
    let bad = || {
        ApiError::unauthorized(
            codes::INVALID_CREDENTIALS,
            "the MFA code is wrong or was already used",
        )
    };
    let r = state
        .store
        .write({
            let (email, jti, auth) = (email.to_owned(), jti.to_owned(), auth.clone());
            move |m| {
                let (email, jti) = (email.as_str(), jti.as_str());
                let mut rec =
                    m.members.get(email).cloned().ok_or_else(|| {
                        ApiError::unauthenticated("unknown or revoked credentials")
                    })?;
                let Some(secret) = &rec.totp_secret else {
                    return Err(ApiError::conflict(
                        MFA_NOT_ENROLLED,
                        "you have no TOTP enrolled: POST /auth/mfa/totp, then /auth/mfa/confirm",
                    ));
                };
                let step = session::totp_step(secret, &req.code, now)
                    .filter(|step| rec.last_totp_step.is_none_or(|last| *step > last))
                    .ok_or_else(bad)?;
                rec.last_totp_step = Some(step);
                let mut s =
                    m.sessions.get(jti).cloned().ok_or_else(|| {
                        ApiError::unauthenticated("unknown or revoked credentials")
                    })?;
                s.second_factor_at = Some(now);
                s.mfa = true;
                Ok::<_, ApiError>((
                    (),
                    vec![
                        Change::Member(rec),
                        Change::Session(s),
                        super::audit::change(
                            &auth,
                            now * 1000,
                            "session.step_up",
                            email.to_owned(),
                            None,
                        ),
                    ],
                ))
            }
        })
        .await;
    match r {
        Ok(()) => {
            state.login_throttle.succeeded(email, &ip);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            if e.code == codes::INVALID_CREDENTIALS {
                state.login_throttle.failed(email);
                tracing::info!(member = %email, "step-up refused: bad or replayed MFA code");
            }
            Err(e)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TotpOffer {
    pub totp_secret: Secret<String>,
    pub otpauth_uri: Secret<String>,
}

/// `POST /auth/mfa/totp`: step one of TOTP enrolment for a logged-in member without it (an
/// enrolment-only session included): a new secret for the authenticator.
pub async fn mfa_totp(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<TotpOffer>> {
    let (email, _) = session_of(&auth)?;
    let secret = session::new_totp_secret().map_err(ApiError::internal)?;
    let offer = state
        .store
        .write({
            let (email, auth, state) = (email.to_owned(), auth.clone(), state.clone());
            move |m| {
                let email = email.as_str();
                let mut rec =
                    m.members.get(email).cloned().ok_or_else(|| {
                        ApiError::unauthenticated("unknown or revoked credentials")
                    })?;
                if rec.has_mfa() {
                    return Err(ApiError::conflict(
                        MFA_ALREADY_ENROLLED,
                        "TOTP is already enrolled; an owner or admin can reset it",
                    ));
                }
                rec.pending_totp = Some(secret.clone());
                let offer = TotpOffer {
                    totp_secret: Secret::new(session::totp_base32(&secret)),
                    otpauth_uri: Secret::new(session::otpauth_uri("Octomil", email, &secret)),
                };
                let audit = super::audit::change(
                    &auth,
                    state.clock.now_ms(),
                    "member.mfa_offer",
                    email.to_owned(),
                    None,
                );
                Ok::<_, ApiError>((offer, vec![Change::Member(rec), audit]))
            }
        })
        .await?;
    Ok(Json(offer))
}

#[derive(Debug, Serialize)]
pub struct Enrolled {
    /// Shown this once; each works once at login in place of a TOTP code.
    pub recovery_codes: Vec<Secret<String>>,
    /// The session's expiry: an enrolment-only session becomes a full one.
    pub expires_at: u64,
}

/// `POST /auth/mfa/confirm`: step two: a code of the offered secret enrols it, answers
/// recovery codes (shown once, stored hashed), and turns the calling session into a full
/// session whose second factor is fresh.
pub async fn mfa_confirm(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<CodeRequest>,
) -> ApiResult<Json<Enrolled>> {
    let (email, jti) = session_of(&auth)?;
    let now = state.clock.now_secs();
    let (codes_shown, hashes) = session::new_recovery_codes();
    let expires_at =
        state
            .store
            .write({
                let (email, jti, auth) = (email.to_owned(), jti.to_owned(), auth.clone());
                move |m| {
                    let (email, jti) = (email.as_str(), jti.as_str());
                    let mut rec = m.members.get(email).cloned().ok_or_else(|| {
                        ApiError::unauthenticated("unknown or revoked credentials")
                    })?;
                    if rec.has_mfa() {
                        return Err(ApiError::conflict(
                            MFA_ALREADY_ENROLLED,
                            "TOTP is already enrolled; an owner or admin can reset it",
                        ));
                    }
                    let secret = rec.pending_totp.take().ok_or_else(|| {
                        ApiError::bad_request(
                            codes::INVALID_ARGUMENT,
                            "no TOTP secret was offered: POST /auth/mfa/totp first",
                        )
                    })?;
                    let step = session::totp_step(&secret, &req.code, now).ok_or_else(|| {
                        ApiError::unauthorized(
                            codes::INVALID_CREDENTIALS,
                            "the MFA code does not match the offered secret",
                        )
                    })?;
                    rec.totp_secret = Some(secret);
                    rec.last_totp_step = Some(step);
                    rec.recovery_codes = hashes;
                    let mut s = m.sessions.get(jti).cloned().ok_or_else(|| {
                        ApiError::unauthenticated("unknown or revoked credentials")
                    })?;
                    if s.enrolment_only {
                        s.expires_at = s.created_at + SESSION_TTL_SECS;
                    }
                    s.enrolment_only = false;
                    s.mfa = true;
                    s.second_factor_at = Some(now);
                    let expires_at = s.expires_at;
                    Ok::<_, ApiError>((
                        expires_at,
                        vec![
                            Change::Member(rec),
                            Change::Session(s),
                            super::audit::change(
                                &auth,
                                now * 1000,
                                "member.mfa_enrol",
                                email.to_owned(),
                                None,
                            ),
                        ],
                    ))
                }
            })
            .await?;
    tracing::info!(member = %email, "TOTP enrolled; recovery codes issued");
    Ok(Json(Enrolled {
        recovery_codes: codes_shown,
        expires_at,
    }))
}

/// `POST /auth/logout`: ends the calling session server-side; its JWT is refused from now on.
pub async fn logout(State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    let Principal::Session { jti, email, .. } = &auth.0 else {
        return Err(ApiError::forbidden("only a dashboard session may log out"));
    };
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone(), email.clone(), jti.clone());
    let pending = state.store.write(move |_| {
        let (state, auth, email, jti) = owned;
        let audit = super::audit::change(
            &auth,
            state.clock.now_ms(),
            "session.logout",
            email.clone(),
            None,
        );
        Ok::<_, ApiError>(((), vec![Change::DeleteSession(jti.clone()), audit]))
    });
    pending.await?;
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
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone(), email.clone());
    let pending = state.store.write(move |m| {
        let (state, auth, email) = (owned.0, owned.1, &owned.2);
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
    });
    pending.await?;
    tracing::info!(member = %email, "password changed; every session of the member ended");
    Ok(StatusCode::NO_CONTENT)
}
