//! `GET /devices`, `GET /devices/{id}`, `POST /devices/{id}/revoke`, `DELETE /devices/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ed25519_dalek::SigningKey;
use octomil_common::DeviceId;
use octomil_common::envelope::{self, Revocation};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, MaybeBody};
use crate::scope::{Role, Rule, Scope};
use crate::store::{Change, DeviceRecord, DeviceState};

const READ: Rule = Rule::scoped(Scope::DevicesRead, Role::Member);
const WRITE: Rule = Rule::scoped(Scope::DevicesWrite, Role::Admin);

/// A device as operators see it. Presence fields stay `null` until a daemon reports.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub device_id: String,
    pub state: DeviceState,
    pub registered_at: u64,
    pub last_refresh_at: Option<u64>,
    pub key_expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    pub revoke_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub online: bool,
    pub last_seen: Option<u64>,
    pub daemon_version: Option<String>,
    pub reported_state: Option<String>,
    /// For a revoke answer: whether the transport acknowledged the envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_published: Option<bool>,
}

impl DeviceView {
    pub fn of(d: &DeviceRecord) -> Self {
        Self {
            device_id: d.device_id.clone(),
            state: d.state,
            registered_at: d.registered_at_ms / 1000,
            last_refresh_at: d.last_refresh_at,
            key_expires_at: d.key_expires_at(),
            revoked_at: d.revoked_at,
            revoke_reason: d.revoke_reason.clone(),
            metadata: d.metadata.clone(),
            online: false,
            last_seen: None,
            daemon_version: None,
            reported_state: None,
            revocation_published: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

pub(super) fn parse_id(id: &str) -> ApiResult<DeviceId> {
    DeviceId::parse(id).map_err(|e| ApiError::bad_request(codes::INVALID_DEVICE_ID, e.to_string()))
}

pub async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<DeviceList>> {
    auth.require(READ)?;
    let devices = state
        .store
        .read(|m| m.devices.values().map(DeviceView::of).collect());
    Ok(Json(DeviceList { devices }))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    auth.require(READ)?;
    let id = parse_id(&id)?;
    state
        .store
        .read(|m| m.devices.get(id.as_str()).map(DeviceView::of))
        .map(Json)
        .ok_or_else(|| ApiError::not_found("device"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    MaybeBody(body): MaybeBody<RevokeRequest>,
) -> ApiResult<Json<DeviceView>> {
    auth.require(WRITE)?;
    let id = parse_id(&id)?;
    let reason = body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "revoked by operator".into());
    if reason.len() > envelope::MAX_REASON_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("reason is longer than {} bytes", envelope::MAX_REASON_LEN),
        ));
    }
    let now_ms = state.clock.now_ms();
    let (view, sealed) = state.store.write(|m| {
        let mut d = m
            .devices
            .get(id.as_str())
            .cloned()
            .ok_or_else(|| ApiError::not_found("device"))?;
        d.kill_credentials();
        d.state = DeviceState::Revoked;
        d.revoked_at = Some(now_ms / 1000);
        d.revoke_reason = Some(reason.clone());
        d.revocation_seq += 1;
        let sealed = seal(&state.revocation_key, &d, now_ms)?;
        Ok::<_, ApiError>(((DeviceView::of(&d), sealed), vec![Change::Device(d)]))
    })?;
    tracing::info!(device_id = %id, auth = %auth.subject(), "device revoked");
    let published = match state.publisher.publish(&id, sealed).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(device_id = %id, error = %e, "revocation recorded but not pushed");
            false
        }
    };
    Ok(Json(DeviceView {
        revocation_published: Some(published),
        ..view
    }))
}

fn seal(key: &SigningKey, d: &DeviceRecord, now_ms: u64) -> ApiResult<Vec<u8>> {
    let rev = Revocation {
        device_id: d.device_id.clone(),
        issued_at: now_ms,
        seq: d.revocation_seq,
        reason: d.revoke_reason.clone().unwrap_or_default(),
    };
    envelope::seal(&rev, key).map_err(ApiError::internal)
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(WRITE)?;
    let id = parse_id(&id)?;
    state.store.write(|m| match m.devices.get(id.as_str()) {
        None => Err(ApiError::not_found("device")),
        Some(d) if d.state != DeviceState::Revoked => Err(ApiError::conflict(
            codes::CONFLICT,
            "only a revoked device can be deleted; revoke it first",
        )),
        Some(_) => Ok(((), vec![Change::DeleteDevice(id.as_str().to_owned())])),
    })?;
    tracing::info!(device_id = %id, auth = %auth.subject(), "device deleted");
    Ok(StatusCode::NO_CONTENT)
}
