//! The presence message a daemon publishes, retained, on `octomil/v1/devices/{id}/status`
//! when its MQTT session comes up; the same topic carries its Last Will (`online: false`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// False in the Last Will: the broker publishes it when the session dies uncleanly.
    pub online: bool,
    /// The daemon's state (`active`, `offline`, `revoked`, ...); `offline` in the Last Will.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_version: Option<String>,
    /// Unix seconds at which the daemon's key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Presence {
    /// The Last Will a daemon registers when it connects.
    pub fn last_will() -> Self {
        Self {
            online: false,
            state: "offline".into(),
            daemon_version: None,
            expires_at: None,
        }
    }
}

/// Largest presence payload the cloud parses.
pub const MAX_PRESENCE_BYTES: usize = 1024;
