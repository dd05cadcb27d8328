//! The rate limits the cloud enforces per device, sent in every register and refresh answer
//! so the daemon can mirror them.

use serde::{Deserialize, Serialize};

use crate::gcra::Gcra;

/// The rate-limited surfaces a device sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Surface {
    ControlPlane,
    Inference,
}

impl Surface {
    pub const ALL: [Surface; 2] = [Surface::ControlPlane, Surface::Inference];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control_plane",
            Self::Inference => "inference",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// `limit` requests per `period_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub limit: u32,
    pub period_secs: u32,
}

impl RateLimit {
    pub const fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            period_secs: 60,
        }
    }

    pub fn gcra(&self) -> Gcra {
        Gcra::new(self.limit, u64::from(self.period_secs) * 1000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Control-plane calls per device (refresh, register, device-key requests).
    pub control_plane: RateLimit,
    /// `POST /inference` per key.
    pub inference: RateLimit,
}

impl Default for RateLimits {
    /// The seed's limits: 100/min control plane, 1000/min inference.
    fn default() -> Self {
        Self {
            control_plane: RateLimit::per_minute(100),
            inference: RateLimit::per_minute(1000),
        }
    }
}

impl RateLimits {
    pub fn get(&self, surface: Surface) -> RateLimit {
        match surface {
            Surface::ControlPlane => self.control_plane,
            Surface::Inference => self.inference,
        }
    }
}
