//! The device lifecycle as a pure state machine: registration, refresh, revocation and every
//! failure of theirs decided here, with no I/O, no clock reads and no randomness inside.
//!
//! The driver (`agent.rs`) feeds [`Input`]s, each with the current [`Now`] (monotonic instant
//! and wall seconds) and one uniform random draw for jitter, then drains [`Effect`]s (call the
//! cloud, persist, wipe, publish the snapshot, reply) and sleeps until [`Core::deadline`] or
//! the next input. Persist before use: a new key is published only after `Saved(Ok)`.
//! Table tests in `tests.rs` drive every transition without sockets or sleeps.

mod events;
#[cfg(test)]
mod tests;

pub use events::*;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::answer;
use crate::answer::CheckedMqtt;
use crate::schedule;
use crate::state::Phase;
use crate::store::{ClientCert, Credentials, MqttRecord, Persisted, Revoked};
use octomil_common::backoff::{Backoff, Jitter};

/// Retrying a cloud call (register, refresh): 1 s doubling to 5 min, full jitter, and never
/// sooner than the cloud's `Retry-After`.
pub const CLOUD_RETRY: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(300),
    jitter: Jitter::FULL,
};

/// How often the wall clock is looked at again while it is not trustworthy.
pub const CLOCK_POLL: Duration = Duration::from_secs(1);

/// What the machine is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Idle,
    Registering,
    Refreshing,
    /// A save of a new key (from a register or a refresh) is in flight.
    Saving,
    Stopped,
}

/// The lifecycle. Owns the persisted state the driver loaded at start.
#[derive(Debug)]
pub struct Core {
    device_id: String,
    persisted: Persisted,
    /// The state being saved, applied on `Saved(Ok)`.
    pending: Option<(Persisted, Duration, bool)>,
    /// Wall seconds of this build: a clock before it is not set.
    build_secs: u64,
    phase: Phase,
    detail: String,
    busy: Busy,
    deadline: Option<Instant>,
    /// Consecutive failures of the current operation.
    attempt: u32,
    /// Until when the held key may be served (monotonic).
    valid_until: Option<Instant>,
    /// When the held MQTT client certificate was received and until when it is valid
    /// (monotonic, from `client_cert_expires_in`).
    cert_window: Option<(Instant, Instant)>,
    next_refresh: Option<Instant>,
    /// Forced refreshes waiting for the outcome.
    forced: Vec<Reply>,
    /// Set when TLS said the clock is behind: both clocks then, to see the wall clock being
    /// set (it moves against the monotonic one), and when to try again regardless.
    clock_ref: Option<(Instant, u64, Instant)>,
    effects: VecDeque<Effect>,
}

impl Core {
    pub fn new(device_id: String, persisted: Persisted, build_secs: u64) -> Self {
        Self {
            device_id,
            persisted,
            pending: None,
            build_secs,
            phase: Phase::Unregistered,
            detail: "starting".into(),
            busy: Busy::Idle,
            deadline: None,
            attempt: 0,
            valid_until: None,
            cert_window: None,
            next_refresh: None,
            forced: Vec::new(),
            clock_ref: None,
            effects: VecDeque::new(),
        }
    }

    /// The next effect to run, if any.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When to feed `Input::Timeout`; `None` waits for other inputs only.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn persisted(&self) -> &Persisted {
        &self.persisted
    }

    pub fn view(&self, now: Now) -> View {
        let creds = self.persisted.credentials.as_ref();
        let key = match (creds, self.valid_until) {
            (Some(c), Some(valid_until)) if self.persisted.revoked.is_none() => Some(KeyView {
                secret: c.api_key.clone(),
                expires_at: self.clock_ok(now).then_some(c.expires_at),
                valid_until,
            }),
            _ => None,
        };
        View {
            phase: self.phase,
            detail: self.detail.clone(),
            key,
            last_refresh: creds.and_then(|c| c.last_refresh),
            next_refresh: self.next_refresh,
            rate_limits: creds.map(|c| c.rate_limits),
            revoked: self.persisted.revoked.clone(),
            client_cert: match (stored_cert(&self.persisted), self.cert_window) {
                (Some(c), Some((received, valid_until))) if self.persisted.revoked.is_none() => {
                    Some(CertView {
                        chain_pem: c.chain_pem.clone(),
                        received,
                        valid_until,
                    })
                }
                _ => None,
            },
        }
    }

    fn clock_ok(&self, now: Now) -> bool {
        now.wall_secs >= self.build_secs
    }

    /// One input at `now`, with `unit` a uniform draw in `[0, 1)` for any jitter it needs.
    pub fn handle(&mut self, now: Now, unit: f64, input: Input) {
        if self.busy == Busy::Stopped {
            if let Input::Command(Command::Refresh(r)) = input {
                self.effects
                    .push_back(Effect::Reply(r, Err("shutting down".into())));
            }
            return;
        }
        match input {
            Input::Start => self.start(now, unit),
            Input::Timeout => self.timeout(now, unit),
            Input::Registered { identity, result } => {
                if identity.is_some() && self.busy == Busy::Registering {
                    self.persisted.identity = identity;
                    self.persisted.credentials = None;
                }
                self.registered(now, unit, result)
            }
            Input::Refreshed(r) => self.refreshed(now, unit, r),
            Input::Saved(r) => self.saved(now, unit, r),
            Input::Command(c) => self.command(now, c),
            Input::Shutdown => {
                self.busy = Busy::Stopped;
                self.deadline = None;
                for r in self.forced.drain(..) {
                    self.effects
                        .push_back(Effect::Reply(r, Err("shutting down".into())));
                }
                self.effects.push_back(Effect::Stop);
            }
        }
    }

    fn set(&mut self, phase: Phase, detail: impl Into<String>) {
        self.phase = phase;
        self.detail = detail.into();
        self.effects.push_back(Effect::Publish);
    }

    fn start(&mut self, now: Now, unit: f64) {
        if let Some(r) = &self.persisted.revoked {
            let reason = r.reason.clone();
            self.effects.push_back(Effect::WithholdKey { reason });
            self.set(Phase::Revoked, "revoked by the cloud");
            return;
        }
        let Some(c) = self.persisted.credentials.clone() else {
            self.begin_register(now);
            return;
        };
        self.effects.push_back(Effect::SetLimits(c.rate_limits));
        let lifetime = Duration::from_secs(c.expires_at.saturating_sub(c.issued_at));
        let cert = c
            .mqtt
            .as_ref()
            .and_then(|m| m.client_cert.as_ref())
            .map(|c| {
                (
                    Duration::from_secs(c.expires_at.saturating_sub(c.issued_at)),
                    c,
                )
            });
        if !self.clock_ok(now) {
            // After a reboot the wall clock is the only link to the stored key's expiry, and
            // it is not set: serve the key for a full lifetime at most (the cloud stays the
            // judge of validity) and refresh as soon as the clock is set. The certificate
            // likewise (the broker judges it).
            self.valid_until = now.mono.checked_add(lifetime);
            self.cert_window = cert.and_then(|(l, _)| Some((now.mono, now.mono.checked_add(l)?)));
            self.next_refresh = Some(now.mono);
            self.wait_for_clock(now);
            return;
        }
        let remaining = Duration::from_secs(c.expires_at.saturating_sub(now.wall_secs));
        self.valid_until = now.mono.checked_add(remaining);
        let mut delay = schedule::refresh_in_remaining(lifetime, remaining, unit);
        if let Some((cert_lifetime, cert)) = cert {
            let left = Duration::from_secs(cert.expires_at.saturating_sub(now.wall_secs));
            let received = now
                .mono
                .checked_sub(cert_lifetime.saturating_sub(left))
                .unwrap_or(now.mono);
            self.cert_window = now.mono.checked_add(left).map(|until| (received, until));
            delay = delay.min(schedule::refresh_in_remaining(cert_lifetime, left, unit));
        }
        self.schedule_refresh(now, delay, remaining);
    }

    fn wait_for_clock(&mut self, now: Now) {
        self.deadline = now.mono.checked_add(CLOCK_POLL);
        let detail = format!(
            "the system clock ({}) is before this build ({}): waiting for it to be set (NTP); \
             the cloud stays the judge of the stored key",
            fmt_secs(now.wall_secs),
            fmt_secs(self.build_secs)
        );
        if self.phase != Phase::WaitingForClock || self.detail != detail {
            self.set(Phase::WaitingForClock, detail);
        }
    }

    fn schedule_refresh(&mut self, now: Now, delay: Duration, remaining: Duration) {
        self.next_refresh = now.mono.checked_add(delay);
        self.deadline = self.next_refresh;
        let cert = match self.cert_window {
            Some((_, until)) => format!(
                "; MQTT certificate valid for {}s",
                until.saturating_duration_since(now.mono).as_secs()
            ),
            None => String::new(),
        };
        self.set(
            Phase::Active,
            format!(
                "key valid for {}s{cert}; next refresh in {}s",
                remaining.as_secs(),
                delay.as_secs()
            ),
        );
    }

    fn timeout(&mut self, now: Now, unit: f64) {
        self.deadline = None;
        match self.busy {
            Busy::Idle => {}
            // Calls and saves end with their own input, never a timeout.
            _ => return,
        }
        if self.persisted.revoked.is_some() {
            return;
        }
        if let Some((mono0, wall0, retry_at)) = self.clock_ref {
            let expected =
                wall0.saturating_add(now.mono.saturating_duration_since(mono0).as_secs());
            let set = now.wall_secs.abs_diff(expected) > 2;
            if !set && now.mono < retry_at {
                self.deadline = now.mono.checked_add(CLOCK_POLL);
                return;
            }
            self.clock_ref = None;
            if set {
                self.attempt = 0;
            }
            return if self.persisted.credentials.is_some() {
                self.begin_refresh(now)
            } else {
                self.begin_register(now)
            };
        }
        if self.persisted.credentials.is_some() {
            if !self.clock_ok(now) {
                self.wait_for_clock(now);
                return;
            }
            if self.phase == Phase::WaitingForClock {
                // The clock is set now: re-derive the schedule from the stored key.
                return self.start(now, unit);
            }
            self.begin_refresh(now);
        } else {
            self.begin_register(now);
        }
    }

    fn begin_register(&mut self, now: Now) {
        if !self.clock_ok(now) {
            return self.wait_for_clock(now);
        }
        self.busy = Busy::Registering;
        self.deadline = None;
        self.effects.push_back(Effect::CallRegister);
        self.set(Phase::Registering, "registering with the cloud");
    }

    fn begin_refresh(&mut self, now: Now) {
        let Some(c) = &self.persisted.credentials else {
            return self.begin_register(now);
        };
        if !self.clock_ok(now) {
            return self.wait_for_clock(now);
        }
        self.busy = Busy::Refreshing;
        self.deadline = None;
        self.effects
            .push_back(Effect::CallRefresh(c.refresh_token.clone()));
    }

    fn registered(&mut self, now: Now, unit: f64, r: Result<Registration, Failure>) {
        if self.busy != Busy::Registering {
            return; // revoked or stopped meanwhile: the answer is dropped
        }
        self.busy = Busy::Idle;
        match r {
            Ok(reg) => {
                let creds = Credentials {
                    api_key: reg.api_key,
                    refresh_token: reg.refresh_token,
                    expires_at: now.wall_secs.saturating_add(reg.lifetime_secs),
                    issued_at: now.wall_secs,
                    registered_at_ms: now.wall_secs.saturating_mul(1000),
                    last_refresh: None,
                    revocation_public_key: reg.revocation_public_key,
                    mqtt: reg.mqtt.map(|m| mqtt_record(*m, now)),
                    rate_limits: reg.rate_limits,
                    registration_epoch: reg.epoch,
                };
                let mut next = self.persisted.clone();
                next.credentials = Some(creds);
                self.save(next, Duration::from_secs(reg.lifetime_secs), false);
            }
            Err(f) => {
                self.effects
                    .push_back(Effect::Count(Count::RegisterFailure));
                self.register_failed(now, unit, f);
            }
        }
    }

    /// TLS says the clock is behind: look at the clock every second and call again as soon
    /// as it moves (is set), or after a backoff capped at a minute regardless.
    fn clock_behind(&mut self, now: Now, why: String) {
        const BACKOFF: Backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: Jitter::FULL,
        };
        let retry_at = now
            .mono
            .checked_add(BACKOFF.ceiling(self.attempt))
            .unwrap_or(now.mono);
        self.attempt = self.attempt.saturating_add(1);
        self.clock_ref = Some((now.mono, now.wall_secs, retry_at));
        self.deadline = now.mono.checked_add(CLOCK_POLL);
        self.reply_all(Err(why.clone()));
        self.set(
            Phase::WaitingForClock,
            format!(
                "{why} (it reads {}); waiting for it to be set (NTP)",
                fmt_secs(now.wall_secs)
            ),
        );
    }

    fn register_failed(&mut self, now: Now, unit: f64, f: Failure) {
        let (retry_after, why) = match f {
            Failure::ClockBehind(why) => return self.clock_behind(now, why),
            Failure::Revoked => {
                return self.revoke(now, "revoked by the cloud at registration".into(), None);
            }
            Failure::Permanent(why) => {
                let delay = answer::slow_retry(unit);
                tracing::warn!(reason = %why, retry_in_s = delay.as_secs(), "not registered; retrying slowly (SIGHUP retries now)");
                self.attempt = 0;
                self.deadline = now.mono.checked_add(delay);
                return self.set(
                    Phase::Unregistered,
                    format!(
                        "{why}; retrying in {}s (SIGHUP retries now)",
                        delay.as_secs()
                    ),
                );
            }
            Failure::RateLimited(d) => {
                self.effects.push_back(Effect::PauseControlPlane(d));
                (Some(d), "rate limited by the cloud".to_owned())
            }
            Failure::Budget(d) => (Some(d), "waiting for the control-plane budget".to_owned()),
            Failure::Transient(e) | Failure::CredentialsRejected(e) => (None, e),
        };
        let delay = CLOUD_RETRY.delay(self.attempt, unit, retry_after);
        self.attempt = self.attempt.saturating_add(1);
        tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "registration failed; retrying");
        self.deadline = now.mono.checked_add(delay);
        self.set(
            Phase::Registering,
            format!(
                "registration failed ({why}); retrying in {}s",
                delay.as_secs()
            ),
        );
    }

    fn refreshed(&mut self, now: Now, unit: f64, r: Result<Refreshed, Failure>) {
        if self.busy != Busy::Refreshing {
            return;
        }
        self.busy = Busy::Idle;
        let Some(old) = self.persisted.credentials.clone() else {
            return self.begin_register(now);
        };
        match r {
            Ok(a) => {
                let mut next = self.persisted.clone();
                // A refresh answer's broker details replace ours (renewed certificate
                // included); an answer without them, from an older cloud, keeps what we had.
                let mqtt = match a.mqtt {
                    Some(m) => Some(mqtt_record(*m, now)),
                    None => old.mqtt.clone(),
                };
                next.credentials = Some(Credentials {
                    api_key: a.api_key,
                    refresh_token: a.refresh_token,
                    expires_at: now.wall_secs.saturating_add(a.lifetime_secs),
                    issued_at: now.wall_secs,
                    last_refresh: Some(now.wall_secs),
                    rate_limits: a.rate_limits,
                    mqtt,
                    ..old
                });
                self.save(next, Duration::from_secs(a.lifetime_secs), true);
            }
            Err(f) => {
                self.effects.push_back(Effect::Count(Count::RefreshFailure));
                self.refresh_failed(now, unit, f);
            }
        }
    }

    fn refresh_failed(&mut self, now: Now, unit: f64, f: Failure) {
        // (the wait the cloud or the budget imposes, a slow retry, why)
        let (retry_after, slow, why) = match f {
            Failure::ClockBehind(why) => return self.clock_behind(now, why),
            Failure::Revoked => {
                self.reply_all(Err("device revoked".into()));
                return self.revoke(now, "revoked by the cloud at refresh".into(), None);
            }
            Failure::CredentialsRejected(code) => {
                // The cloud no longer honours these credentials: register again with the
                // device's own key (the cloud allows it). Persisted first.
                tracing::warn!(code = %code, "credentials rejected; registering again");
                self.reply_all(Err(format!(
                    "credentials rejected ({code}); registering again"
                )));
                let mut next = self.persisted.clone();
                next.credentials = None;
                self.persisted = next.clone();
                self.valid_until = None;
                self.cert_window = None;
                self.next_refresh = None;
                self.attempt = 0;
                self.effects.push_back(Effect::Persist(Box::new(next)));
                return self.begin_register(now);
            }
            Failure::RateLimited(d) => {
                self.effects.push_back(Effect::PauseControlPlane(d));
                (Some(d), None, "rate limited by the cloud".to_owned())
            }
            Failure::Budget(d) => (
                Some(d),
                None,
                "waiting for the control-plane budget".to_owned(),
            ),
            Failure::Transient(e) => (None, None, e),
            Failure::Permanent(e) => (None, Some(answer::slow_retry(unit)), e),
        };
        let mut delay = slow.unwrap_or_else(|| CLOUD_RETRY.delay(self.attempt, unit, retry_after));
        // As expiry nears, retry more often: never wait past a third of the validity left
        // (never under a second, never under the cloud's Retry-After).
        // The MQTT certificate counts too: a failed renewal must be retried before it expires.
        let cert_until = self.cert_window.map(|(_, until)| until);
        if let Some(left) = [self.valid_until, cert_until]
            .into_iter()
            .flatten()
            .map(|v| v.saturating_duration_since(now.mono))
            .filter(|l| !l.is_zero())
            .min()
        {
            delay = delay
                .min((left / 3).max(Duration::from_secs(1)))
                .max(retry_after.unwrap_or_default());
        }
        self.attempt = self.attempt.saturating_add(1);
        tracing::warn!(error = %why, retry_in_s = delay.as_secs(), "refresh failed; still serving the current key while it is valid");
        self.reply_all(Err(why.clone()));
        self.next_refresh = now.mono.checked_add(delay);
        self.deadline = self.next_refresh;
        self.set(
            Phase::Offline,
            format!("refresh failed ({why}); retrying in {}s", delay.as_secs()),
        );
    }

    fn save(&mut self, next: Persisted, lifetime: Duration, refresh: bool) {
        self.busy = Busy::Saving;
        self.effects
            .push_back(Effect::Persist(Box::new(next.clone())));
        self.pending = Some((next, lifetime, refresh));
    }

    fn saved(&mut self, now: Now, unit: f64, r: Result<(), String>) {
        if self.busy != Busy::Saving {
            return; // a fire-and-forget save (credentials dropped)
        }
        self.busy = Busy::Idle;
        let Some((next, lifetime, refresh)) = self.pending.take() else {
            return;
        };
        if let Err(e) = r {
            // Not saved means not used: the cloud keeps the old pair (refresh) or lets us
            // register again (register).
            let f = Failure::Transient(format!("cannot persist the new credentials: {e}"));
            return if refresh {
                self.effects.push_back(Effect::Count(Count::RefreshFailure));
                self.refresh_failed(now, unit, f)
            } else {
                self.effects
                    .push_back(Effect::Count(Count::RegisterFailure));
                self.register_failed(now, unit, f)
            };
        }
        let Some(c) = next.credentials.clone() else {
            return;
        };
        // A new certificate is valid from now for its lifetime; one kept from before (a
        // refresh answer without broker details) keeps its window, and then does not pull
        // the next refresh forward (that cloud would not renew it).
        let renewed = stored_cert(&next) != stored_cert(&self.persisted);
        let mut delay = schedule::refresh_in(lifetime, unit);
        match stored_cert(&next) {
            None => self.cert_window = None,
            Some(cert) if renewed => {
                let cert_lifetime =
                    Duration::from_secs(cert.expires_at.saturating_sub(cert.issued_at));
                self.cert_window = now
                    .mono
                    .checked_add(cert_lifetime)
                    .map(|until| (now.mono, until));
                // Refresh before the certificate expires, if that is sooner than the key.
                delay = delay.min(schedule::refresh_in(cert_lifetime, unit));
            }
            Some(_) => {}
        }
        self.persisted = next;
        self.attempt = 0;
        self.valid_until = now.mono.checked_add(lifetime);
        self.effects.push_back(Effect::SetLimits(c.rate_limits));
        self.effects.push_back(Effect::Count(if refresh {
            Count::RefreshSuccess
        } else {
            Count::RegisterSuccess
        }));
        if refresh {
            tracing::info!(expires_at = c.expires_at, "refreshed the device key");
        } else {
            tracing::info!(epoch = c.registration_epoch, "registered with the cloud");
        }
        self.reply_all(Ok(c.expires_at));
        self.schedule_refresh(now, delay, lifetime);
    }

    fn reply_all(&mut self, r: Result<u64, String>) {
        for tx in self.forced.drain(..) {
            self.effects.push_back(Effect::Reply(tx, r.clone()));
        }
    }

    fn command(&mut self, now: Now, c: Command) {
        if self.persisted.revoked.is_some() {
            if let Command::Refresh(r) = c {
                self.effects
                    .push_back(Effect::Reply(r, Err("device revoked".into())));
            }
            return;
        }
        match c {
            Command::Revoke { reason, seq } => self.revoke(now, reason, seq),
            Command::Refresh(r) => {
                if self.persisted.credentials.is_none() {
                    self.effects.push_back(Effect::Reply(
                        r,
                        Err("not registered yet; registration retried now".into()),
                    ));
                    if self.busy == Busy::Idle {
                        self.attempt = 0;
                        self.begin_register(now);
                    }
                    return;
                }
                self.forced.push(r);
                if self.busy == Busy::Idle {
                    self.attempt = 0;
                    self.begin_refresh(now);
                    if self.busy != Busy::Refreshing {
                        // Waiting for the clock: say so rather than hang the caller.
                        let why = self.detail.clone();
                        self.reply_all(Err(why));
                    }
                }
            }
            Command::Reload => {
                if self.busy == Busy::Idle && self.persisted.credentials.is_none() {
                    self.attempt = 0;
                    self.begin_register(now);
                }
            }
            Command::Check => {
                if self.busy == Busy::Idle && self.persisted.credentials.is_some() {
                    tracing::info!("the broker refuses our session; checking with the cloud");
                    self.begin_refresh(now);
                }
            }
        }
    }

    /// Withholds the key at once, wipes and persists `revoked`; a call in flight is dropped
    /// when it answers. Terminal.
    fn revoke(&mut self, now: Now, reason: String, seq: Option<u64>) {
        self.effects.push_back(Effect::WithholdKey {
            reason: reason.clone(),
        });
        let revoked = Revoked {
            device_id: self.device_id.clone(),
            reason: reason.clone(),
            at: now.wall_secs,
            seq,
        };
        self.effects.push_back(Effect::Wipe(revoked.clone()));
        self.persisted = Persisted {
            identity: None,
            credentials: None,
            last_revocation_seq: seq.or(self.persisted.last_revocation_seq),
            revoked: Some(revoked),
        };
        self.pending = None;
        self.clock_ref = None;
        self.busy = Busy::Idle;
        self.deadline = None;
        self.valid_until = None;
        self.cert_window = None;
        self.next_refresh = None;
        self.reply_all(Err("device revoked".into()));
        tracing::warn!(reason = %reason, "device revoked: credentials wiped, no key will be served");
        self.set(Phase::Revoked, "revoked by the cloud");
    }
}

/// The certificate held in `p`, if any.
fn stored_cert(p: &Persisted) -> Option<&ClientCert> {
    p.credentials.as_ref()?.mqtt.as_ref()?.client_cert.as_ref()
}

/// A checked answer's broker details as the store keeps them: the certificate's lifetime is
/// counted from now on the device's clock, exactly like the key's (`issued_at`/`expires_at`).
fn mqtt_record(m: CheckedMqtt, now: Now) -> MqttRecord {
    MqttRecord {
        url: m.url,
        topic: m.topic,
        username: m.username,
        client_cert: m.client_cert.map(|c| ClientCert {
            chain_pem: c.chain_pem,
            issued_at: now.wall_secs,
            expires_at: now.wall_secs.saturating_add(c.lifetime_secs),
        }),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a status line: [`octomil_common::clock::rfc3339`] (the one
/// civil-date formatter) with a space for the `T` and ` UTC` for the `Z`.
pub fn fmt_secs(secs: u64) -> String {
    let rfc = octomil_common::clock::rfc3339(secs);
    let rfc = rfc.strip_suffix('Z').unwrap_or(&rfc);
    format!("{} UTC", rfc.replacen('T', " ", 1))
}
