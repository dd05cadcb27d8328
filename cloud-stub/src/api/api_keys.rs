//! `POST /api-keys`, `GET /api-keys`, `DELETE /api-keys/{id}`. A key is shown once, at
//! creation; the cloud keeps only its hash, and a prefix too short to matter for lists. A key never outranks its creator: it takes at
//! most the creator's scopes, and acts with at most the creator's current role.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use super::page::{self, Cursors, Page};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::scope::{Role, Scope, ScopeSet};
use crate::store::{ApiKeyRecord, Change, Environment, Model, key_prefix};

const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub environment: Option<Environment>,
    /// Duration such as `90d`; the key never expires when absent.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedApiKey {
    pub id: String,
    pub name: String,
    pub key: Secret<String>,
    /// What lists will show of the key (`ApiKeyView::prefix`).
    pub prefix: String,
    pub scopes: Vec<&'static str>,
    pub environment: Environment,
    pub created_at: u64,
    pub expires_at: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    /// The key's first characters (`edg_live_a1B2c3`), to tell keys apart; `null` for keys
    /// made before the cloud kept them (state format 5).
    pub prefix: Option<String>,
    pub scopes: Vec<&'static str>,
    pub role: Role,
    pub environment: Environment,
    pub created_at: u64,
    pub created_by: String,
    pub owner_email: String,
    pub last_used_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Keys per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// The list name cursors of `GET /api-keys` are bound to.
pub const LIST: &str = "api_keys";

/// `GET /api-keys` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: Option<String>,
    /// `live` or `test`.
    pub environment: Option<String>,
}

/// Which keys a list shows (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeyFilter {
    pub status: Option<String>,
    pub environment: Option<Environment>,
}

impl ApiKeyFilter {
    pub fn canonical(&self) -> String {
        format!("{self:?}")
    }
}

impl ApiKeyView {
    pub fn of(k: &ApiKeyRecord, now: u64) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            scopes: k.scopes.names(),
            role: k.role,
            environment: k.environment,
            created_at: k.created_at,
            created_by: k.created_by.clone(),
            owner_email: k.owner_email.clone(),
            last_used_at: k.last_used_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            status: if k.revoked_at.is_some() {
                "revoked"
            } else if k.usable(now) {
                "active"
            } else {
                "expired"
            },
        }
    }
}

/// One page of keys in id order after `after`: live keys, and revoked or expired ones for
/// [`crate::store::KEY_RETENTION_SECS`] after they died. The list logic the API and the
/// dashboard share.
pub fn list_page(
    m: &Model,
    filter: &ApiKeyFilter,
    after: Option<&str>,
    limit: usize,
    now: u64,
) -> Page<ApiKeyView> {
    Page::collect(Page::<ApiKeyView>::after(&m.api_keys, after), limit, |k| {
        if k.prunable(now) || filter.environment.is_some_and(|e| e != k.environment) {
            return None;
        }
        let v = ApiKeyView::of(k, now);
        filter
            .status
            .as_deref()
            .is_none_or(|s| s == v.status)
            .then_some(v)
    })
}

/// Parses scope names, rejecting unknown ones with 400 `unknown_scope`.
pub fn parse_scopes(names: &[String]) -> ApiResult<ScopeSet> {
    let mut scopes = Vec::with_capacity(names.len());
    for n in names {
        let s = Scope::parse(n).ok_or_else(|| {
            ApiError::bad_request(
                codes::UNKNOWN_SCOPE,
                format!(
                    "unknown scope {:?}; known scopes: {}",
                    n.chars().take(64).collect::<String>(),
                    ScopeSet::all().names().join(", ")
                ),
            )
        })?;
        scopes.push(s);
    }
    Ok(ScopeSet::of(scopes))
}

pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("name must be 1-{MAX_NAME_LEN} characters"),
        ));
    }
    let scopes = parse_scopes(&req.scopes)?;
    if req.scopes.is_empty() {
        return Err(ApiError::bad_request(
            codes::UNKNOWN_SCOPE,
            "give at least one scope",
        ));
    }
    if !scopes.is_subset_of(auth.scopes()) {
        return Err(ApiError::insufficient_scope(
            "every scope it grants (a key cannot create a stronger key)",
        ));
    }
    let (Some(role), Some(owner)) = (auth.role(), auth.member()) else {
        return Err(ApiError::forbidden("device keys may not make this call"));
    };
    let now = state.clock.now_secs();
    let expires_at = match &req.expires_in {
        None => None,
        Some(s) => {
            let secs = octomil_common::duration::parse_secs(s)
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        codes::INVALID_ARGUMENT,
                        "expires_in must be a positive duration such as 90d",
                    )
                })?;
            Some(now.saturating_add(secs))
        }
    };
    let environment = req
        .environment
        .unwrap_or_else(|| state.store.read(|m| m.environment()));
    let (mut rec, key) = new_api_key(name, scopes, role, owner, environment, now, &auth.subject());
    rec.expires_at = expires_at;
    let created = CreatedApiKey {
        id: rec.id.clone(),
        name: rec.name.clone(),
        prefix: key_prefix(environment, key.expose()),
        key,
        scopes: scopes.names(),
        environment,
        created_at: now,
        expires_at,
    };
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone());
    let pending = state.store.write(move |_| {
        let (state, auth) = owned;
        let audit = super::audit::change(
            &auth,
            state.clock.now_ms(),
            "api_key.create",
            rec.id.clone(),
            Some(format!("scopes {}", rec.scopes.names().join(","))),
        );
        Ok::<_, ApiError>(((), vec![Change::ApiKey(rec), audit]))
    });
    pending.await?;
    tracing::info!(api_key_id = %created.id, auth = %auth.subject(), "API key created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// A fresh key and the record that stores only its hash and its listed prefix.
pub fn new_api_key(
    name: &str,
    scopes: ScopeSet,
    role: Role,
    owner_email: &str,
    environment: Environment,
    now: u64,
    created_by: &str,
) -> (ApiKeyRecord, Secret<String>) {
    let key = token::generate(environment.token_kind());
    let rec = ApiKeyRecord {
        id: format!("key_{}", token::random_base62(16).expose()),
        name: name.to_owned(),
        hash: token::hash(key.expose()),
        scopes,
        role,
        owner_email: owner_email.to_owned(),
        environment,
        created_at: now,
        created_by: created_by.to_owned(),
        last_used_at: None,
        expires_at: None,
        revoked_at: None,
        prefix: Some(key_prefix(environment, key.expose())),
    };
    (rec, key)
}

/// Keys in id order, a page at a time (see [`super::page`]).
pub async fn list(
    State(state): State<AppState>,
    _auth: Auth,
    query: Result<Query<ApiKeyQuery>, QueryRejection>,
) -> ApiResult<Json<ApiKeyList>> {
    let bad = |m: String| ApiError::bad_request(codes::INVALID_ARGUMENT, m);
    let Query(q) =
        query.map_err(|e| bad(format!("query parameter is not valid: {}", e.body_text())))?;
    let limit = page::limit(q.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    if let Some(s) = q.status.as_deref()
        && !["active", "expired", "revoked"].contains(&s)
    {
        return Err(bad(
            "query parameter status must be active, expired or revoked".into(),
        ));
    }
    let filter = ApiKeyFilter {
        status: q.status,
        environment: super::env_scope::parse(q.environment.as_deref())?,
    };
    let cursors = Cursors::of(&state);
    let after = cursors.open_opt(LIST, &filter.canonical(), q.cursor.as_deref())?;
    let now = state.clock.now_secs();
    let p = state
        .store
        .read(|m| list_page(m, &filter, after.as_deref(), limit, now));
    Ok(Json(ApiKeyList {
        api_keys: p.items,
        next_cursor: p
            .next
            .map(|pos| cursors.seal(LIST, &filter.canonical(), &pos)),
    }))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now_secs();
    let my_role = auth.role().unwrap_or(Role::Member);
    // The step runs on the writer thread: it owns what it uses.
    let owned = (auth.clone(), id.clone());
    let pending = state.store.write(move |m| {
        let (auth, id) = owned;
        let mut k = m
            .api_keys
            .get(&id)
            .filter(|k| !k.prunable(now))
            .cloned()
            .ok_or_else(|| ApiError::not_found("API key"))?;
        // An Admin cannot take away an Owner's keys.
        let owner_role = m
            .members
            .get(&k.owner_email)
            .map_or(Role::Member, |o| o.role);
        if owner_role > my_role {
            return Err(ApiError::forbidden(
                "this key belongs to a member with a higher role",
            ));
        }
        if k.revoked_at.is_some() {
            return Ok(((), vec![]));
        }
        k.revoked_at = Some(now);
        // Drop keys that have been listed dead long enough.
        let mut changes: Vec<Change> = m
            .api_keys
            .values()
            .filter(|k| k.prunable(now))
            .map(|k| Change::DeleteApiKey(k.id.clone()))
            .collect();
        changes.push(super::audit::change(
            &auth,
            now * 1000,
            "api_key.revoke",
            k.id.clone(),
            None,
        ));
        changes.push(Change::ApiKey(k));
        Ok(((), changes))
    });
    pending.await?;
    tracing::info!(api_key_id = %id, auth = %auth.subject(), "API key deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KEY_PREFIX_CHARS;

    #[test]
    fn a_new_key_keeps_a_prefix_of_six_random_characters_and_never_the_key() {
        for env in [Environment::Live, Environment::Test] {
            let (rec, key) = new_api_key("k", ScopeSet::all(), Role::Owner, "o@x", env, 1, "t");
            let prefix = rec.prefix.clone().unwrap();
            let fixed = env.token_kind().prefix();
            assert!(key.expose().starts_with(&prefix), "{prefix}");
            assert_eq!(prefix.len(), fixed.len() + KEY_PREFIX_CHARS);
            assert!(prefix.starts_with(fixed));
            let debug = format!("{rec:?}{:?}", ApiKeyView::of(&rec, 1));
            assert!(!debug.contains(key.expose().as_str()));
            assert!(debug.contains(&prefix));
        }
    }
}
