//! JSON wire types of the control-plane calls the daemon makes, and the error body every
//! endpoint answers with. One file per call, named as the cloud's handler is.

pub mod error;
pub mod presence;
pub mod rate_limits;
pub mod refresh_device;
pub mod register_challenge;
pub mod register_device;

pub use error::{ErrorBody, codes};
pub use presence::Presence;
pub use rate_limits::{RateLimit, RateLimits, Surface};
pub use refresh_device::{RefreshRequest, RefreshResponse};
pub use register_challenge::{ChallengeRequest, ChallengeResponse};
pub use register_device::{MqttInfo, Proof, RegisterRequest, RegisterResponse};

/// Largest request body the cloud accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
