//! The daemon's shared view of itself: one immutable [`Snapshot`] published through a
//! `tokio::sync::watch`, so every socket request reads the current key with one atomic
//! load and no lock shared with the refresh loop.

use std::sync::Arc;

use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use serde::Serialize;
use tokio::time::Instant;

/// The states of the contract's `/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No credentials and not trying (e.g. no bootstrap token, or the cloud refused it).
    Unregistered,
    /// Registering with the bootstrap token.
    Registering,
    /// Holding a key and refreshing on schedule.
    Active,
    /// Holding credentials but the cloud cannot be reached; retrying.
    Offline,
    /// Revoked by the cloud: no key is ever served again.
    Revoked,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Unregistered,
        Phase::Registering,
        Phase::Active,
        Phase::Offline,
        Phase::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unregistered => "unregistered",
            Self::Registering => "registering",
            Self::Active => "active",
            Self::Offline => "offline",
            Self::Revoked => "revoked",
        }
    }
}

/// The key a local app may be handed, with its expiry on both clocks.
#[derive(Debug, Clone)]
pub struct Token {
    pub secret: Secret<String>,
    /// Unix seconds, as the cloud said.
    pub expires_at: u64,
    /// The same instant on the monotonic clock: what decides whether the key is still served,
    /// so a wall-clock jump can never make the daemon hand out an expired key.
    pub valid_until: Instant,
}

impl Token {
    pub fn is_valid(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RevokedInfo {
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// Everything the socket API reports. Cheap to clone (the token is behind an `Arc`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub phase: Phase,
    pub device_id: String,
    pub token: Option<Arc<Token>>,
    pub last_refresh: Option<u64>,
    /// Monotonic instant of the next scheduled refresh, if one is scheduled.
    pub next_refresh: Option<Instant>,
    pub mqtt_connected: bool,
    /// Human text about what the daemon is doing or why it is stuck.
    pub detail: String,
    pub revoked: Option<RevokedInfo>,
    pub rate_limits: Option<RateLimits>,
}

impl Snapshot {
    pub fn new(device_id: String) -> Self {
        Self {
            phase: Phase::Unregistered,
            device_id,
            token: None,
            last_refresh: None,
            next_refresh: None,
            mqtt_connected: false,
            detail: "starting".into(),
            revoked: None,
            rate_limits: None,
        }
    }
}

pub type SnapshotTx = tokio::sync::watch::Sender<Arc<Snapshot>>;
pub type SnapshotRx = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// Applies `f` to a copy of the current snapshot and publishes it.
pub fn update(tx: &SnapshotTx, f: impl FnOnce(&mut Snapshot)) {
    tx.send_modify(|cur| {
        let mut next = (**cur).clone();
        f(&mut next);
        *cur = Arc::new(next);
    });
}
