//! `POST /api/v1/devices/register/challenge` (protocol 2): the single-use challenge a device
//! signs in its registration proof. Unauthenticated; see docs/device-protocol.md.

use serde::{Deserialize, Serialize};

use crate::DeviceId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeRequest {
    pub device_id: DeviceId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// Opaque to the device: sign it and send it back with the registration.
    pub challenge: String,
    /// Seconds the challenge stays usable (on the cloud's clock).
    pub expires_in: u64,
}
