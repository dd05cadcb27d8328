//! `GET /v1/token`: the current device key, if one is held and still valid.
//!
//! Served twice over: [`TokenFastPath`] answers the common case (a valid key, a plain
//! `GET /v1/token`) on the socket before any routing; everything else (revoked, expired, not yet
//! registered, an unusual request) reaches [`token`] through the router. Both read the same
//! snapshot through [`answer`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use octomil_common::wire::codes;
use tokio::time::Instant;

use super::{ApiError, ApiState};
use crate::metrics::Metrics;
use crate::socket::FastGet;
use crate::state::{Phase, Snapshot, SnapshotRx};

pub const PATH: &str = "/v1/token";
const CONTENT_TYPE: &str = "application/json";

pub async fn token(State(state): State<ApiState>) -> Result<Response, ApiError> {
    // One atomic load of the current snapshot: no lock shared with the refresh loop.
    let snap = state.snapshot.borrow().clone();
    let body = answer(&snap, Instant::now())?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response())
}

/// The pre-encoded `{"token", "expires_at"}` body, or why there is none.
fn answer(snap: &Snapshot, now: Instant) -> Result<Bytes, ApiError> {
    if snap.phase == Phase::Revoked {
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

/// `GET /v1/token` answered on the socket without hyper or the router while a valid key is
/// held; counted in `/metrics` like a routed answer.
#[derive(Debug)]
pub struct TokenFastPath {
    snapshot: SnapshotRx,
    metrics: Arc<Metrics>,
}

impl TokenFastPath {
    pub fn new(snapshot: SnapshotRx, metrics: Arc<Metrics>) -> Self {
        Self { snapshot, metrics }
    }
}

impl FastGet for TokenFastPath {
    fn path(&self) -> &'static str {
        PATH
    }

    fn content_type(&self) -> &'static str {
        CONTENT_TYPE
    }

    fn answer(&self) -> Option<Bytes> {
        // An error answer (revoked, expired, none) goes through the router, which builds it.
        let body = answer(&self.snapshot.borrow(), Instant::now()).ok()?;
        self.metrics.request(PATH, 200);
        Some(body)
    }
}
