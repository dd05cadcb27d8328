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
    /// The wall clock is not set (before this build, or TLS says a certificate is not yet
    /// valid): no cloud call until it is; re-checked every second.
    WaitingForClock,
    /// Holding a key and refreshing on schedule.
    Active,
    /// Holding credentials but the cloud cannot be reached; retrying.
    Offline,
    /// Revoked by the cloud: no key is ever served again.
    Revoked,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Unregistered,
        Phase::Registering,
        Phase::WaitingForClock,
        Phase::Active,
        Phase::Offline,
        Phase::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unregistered => "unregistered",
            Self::Registering => "registering",
            Self::WaitingForClock => "waiting_for_clock",
            Self::Active => "active",
            Self::Offline => "offline",
            Self::Revoked => "revoked",
        }
    }
}

/// The key a local app may be handed, with its expiry on both clocks.
/// `Debug` shows no secret (the key is a `Secret`; the encoded answer is never printed).
#[derive(Clone)]
pub struct Token {
    pub secret: Secret<String>,
    /// Unix seconds (receipt time plus lifetime on the device's clock); `None` while the
    /// wall clock is not set.
    pub expires_at: Option<u64>,
    /// The same instant on the monotonic clock: what decides whether the key is still served,
    /// so a wall-clock jump can never make the daemon hand out an expired key.
    pub valid_until: Instant,
    /// The `GET /v1/token` body, encoded once (see [`Token::new`]).
    answer: bytes::Bytes,
}

impl Token {
    pub fn answer(&self) -> bytes::Bytes {
        self.answer.clone()
    }
}

impl Token {
    pub fn new(secret: Secret<String>, expires_at: Option<u64>, valid_until: Instant) -> Self {
        let answer = encode_answer(&secret, expires_at);
        Self {
            secret,
            expires_at,
            valid_until,
            answer,
        }
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("secret", &self.secret)
            .field("expires_at", &self.expires_at)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// `{"token": ..., "expires_at": ...}` encoded once per key and shared by every response:
/// no per-request serialization, and the one buffer holding the key is wiped when the last
/// response using it is gone.
fn encode_answer(secret: &Secret<String>, expires_at: Option<u64>) -> bytes::Bytes {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        token: &'a str,
        expires_at: Option<u64>,
    }
    let body = serde_json::to_vec(&Answer {
        token: secret.expose(),
        expires_at,
    })
    .unwrap_or_default();
    bytes::Bytes::from_owner(zeroize::Zeroizing::new(body))
}

#[derive(Debug, Clone, Serialize)]
pub struct RevokedInfo {
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// What the MQTT session needs, from the latest credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttParams {
    pub url: String,
    pub topic: String,
    pub username: String,
    /// The cloud's pinned revocation-signing key (from the registration answer, over TLS).
    pub revocation_public_key: [u8; 32],
    /// The cloud's epoch of this registration: envelopes for older epochs are stale.
    pub registration_epoch: u64,
    pub last_seq: Option<u64>,
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
    /// `None` until registered, or when the cloud runs without a broker.
    pub mqtt: Option<Arc<MqttParams>>,
    /// TLS client authentication with the cloud's MQTT client certificate; `None` when the
    /// cloud issues none (the session logs in with the device key then).
    pub mqtt_tls: Option<Arc<crate::client_tls::ClientTls>>,
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
            mqtt: None,
            mqtt_tls: None,
        }
    }
}

pub type SnapshotRx = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// The one writer side of the snapshot, shared by the refresh loop and the MQTT session.
/// It carries the revocation latch: once [`SnapshotTx::revoke_now`] ran, every later update
/// is forced to `revoked` without a key, so a refresh that finishes after a push can never
/// put a key back.
#[derive(Debug, Clone)]
pub struct SnapshotTx {
    tx: Arc<tokio::sync::watch::Sender<Arc<Snapshot>>>,
    revoked: Arc<std::sync::atomic::AtomicBool>,
}

impl SnapshotTx {
    pub fn new(initial: Snapshot) -> (Self, SnapshotRx) {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(initial));
        let me = Self {
            tx: Arc::new(tx),
            revoked: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        (me, rx)
    }

    pub fn borrow(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Applies `f` to a copy of the current snapshot and publishes it.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.tx.send_modify(|cur| {
            let mut next = (**cur).clone();
            f(&mut next);
            // Checked under the channel's lock: ordered with revoke_now's own update. The key
            // is withheld at once; the phase says `revoked` only once the lifecycle core
            // publishes it, after the revocation is saved, so a status of `revoked` always
            // survives a kill -9 (get_token refuses on `revoked` info alone meanwhile).
            if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
                next.token = None;
                next.next_refresh = None;
            }
            *cur = Arc::new(next);
        });
    }

    /// Withholds the key at once (a verified revocation arrived); persisting it is the
    /// lifecycle's job, and only then does the phase become [`Phase::Revoked`].
    pub fn revoke_now(&self, reason: &str, at: u64) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.update(|s| {
            s.detail = "revoked by the cloud".into();
            s.revoked = Some(RevokedInfo {
                reason: reason.to_owned(),
                at,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latch_wins_over_later_updates() {
        let (tx, rx) = SnapshotTx::new(Snapshot::new("d".into()));
        tx.update(|s| s.phase = Phase::Active);
        assert_eq!(rx.borrow().phase, Phase::Active);
        tx.revoke_now("stolen", 1);
        tx.update(|s| {
            s.phase = Phase::Active;
            s.token = Some(Arc::new(Token::new(
                octomil_common::Secret::new("k".into()),
                Some(2),
                Instant::now(),
            )));
        });
        let s = rx.borrow().clone();
        // Withheld at once, but not reported `revoked` before the revocation is saved.
        assert_eq!(s.phase, Phase::Active);
        assert!(s.token.is_none());
        assert_eq!(
            s.revoked.as_ref().map(|r| r.reason.as_str()),
            Some("stolen")
        );
    }
}
