//! `GET /v1/status`: what the daemon is doing, for people and scripts.

use axum::Json;
use axum::extract::State;
use octomil_common::wire::RateLimits;
use serde::Serialize;
use tokio::time::Instant;

use super::ApiState;
use crate::state::{Phase, RevokedInfo};

#[derive(Debug, Serialize)]
pub struct Status {
    pub state: Phase,
    pub device_id: String,
    /// Unix seconds; `null` without a key.
    pub expires_at: Option<u64>,
    pub last_refresh: Option<u64>,
    /// Seconds until the next scheduled refresh attempt.
    pub next_refresh_in: Option<u64>,
    pub mqtt_connected: bool,
    pub detail: String,
    pub revoked: Option<RevokedInfo>,
    pub rate_limits: Option<RateLimits>,
    pub version: &'static str,
}

pub async fn status(State(state): State<ApiState>) -> Json<Status> {
    let s = state.snapshot.borrow().clone();
    let now = Instant::now();
    Json(Status {
        state: s.phase,
        device_id: s.device_id.clone(),
        expires_at: s.token.as_ref().and_then(|t| t.expires_at),
        last_refresh: s.last_refresh,
        next_refresh_in: s
            .next_refresh
            .map(|n| n.saturating_duration_since(now).as_secs()),
        mqtt_connected: s.mqtt_connected,
        detail: s.detail.clone(),
        revoked: s.revoked.clone(),
        rate_limits: s.rate_limits,
        version: env!("CARGO_PKG_VERSION"),
    })
}
