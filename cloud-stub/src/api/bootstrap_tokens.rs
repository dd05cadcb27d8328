//! Bootstrap tokens, the enrolment secrets baked into device images: create, list, update
//! (extend the expiry or the uses of a token whose images wait in a warehouse) and revoke.
//! Every token has an expiry and a use limit; the defaults are 90 days and 10,000 uses.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::duration;
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use super::env_scope;
use super::page::{self, Cursors, Page};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body, MaybeBody};
use crate::store::{
    BootstrapRecord, Change, DEFAULT_BOOTSTRAP_TTL_SECS, DEFAULT_BOOTSTRAP_USES, Environment, Model,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBootstrapToken {
    /// Registrations allowed; 10,000 when absent.
    pub max_uses: Option<u32>,
    /// Duration such as `30d`; 90 days when absent.
    pub expires_in: Option<String>,
    /// `live` or `test`: a key's own when absent (naming the other is 403
    /// `wrong_environment`); for a session, the organization's when absent.
    pub environment: Option<Environment>,
}

#[derive(Debug, Serialize)]
pub struct CreatedBootstrapToken {
    pub id: String,
    pub token: Secret<String>,
    pub max_uses: Option<u32>,
    pub expires_at: Option<u64>,
    /// Devices registering with the token take this environment.
    pub environment: Environment,
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
    /// `live` or `test` (sandbox).
    pub environment: Environment,
    /// Devices whose latest registration used this token.
    pub devices: usize,
}

#[derive(Debug, Serialize)]
pub struct BootstrapTokenList {
    pub bootstrap_tokens: Vec<BootstrapTokenView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Tokens per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// The list name cursors of `GET /bootstrap-tokens` are bound to.
pub const LIST: &str = "bootstrap_tokens";

/// `GET /bootstrap-tokens` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapTokenQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// `active`, `expired`, `used_up` or `revoked`.
    pub status: Option<String>,
    /// `live` or `test`: a session's narrowing (a key sees only its own environment).
    pub environment: Option<String>,
}

/// Which tokens a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootstrapTokenFilter {
    pub scope: env_scope::Scope,
    pub status: Option<String>,
}

impl BootstrapTokenFilter {
    pub fn canonical(&self) -> String {
        format!("{self:?}")
    }
}

/// One page of tokens in id order after `after`: the list logic the API and the dashboard
/// share.
pub fn list_page(
    m: &Model,
    filter: &BootstrapTokenFilter,
    after: Option<&str>,
    limit: usize,
    now: u64,
) -> Page<BootstrapTokenView> {
    // Devices per token, counted once per page rather than once per token.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in m.devices.values() {
        if let Some(t) = d.bootstrap_token_id.as_deref() {
            *counts.entry(t).or_default() += 1;
        }
    }
    Page::collect(
        Page::<BootstrapTokenView>::after(&m.bootstrap, after),
        limit,
        |b| {
            if !filter.scope.sees(b.environment) {
                return None;
            }
            let v = BootstrapTokenView::with_count(b, counts.get(b.id.as_str()).copied(), now);
            filter
                .status
                .as_deref()
                .is_none_or(|s| s == v.status)
                .then_some(v)
        },
    )
}

/// The token `id` if `auth` sees its environment; 404 otherwise, exactly as if absent.
pub(super) fn visible<'a>(m: &'a Model, auth: &Auth, id: &str) -> ApiResult<&'a BootstrapRecord> {
    let scope = env_scope::scope(auth, None)?;
    m.bootstrap
        .get(id)
        .filter(|b| scope.sees(b.environment))
        .ok_or_else(|| ApiError::not_found("bootstrap token"))
}

impl BootstrapTokenView {
    fn of(b: &BootstrapRecord, m: &Model, now: u64) -> Self {
        let n = m
            .devices
            .values()
            .filter(|d| d.bootstrap_token_id.as_deref() == Some(b.id.as_str()))
            .count();
        Self::with_count(b, Some(n), now)
    }

    fn with_count(b: &BootstrapRecord, devices: Option<usize>, now: u64) -> Self {
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
            environment: b.environment,
            devices: devices.unwrap_or(0),
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
    let environment = env_scope::for_new(&auth, body.environment)?;
    let (mut rec, secret) = new_bootstrap_token(now, body.max_uses, Some(now.saturating_add(ttl)));
    rec.environment = environment;
    let (id, max_uses, expires_at) = (rec.id.clone(), rec.max_uses, rec.expires_at);
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone());
    let pending = state.store.write(move |_| {
        let (state, auth) = owned;
        let audit = super::audit::change_in(
            &auth,
            environment,
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
            environment,
        }),
    ))
}

/// Tokens in id order, a page at a time (see [`super::page`]).
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<BootstrapTokenQuery>, QueryRejection>,
) -> ApiResult<Json<BootstrapTokenList>> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("query parameter is not valid: {}", e.body_text()),
        )
    })?;
    let limit = page::limit(q.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    if let Some(s) = q.status.as_deref()
        && !["active", "expired", "used_up", "revoked"].contains(&s)
    {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            "query parameter status must be active, expired, used_up or revoked",
        ));
    }
    let filter = BootstrapTokenFilter {
        scope: env_scope::scope(&auth, env_scope::parse(q.environment.as_deref())?)?,
        status: q.status,
    };
    let cursors = Cursors::of(&state);
    let after = cursors.open_opt(LIST, &filter.canonical(), q.cursor.as_deref())?;
    let now = state.clock.now_secs();
    let p = state
        .store
        .read(|m| list_page(m, &filter, after.as_deref(), limit, now));
    Ok(Json(BootstrapTokenList {
        bootstrap_tokens: p.items,
        next_cursor: p
            .next
            .map(|pos| cursors.seal(LIST, &filter.canonical(), &pos)),
    }))
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
        let mut b = visible(m, &auth, &id)?.clone();
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
                super::audit::change_in(
                    &auth,
                    b.environment,
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
        let mut b = visible(m, &auth, &id)?.clone();
        if b.revoked_at.is_some() {
            return Ok(((), vec![]));
        }
        b.revoked_at = Some(now);
        // Registration refuses an expired token: expiring it now is what revokes it there.
        b.expires_at = Some(now);
        let audit = super::audit::change_in(
            &auth,
            b.environment,
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
/// defaults: every token expires and has a use limit. Its environment is live; callers set
/// another.
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
        environment: Environment::Live,
    };
    (rec, secret)
}
