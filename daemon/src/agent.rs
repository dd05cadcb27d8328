//! The registration and refresh loop: the one task that talks to the cloud for credentials,
//! persists every answer before using it, and publishes the result as a [`Snapshot`].
//!
//! Flow: no credentials -> register with the bootstrap token (capped exponential backoff with
//! full jitter, `Retry-After` honoured, permanent refusals parked with a clear status);
//! credentials -> wait on the monotonic clock until the refresh point, refresh (same retry
//! rules, still serving the valid key meanwhile); revoked -> wipe, persist, stop for good.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use octomil_common::wire::{Surface, codes};
use octomil_common::{Clock, DeviceId, Secret, SystemClock};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::answer;
use crate::backoff::{Backoff, unit_random};
use crate::cloud::{CloudClient, CloudError};
use crate::limits::{Denied, Limiter};
use crate::metrics::Metrics;
use crate::notify::{self, Heartbeat};
use crate::schedule;
use crate::state::{MqttParams, Phase, RevokedInfo, SnapshotTx, Token};
use crate::store::{Credentials, Identity, Persisted, Revoked, Store};

/// What other tasks may ask of the loop.
#[derive(Debug)]
pub enum Command {
    /// `POST /v1/admin/refresh`: refresh now; the reply carries the new expiry.
    Refresh(oneshot::Sender<Result<u64, String>>),
    /// SIGHUP: the bootstrap token (or config) may have changed; retry a parked registration.
    Reload,
    /// A verified revocation (MQTT push): take the revocation path.
    Revoke { reason: String, seq: Option<u64> },
    /// The broker keeps refusing our session (a revoked device's key no longer logs in):
    /// ask the cloud now with a refresh instead of waiting for the schedule.
    Check,
}

/// Where the bootstrap token may come from, in order.
#[derive(Debug, Clone)]
pub struct BootstrapSource {
    /// `$CREDENTIALS_DIRECTORY`, if systemd passed credentials.
    pub credentials_dir: Option<PathBuf>,
    pub file: Option<PathBuf>,
    /// `$OCTOMIL_BOOTSTRAP_TOKEN` at start-up.
    pub env: Option<Secret<String>>,
}

pub const BOOTSTRAP_CREDENTIAL: &str = "octomil-bootstrap-token";

impl BootstrapSource {
    /// The token, read fresh each time (an image may drop it in late), or a description of
    /// where it was looked for.
    pub fn read(&self) -> Result<Secret<String>, String> {
        let mut tried = Vec::new();
        let candidates = self
            .credentials_dir
            .iter()
            .map(|d| d.join(BOOTSTRAP_CREDENTIAL))
            .chain(self.file.clone());
        for path in candidates {
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => return Ok(Secret::new(s.trim().to_owned())),
                _ => tried.push(path.display().to_string()),
            }
        }
        if let Some(t) = &self.env {
            return Ok(t.clone());
        }
        tried.push("$OCTOMIL_BOOTSTRAP_TOKEN".into());
        Err(format!(
            "no bootstrap token (looked in {})",
            tried.join(", ")
        ))
    }
}

pub struct Agent {
    pub device_id: DeviceId,
    pub cloud: CloudClient,
    pub store: Arc<Store>,
    pub persisted: Persisted,
    pub bootstrap: BootstrapSource,
    pub tx: SnapshotTx,
    pub metrics: Arc<Metrics>,
    /// Local rate limits: the daemon's own control-plane calls draw from the same budget.
    pub limits: Arc<Limiter>,
    pub heartbeat: Arc<Heartbeat>,
    pub beat_every: Duration,
    pub commands: mpsc::Receiver<Command>,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// Why a wait ended.
enum Wake {
    Elapsed,
    Shutdown,
    Command(Command),
}

/// How a phase ended.
enum Flow {
    Continue,
    Stop,
}

impl Agent {
    pub async fn run(mut self) {
        loop {
            self.heartbeat.beat();
            if self.shutdown.is_cancelled() {
                return;
            }
            let flow = if self.persisted.revoked.is_some() {
                self.revoked().await
            } else if self.persisted.credentials.is_some() {
                self.refresh_cycle().await
            } else {
                self.register().await
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Waits `d` on the monotonic clock, beating the heartbeat, until a command or shutdown.
    async fn wait(&mut self, d: Duration) -> Wake {
        let deadline = Instant::now() + d;
        loop {
            self.heartbeat.beat();
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(self.beat_every);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Wake::Shutdown,
                cmd = self.commands.recv() => match cmd {
                    Some(c) => return Wake::Command(c),
                    None => return Wake::Shutdown,
                },
                _ = tokio::time::sleep(step) => {
                    if Instant::now() >= deadline {
                        return Wake::Elapsed;
                    }
                }
            }
        }
    }

    fn publish(&self, f: impl FnOnce(&mut crate::state::Snapshot)) {
        self.tx.update(f);
        let snap = self.tx.borrow();
        notify::status(&format!("{}: {}", snap.phase.as_str(), snap.detail));
    }

    /// Takes one control-plane permit for the daemon's own call; how long to wait if the local
    /// budget (or a pause the cloud asked for) says not yet.
    fn control_plane_wait(&self) -> Option<Duration> {
        match self
            .limits
            .acquire(Surface::ControlPlane, 1, None, SystemClock.now_ms())
        {
            Err(Denied::Wait { wait_ms, .. }) => Some(Duration::from_millis(wait_ms)),
            _ => None,
        }
    }

    /// A 429 from the cloud pauses the control plane locally, for everyone.
    fn cloud_said_wait(&self, d: Duration) {
        self.limits.pause(
            Surface::ControlPlane,
            SystemClock.now_ms() + d.as_millis() as u64,
        );
    }

    async fn save(&self, p: Persisted) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.save(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The device's Ed25519 key: made once, persisted before it is ever used, so a crash
    /// between registering and saving the answer can re-register with the same key.
    async fn identity(&mut self) -> Result<SigningKey, String> {
        if let Some(id) = &self.persisted.identity
            && id.device_id == self.device_id.as_str()
        {
            return Ok(SigningKey::from_bytes(id.signing_key_seed.expose()));
        }
        let key = octomil_common::proof::generate_signing_key();
        let mut next = self.persisted.clone();
        next.identity = Some(Identity {
            device_id: self.device_id.as_str().to_owned(),
            signing_key_seed: Secret::new(key.to_bytes()),
        });
        next.credentials = None;
        self.save(next.clone()).await?;
        self.persisted = next;
        tracing::info!(device_id = %self.device_id, "created the device key");
        Ok(key)
    }

    async fn register(&mut self) -> Flow {
        let key = match self.identity().await {
            Ok(k) => k,
            Err(e) => {
                return self
                    .park(format!("cannot persist the device key: {e}"))
                    .await;
            }
        };
        let mut attempt = 0u32;
        loop {
            let token = match self.bootstrap.read() {
                Ok(t) => t,
                Err(why) => return self.park(why).await,
            };
            if let Some(wait) = self.control_plane_wait() {
                self.publish(|s| {
                    s.phase = Phase::Registering;
                    s.detail = format!(
                        "waiting {} ms for the control-plane budget",
                        wait.as_millis()
                    );
                });
                match self.wait(wait).await {
                    Wake::Shutdown => return Flow::Stop,
                    Wake::Command(c) => {
                        if let Some(f) = self.command_while_unregistered(c).await {
                            return f;
                        }
                    }
                    Wake::Elapsed => {}
                }
                continue;
            }
            self.publish(|s| {
                s.phase = Phase::Registering;
                s.detail = "registering with the cloud".into();
            });
            let result = self.cloud.register(&token, &self.device_id, &key).await;
            self.heartbeat.beat();
            let result = result.and_then(|resp| {
                answer::check_register(&resp)
                    .map(|checked| (resp, checked))
                    .map_err(|e| CloudError::BadAnswer(e.to_string()))
            });
            let retry_after = match result {
                Ok((resp, checked)) => {
                    let now = SystemClock.now_secs();
                    let creds = Credentials {
                        api_key: resp.api_key,
                        refresh_token: resp.refresh_token,
                        expires_at: now.saturating_add(checked.lifetime_secs),
                        issued_at: now,
                        registered_at_ms: SystemClock.now_ms(),
                        last_refresh: None,
                        revocation_public_key: checked.revocation_public_key,
                        mqtt: resp.mqtt,
                        rate_limits: checked.rate_limits,
                        registration_epoch: resp.registration_epoch,
                    };
                    let mut next = self.persisted.clone();
                    next.credentials = Some(creds);
                    if let Err(e) = self.save(next.clone()).await {
                        // Not saved means not usable: the cloud lets us register again.
                        tracing::error!(error = %e, "cannot persist credentials; will register again");
                        Metrics::inc(&self.metrics.register_failure);
                        None
                    } else {
                        self.persisted = next;
                        self.limits.set_limits(checked.rate_limits);
                        Metrics::inc(&self.metrics.register_success);
                        tracing::info!(device_id = %self.device_id, "registered with the cloud");
                        return Flow::Continue;
                    }
                }
                Err(CloudError::Revoked) => {
                    return self
                        .revoke("revoked by the cloud at registration".into(), None)
                        .await;
                }
                Err(CloudError::RateLimited(d)) => {
                    Metrics::inc(&self.metrics.register_failure);
                    self.cloud_said_wait(d);
                    Some(d)
                }
                Err(CloudError::Transient(e)) => {
                    Metrics::inc(&self.metrics.register_failure);
                    tracing::warn!(error = %e, attempt, "registration failed; retrying");
                    None
                }
                Err(e @ CloudError::BadAnswer(_)) => {
                    // Nothing from it is kept; a fix on the cloud side heals it without us.
                    Metrics::inc(&self.metrics.register_failure);
                    tracing::error!(error = %e, "refusing the cloud's registration answer; retrying slowly");
                    return self.park(format!("registration answer refused: {e}")).await;
                }
                Err(
                    e @ (CloudError::Rejected { .. }
                    | CloudError::Setup(_)
                    | CloudError::Incompatible(_)),
                ) => {
                    Metrics::inc(&self.metrics.register_failure);
                    tracing::error!(error = %e, "registration refused; retrying slowly (SIGHUP retries at once)");
                    return self.park(format!("registration refused: {e}")).await;
                }
            };
            let delay = Backoff::CLOUD.delay(attempt, unit_random(), retry_after);
            attempt = attempt.saturating_add(1);
            self.publish(|s| {
                s.phase = Phase::Registering;
                s.detail = format!("registration failed; retrying in {}s", delay.as_secs());
            });
            match self.wait(delay).await {
                Wake::Shutdown => return Flow::Stop,
                Wake::Command(c) => {
                    if let Some(f) = self.command_while_unregistered(c).await {
                        return f;
                    }
                    attempt = 0;
                }
                Wake::Elapsed => {}
            }
        }
    }

    /// Holds registration after a refusal that waiting cannot heal (unknown or used-up
    /// bootstrap token, id held by another key, an incompatible cloud, an answer we refuse):
    /// retried slowly, about hourly with jitter, so a fix on the cloud side reaches every
    /// device without touching it; a reload (SIGHUP) retries at once.
    async fn park(&mut self, why: String) -> Flow {
        let delay = answer::slow_retry(unit_random());
        tracing::warn!(reason = %why, retry_in_s = delay.as_secs(), "not registered; retrying slowly (SIGHUP retries now)");
        self.publish(|s| {
            s.phase = Phase::Unregistered;
            s.token = None;
            s.detail = format!(
                "{why}; retrying in {}s (SIGHUP retries now)",
                delay.as_secs()
            );
        });
        match self.wait(delay).await {
            Wake::Shutdown => Flow::Stop,
            Wake::Elapsed => Flow::Continue,
            Wake::Command(c) => self
                .command_while_unregistered(c)
                .await
                .unwrap_or(Flow::Continue),
        }
    }

    /// Handles a command that arrived while not registered; `Some` ends the current phase.
    async fn command_while_unregistered(&mut self, c: Command) -> Option<Flow> {
        match c {
            Command::Refresh(reply) => {
                let _ = reply.send(Err("not registered yet; registration retried now".into()));
                None
            }
            Command::Reload | Command::Check => None,
            Command::Revoke { reason, seq } => Some(self.revoke(reason, seq).await),
        }
    }

    /// Publishes the held key and waits for its refresh point, then refreshes until it works.
    async fn refresh_cycle(&mut self) -> Flow {
        let Some(creds) = self.persisted.credentials.clone() else {
            return Flow::Continue;
        };
        self.limits.set_limits(creds.rate_limits);
        let now_wall = SystemClock.now_secs();
        let lifetime = Duration::from_secs(creds.expires_at.saturating_sub(creds.issued_at));
        let remaining = Duration::from_secs(creds.expires_at.saturating_sub(now_wall));
        let valid_until = Instant::now() + remaining;
        let delay = schedule::refresh_in_remaining(lifetime, remaining, unit_random());
        let next = Instant::now() + delay;
        let token = Arc::new(Token::new(
            creds.api_key.clone(),
            creds.expires_at,
            valid_until,
        ));
        let mqtt = creds.mqtt.as_ref().map(|m| {
            Arc::new(MqttParams {
                url: m.url.clone(),
                topic: m.topic.clone(),
                username: m.username.clone(),
                revocation_public_key: creds.revocation_public_key,
                registration_epoch: creds.registration_epoch,
                last_seq: self.persisted.last_revocation_seq,
            })
        });
        self.publish(|s| {
            s.phase = Phase::Active;
            s.token = Some(token);
            if s.mqtt != mqtt {
                s.mqtt = mqtt;
            }
            s.last_refresh = creds.last_refresh;
            s.next_refresh = Some(next);
            s.rate_limits = Some(creds.rate_limits);
            s.detail = format!(
                "key valid for {}s; next refresh in {}s",
                remaining.as_secs(),
                delay.as_secs()
            );
        });
        let mut forced: Option<oneshot::Sender<Result<u64, String>>> = None;
        match self.wait(delay).await {
            Wake::Shutdown => return Flow::Stop,
            Wake::Elapsed => {}
            Wake::Command(Command::Refresh(reply)) => forced = Some(reply),
            Wake::Command(Command::Reload) => return Flow::Continue,
            Wake::Command(Command::Check) => {
                tracing::info!("the broker refuses our session; checking with the cloud")
            }
            Wake::Command(Command::Revoke { reason, seq }) => {
                return self.revoke(reason, seq).await;
            }
        }
        self.refresh(creds, forced).await
    }

    async fn refresh(
        &mut self,
        creds: Credentials,
        mut forced: Option<oneshot::Sender<Result<u64, String>>>,
    ) -> Flow {
        let mut attempt = 0u32;
        loop {
            if let Some(wait) = self.control_plane_wait() {
                self.publish(|s| {
                    s.detail = format!(
                        "refresh waits {} ms for the control-plane budget",
                        wait.as_millis()
                    )
                });
                match self.wait(wait).await {
                    Wake::Shutdown => return Flow::Stop,
                    Wake::Command(Command::Refresh(reply)) => forced = Some(reply),
                    Wake::Command(Command::Revoke { reason, seq }) => {
                        return self.revoke(reason, seq).await;
                    }
                    Wake::Command(Command::Reload | Command::Check) | Wake::Elapsed => {}
                }
                continue;
            }
            let result = self
                .cloud
                .refresh(&self.device_id, &creds.refresh_token)
                .await;
            self.heartbeat.beat();
            let result = result.and_then(|resp| {
                answer::check_refresh(&resp)
                    .map(|checked| (resp, checked))
                    .map_err(|e| CloudError::BadAnswer(e.to_string()))
            });
            let (retry_after, why) = match result {
                Ok((resp, checked)) => {
                    let now = SystemClock.now_secs();
                    let next = Credentials {
                        api_key: resp.api_key,
                        refresh_token: resp.refresh_token,
                        expires_at: now.saturating_add(checked.lifetime_secs),
                        issued_at: now,
                        last_refresh: Some(now),
                        rate_limits: checked.rate_limits,
                        ..creds.clone()
                    };
                    let mut p = self.persisted.clone();
                    p.credentials = Some(next);
                    // Persist before use: the old refresh token stays valid at the cloud until the
                    // new pair is used, so a failed save loses nothing.
                    match self.save(p.clone()).await {
                        Ok(()) => {
                            self.persisted = p;
                            self.limits.set_limits(checked.rate_limits);
                            Metrics::inc(&self.metrics.refresh_success);
                            tracing::info!(
                                expires_at = self
                                    .persisted
                                    .credentials
                                    .as_ref()
                                    .map_or(0, |c| c.expires_at),
                                "refreshed the device key"
                            );
                            if let Some(r) = forced.take() {
                                let _ = r.send(Ok(self
                                    .persisted
                                    .credentials
                                    .as_ref()
                                    .map_or(0, |c| c.expires_at)));
                            }
                            return Flow::Continue;
                        }
                        Err(e) => (None, format!("cannot persist refreshed credentials: {e}")),
                    }
                }
                Err(CloudError::Revoked) => {
                    if let Some(r) = forced.take() {
                        let _ = r.send(Err("device revoked".into()));
                    }
                    return self
                        .revoke("revoked by the cloud at refresh".into(), None)
                        .await;
                }
                Err(CloudError::Rejected { code, message, .. })
                    if code == codes::REFRESH_TOKEN_REUSED
                        || code == codes::INVALID_REFRESH_TOKEN =>
                {
                    // The cloud no longer honours these credentials: register again with the
                    // device's own key (the cloud allows it).
                    tracing::warn!(code = %code, message = %message, "credentials rejected; registering again");
                    if let Some(r) = forced.take() {
                        let _ = r.send(Err(format!(
                            "credentials rejected ({code}); registering again"
                        )));
                    }
                    let mut p = self.persisted.clone();
                    p.credentials = None;
                    if self.save(p.clone()).await.is_ok() {
                        self.persisted = p;
                    }
                    self.publish(|s| s.token = None);
                    return Flow::Continue;
                }
                Err(CloudError::RateLimited(d)) => {
                    self.cloud_said_wait(d);
                    (Some(d), "rate limited by the cloud".to_owned())
                }
                Err(e) => (None, e.to_string()),
            };
            Metrics::inc(&self.metrics.refresh_failure);
            let mut delay = Backoff::CLOUD.delay(attempt, unit_random(), retry_after);
            // As expiry nears, retry more often: never wait past a third of the validity left
            // (but never under a second, and never under the cloud's Retry-After).
            let left = self
                .tx
                .borrow()
                .token
                .as_ref()
                .map(|t| t.valid_until.saturating_duration_since(Instant::now()));
            if let Some(left) = left.filter(|l| !l.is_zero()) {
                delay = delay
                    .min((left / 3).max(Duration::from_secs(1)))
                    .max(retry_after.unwrap_or_default());
            }
            attempt = attempt.saturating_add(1);
            tracing::warn!(error = %why, retry_in_s = delay.as_secs(), "refresh failed; still serving the current key while it is valid");
            if let Some(r) = forced.take() {
                let _ = r.send(Err(why.clone()));
            }
            self.publish(|s| {
                s.phase = Phase::Offline;
                s.next_refresh = Some(Instant::now() + delay);
                s.detail = format!("refresh failed ({why}); retrying in {}s", delay.as_secs());
            });
            match self.wait(delay).await {
                Wake::Shutdown => return Flow::Stop,
                Wake::Elapsed => {}
                Wake::Command(Command::Refresh(reply)) => {
                    forced = Some(reply);
                    attempt = 0;
                }
                Wake::Command(Command::Reload | Command::Check) => {}
                Wake::Command(Command::Revoke { reason, seq }) => {
                    return self.revoke(reason, seq).await;
                }
            }
        }
    }

    /// Wipes the secrets, persists `revoked`, and publishes it. Logged once, at WARN.
    async fn revoke(&mut self, reason: String, seq: Option<u64>) -> Flow {
        let at = SystemClock.now_secs();
        // Withhold the key first (one snapshot swap), then take the time to wipe and persist.
        let info = RevokedInfo {
            reason: reason.clone(),
            at,
        };
        self.publish(|s| {
            s.phase = Phase::Revoked;
            s.token = None;
            s.next_refresh = None;
            s.detail = "revoked by the cloud".into();
            s.revoked = Some(info);
        });
        let revoked = Revoked {
            device_id: self.device_id.as_str().to_owned(),
            reason: reason.clone(),
            at,
            seq,
        };
        let store = self.store.clone();
        let r = revoked.clone();
        let wiped = tokio::task::spawn_blocking(move || store.wipe_secrets(r)).await;
        if !matches!(wiped, Ok(Ok(()))) {
            tracing::error!("could not persist the revocation; the key is withheld regardless");
        }
        self.persisted = Persisted {
            identity: None,
            credentials: None,
            last_revocation_seq: seq.or(self.persisted.last_revocation_seq),
            revoked: Some(revoked),
        };
        tracing::warn!(device_id = %self.device_id, reason = %reason, "device revoked: credentials wiped, no key will be served");
        Flow::Continue
    }

    /// Terminal state: answer commands until shutdown.
    async fn revoked(&mut self) -> Flow {
        let info = self.persisted.revoked.as_ref().map(|r| RevokedInfo {
            reason: r.reason.clone(),
            at: r.at,
        });
        self.publish(|s| {
            s.phase = Phase::Revoked;
            s.token = None;
            s.next_refresh = None;
            s.detail = "revoked by the cloud".into();
            s.revoked = info;
        });
        loop {
            match self.wait(Duration::from_secs(3600)).await {
                Wake::Shutdown => return Flow::Stop,
                Wake::Command(Command::Refresh(reply)) => {
                    let _ = reply.send(Err("device revoked".into()));
                }
                _ => {}
            }
        }
    }
}
