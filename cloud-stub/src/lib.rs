//! `octomil-cloud`: the bundled control plane (HTTPS API, state in redb, revocation
//! publisher) as a library with a builder, so tests start it in one line on port 0, and the
//! `octomil` operator CLI.

pub mod api;
pub mod app;
pub mod challenge;
pub mod cli;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod extract;
#[cfg(feature = "faults")]
pub mod faults;
pub mod files;
pub mod init;
pub mod limits;
pub mod mqtt;
pub mod proxy;
pub mod revocation_push;
pub mod scope;
pub mod serve;
pub mod session;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use octomil_common::{Clock, Secret, SystemClock};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::Cloud;
use crate::mqtt::presence::PresenceTable;
use crate::mqtt::revocation_sender::MqttPublisher;
use crate::revocation_push::{NoTransport, RevocationPublisher};
use crate::store::{Environment, Store};

pub use crate::app::AppState;
pub use crate::mqtt::{ExternalBroker, MqttMode};

/// Why the cloud could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("provisioning failed: {0}")]
    Init(String),
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
}

/// `DIR/cloud.json`: where a running cloud is and where its first-start secrets are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudInfo {
    pub http_url: String,
    pub mqtt_url: Option<String>,
    pub ca_file: PathBuf,
    pub owner_api_key_file: PathBuf,
    pub bootstrap_token_file: PathBuf,
    pub owner_email: String,
    pub owner_password_file: PathBuf,
    pub owner_totp_secret_file: PathBuf,
    /// Base64url Ed25519 key that signs revocations.
    pub revocation_public_key: String,
}

impl CloudInfo {
    pub const FILE: &'static str = "cloud.json";

    pub fn read(state_dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(state_dir.join(Self::FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// Entry point of the library form.
#[derive(Debug)]
pub struct CloudStub;

impl CloudStub {
    pub fn builder(state_dir: impl Into<PathBuf>) -> Builder {
        Builder {
            state_dir: state_dir.into(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            clock: Arc::new(SystemClock),
            owner_email: "owner@octomil.local".into(),
            environment: Environment::Live,
            extra_names: Vec::new(),
            publisher: None,
            mqtt_url: None,
            mqtt: MqttMode::Disabled,
            mqtt_device_url: None,
            mqtt_ack_timeout: mqtt::DEFAULT_ACK_TIMEOUT,
            #[cfg(feature = "embedded-broker")]
            broker_limits: mqtt::broker::Limits::default(),
            grace: Duration::from_secs(10),
            trusted_proxies: proxy::TrustedProxies::default(),
        }
    }
}

/// Options of a cloud; `spawn` starts it.
#[derive(Debug)]
pub struct Builder {
    state_dir: PathBuf,
    http_listen: SocketAddr,
    clock: Arc<dyn Clock>,
    owner_email: String,
    environment: Environment,
    extra_names: Vec<String>,
    publisher: Option<Arc<dyn RevocationPublisher>>,
    mqtt_url: Option<String>,
    mqtt: MqttMode,
    mqtt_device_url: Option<String>,
    mqtt_ack_timeout: Duration,
    #[cfg(feature = "embedded-broker")]
    broker_limits: mqtt::broker::Limits,
    grace: Duration,
    trusted_proxies: proxy::TrustedProxies,
}

impl Builder {
    /// Where to listen for HTTPS (default `127.0.0.1:0`: a free port).
    pub fn http_listen(mut self, addr: SocketAddr) -> Self {
        self.http_listen = addr;
        self
    }

    /// The wall clock for expiry and rate limits; tests pass a `ManualClock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn owner_email(mut self, email: impl Into<String>) -> Self {
        self.owner_email = email.into();
        self
    }

    /// `Test` makes a sandbox organization (`edg_test_` keys). Only read on first start.
    pub fn environment(mut self, env: Environment) -> Self {
        self.environment = env;
        self
    }

    /// Extra DNS names or IPs for the server certificate (beyond localhost and loopback).
    pub fn extra_names(mut self, names: Vec<String>) -> Self {
        self.extra_names = names;
        self
    }

    /// A custom revocation publisher (tests). Used only with `MqttMode::Disabled`.
    pub fn publisher(mut self, p: Arc<dyn RevocationPublisher>, mqtt_url: Option<String>) -> Self {
        self.publisher = Some(p);
        self.mqtt_url = mqtt_url;
        self
    }

    /// The revocation transport (default for the library: `Disabled`; the binary defaults to
    /// `Embedded`).
    pub fn mqtt(mut self, mode: MqttMode) -> Self {
        self.mqtt = mode;
        self
    }

    /// The broker URL devices are told, when it differs from the one the cloud uses (a
    /// public name for the embedded broker, or a device-facing listener of an external one).
    pub fn mqtt_device_url(mut self, url: impl Into<String>) -> Self {
        self.mqtt_device_url = Some(url.into());
        self
    }

    /// How long a revoke waits for the broker's PUBACK before answering 202 (default 5 s).
    pub fn mqtt_ack_timeout(mut self, timeout: Duration) -> Self {
        self.mqtt_ack_timeout = timeout;
        self
    }

    /// The embedded broker's caps and timeouts (default: [`mqtt::broker::Limits::default`]).
    #[cfg(feature = "embedded-broker")]
    pub fn mqtt_broker_limits(mut self, limits: mqtt::broker::Limits) -> Self {
        self.broker_limits = limits;
        self
    }

    /// Proxies whose `X-Forwarded-For` names the source address (default: none; the TCP
    /// peer is the source address). See [`proxy`].
    pub fn trusted_proxies(mut self, trusted: proxy::TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// How long shutdown waits for in-flight requests.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Opens the state, provisions on first start, binds, serves, and writes `cloud.json`.
    pub async fn spawn(self) -> Result<Handle, CloudError> {
        let dir = self.state_dir;
        files::ensure_private_dir(&dir)?;
        let _ = std::fs::remove_file(dir.join(CloudInfo::FILE));
        let pki = tls::Pki::load_or_create(&dir, &self.extra_names)?;
        let mqtt_ca = mqtt::ca::MqttCa::load_or_create(&dir)?;
        let store = Store::open(&dir.join("cloud.redb"))?;
        init::provision(
            &store,
            &dir,
            &self.owner_email,
            self.environment,
            self.clock.now_secs(),
        )
        .await?;
        let owner_email = store
            .read(|m| {
                m.members
                    .values()
                    .find(|m| m.role == scope::Role::Owner)
                    .map(|m| m.email.clone())
            })
            .unwrap_or(self.owner_email);
        // Bind before anything starts, so a taken port fails fast and leaves nothing running.
        let listener = tokio::net::TcpListener::bind(self.http_listen)
            .await
            .map_err(|source| CloudError::Listen {
                addr: self.http_listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| CloudError::Listen {
            addr: self.http_listen,
            source,
        })?;

        let prepared = mqtt::prepare(
            &self.mqtt,
            &dir,
            &pki,
            &mqtt_ca,
            self.mqtt_device_url,
            #[cfg(feature = "embedded-broker")]
            self.broker_limits,
        )?;
        // The name the cloud logs in to its broker with: no device may be registered as it.
        let mqtt_identity = self.mqtt.identity();
        let (publisher, session, mqtt_url, vouched): (Arc<dyn RevocationPublisher>, _, _, _) =
            match prepared {
                Some(p) => {
                    let (publisher, session) =
                        MqttPublisher::new(p.options.clone(), self.mqtt_ack_timeout);
                    let vouched = p.vouched_presence;
                    let url = Some(p.device_url.clone());
                    (Arc::new(publisher), Some((session, p)), url, vouched)
                }
                None => (
                    self.publisher.unwrap_or_else(|| Arc::new(NoTransport)),
                    None,
                    self.mqtt_url,
                    false,
                ),
            };
        let mqtt_http_auth = api::mqtt_auth::BrokerAuth::load_or_create(&dir, self.clock.clone())?;
        // Made before the cloud: its live event streams end when the server shuts down.
        let shutdown = CancellationToken::new();
        let cloud = Arc::new(Cloud {
            store,
            limiter: limits::Limiter::new(self.clock.clone()),
            login_throttle: limits::LoginThrottle::new(self.clock.clone()),
            hash_gate: limits::HashGate::per_cpu(),
            metrics: Default::default(),
            clock: self.clock,
            sessions: session::SessionKeys::new(init::session_key(&dir)?),
            revocation_key: init::revocation_key(&dir)?,
            challenges: challenge::Challenges::new(init::challenge_key(&dir)?),
            publisher,
            mqtt_url: mqtt_url.clone(),
            mqtt_identity,
            mqtt_ca,
            mqtt_http_auth,
            presence: PresenceTable::new(vouched),
            events: events::EventHub::new(shutdown.clone()),
            trusted_proxies: self.trusted_proxies,
            #[cfg(feature = "faults")]
            faults: Default::default(),
        });
        events::attach(&cloud);

        let tasks = tokio_util::task::TaskTracker::new();
        let mqtt_stop = CancellationToken::new();
        let mut mqtt_up = None;
        #[cfg(feature = "embedded-broker")]
        let mut broker = None;
        if let Some((session, prepared)) = session {
            let started = mqtt::start(session, prepared, &cloud, &tasks, &mqtt_stop).await?;
            mqtt_up = Some(started.up);
            #[cfg(feature = "embedded-broker")]
            {
                broker = started.broker;
            }
        }

        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let http_url = format!("https://{host}:{}", addr.port());
        let router = api::router(cloud.clone()).merge(dashboard::router(cloud.clone()));
        let task = tokio::spawn(serve::serve_https(
            listener,
            pki.server_config(&[b"h2", b"http/1.1"]),
            router,
            shutdown.clone(),
            self.grace,
        ));

        let secrets = init::SecretFiles::in_dir(&dir);
        let info = CloudInfo {
            http_url: http_url.clone(),
            mqtt_url,
            ca_file: absolute(&pki.ca_file),
            owner_api_key_file: absolute(&secrets.owner_api_key),
            bootstrap_token_file: absolute(&secrets.bootstrap_token),
            owner_email,
            owner_password_file: absolute(&secrets.owner_password),
            owner_totp_secret_file: absolute(&secrets.owner_totp_secret),
            revocation_public_key: octomil_common::proof::encode_public_key(
                &cloud.revocation_key.verifying_key(),
            ),
        };
        let json = serde_json::to_vec_pretty(&info).map_err(|e| CloudError::Init(e.to_string()))?;
        files::write_public(&dir.join(CloudInfo::FILE), &json)?;
        tracing::info!(%http_url, state_dir = %dir.display(), "octomil-cloud ready");
        Ok(Handle {
            http_url,
            addr,
            ca_pem: pki.ca_pem.clone(),
            state_dir: dir,
            info,
            cloud,
            shutdown,
            task,
            tasks,
            mqtt_stop,
            mqtt_up,
            #[cfg(feature = "embedded-broker")]
            broker,
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// A running cloud. Dropping it does not stop it; call [`Handle::shutdown`].
#[derive(Debug)]
pub struct Handle {
    /// `https://127.0.0.1:PORT` (no `/api/v1`).
    pub http_url: String,
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub state_dir: PathBuf,
    pub info: CloudInfo,
    /// The live state, for tests that inspect or flip it.
    pub cloud: AppState,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The MQTT session and outbox tasks; stopped after the HTTP drain, so revokes still in
    /// flight get their PUBACK.
    tasks: tokio_util::task::TaskTracker,
    mqtt_stop: CancellationToken,
    mqtt_up: Option<tokio::sync::watch::Receiver<bool>>,
    #[cfg(feature = "embedded-broker")]
    broker: Option<mqtt::broker::Broker>,
}

impl Handle {
    pub fn owner_api_key(&self) -> std::io::Result<Secret<String>> {
        read_secret(&self.info.owner_api_key_file)
    }

    pub fn bootstrap_token(&self) -> std::io::Result<Secret<String>> {
        read_secret(&self.info.bootstrap_token_file)
    }

    pub fn owner_password(&self) -> std::io::Result<Secret<String>> {
        read_secret(&self.info.owner_password_file)
    }

    /// The Owner's TOTP secret (raw bytes), to compute codes in tests.
    pub fn owner_totp_secret(&self) -> std::io::Result<Vec<u8>> {
        let b32 = read_secret(&self.info.owner_totp_secret_file)?;
        session::totp_from_base32(b32.expose()).map_err(std::io::Error::other)
    }

    /// Whether the cloud's MQTT session is connected to its broker (false without MQTT).
    pub fn mqtt_connected(&self) -> bool {
        self.mqtt_up.as_ref().is_some_and(|u| *u.borrow())
    }

    /// The embedded broker (its address, counters and state), if it runs.
    #[cfg(feature = "embedded-broker")]
    pub fn broker(&self) -> Option<&mqtt::broker::Broker> {
        self.broker.as_ref()
    }

    /// A token that cancels the server when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, drains in-flight requests within the grace period, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the server stops (after its shutdown token is cancelled). `cloud.json`
    /// is removed on the way out: it exists exactly while the cloud serves.
    pub async fn wait(self) {
        let _ = self.task.await;
        self.mqtt_stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let _ = std::fs::remove_file(self.state_dir.join(CloudInfo::FILE));
    }
}

fn read_secret(path: &Path) -> std::io::Result<Secret<String>> {
    files::read_secret_string(path).map_err(std::io::Error::other)
}
