//! `POST /mqtt/auth` and `POST /mqtt/acl`: the broker-facing HTTP authenticator and authorizer, in EMQX 5's HTTP contract.
//!
//! A broker that asks over HTTP (EMQX's `http` authenticator and authorizer) sends what it
//! verified about a client: the client certificate's CN (the broker checked the chain against
//! the cloud's MQTT CA), the client id, the username, and for the authorizer the action and
//! topic. The answer is `200 {"result": "allow"|"deny", "is_superuser": false}`: identities
//! resolve as on the embedded broker ([`crate::mqtt::auth::check_identity`]) and topics go
//! through the same table ([`crate::mqtt::broker::acl`]), so every broker applies one policy.
//!
//! The broker authenticates itself with `Authorization: Bearer {secret}`, the secret being
//! `mqtt_broker_secret` in the cloud's state dir (0600, made on first start). A wrong or
//! missing secret is `401 unauthenticated` and spends the source address's failure budget.
//! Calls are rate-limited per calling address on a budget of their own (devices are never
//! charged: the broker calls on their behalf), `429` with `Retry-After` past it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use octomil_common::wire::{RateLimit, codes};
use octomil_common::{Clock, token};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::files::{self, FilesError};
use crate::limits::{Budget, Limiter};
use crate::mqtt::auth::{Verdict, check_identity};
use crate::mqtt::broker::acl::{self, Identity, PublishRule};
use crate::store::Hash;

/// The secret a broker presents, 0600 in the state dir.
pub const SECRET_FILE: &str = "mqtt_broker_secret";
/// Calls per calling address by default: a fleet of 10,000 reconnecting at once fits in a
/// minute with room for their subscriptions.
pub const DEFAULT_LIMIT: RateLimit = RateLimit::per_minute(60_000);

/// The broker's credential and its budget.
pub struct BrokerAuth {
    hash: Hash,
    limiter: Limiter,
    limit: Mutex<RateLimit>,
}

impl std::fmt::Debug for BrokerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerAuth(***)")
    }
}

impl BrokerAuth {
    /// Reads `mqtt_broker_secret` from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, FilesError> {
        let path = dir.join(SECRET_FILE);
        let secret = match files::read_secret_string(&path) {
            Ok(s) if !s.expose().is_empty() => s,
            _ => {
                let secret = token::random_base62(32);
                files::write_private(&path, secret.expose().as_bytes())?;
                secret
            }
        };
        Ok(Self {
            hash: token::hash(secret.expose()),
            limiter: Limiter::new(clock),
            limit: Mutex::new(DEFAULT_LIMIT),
        })
    }

    /// Changes the per-address limit (tests; operators keep the default).
    pub fn set_limit(&self, limit: RateLimit) {
        *self.limit.lock().unwrap_or_else(|p| p.into_inner()) = limit;
    }

    fn admits(&self, secret: &str) -> bool {
        token::hashes_equal(&token::hash(secret), &self.hash)
    }
}

/// EMQX's authenticator request (the body template in docs/mqtt.md). Unknown fields are
/// ignored: an operator may send more placeholders than we read.
#[derive(Debug, Deserialize)]
pub struct AuthnRequest {
    pub clientid: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub peerhost: Option<String>,
    #[serde(default)]
    pub cert_common_name: Option<String>,
}

/// EMQX's authorizer request.
#[derive(Debug, Deserialize)]
pub struct AuthzRequest {
    pub clientid: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub peerhost: Option<String>,
    #[serde(default)]
    pub cert_common_name: Option<String>,
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    pub topic: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
    Ignore,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub result: Outcome,
    /// Never true: the cloud's own session is bound by the ACL like everyone else.
    pub is_superuser: bool,
}

fn answer(allow: bool) -> Json<Answer> {
    Json(Answer {
        result: if allow { Outcome::Allow } else { Outcome::Deny },
        is_superuser: false,
    })
}

/// Checks the broker's secret and takes one call from its address's budget.
fn admit(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> ApiResult<()> {
    let ip = peer.ip().to_string();
    let ok = crate::extract::bearer(headers)
        .ok()
        .is_some_and(|b| state.mqtt_http_auth.admits(b));
    if !ok {
        let e = ApiError::unauthorized(
            codes::UNAUTHENTICATED,
            "a broker calls this with the cloud's mqtt_broker_secret as its bearer",
        );
        return Err(state.charge_failure(Some(&ip), e));
    }
    let auth = &state.mqtt_http_auth;
    let limit = *auth.limit.lock().unwrap_or_else(|p| p.into_inner());
    auth.limiter
        .check(Budget::AuthFailure, &ip, limit)
        .map_err(ApiError::rate_limited)
}

/// Who the broker says the client is: the certificate's CN, resolved against the store. A
/// username, when sent, must be the CN too (EMQX: `peer_cert_as_username = cn`), so the
/// authorizer, which may see only the username, sees the same identity.
fn identify(
    state: &AppState,
    clientid: &str,
    cn: Option<&str>,
    username: Option<&str>,
) -> Option<Identity> {
    let cn = cn.filter(|c| !c.is_empty()).or(username)?;
    if username.is_some_and(|u| u != cn) {
        return None;
    }
    let cloud = state.mqtt_identity.as_deref()?;
    match state
        .store
        .read(|m| check_identity(m, cloud, clientid, cn, None))
    {
        Verdict::Cloud => Some(Identity::Cloud),
        Verdict::Device(id) => Some(Identity::Device(id)),
        Verdict::Revoked(id) => Some(Identity::Revoked(id)),
        Verdict::Refused(_) => None,
    }
}

/// EMQX's HTTP authenticator: allow a client whose certificate names the cloud or a
/// registered device (a revoked one too: the authorizer lets it read only its revocation).
pub async fn authenticate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<AuthnRequest>,
) -> ApiResult<Json<Answer>> {
    admit(&state, &headers, peer)?;
    let who = identify(
        &state,
        &req.clientid,
        req.cert_common_name.as_deref(),
        req.username.as_deref(),
    );
    // A client without a certificate is denied here, whatever its password: devices log in
    // by certificate only.
    let allow = req
        .cert_common_name
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        && who.is_some();
    tracing::debug!(client_id = %req.clientid, peerhost = ?req.peerhost, allow, "broker authentication");
    Ok(answer(allow))
}

/// EMQX's HTTP authorizer: the embedded broker's table for (identity, action, topic).
pub async fn authorize(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<AuthzRequest>,
) -> ApiResult<Json<Answer>> {
    admit(&state, &headers, peer)?;
    let who = identify(
        &state,
        &req.clientid,
        req.cert_common_name.as_deref(),
        req.username.as_deref(),
    );
    let allow = who.is_some_and(|who| {
        let publish = || acl::publish_rule(&who, &req.topic) != PublishRule::Denied;
        let subscribe = || acl::may_subscribe(&who, &req.topic);
        match req.action.as_str() {
            "publish" => publish(),
            "subscribe" => subscribe(),
            "all" => publish() && subscribe(),
            _ => false,
        }
    });
    tracing::debug!(client_id = %req.clientid, peerhost = ?req.peerhost, action = %req.action, allow, "broker authorization");
    Ok(answer(allow))
}
