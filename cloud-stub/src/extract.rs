//! Request extractors: `Body<T>` (JSON with the error vocabulary of the contract) and `Auth`
//! (who is calling, from the bearer token).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::{MAX_BODY_BYTES, codes};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::limits::Surface;
use crate::scope::{Role, Rule, ScopeSet};
use crate::store::Change;

/// A JSON request body of at most 64 KiB. Failures map to 400 with `body_too_large`,
/// `malformed_json`, `invalid_device_id` or `invalid_body`.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&read_body(req).await?).map(Body)
    }
}

/// Like [`Body`] for endpoints whose body is optional: an empty body is `None`.
#[derive(Debug)]
pub struct MaybeBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for MaybeBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(MaybeBody(None));
        }
        parse_json(&bytes).map(|v| MaybeBody(Some(v)))
    }
}

/// The whole body, or 400 `body_too_large` past 64 KiB (read no further).
async fn read_body(req: Request) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::bad_request(
                codes::BODY_TOO_LARGE,
                format!("request body is over {MAX_BODY_BYTES} bytes"),
            )
        })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                codes::MALFORMED_JSON,
                format!("request body is not valid JSON: {e}"),
            ),
            Category::Data => {
                let msg = e.to_string();
                // DeviceId's own validation errors all start with "device id".
                if msg.starts_with("device id") {
                    ApiError::bad_request(codes::INVALID_DEVICE_ID, msg)
                } else {
                    ApiError::bad_request(
                        codes::INVALID_BODY,
                        format!("request body is invalid: {msg}"),
                    )
                }
            }
        }
    })
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    ApiKey {
        id: String,
        scopes: ScopeSet,
        role: Role,
    },
    Session {
        email: String,
        role: Role,
    },
    Device {
        device_id: String,
    },
}

/// An authenticated caller. Devices also pay one control-plane permit per call here
/// (inference is limited per key in its handler instead).
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl Auth {
    /// Enforces an endpoint's rule: scope first (403 `insufficient_scope`), then role
    /// (403 `forbidden`).
    pub fn require(&self, rule: Rule) -> ApiResult<()> {
        let (scopes, role) = match &self.0 {
            Principal::ApiKey { scopes, role, .. } => (*scopes, Some(*role)),
            Principal::Session { role, .. } => (ScopeSet::all(), Some(*role)),
            Principal::Device { .. } => (ScopeSet::of([crate::scope::Scope::ModelsRead]), None),
        };
        if let Some(scope) = rule.scope
            && !scopes.contains(scope)
        {
            return Err(ApiError::insufficient_scope(scope.as_str()));
        }
        // A device acts as a Member on scoped routes and has no standing on role-only ones.
        let role = match (role, rule.scope) {
            (Some(r), _) => r,
            (None, Some(_)) => Role::Member,
            (None, None) => return Err(ApiError::forbidden("device keys may not make this call")),
        };
        if role >= rule.min_role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this call needs the {} role or higher",
                rule.min_role.as_str()
            )))
        }
    }

    /// The role, for calls that compare roles (a key may not create a stronger key).
    pub fn role(&self) -> Option<Role> {
        match &self.0 {
            Principal::ApiKey { role, .. } | Principal::Session { role, .. } => Some(*role),
            Principal::Device { .. } => None,
        }
    }

    pub fn scopes(&self) -> ScopeSet {
        match &self.0 {
            Principal::ApiKey { scopes, .. } => *scopes,
            Principal::Session { .. } => ScopeSet::all(),
            Principal::Device { .. } => ScopeSet::of([crate::scope::Scope::ModelsRead]),
        }
    }

    /// A stable name for audit fields and per-caller limits; never a secret.
    pub fn subject(&self) -> String {
        match &self.0 {
            Principal::ApiKey { id, .. } => format!("key:{id}"),
            Principal::Session { email, .. } => format!("session:{email}"),
            Principal::Device { device_id } => format!("device:{device_id}"),
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer header"))?;
        let principal = authenticate(state, bearer)?;
        if let Principal::Device { device_id } = &principal
            && !parts.uri.path().ends_with("/inference")
        {
            state.take_permit(Surface::ControlPlane, device_id)?;
        }
        Ok(Auth(principal))
    }
}

fn authenticate(state: &AppState, bearer: &str) -> ApiResult<Principal> {
    let now = state.clock.now_secs();
    let unknown = || ApiError::unauthenticated("unknown or revoked credentials");
    if state
        .store
        .read(|m| m.org.as_ref().is_none_or(|o| o.deleted))
    {
        return Err(unknown());
    }
    if bearer.starts_with("edg_") {
        let kind = token::parse(bearer).map_err(|_| unknown())?;
        if !matches!(kind, TokenKind::Live | TokenKind::Test) {
            return Err(unknown());
        }
        let h = token::hash(bearer);
        // Lookup and the rare bookkeeping write happen under one lock, so a key deleted
        // concurrently can never be written back.
        return state.store.write(|m| {
            if let Some(k) = m
                .api_key_by_hash(&h)
                .filter(|k| token::hashes_equal(&k.hash, &h))
            {
                // Persist last use at most once a minute per key.
                let stale = k.last_used_at.is_none_or(|t| now >= t + 60);
                let changes = if stale {
                    let mut k = k.clone();
                    k.last_used_at = Some(now);
                    vec![Change::ApiKey(k)]
                } else {
                    vec![]
                };
                let p = Principal::ApiKey {
                    id: k.id.clone(),
                    scopes: k.scopes,
                    role: k.role,
                };
                return Ok((p, changes));
            }
            let d = m.device_by_key_hash(&h).ok_or_else(unknown)?;
            let key = d
                .keys
                .iter()
                .find(|k| token::hashes_equal(&k.hash, &h))
                .ok_or_else(unknown)?;
            if key.expires_at <= now {
                return Err(ApiError::unauthorized(
                    codes::TOKEN_EXPIRED,
                    "the device key has expired; refresh it",
                ));
            }
            // First use of the newest key confirms the newest pair (see refresh_device).
            let unconfirmed = d
                .refresh
                .current
                .as_ref()
                .is_some_and(|c| !c.confirmed && token::hashes_equal(&c.key_hash, &h));
            let changes = if unconfirmed {
                let mut d = d.clone();
                if let Some(c) = d.refresh.current.as_mut() {
                    c.confirmed = true;
                }
                vec![Change::Device(d)]
            } else {
                vec![]
            };
            let p = Principal::Device {
                device_id: d.device_id.clone(),
            };
            Ok((p, changes))
        });
    }
    let claims = state.sessions.verify(bearer, now).map_err(|_| unknown())?;
    let role = state
        .store
        .read(|m| {
            let org_ok = m.org.as_ref().is_some_and(|o| o.id == claims.org);
            m.members
                .get(&claims.sub)
                .filter(|_| org_ok)
                .map(|mem| mem.role)
        })
        .ok_or_else(unknown)?;
    Ok(Principal::Session {
        email: claims.sub,
        role,
    })
}
