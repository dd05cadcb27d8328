//! The thin async driver around the pure lifecycle core ([`crate::lifecycle`]): it feeds the
//! core inputs stamped with both clocks and a random draw, runs the effects the core asks for
//! (cloud calls, saves, wipes, snapshot updates), and sleeps until the core's deadline, a
//! command, the answer of the call in flight, or shutdown. A cloud call in flight never holds
//! off a revocation or a shutdown: the call is one branch of the same `select!`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use octomil_common::wire::{Surface, codes};
use octomil_common::{Clock, DeviceId, Secret, SystemClock};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::answer;
use crate::client_tls::{self, ClientTls};
use crate::cloud::{CloudClient, CloudError};
pub use crate::lifecycle::Command;
use crate::lifecycle::{Core, Count, Effect, Failure, Input, Now, Refreshed, Registration, View};
use crate::limits::{Denied, Limiter};
use crate::metrics::Metrics;
use crate::notify::{self, Heartbeat};
use crate::state::{MqttParams, RevokedInfo, SnapshotTx, Token};
use crate::store::{Identity, Persisted, Store};
use octomil_common::backoff::unit_random;

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
            .map(|d| (d.join(BOOTSTRAP_CREDENTIAL), true))
            .chain(self.file.clone().map(|f| (f, false)));
        for (path, credential) in candidates {
            // Read through the descriptor that was checked; a file that exists but is unsafe
            // (group/other bits, a symlink, another owner) is an error naming it, not skipped.
            let read = if credential {
                crate::store::read_credential(&path)
            } else {
                crate::store::read_provisioned_secret(&path)
            };
            match read.map_err(|e| e.to_string())? {
                Some(s) if !s.expose().is_empty() => return Ok(s),
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

/// Wall seconds of this build (from `build.rs`).
pub const BUILD_SECS: u64 = match u64::from_str_radix(env!("OCTOMILD_BUILD_SECS"), 10) {
    Ok(s) => s,
    Err(_) => 0,
};
/// A clock more than this before the build is certainly not set. The margin keeps a device a
/// few days behind working (the cloud's certificates are backdated two days; a TLS "not yet
/// valid" beyond that is classified as waiting for the clock too).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(7 * 86_400);

pub struct Agent {
    pub device_id: DeviceId,
    pub cloud: CloudClient,
    pub store: Arc<Store>,
    pub persisted: Persisted,
    pub bootstrap: BootstrapSource,
    pub tx: SnapshotTx,
    /// The pinned CA (PEM), for the MQTT client-certificate TLS configs.
    pub mqtt_ca_pem: Arc<Vec<u8>>,
    /// The client-certificate TLS config last built (rebuilt only for a new certificate).
    pub client_tls: Option<Arc<ClientTls>>,
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

type Call = Pin<Box<dyn Future<Output = Input> + Send>>;

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall_secs: SystemClock.now_secs(),
    }
}

impl Agent {
    pub async fn run(mut self) {
        let floor = BUILD_SECS.saturating_sub(CLOCK_MARGIN.as_secs());
        let mut core = Core::new(
            self.device_id.as_str().to_owned(),
            std::mem::take(&mut self.persisted),
            floor,
        );
        let mut call: Option<Call> = None;
        core.handle(now(), unit_random(), Input::Start);
        loop {
            if !self.run_effects(&mut core, &mut call).await {
                return;
            }
            // The watchdog follows the loop's progress: no beat while a cloud call is out
            // (calls are bounded by cloud_timeout, which WatchdogSec must exceed), so a call
            // that never ends gets the daemon restarted.
            if call.is_none() {
                self.heartbeat.beat();
            }
            let deadline = core.deadline();
            let step = Instant::now() + self.beat_every;
            let input = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => Input::Shutdown,
                cmd = self.commands.recv() => match cmd {
                    Some(c) => Input::Command(c),
                    None => Input::Shutdown,
                },
                answer = async { call.as_mut().expect("guarded").await }, if call.is_some() => {
                    call = None;
                    answer
                }
                _ = tokio::time::sleep_until(deadline.map_or(step, |d| d.min(step))) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        Input::Timeout
                    } else {
                        continue; // a heartbeat step
                    }
                }
            };
            core.handle(now(), unit_random(), input);
        }
    }

    /// Runs every pending effect; false once the core said stop.
    async fn run_effects(&mut self, core: &mut Core, call: &mut Option<Call>) -> bool {
        while let Some(effect) = core.poll() {
            match effect {
                Effect::CallRegister => *call = Some(self.register_call(core.persisted())),
                Effect::CallRefresh(token) => {
                    *call = Some(self.refresh_call(token, device_public_key(core.persisted())))
                }
                Effect::Persist(p) => {
                    let r = self.save(*p).await;
                    core.handle(now(), unit_random(), Input::Saved(r));
                }
                Effect::WithholdKey { reason } => {
                    *call = None;
                    self.tx.revoke_now(&reason, SystemClock.now_secs());
                }
                Effect::Wipe(revoked) => {
                    let store = self.store.clone();
                    let wiped =
                        tokio::task::spawn_blocking(move || store.wipe_secrets(revoked)).await;
                    if !matches!(wiped, Ok(Ok(()))) {
                        tracing::error!(
                            "could not persist the revocation; the key is withheld regardless"
                        );
                    }
                }
                Effect::SetLimits(l) => self.limits.set_limits(l),
                Effect::PauseControlPlane(d) => self.limits.pause(
                    Surface::ControlPlane,
                    SystemClock
                        .now_ms()
                        .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                ),
                Effect::Reply(tx, r) => {
                    let _ = tx.send(r);
                }
                Effect::Count(c) => Metrics::inc(match c {
                    Count::RegisterSuccess => &self.metrics.register_success,
                    Count::RegisterFailure => &self.metrics.register_failure,
                    Count::RefreshSuccess => &self.metrics.refresh_success,
                    Count::RefreshFailure => &self.metrics.refresh_failure,
                }),
                Effect::Publish => self.publish(core.view(now()), core.persisted()),
                Effect::Stop => return false,
            }
        }
        true
    }

    fn publish(&mut self, v: View, p: &Persisted) {
        let mqtt_tls = self.client_tls(&v, p);
        let creds = p.credentials.as_ref();
        let token = v
            .key
            .map(|k| Arc::new(Token::new(k.secret, k.expires_at, k.valid_until)));
        let mqtt = creds.and_then(|c| {
            c.mqtt.as_ref().map(|m| {
                Arc::new(MqttParams {
                    url: m.url.clone(),
                    topic: m.topic.clone(),
                    username: m.username.clone(),
                    revocation_public_key: c.revocation_public_key,
                    registration_epoch: c.registration_epoch,
                    last_seq: p.last_revocation_seq,
                })
            })
        });
        self.tx.update(|s| {
            s.phase = v.phase;
            s.detail = v.detail;
            s.token = token;
            if s.mqtt != mqtt {
                s.mqtt = mqtt;
            }
            s.mqtt_tls = mqtt_tls;
            s.last_refresh = v.last_refresh;
            s.next_refresh = v.next_refresh;
            s.rate_limits = v.rate_limits;
            s.revoked = v.revoked.map(|r| RevokedInfo {
                reason: r.reason,
                at: r.at,
            });
        });
        let snap = self.tx.borrow();
        notify::status(&format!("{}: {}", snap.phase.as_str(), snap.detail));
    }

    /// The TLS config of the held MQTT client certificate: the cached one while the
    /// certificate is the same, a new one for a renewed certificate. One that rustls refuses
    /// (answer.rs checked it, so only a bug) is logged, and the session logs in with the key.
    fn client_tls(&mut self, v: &View, p: &Persisted) -> Option<Arc<ClientTls>> {
        let (Some(cert), Some(identity)) = (&v.client_cert, &p.identity) else {
            self.client_tls = None;
            return None;
        };
        if let Some(held) = &self.client_tls
            && held.chain_pem == cert.chain_pem
            && held.valid_until == cert.valid_until
        {
            return Some(held.clone());
        }
        match client_tls::client_config(
            &self.mqtt_ca_pem,
            &cert.chain_pem,
            identity.signing_key_seed.expose(),
        ) {
            Ok(config) => {
                let tls = Arc::new(ClientTls {
                    config,
                    chain_pem: cert.chain_pem.clone(),
                    received: cert.received,
                    valid_until: cert.valid_until,
                });
                tracing::info!(
                    valid_for_s = cert
                        .valid_until
                        .saturating_duration_since(Instant::now())
                        .as_secs(),
                    "MQTT client certificate ready for the next connect"
                );
                self.client_tls = Some(tls.clone());
                Some(tls)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the MQTT client certificate; logging in with the device key");
                self.client_tls = None;
                None
            }
        }
    }

    async fn save(&self, p: Persisted) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.save(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The local budget's verdict on one daemon call: how long to wait, if at all.
    fn budget_wait(&self) -> Option<Duration> {
        match self
            .limits
            .acquire(Surface::ControlPlane, 1, None, SystemClock.now_ms())
        {
            Err(Denied::Wait { wait_ms, .. }) => Some(Duration::from_millis(wait_ms)),
            _ => None,
        }
    }

    fn register_call(&self, persisted: &Persisted) -> Call {
        let wait = self.budget_wait();
        let bootstrap = self.bootstrap.read();
        let identity = persisted
            .identity
            .as_ref()
            .filter(|i| i.device_id == self.device_id.as_str())
            .map(|i| SigningKey::from_bytes(i.signing_key_seed.expose()));
        let (cloud, store, device_id) = (
            self.cloud.clone(),
            self.store.clone(),
            self.device_id.clone(),
        );
        let base = persisted.clone();
        Box::pin(async move {
            let mut created = None;
            let r = async {
                let token = bootstrap.map_err(Failure::Permanent)?;
                if let Some(w) = wait {
                    return Err(Failure::Budget(w));
                }
                let key = match identity {
                    Some(k) => k,
                    None => {
                        let (key, id) = new_identity(&store, &device_id, base).await?;
                        created = Some(id);
                        key
                    }
                };
                let resp = cloud
                    .register(&token, &device_id, &key)
                    .await
                    .map_err(failure)?;
                let c = answer::check_register(&resp, &key.verifying_key().to_bytes())
                    .map_err(|e| Failure::Permanent(format!("registration answer refused: {e}")))?;
                Ok(Registration {
                    api_key: resp.api_key,
                    refresh_token: resp.refresh_token,
                    lifetime_secs: c.lifetime_secs,
                    revocation_public_key: c.revocation_public_key,
                    mqtt: c.mqtt.map(Box::new),
                    rate_limits: c.rate_limits,
                    epoch: resp.registration_epoch,
                })
            }
            .await;
            Input::Registered {
                identity: created,
                result: r,
            }
        })
    }

    /// `device_key`: the device's Ed25519 public key, which a renewed MQTT client certificate
    /// must certify (all zeros without an identity: no certificate is then accepted).
    fn refresh_call(&self, refresh_token: Secret<String>, device_key: [u8; 32]) -> Call {
        let wait = self.budget_wait();
        let (cloud, device_id) = (self.cloud.clone(), self.device_id.clone());
        Box::pin(async move {
            let r = async {
                if let Some(w) = wait {
                    return Err(Failure::Budget(w));
                }
                let resp = cloud
                    .refresh(&device_id, &refresh_token)
                    .await
                    .map_err(failure)?;
                let c = answer::check_refresh(&resp, &device_key)
                    .map_err(|e| Failure::Permanent(format!("refresh answer refused: {e}")))?;
                Ok(Refreshed {
                    api_key: resp.api_key,
                    refresh_token: resp.refresh_token,
                    lifetime_secs: c.lifetime_secs,
                    rate_limits: c.rate_limits,
                    mqtt: c.mqtt.map(Box::new),
                })
            }
            .await;
            Input::Refreshed(r)
        })
    }
}

fn device_public_key(p: &Persisted) -> [u8; 32] {
    p.identity
        .as_ref()
        .map(|i| {
            SigningKey::from_bytes(i.signing_key_seed.expose())
                .verifying_key()
                .to_bytes()
        })
        .unwrap_or_default()
}

/// The device's Ed25519 key: made once, persisted before it is ever used, so a crash
/// between registering and saving the answer can re-register with the same key.
async fn new_identity(
    store: &Arc<Store>,
    device_id: &DeviceId,
    mut next: Persisted,
) -> Result<(SigningKey, Identity), Failure> {
    let key = octomil_common::proof::generate_signing_key();
    let identity = Identity {
        device_id: device_id.as_str().to_owned(),
        signing_key_seed: Secret::new(key.to_bytes()),
    };
    next.identity = Some(identity.clone());
    next.credentials = None;
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.save(&next))
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?
        .map_err(|e| Failure::Transient(format!("cannot persist the device key: {e}")))?;
    tracing::info!(device_id = %device_id, "created the device key");
    Ok((key, identity))
}

/// What the core makes of a cloud error.
fn failure(e: CloudError) -> Failure {
    match e {
        CloudError::Transient(m) => Failure::Transient(m),
        CloudError::RateLimited(d) => Failure::RateLimited(d),
        CloudError::Revoked => Failure::Revoked,
        e @ CloudError::ClockBehind => Failure::ClockBehind(e.to_string()),
        CloudError::Rejected { code, .. }
            if code == codes::REFRESH_TOKEN_REUSED || code == codes::INVALID_REFRESH_TOKEN =>
        {
            Failure::CredentialsRejected(code)
        }
        // A challenge that expired on a slow link (or was spent) heals with a fresh one.
        CloudError::Rejected { code, message, .. }
            if code == codes::CHALLENGE_EXPIRED
                || code == codes::CHALLENGE_USED
                || code == codes::INVALID_CHALLENGE =>
        {
            Failure::Transient(format!("{message} ({code})"))
        }
        e @ (CloudError::Rejected { .. }
        | CloudError::Setup(_)
        | CloudError::Incompatible(_)
        | CloudError::BadAnswer(_)) => Failure::Permanent(format!("the cloud refused: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: &str) -> CloudError {
        CloudError::Rejected {
            status: 400,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn only_refusals_that_waiting_cannot_heal_are_permanent() {
        // (cloud error, permanent?)
        let cases = [
            (rejected(codes::INVALID_BOOTSTRAP_TOKEN), true),
            (rejected(codes::DEVICE_ID_TAKEN), true),
            (rejected(codes::CHALLENGE_REQUIRED), true),
            (CloudError::Incompatible("old".into()), true),
            (CloudError::BadAnswer("bad key".into()), true),
            (rejected(codes::CHALLENGE_EXPIRED), false),
            (rejected(codes::CHALLENGE_USED), false),
            (rejected(codes::INVALID_CHALLENGE), false),
            (CloudError::Transient("503".into()), false),
            (CloudError::RateLimited(Duration::from_secs(3)), false),
            (CloudError::ClockBehind, false),
        ];
        for (e, permanent) in cases {
            let label = e.to_string();
            assert_eq!(
                matches!(failure(e), Failure::Permanent(_)),
                permanent,
                "{label}"
            );
        }
        assert!(matches!(
            failure(rejected(codes::REFRESH_TOKEN_REUSED)),
            Failure::CredentialsRejected(_)
        ));
        assert!(matches!(failure(CloudError::Revoked), Failure::Revoked));
    }
}
