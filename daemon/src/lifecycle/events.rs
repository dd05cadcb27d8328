//! What goes into the lifecycle core and what comes out: inputs stamped with both clocks,
//! the checked answers of the cloud calls, the failures sorted by what to do about them, the
//! effects for the driver, and the view the snapshot is made from.

use std::time::Duration;

use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::answer::CheckedMqtt;
use crate::state::Phase;
use crate::store::{Identity, Persisted, Revoked};

/// The time an input happened at, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    /// Unix seconds on the device's wall clock (only for `expires_at` we report and for
    /// deciding whether the clock is set at all; never compared with a cloud timestamp).
    pub wall_secs: u64,
}

/// A forced refresh's reply: the new expiry (Unix seconds) or why not.
pub type Reply = oneshot::Sender<Result<u64, String>>;

/// What the cloud said to a register call, already checked by [`crate::answer`].
#[derive(Debug, Clone)]
pub struct Registration {
    pub api_key: Secret<String>,
    pub refresh_token: Secret<String>,
    pub lifetime_secs: u64,
    pub revocation_public_key: [u8; 32],
    pub mqtt: Option<Box<CheckedMqtt>>,
    pub rate_limits: RateLimits,
    pub epoch: u64,
}

/// What the cloud said to a refresh call, already checked.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub api_key: Secret<String>,
    pub refresh_token: Secret<String>,
    pub lifetime_secs: u64,
    pub rate_limits: RateLimits,
    /// The broker details with a renewed client certificate; `None` from clouds before
    /// client certificates (the device keeps what it had).
    pub mqtt: Option<Box<CheckedMqtt>>,
}

/// Why a call did not produce an answer, sorted by what the machine does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Network, 5xx, timeout, a failed local save: retry with backoff.
    Transient(String),
    /// 429: retry no sooner than this (already clamped).
    RateLimited(Duration),
    /// The local control-plane budget says not yet.
    Budget(Duration),
    /// The cloud says the device is revoked.
    Revoked,
    /// TLS says the cloud's certificate is not valid yet: the clock is behind.
    ClockBehind(String),
    /// The cloud no longer honours the refresh token (reused, unknown): register again.
    CredentialsRejected(String),
    /// Waiting cannot heal it (bootstrap token unknown or used up, id held by another key, no
    /// bootstrap token, an incompatible cloud, an answer we refuse): retried slowly.
    Permanent(String),
}

/// Commands from other tasks (socket API, SIGHUP, MQTT session).
#[derive(Debug)]
pub enum Command {
    /// `POST /v1/admin/refresh`.
    Refresh(Reply),
    /// SIGHUP: retry a held registration at once.
    Reload,
    /// A verified revocation arrived on MQTT.
    Revoke { reason: String, seq: Option<u64> },
    /// The broker keeps refusing our session: ask the cloud now.
    Check,
}

#[derive(Debug)]
pub enum Input {
    /// The driver started; `Persisted` was handed to [`Core::new`].
    Start,
    /// The deadline passed.
    Timeout,
    /// The register call ended; `identity` is the device key if the call had to make (and
    /// persist) one, so the machine keeps it whatever the outcome.
    Registered {
        identity: Option<Identity>,
        result: Result<Registration, Failure>,
    },
    Refreshed(Result<Refreshed, Failure>),
    /// The last [`Effect::Persist`] finished.
    Saved(Result<(), String>),
    Command(Command),
    Shutdown,
}

/// Counters the driver bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    RegisterSuccess,
    RegisterFailure,
    RefreshSuccess,
    RefreshFailure,
}

#[derive(Debug)]
pub enum Effect {
    /// Read the bootstrap token, make sure the device key exists (persisted before use),
    /// take a control-plane permit, call register; answer with `Input::Registered`.
    CallRegister,
    /// Take a permit and call refresh with this token; answer with `Input::Refreshed`.
    CallRefresh(Secret<String>),
    /// Save this state durably; answer with `Input::Saved`.
    Persist(Box<Persisted>),
    /// Withhold the key at once (before the slower wipe).
    WithholdKey {
        reason: String,
    },
    /// Wipe the secrets and persist the revocation (no answer needed).
    Wipe(Revoked),
    /// Mirror the cloud's limits locally.
    SetLimits(RateLimits),
    /// A 429: pause the local control-plane budget for everyone.
    PauseControlPlane(Duration),
    Reply(Reply, Result<u64, String>),
    Count(Count),
    /// The snapshot changed: publish [`Core::view`].
    Publish,
    /// Shut down: drop any call in flight.
    Stop,
}

/// The key being served, as the snapshot shows it.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub secret: Secret<String>,
    /// Unix seconds; `None` while the wall clock cannot be trusted.
    pub expires_at: Option<u64>,
    pub valid_until: Instant,
}

/// The MQTT client certificate in use, as the snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertView {
    /// PEM: the device's certificate, then its CA's.
    pub chain_pem: String,
    /// When it was received and until when it is valid, on the monotonic clock (from
    /// `client_cert_expires_in`, like the key's `valid_until`).
    pub received: Instant,
    pub valid_until: Instant,
}

/// Everything the snapshot needs from the machine.
#[derive(Debug, Clone)]
pub struct View {
    pub phase: Phase,
    pub detail: String,
    pub key: Option<KeyView>,
    pub last_refresh: Option<u64>,
    pub next_refresh: Option<Instant>,
    pub rate_limits: Option<RateLimits>,
    pub revoked: Option<Revoked>,
    pub client_cert: Option<CertView>,
}
