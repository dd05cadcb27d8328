//! The contract shared by `octomild` and `octomil-cloud`: token and id formats, wire types,
//! the signed revocation envelope, the GCRA rate-limit arithmetic and trusting a pinned CA.
//! No I/O, no async.

pub mod backoff;
pub mod clock;
pub mod duration;
pub mod envelope;
pub mod gcra;
pub mod ids;
pub mod proof;
pub mod secret;
pub mod tls;
pub mod token;
pub mod wire;

pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::DeviceId;
pub use secret::Secret;
pub use token::{TokenError, TokenKind};
