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
use crate::mqtt::outbox;
use crate::mqtt::presence::Seen;
use crate::publisher::PublishError;
use crate::store::{Change, DeviceRecord, DeviceState};

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
    /// For a revoke answer: whether the broker acknowledged the envelope (PUBACK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_published: Option<bool>,
    /// For a revoke answer: milliseconds from publishing to the broker's PUBACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_ack_ms: Option<u64>,
}

impl DeviceView {
    /// The record plus what the device last reported on its status topic.
    pub fn with_presence(d: &DeviceRecord, seen: Option<Seen>) -> Self {
        let seen = seen.unwrap_or_default();
        Self {
            online: seen.online,
            last_seen: seen.last_seen,
            daemon_version: seen.daemon_version,
            reported_state: seen.state,
            ..Self::of(d)
        }
    }

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
            revocation_ack_ms: None,
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

pub async fn list(State(state): State<AppState>, _auth: Auth) -> ApiResult<Json<DeviceList>> {
    let devices = state.store.read(|m| {
        m.devices
            .values()
            .map(|d| DeviceView::with_presence(d, state.presence.get(&d.device_id)))
            .collect()
    });
    Ok(Json(DeviceList { devices }))
}

pub async fn show(
    State(state): State<AppState>,
    _auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let id = parse_id(&id)?;
    state
        .store
        .read(|m| {
            m.devices
                .get(id.as_str())
                .map(|d| DeviceView::with_presence(d, state.presence.get(id.as_str())))
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found("device"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Records the revocation and its outbox entry in one commit, then publishes the envelope and
/// waits (bounded) for the broker's PUBACK: 200 with `revocation_published: true` once the
/// broker has it, 202 with `false` if it did not answer in time (the outbox keeps retrying),
/// 200 with `false` when the cloud has no broker (the device learns at its next refresh).
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    MaybeBody(body): MaybeBody<RevokeRequest>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
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
        let view = DeviceView::with_presence(&d, state.presence.get(id.as_str()));
        let mut changes = vec![Change::Device(d)];
        if state.publisher.durable() {
            changes.push(outbox::entry(&id, sealed.clone(), now_ms));
        }
        Ok::<_, ApiError>(((view, sealed), changes))
    })?;
    tracing::info!(device_id = %id, auth = %auth.subject(), "device revoked");
    let (status, published, ack_ms) = match state.publisher.publish(&id, sealed).await {
        Ok(took) => {
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(device_id = %id, ack_ms = ms, "revocation acknowledged by the broker");
            (StatusCode::OK, true, Some(ms))
        }
        Err(PublishError::NotConfigured) => (StatusCode::OK, false, None),
        Err(e) => {
            tracing::warn!(device_id = %id, error = %e, "revocation recorded, not yet acknowledged by the broker");
            (StatusCode::ACCEPTED, false, None)
        }
    };
    let view = DeviceView {
        revocation_published: Some(published),
        revocation_ack_ms: ack_ms,
        ..view
    };
    Ok((status, Json(view)))
}

pub(super) fn seal(key: &SigningKey, d: &DeviceRecord, now_ms: u64) -> ApiResult<Vec<u8>> {
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
    let id = parse_id(&id)?;
    let now_ms = state.clock.now_ms();
    let durable = state.publisher.durable();
    state.store.write(|m| match m.devices.get(id.as_str()) {
        None => Err(ApiError::not_found("device")),
        Some(d) if d.state != DeviceState::Revoked => Err(ApiError::conflict(
            codes::CONFLICT,
            "only a revoked device can be deleted; revoke it first",
        )),
        Some(_) => {
            let mut changes = vec![Change::DeleteDevice(id.as_str().to_owned())];
            // Clear the retained revocation (replacing any undelivered one), so a
            // re-provisioned device with this id does not read its predecessor's.
            if durable {
                changes.push(outbox::entry(&id, Vec::new(), now_ms));
            }
            Ok(((), changes))
        }
    })?;
    state.presence.forget(id.as_str());
    tracing::info!(device_id = %id, auth = %auth.subject(), "device deleted");
    // Wait (bounded) for the clear, so a device registered right after starts clean; the
    // outbox delivers it later otherwise.
    match state.publisher.publish(&id, Vec::new()).await {
        Ok(_) | Err(PublishError::NotConfigured) => {}
        Err(e) => {
            tracing::warn!(device_id = %id, error = %e, "retained revocation not cleared yet")
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
