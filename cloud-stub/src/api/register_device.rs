//! `POST /devices/register/challenge` and `POST /devices/register` (protocol 2,
//! docs/device-protocol.md): a device asks for a single-use challenge, then enrols with the
//! fleet's bootstrap token and a proof, over that challenge, that it holds the key it
//! registers. No decision here reads the device's clock. Re-registering a live id with the
//! same key rotates its credentials (a device that crashed before saving the answer can try
//! again) and gives it a new registration epoch.

use axum::Json;
use axum::extract::State;
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::{
    ChallengeRequest, ChallengeResponse, MqttInfo, Proof, RegisterRequest, RegisterResponse, codes,
};
use octomil_common::{DeviceId, proof};

use crate::app::AppState;
use crate::challenge::{self, ChallengeError};
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::limits::{Budget, Surface};
use crate::store::{Change, DeviceRecord, DeviceState, REGISTRATION_EPOCH, RefreshState};

use super::refresh_device::issue_pair;

/// Mints a challenge. Unauthenticated and stateless (the challenge verifies itself), on a
/// per-address budget of its own.
pub async fn challenge(
    State(state): State<AppState>,
    ctx: crate::extract::Ctx,
    Body(req): Body<ChallengeRequest>,
) -> ApiResult<Json<ChallengeResponse>> {
    state.take_permit(Budget::Challenge, ctx.source.as_deref().unwrap_or_default())?;
    let now = state.clock.now_ms() / 1000;
    Ok(Json(ChallengeResponse {
        challenge: state.challenges.mint(req.device_id.as_str(), now),
        expires_in: challenge::TTL_SECS,
    }))
}

fn challenge_error(e: ChallengeError) -> ApiError {
    let code = match e {
        ChallengeError::Invalid => codes::INVALID_CHALLENGE,
        ChallengeError::Expired => codes::CHALLENGE_EXPIRED,
        ChallengeError::Used => codes::CHALLENGE_USED,
        ChallengeError::Busy(secs) => return ApiError::rate_limited(secs),
    };
    ApiError::bad_request(code, e.to_string())
}

pub async fn register(
    State(state): State<AppState>,
    ctx: crate::extract::Ctx,
    Body(req): Body<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    state.take_permit(
        Budget::Registration,
        ctx.source.as_deref().unwrap_or_default(),
    )?;

    token::parse_as(
        req.bootstrap_token.expose(),
        &[TokenKind::Bootstrap],
        "edg_bootstrap_",
    )
    .map_err(|e| {
        ApiError::bad_request(codes::INVALID_TOKEN_FORMAT, format!("bootstrap_token: {e}"))
    })?;
    if req.device_id.as_str() == crate::mqtt::CLOUD_USERNAME
        || state.mqtt_identity.as_deref() == Some(req.device_id.as_str())
    {
        // The cloud's own broker login; a device by that name could never log in.
        return Err(ApiError::bad_request(
            codes::INVALID_DEVICE_ID,
            "this device id is reserved",
        ));
    }
    let (challenge, signature) = match (&req.challenge, &req.proof) {
        (Some(c), Proof::Signature(s)) => (c, s),
        _ => {
            return Err(ApiError::bad_request(
                codes::CHALLENGE_REQUIRED,
                "this cloud speaks device protocol 2: get a challenge from \
                 POST /api/v1/devices/register/challenge and sign it (protocol-1 \
                 timestamp proofs are refused; upgrade octomild)",
            ));
        }
    };
    let public_key = proof::decode_public_key(&req.device_public_key)
        .map_err(|e| ApiError::bad_request(codes::INVALID_PROOF, e.to_string()))?;
    let now_ms = state.clock.now_ms();
    let now = now_ms / 1000;
    let checked = state
        .challenges
        .check(req.device_id.as_str(), challenge, now)
        .map_err(challenge_error)?;
    let boot_hash = token::hash(req.bootstrap_token.expose());
    let statement = proof::Statement {
        challenge,
        device_id: req.device_id.as_str(),
        device_public_key: &req.device_public_key,
        bootstrap_hash: &boot_hash,
    };
    proof::verify(&public_key, &statement, signature)
        .map_err(|e| ApiError::bad_request(codes::INVALID_PROOF, e.to_string()))?;
    // Consumed only once the proof verified: someone who merely saw the challenge cannot
    // burn it for the device.
    state
        .challenges
        .consume(checked, now)
        .map_err(challenge_error)?;

    state.take_permit(Surface::ControlPlane, req.device_id.as_str())?;

    let settings = state.settings();
    let expiry = settings.device_token_expiry_secs;
    // The step runs on the writer thread: it owns what it uses.
    let owned = req.clone();
    let pending = state.store.write(move |m| {
        let req = owned;
        let invalid = || {
            ApiError::unauthorized(
                codes::INVALID_BOOTSTRAP_TOKEN,
                "bootstrap token is unknown, expired or used up",
            )
        };
        if m.org.as_ref().is_none_or(|o| o.deleted) {
            return Err(super::authz::org_deleted());
        }
        let mut boot = m
            .bootstrap_by_hash(&boot_hash)
            .filter(|b| token::hashes_equal(&b.hash, &boot_hash))
            .cloned()
            .ok_or_else(invalid)?;
        if boot.expires_at.is_some_and(|t| t <= now)
            || boot.max_uses.is_some_and(|max| boot.uses >= max)
        {
            return Err(invalid());
        }
        let mut device = match m.devices.get(req.device_id.as_str()) {
            Some(d) if d.state == DeviceState::Revoked => {
                return Err(ApiError::device_revoked());
            }
            Some(d) if d.public_key != *public_key.as_bytes() => {
                return Err(ApiError::conflict(
                    codes::DEVICE_ID_TAKEN,
                    "this device id is registered with another key",
                ));
            }
            Some(d) => {
                // Same key: rotate. Old keys and refresh tokens die with the new pair.
                let mut d = d.clone();
                d.keys.clear();
                d.refresh = RefreshState::default();
                d
            }
            None => DeviceRecord {
                device_id: req.device_id.as_str().to_owned(),
                public_key: *public_key.as_bytes(),
                state: DeviceState::Active,
                registered_at_ms: now_ms,
                last_refresh_at: None,
                metadata: Default::default(),
                keys: Vec::new(),
                refresh: RefreshState::default(),
                revoked_at: None,
                revoke_reason: None,
                revocation_seq: 0,
                bootstrap_token_id: None,
                environment: boot.environment,
            },
        };
        device.bootstrap_token_id = Some(boot.id.clone());
        // A device takes its bootstrap token's environment (sandbox or live), also when it
        // registers again with another token.
        device.environment = boot.environment;
        device.registered_at_ms = now_ms;
        if let Some(meta) = &req.metadata {
            device.metadata = meta.clone();
        }
        let (key, refresh, expires_at) = issue_pair(&mut device, boot.environment, now, expiry);
        boot.uses += 1;
        let epoch = m
            .counter(REGISTRATION_EPOCH)
            .checked_add(1)
            .ok_or_else(|| ApiError::internal("the registration epoch is exhausted"))?;
        let ctx = crate::extract::Ctx {
            environment: device.environment,
            ..ctx.clone()
        };
        let audit = super::audit::from(
            &ctx,
            now_ms,
            format!("device:{}", device.device_id),
            "device",
            "device.register",
            &device.device_id,
        );
        Ok((
            (key, refresh, expires_at, epoch),
            vec![
                Change::Epoch(device.device_id.clone(), epoch),
                Change::Counter(REGISTRATION_EPOCH, epoch),
                Change::Device(device),
                Change::Bootstrap(boot),
                audit,
            ],
        ))
    });
    let (api_key, refresh_token, expires_at, epoch) = pending.await?;

    tracing::info!(device_id = %req.device_id, epoch, "device registered");
    let mqtt = match &state.mqtt_url {
        Some(url) => Some(mqtt_info(
            &state,
            url,
            &req.device_id,
            public_key.as_bytes(),
            expiry,
        )?),
        None => None,
    };
    Ok(Json(RegisterResponse {
        mqtt,
        device_id: req.device_id,
        api_key,
        refresh_token,
        expires_at,
        expires_in: Some(expiry),
        revocation_public_key: proof::encode_public_key(&state.revocation_key.verifying_key()),
        rate_limits: settings.rate_limits.device_view(),
        registration_epoch: epoch,
    }))
}

/// The broker details of a register or refresh answer, with a client certificate for the
/// device's identity key valid as long as the device key issued with it.
pub(super) fn mqtt_info(
    state: &AppState,
    url: &str,
    id: &DeviceId,
    public_key: &[u8; 32],
    lifetime_secs: u64,
) -> ApiResult<MqttInfo> {
    let cert = state
        .mqtt_ca
        .issue_device(
            id.as_str(),
            public_key,
            std::time::Duration::from_secs(lifetime_secs),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot issue an MQTT client certificate");
            ApiError::internal("cannot issue the MQTT client certificate")
        })?;
    Ok(MqttInfo {
        url: url.to_owned(),
        topic: id.revocation_topic(),
        username: id.as_str().to_owned(),
        client_cert: Some(cert.chain_pem),
        client_cert_expires_in: Some(cert.expires_in),
    })
}
