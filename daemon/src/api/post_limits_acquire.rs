//! `POST /v1/limits/{surface}/acquire[?n=N]`: take N permits of the device's local budget
//! before calling the cloud, so the call is never refused upstream for rate reasons.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use octomil_common::wire::{Surface, codes};
use octomil_common::{Clock, SystemClock};
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::limits::{Denied, Granted};
use crate::socket::Peer;

/// Largest batch one call may ask for.
const MAX_N: u32 = 1_000_000;

#[derive(Debug, Serialize)]
struct Grant {
    surface: &'static str,
    #[serde(flatten)]
    granted: Granted,
}

#[derive(Debug, Serialize)]
struct Refused {
    error: &'static str,
    message: String,
    /// The exact wait in milliseconds (`Retry-After` is rounded up to whole seconds).
    retry_after_ms: u64,
    /// `budget`, `per_uid` (this caller's share is spent) or `paused` (the cloud asked).
    reason: &'static str,
}

pub async fn acquire(
    peer: Peer,
    State(state): State<ApiState>,
    Path(surface): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let surface = Surface::parse(&surface).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!(
                "unknown surface {:?}: use control_plane or inference",
                surface.chars().take(40).collect::<String>()
            ),
        )
    })?;
    let n = match q.get("n") {
        None => 1,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_N).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_ARGUMENT,
                    format!("n must be an integer from 1 to {MAX_N}"),
                )
            })?,
    };
    if let Some(k) = q.keys().find(|k| k.as_str() != "n") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_ARGUMENT,
            format!(
                "unknown parameter {:?}",
                k.chars().take(40).collect::<String>()
            ),
        ));
    }
    // Root and the daemon's own uid are not held to a per-uid share.
    let uid = (peer.uid != 0).then_some(peer.uid);
    match state.limits.acquire(surface, n, uid, SystemClock.now_ms()) {
        Ok(granted) => {
            state.metrics.limit_grant(surface.as_str(), n);
            Ok(Json(Grant {
                surface: surface.as_str(),
                granted,
            })
            .into_response())
        }
        Err(Denied::Unknown) => {
            state
                .metrics
                .limit_refusal(surface.as_str(), "not_registered");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::NOT_REGISTERED,
                "no limits yet: the device has not registered",
            )
            .retry_after(5))
        }
        Err(Denied::TooLarge { limit }) => {
            state.metrics.limit_refusal(surface.as_str(), "too_large");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_ARGUMENT,
                format!("n = {n} exceeds the burst of {limit}: it can never be granted at once"),
            ))
        }
        Err(
            d @ Denied::Wait {
                wait_ms,
                paused,
                per_uid,
            },
        ) => {
            let reason = if paused {
                "paused"
            } else if per_uid {
                "per_uid"
            } else {
                "budget"
            };
            state.metrics.limit_refusal(surface.as_str(), reason);
            let secs = d.retry_after_secs();
            let body = Refused {
                error: codes::RATE_LIMITED,
                message: format!(
                    "{} budget spent ({reason}); retry in {wait_ms} ms",
                    surface.as_str()
                ),
                retry_after_ms: wait_ms,
                reason,
            };
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Ok(resp)
        }
    }
}
