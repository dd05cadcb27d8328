//! `GET /v1/token`: the current device key, if one is held and still valid.
//!
//! Served twice over: [`fast_answer`] answers the common case (a valid key, a plain
//! `GET /v1/token`) on the socket before any routing; everything else (revoked, expired, not yet
//! registered, an unusual request) reaches [`token`] through the router. Both read the same
//! snapshot through [`answer`].

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use octomil_common::wire::codes;
use tokio::time::Instant;

use super::{ApiError, ApiState};
use crate::metrics::Metrics;
use crate::socket::{FastAnswer, FastStatus};
use crate::state::{Phase, Snapshot, SnapshotRx};

pub const PATH: &str = "/v1/token";

pub async fn token(State(state): State<ApiState>) -> Result<Response, ApiError> {
    // One atomic load of the current snapshot: no lock shared with the refresh loop.
    let snap = state.snapshot.borrow().clone();
    let body = answer(&snap, Instant::now())?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The pre-encoded `{"token", "expires_at"}` body, or why there is none.
fn answer(snap: &Snapshot, now: Instant) -> Result<Bytes, ApiError> {
    // `revoked` info appears the instant a revocation is verified; the phase follows once
    // it is saved.
    if snap.phase == Phase::Revoked || snap.revoked.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            codes::DEVICE_REVOKED,
            "this device has been revoked",
        ));
    }
    match &snap.token {
        Some(t) if t.is_valid(now) => Ok(t.answer()),
        Some(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::TOKEN_EXPIRED,
            "the device key expired and the cloud could not be reached to refresh it",
        )
        .retry_after(5)),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::NOT_REGISTERED,
            format!("no device key yet ({})", snap.detail),
        )
        .retry_after(5)),
    }
}

/// `GET /v1/token` on the socket's fast path: the key while a valid one is held, counted in
/// `/metrics` like a routed answer. Error answers (revoked, expired, none) are left to
/// [`token`] through the router.
pub fn fast_answer(snapshot: &SnapshotRx, metrics: &Metrics) -> Option<FastAnswer> {
    let body = answer(&snapshot.borrow(), Instant::now()).ok()?;
    metrics.request(PATH, 200);
    Some(FastAnswer {
        status: FastStatus::Ok,
        retry_after: None,
        body,
    })
}
