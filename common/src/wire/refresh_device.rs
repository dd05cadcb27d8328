//! `POST /api/v1/devices/refresh`

use serde::{Deserialize, Serialize};

use super::RateLimits;
use crate::{DeviceId, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub device_id: DeviceId,
    pub refresh_token: Secret<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshResponse {
    pub api_key: Secret<String>,
    pub refresh_token: Secret<String>,
    /// Unix seconds at which `api_key` stops working.
    pub expires_at: u64,
    /// The key's lifetime in seconds. Devices schedule from this, never from
    /// `expires_at - their clock`: an edge device's wall clock may be far off the cloud's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    pub rate_limits: RateLimits,
    /// The broker details again, with a renewed `client_cert`; absent from clouds before
    /// client certificates (the device keeps what it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<super::MqttInfo>,
}
