//! Request extractors: `Body<T>` (JSON with the error vocabulary of the contract) and `Auth`
//! (who is calling, as the authorization layer established), and bearer authentication.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::{MAX_BODY_BYTES, codes};
use serde::de::DeserializeOwned;

use crate::api::authz::{Facts, Kind};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::scope::{Role, ScopeSet};
use crate::store::{Change, Environment};

/// A JSON request body of at most `MAX` bytes (64 KiB unless a route needs more, as bulk
/// revocation does). Failures map to 400 with `body_too_large`, `malformed_json`,
/// `invalid_device_id` or `invalid_body`.
#[derive(Debug)]
pub struct Body<T, const MAX: usize = MAX_BODY_BYTES>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const MAX: usize> FromRequest<S> for Body<T, MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&read_body_max(req, MAX).await?).map(Body)
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
    read_body_max(req, MAX_BODY_BYTES).await
}

async fn read_body_max(req: Request, max: usize) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(req.into_body(), max)
        .await
        .map_err(|_| {
            ApiError::bad_request(
                codes::BODY_TOO_LARGE,
                format!("request body is over {max} bytes"),
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

/// Who is calling, as authenticated by [`authenticate`].
#[derive(Debug, Clone)]
pub enum Principal {
    ApiKey {
        id: String,
        scopes: ScopeSet,
        /// The smaller of the key's role cap and its creator's current role.
        role: Role,
        environment: Environment,
        /// The member behind the key.
        owner_email: String,
    },
    Session {
        email: String,
        role: Role,
        jti: String,
        /// The session may only enrol TOTP (see [`crate::store::SessionRecord`]).
        enrolment_only: bool,
    },
    Device {
        device_id: String,
        /// The device's environment (that of its bootstrap token).
        environment: Environment,
    },
}

impl Principal {
    /// What an authorization decision needs (see [`crate::api::authz::decide`]).
    pub fn facts(&self, org_env: Environment) -> Facts {
        match self {
            Self::ApiKey {
                scopes,
                role,
                environment,
                ..
            } => Facts {
                kind: Kind::Key {
                    scopes: *scopes,
                    role: *role,
                },
                environment: *environment,
            },
            Self::Session { role, .. } => Facts {
                kind: Kind::Session { role: *role },
                environment: org_env,
            },
            Self::Device { environment, .. } => Facts {
                kind: Kind::Device,
                environment: *environment,
            },
        }
    }

    /// A stable name for log fields and per-caller limits; never a secret.
    pub fn subject(&self) -> String {
        match self {
            Self::ApiKey { id, .. } => format!("key:{id}"),
            Self::Session { email, .. } => format!("session:{email}"),
            Self::Device { device_id, .. } => format!("device:{device_id}"),
        }
    }
}

/// The caller of a bearer route, put in the request by [`crate::api::authz::authorize`]
/// after the route's rule passed, with the request's context. A handler that takes it cannot
/// run unchecked: without the middleware's stamp the extractor refuses.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal, pub Ctx);

/// Where a request came from, for the audit log: the source address and a request id (also
/// sent back in `x-request-id`). Every `/api/v1` route has one.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub source: Option<String>,
    pub request_id: Option<String>,
    /// The environment the caller acts in by default: its own for a key or device key, the
    /// organization's for a session (and for unauthenticated calls). Audit records take it
    /// unless the handler names the environment of what it changed.
    pub environment: Environment,
    /// The surface the request came through when it is not the API (`Some("dashboard")`);
    /// audit records say so. Carried here, not in a task-local: the audit record is built on
    /// the store's writer thread.
    pub origin: Option<&'static str>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Ctx>()
            .cloned()
            .unwrap_or_else(|| Ctx {
                source: parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip().to_string()),
                request_id: None,
                environment: Environment::default(),
                origin: None,
            }))
    }
}

impl Auth {
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

    /// The one environment the caller sees and changes: its own for an API key or a device
    /// key; `None` for a session, which sees both (and may narrow with an `environment`
    /// parameter, see [`crate::api::env_scope`]).
    pub fn environment(&self) -> Option<Environment> {
        match &self.0 {
            Principal::ApiKey { environment, .. } | Principal::Device { environment, .. } => {
                Some(*environment)
            }
            Principal::Session { .. } => None,
        }
    }

    /// The member acting (directly, or behind an API key).
    pub fn member(&self) -> Option<&str> {
        match &self.0 {
            Principal::ApiKey { owner_email, .. } => Some(owner_email),
            Principal::Session { email, .. } => Some(email),
            Principal::Device { .. } => None,
        }
    }

    pub fn subject(&self) -> String {
        self.0.subject()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Auth>()
            .cloned()
            .ok_or_else(|| ApiError::internal("handler reached without an authorization decision"))
    }
}

/// The bearer token of a request, or 401 `unauthenticated`.
pub fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer header"))
}

/// The TCP peer's address. The source address limits and the audit log use is
/// [`crate::proxy::source`] (the peer, or the client behind a trusted proxy).
pub fn source_ip(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Resolves a bearer to a principal. Keys and refresh tokens are unguessable, so they are
/// verified first and nothing is charged to anyone before a credential checks out.
pub async fn authenticate(state: &AppState, bearer: &str) -> ApiResult<Principal> {
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
        // Lookup and the rare bookkeeping write happen in one writer step, so a key deleted
        // concurrently can never be written back. The step is checked against the committed
        // model first: a call that needs no bookkeeping never waits for the writer.
        let check = move |m: &crate::store::Model| {
            if let Some(k) = m
                .api_key_by_hash(&h)
                .filter(|k| token::hashes_equal(&k.hash, &h))
            {
                if !k.usable(now) {
                    return Err(unknown());
                }
                // A key acts with at most its creator's current role; a removed creator's
                // keys stop working.
                let creator = m.members.get(&k.owner_email).ok_or_else(unknown)?;
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
                    role: k.role.min(creator.role),
                    environment: k.environment,
                    owner_email: k.owner_email.clone(),
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
                environment: d.environment,
            };
            Ok((p, changes))
        };
        match state.store.read(check) {
            Ok((p, changes)) if changes.is_empty() => return Ok(p),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        return state.store.write(check).await;
    }
    let claims = state.sessions.verify(bearer, now).map_err(|_| unknown())?;
    // The JWT alone proves nothing once its server-side session is gone (logout, removal,
    // role or password change).
    let (role, enrolment_only) = state
        .store
        .read(|m| {
            let org_ok = m.org.as_ref().is_some_and(|o| o.id == claims.org);
            let session = m
                .sessions
                .get(&claims.jti)
                .filter(|s| s.email == claims.sub && s.expires_at > now)?;
            m.members
                .get(&claims.sub)
                .filter(|_| org_ok)
                .map(|mem| (mem.role, session.enrolment_only))
        })
        .ok_or_else(unknown)?;
    Ok(Principal::Session {
        email: claims.sub,
        role,
        jti: claims.jti,
        enrolment_only,
    })
}
