//! Bootstrap tokens, the enrolment secrets baked into device images: create, list, update
//! (extend the expiry or the uses of a token whose images wait in a warehouse) and revoke.
//! Every token has an expiry and a use limit; the defaults are 90 days and 10,000 uses.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::duration;
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body, MaybeBody};
use crate::store::{
    BootstrapRecord, Change, DEFAULT_BOOTSTRAP_TTL_SECS, DEFAULT_BOOTSTRAP_USES, Model,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBootstrapToken {
    /// Registrations allowed; 10,000 when absent.
    pub max_uses: Option<u32>,
    /// Duration such as `30d`; 90 days when absent.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedBootstrapToken {
    pub id: String,
    pub token: Secret<String>,
    pub max_uses: Option<u32>,
    pub expires_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBootstrapToken {
    /// The new use limit (at least the uses so far).
    pub max_uses: Option<u32>,
    /// The new expiry, counted from now.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BootstrapTokenView {
    pub id: String,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at: Option<u64>,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
    /// `active`, `expired`, `used_up` or `revoked`.
    pub status: &'static str,
    /// Devices whose latest registration used this token.
    pub devices: usize,
}

#[derive(Debug, Serialize)]
pub struct BootstrapTokenList {
    pub bootstrap_tokens: Vec<BootstrapTokenView>,
}

impl BootstrapTokenView {
    fn of(b: &BootstrapRecord, m: &Model, now: u64) -> Self {
        let status = if b.revoked_at.is_some() {
            "revoked"
        } else if b.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else if b.max_uses.is_some_and(|max| b.uses >= max) {
            "used_up"
        } else {
            "active"
        };
        Self {
            id: b.id.clone(),
            max_uses: b.max_uses,
            uses: b.uses,
            expires_at: b.expires_at,
            created_at: b.created_at,
            revoked_at: b.revoked_at,
            status,
            devices: m
                .devices
                .values()
                .filter(|d| d.bootstrap_token_id.as_deref() == Some(b.id.as_str()))
                .count(),
        }
    }
}

fn positive_secs(name: &str, s: &str) -> ApiResult<u64> {
    duration::parse_secs(s)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("{name} must be a positive duration such as 30d"),
            )
        })
}

pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    MaybeBody(body): MaybeBody<CreateBootstrapToken>,
) -> ApiResult<(StatusCode, Json<CreatedBootstrapToken>)> {
    let body = body.unwrap_or_default();
    if body.max_uses == Some(0) {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            "max_uses must be at least 1",
        ));
    }
    let now = state.clock.now_secs();
    let ttl = match &body.expires_in {
        None => DEFAULT_BOOTSTRAP_TTL_SECS,
        Some(s) => positive_secs("expires_in", s)?,
    };
    let (rec, secret) = new_bootstrap_token(now, body.max_uses, Some(now.saturating_add(ttl)));
    let (id, max_uses, expires_at) = (rec.id.clone(), rec.max_uses, rec.expires_at);
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone());
    let pending = state.store.write(move |_| {
        let (state, auth) = owned;
        let audit = super::audit::change(
            &auth,
            state.clock.now_ms(),
            "bootstrap_token.create",
            rec.id.clone(),
            None,
        );
        Ok::<_, ApiError>(((), vec![Change::Bootstrap(rec), audit]))
    });
    pending.await?;
    tracing::info!(bootstrap_token_id = %id, auth = %auth.subject(), "bootstrap token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedBootstrapToken {
            id,
            token: secret,
            max_uses,
            expires_at,
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    _auth: Auth,
) -> ApiResult<Json<BootstrapTokenList>> {
    let now = state.clock.now_secs();
    let bootstrap_tokens = state.store.read(|m| {
        m.bootstrap
            .values()
            .map(|b| BootstrapTokenView::of(b, m, now))
            .collect()
    });
    Ok(Json(BootstrapTokenList { bootstrap_tokens }))
}

/// Extends (or shortens) a token's expiry and use limit. A revoked token stays revoked.
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Body(req): Body<UpdateBootstrapToken>,
) -> ApiResult<Json<BootstrapTokenView>> {
    let now = state.clock.now_secs();
    let expires_at = req
        .expires_in
        .as_deref()
        .map(|s| positive_secs("expires_in", s).map(|secs| now.saturating_add(secs)))
        .transpose()?;
    // The step runs on the writer thread: it owns what it uses.
    let owned = (auth.clone(), id.clone());
    let pending = state.store.write(move |m| {
        let (auth, id) = owned;
        let mut b = m
            .bootstrap
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("bootstrap token"))?;
        if b.revoked_at.is_some() {
            return Err(ApiError::conflict(
                codes::CONFLICT,
                "the bootstrap token is revoked; create a new one",
            ));
        }
        if let Some(max) = req.max_uses {
            if max == 0 || max < b.uses {
                return Err(ApiError::bad_request(
                    codes::INVALID_ARGUMENT,
                    format!(
                        "max_uses must be at least 1 and at least the {} uses so far",
                        b.uses
                    ),
                ));
            }
            b.max_uses = Some(max);
        }
        if let Some(t) = expires_at {
            b.expires_at = Some(t);
        }
        Ok((
            BootstrapTokenView::of(&b, m, now),
            vec![
                super::audit::change(
                    &auth,
                    now * 1000,
                    "bootstrap_token.update",
                    id.clone(),
                    Some(format!(
                        "max_uses {:?}, expires_at {:?}",
                        b.max_uses, b.expires_at
                    )),
                ),
                Change::Bootstrap(b),
            ],
        ))
    });
    let view = pending.await?;
    tracing::info!(bootstrap_token_id = %id, auth = %auth.subject(), "bootstrap token updated");
    Ok(Json(view))
}

/// Revokes a token: no device registers with it from now on (devices it enrolled keep
/// working; `POST /revocations` with `bootstrap_token_id` revokes them). Idempotent.
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now_secs();
    // The step runs on the writer thread: it owns what it uses.
    let owned = (auth.clone(), id.clone());
    let pending = state.store.write(move |m| {
        let (auth, id) = owned;
        let mut b = m
            .bootstrap
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("bootstrap token"))?;
        if b.revoked_at.is_some() {
            return Ok(((), vec![]));
        }
        b.revoked_at = Some(now);
        // Registration refuses an expired token: expiring it now is what revokes it there.
        b.expires_at = Some(now);
        let audit = super::audit::change(
            &auth,
            now * 1000,
            "bootstrap_token.revoke",
            id.clone(),
            None,
        );
        Ok::<_, ApiError>(((), vec![Change::Bootstrap(b), audit]))
    });
    pending.await?;
    tracing::info!(bootstrap_token_id = %id, auth = %auth.subject(), "bootstrap token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// A fresh bootstrap token and the record that stores only its hash. Absent limits take the
/// defaults: every token expires and has a use limit.
pub fn new_bootstrap_token(
    now: u64,
    max_uses: Option<u32>,
    expires_at: Option<u64>,
) -> (BootstrapRecord, Secret<String>) {
    let secret = token::generate(TokenKind::Bootstrap);
    let rec = BootstrapRecord {
        id: format!("bt_{}", token::random_base62(16).expose()),
        hash: token::hash(secret.expose()),
        max_uses: Some(max_uses.unwrap_or(DEFAULT_BOOTSTRAP_USES)),
        uses: 0,
        expires_at: Some(expires_at.unwrap_or(now.saturating_add(DEFAULT_BOOTSTRAP_TTL_SECS))),
        created_at: now,
        revoked_at: None,
    };
    (rec, secret)
}
