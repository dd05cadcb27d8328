//! `POST /v1/admin/refresh` (root only): refresh the device key now and wait for the result.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use octomil_common::wire::codes;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{ApiError, ApiState};
use crate::agent::Command;
use crate::socket::RequireAdmin;

#[derive(Debug, Serialize)]
pub struct Refreshed {
    pub expires_at: u64,
}

pub async fn refresh(
    _admin: RequireAdmin,
    State(state): State<ApiState>,
) -> Result<Json<Refreshed>, ApiError> {
    let (tx, rx) = oneshot::channel();
    let unavailable =
        |m: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, m);
    state
        .commands
        .send(Command::Refresh(tx))
        .await
        .map_err(|_| unavailable("the daemon is shutting down"))?;
    match tokio::time::timeout(state.refresh_timeout, rx).await {
        Ok(Ok(Ok(expires_at))) => Ok(Json(Refreshed { expires_at })),
        Ok(Ok(Err(why))) if why.contains("revoked") => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            codes::DEVICE_REVOKED,
            why,
        )),
        Ok(Ok(Err(why))) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            codes::UNAVAILABLE,
            why,
        )),
        Ok(Err(_)) => Err(unavailable("the refresh loop went away")),
        Err(_) => Err(unavailable(
            "the refresh did not finish in time; it goes on in the background",
        )),
    }
}
