//! `GET /v1/token`: the current device key, if one is held and still valid.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use octomil_common::wire::codes;
use tokio::time::Instant;

use super::{ApiError, ApiState};
use crate::state::Phase;

pub async fn token(State(state): State<ApiState>) -> Result<Response, ApiError> {
    // One atomic load of the current snapshot: no lock shared with the refresh loop.
    let snap = state.snapshot.borrow().clone();
    if snap.phase == Phase::Revoked {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            codes::DEVICE_REVOKED,
            "this device has been revoked",
        ));
    }
    match &snap.token {
        Some(t) if t.is_valid(Instant::now()) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            t.answer(),
        )
            .into_response()),
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
