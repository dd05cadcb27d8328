//! `POST /devices/refresh`: trade the refresh token for a new key and refresh token.
//!
//! Grace rule: the previous refresh token stays valid until its successor is first used (a
//! refresh with it, or a call with the new key), so an answer lost in a crash can be fetched
//! again. Once the successor is used, presenting an older token is reuse: every credential
//! of the device dies and the answer is 401 `refresh_token_reused`.
//!
//! Budgets: the device's control-plane budget is spent only once its refresh token verified;
//! a token that does not verify spends the source address's budget of failures instead.

use axum::Json;
use axum::extract::State;
use octomil_common::Secret;
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::{RefreshRequest, RefreshResponse, codes};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::limits::Surface;
use crate::store::{
    Change, DeviceKey, DeviceRecord, DeviceState, Environment, Issued, MAX_LIVE_KEYS, MAX_RETIRED,
};

pub async fn refresh(
    State(state): State<AppState>,
    ctx: crate::extract::Ctx,
    Body(req): Body<RefreshRequest>,
) -> ApiResult<Json<RefreshResponse>> {
    token::parse_as(
        req.refresh_token.expose(),
        &[TokenKind::Refresh],
        "edg_refresh_",
    )
    .map_err(|e| {
        ApiError::bad_request(codes::INVALID_TOKEN_FORMAT, format!("refresh_token: {e}"))
    })?;
    let settings = state.settings();
    let now = state.clock.now_secs();
    let h = token::hash(req.refresh_token.expose());
    // The token is verified before anything is charged: a refresh token is unguessable, so
    // checking it is cheap and safe, and only a verified call spends the device's budget.
    // A token that does not verify is charged to the source address instead.
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), req.device_id.clone());
    let outcome = state.store.write(move |m| {
        let (state, device_id) = owned;
        let invalid = || ApiError::unauthorized(codes::INVALID_REFRESH_TOKEN, "refresh token is not valid for this device");
        if m.org.as_ref().is_none_or(|o| o.deleted) {
            return Err(super::authz::org_deleted());
        }
        let mut d = m.devices.get(device_id.as_str()).cloned().ok_or_else(invalid)?;
        if d.state == DeviceState::Revoked {
            return Err(ApiError::device_revoked());
        }
        let is = |x: &[u8; 32]| token::hashes_equal(x, &h);
        let current = d.refresh.current.clone();
        let valid = match &current {
            Some(cur) => is(&cur.refresh_hash) || (d.refresh.previous.as_ref().is_some_and(is) && !cur.confirmed),
            None => false,
        };
        if valid {
            state.take_permit_under(Surface::ControlPlane, device_id.as_str(), Some(settings.rate_limits))?;
        }
        match current {
            Some(cur) if is(&cur.refresh_hash) => {
                // Normal rotation: the current pair was used, so it becomes the previous.
                if let Some(older) = d.refresh.previous.replace(cur.refresh_hash) {
                    d.refresh.retired.push(older);
                }
            }
            Some(cur) if d.refresh.previous.as_ref().is_some_and(is) && !cur.confirmed => {
                // The answer that issued `cur` was lost: replace it and kill its key.
                d.keys.retain(|k| !token::hashes_equal(&k.hash, &cur.key_hash));
            }
            _ if d.refresh.previous.as_ref().is_some_and(is) || d.refresh.retired.iter().any(is) => {
                d.kill_credentials();
                tracing::warn!(device_id = %d.device_id, "refresh token reused; all device credentials revoked");
                return Ok((Err(()), vec![Change::Device(d)]));
            }
            _ => return Err(invalid()),
        }
        let excess = d.refresh.retired.len().saturating_sub(MAX_RETIRED);
        d.refresh.retired.drain(..excess);
        d.last_refresh_at = Some(now);
        let env = d.environment;
        let (key, refresh, expires_at) = issue_pair(&mut d, env, now, settings.device_token_expiry_secs);
        let public_key = d.public_key;
        Ok((Ok((key, refresh, expires_at, public_key)), vec![Change::Device(d)]))
    }).await;
    let outcome = match outcome {
        Err(e) if e.code == codes::INVALID_REFRESH_TOKEN => {
            return Err(state.charge_failure(ctx.source.as_deref(), e));
        }
        other => other?,
    };
    let (api_key, refresh_token, expires_at, public_key) = outcome.map_err(|()| {
        ApiError::unauthorized(
            codes::REFRESH_TOKEN_REUSED,
            "refresh token was already used; the device must register again",
        )
    })?;
    // A renewed client certificate with every renewed key (a revoked device got 403 above).
    let mqtt = match &state.mqtt_url {
        Some(url) => Some(super::register_device::mqtt_info(
            &state,
            url,
            &req.device_id,
            &public_key,
            settings.device_token_expiry_secs,
        )?),
        None => None,
    };
    Ok(Json(RefreshResponse {
        api_key,
        refresh_token,
        expires_at,
        expires_in: Some(settings.device_token_expiry_secs),
        rate_limits: settings.rate_limits.device_view(),
        mqtt,
    }))
}

/// Issues a new device key and refresh token into `d` (as its unconfirmed current pair),
/// dropping expired keys and keeping at most [`MAX_LIVE_KEYS`].
pub(super) fn issue_pair(
    d: &mut DeviceRecord,
    env: Environment,
    now: u64,
    lifetime_secs: u64,
) -> (Secret<String>, Secret<String>, u64) {
    let key = token::generate(env.token_kind());
    let refresh = token::generate(TokenKind::Refresh);
    let expires_at = now + lifetime_secs;
    let key_hash = token::hash(key.expose());
    d.keys.retain(|k| k.expires_at > now);
    d.keys.push(DeviceKey {
        hash: key_hash,
        expires_at,
    });
    let excess = d.keys.len().saturating_sub(MAX_LIVE_KEYS);
    d.keys.drain(..excess);
    d.refresh.current = Some(Issued {
        refresh_hash: token::hash(refresh.expose()),
        key_hash,
        confirmed: false,
    });
    (key, refresh, expires_at)
}
