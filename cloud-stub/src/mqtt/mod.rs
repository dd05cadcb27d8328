//! The revocation transport over MQTT: which broker (embedded, external, none), the cloud's own client session, the outbox and presence.
//!
//! In every mode the cloud talks to the broker as an ordinary rumqttc client: it publishes
//! revocations retained at QoS 1 and subscribes to the devices' status topics. Embedded mode
//! additionally runs our own broker in-process (see [`broker`]).

#[cfg(feature = "embedded-broker")]
pub mod auth;
#[cfg(feature = "embedded-broker")]
pub mod broker;
mod broker_client;
pub mod ca;
pub mod correlate;
pub mod outbox;
pub mod presence;
pub mod revocation_sender;

use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use octomil_common::{Secret, token};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::files::FilesError;
use crate::tls::{self, Pki, TlsError};

/// The cloud's MQTT identity unless an external broker's `username` names another: the CN
/// of its client certificate (devices use their id, which the register endpoint refuses to
/// hand out under this name).
pub const CLOUD_USERNAME: &str = "octomil-cloud";
/// The embedded broker's password file of clouds before certificate logins (removed at start).
#[cfg(feature = "embedded-broker")]
const OLD_CLOUD_SECRET_FILE: &str = "mqtt_cloud_password";
/// How long `POST /devices/{id}/revoke` waits for the broker's PUBACK before answering 202.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive of the cloud's session: how soon it notices a dead broker.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Subscription the cloud's session holds (and re-takes after each reconnect).
pub const STATUS_FILTER: &str = "octomil/v1/devices/+/status";

/// Where the cloud's MQTT traffic goes.
#[derive(Debug, Clone)]
pub enum MqttMode {
    /// No broker: revocations are recorded and enforced at the next refresh, not pushed.
    Disabled,
    /// The embedded broker ([`broker`]), MQTT 3.1.1 over TLS with the cloud's server
    /// certificate. Port 0 picks a free port (`cloud.json` says which).
    #[cfg(feature = "embedded-broker")]
    Embedded { listen: SocketAddr },
    /// Any MQTT 3.1.1 broker (Mosquitto, EMQX, HiveMQ); the cloud is one of its clients.
    External(ExternalBroker),
}

/// How the cloud reaches an external broker. The cloud always offers its own client
/// certificate from the MQTT CA (CN = `username`, or `octomil-cloud`), which is all a broker
/// set up as in docs/mosquitto.conf.example needs; `password` is sent as well, for a broker
/// that logs the cloud in by password instead.
#[derive(Debug, Clone)]
pub struct ExternalBroker {
    /// `mqtts://host:port`, or `mqtt://host:port` to a loopback host (development).
    pub url: String,
    /// The cloud's MQTT identity: its certificate's CN and the CONNECT username.
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    /// CA that signed the broker's certificate; default: the cloud's own CA.
    pub ca_file: Option<PathBuf>,
}

impl MqttMode {
    /// The name the cloud logs in to its broker as (its certificate's CN); `None` without a
    /// broker. No device may be registered under it.
    pub fn identity(&self) -> Option<String> {
        match self {
            MqttMode::Disabled => None,
            #[cfg(feature = "embedded-broker")]
            MqttMode::Embedded { .. } => Some(CLOUD_USERNAME.to_owned()),
            MqttMode::External(ext) => Some(
                ext.username
                    .clone()
                    .unwrap_or_else(|| CLOUD_USERNAME.to_owned()),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT broker URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error(
        "mqtt:// carries credentials in clear text; it is only allowed to a loopback host, not {host:?} (use mqtts://)"
    )]
    PlainNotLoopback { host: String },
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading the broker CA {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(
        "the embedded MQTT broker on {addr} did not accept the cloud's session within {secs} s"
    )]
    BrokerDown { addr: SocketAddr, secs: u64 },
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, MqttError> {
        let bad = |reason| MqttError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("the scheme must be mqtts:// or mqtt://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(bad("only host[:port] may follow the scheme"));
        }
        if rest.starts_with('[') {
            return Err(bad("IPv6 literals are not supported; use a host name"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("the port is not a number"))?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || port == 0 {
            return Err(bad("host and a non-zero port are required"));
        }
        let url = Self {
            tls,
            host: host.to_owned(),
            port,
        };
        if !tls && !url.is_loopback() {
            return Err(MqttError::PlainNotLoopback { host: url.host });
        }
        Ok(url)
    }

    fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// What `spawn` needs to bring the transport up, decided before the cloud state exists.
pub(crate) struct Prepared {
    /// The URL devices get in `cloud.json` and the register answer.
    pub device_url: String,
    pub options: MqttOptions,
    /// Only believe a device's "online" if it authenticated to our broker (embedded mode).
    pub vouched_presence: bool,
    #[cfg(feature = "embedded-broker")]
    pub broker: Option<broker::Plan>,
}

/// By hand: rumqttc's `MqttOptions` prints its credentials.
impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("device_url", &self.device_url)
            .field("vouched_presence", &self.vouched_presence)
            .finish_non_exhaustive()
    }
}

/// How long `spawn` waits for the cloud's own session to log in to its embedded broker.
#[cfg(feature = "embedded-broker")]
const EMBEDDED_BROKER_DEADLINE: Duration = Duration::from_secs(10);

/// What [`start`] brought up: a watch of the cloud's session being up, and the embedded
/// broker if there is one.
pub(crate) struct Started {
    pub up: tokio::sync::watch::Receiver<bool>,
    #[cfg(feature = "embedded-broker")]
    pub broker: Option<broker::Broker>,
}

/// Starts the embedded broker (if any) and the cloud's session on `tasks`. An embedded broker
/// must be serving before `cloud.json` says so, so this waits for the session to log in; an
/// external broker may come and go (the outbox covers the gap).
pub(crate) async fn start(
    client: revocation_sender::BrokerClient,
    prepared: Prepared,
    cloud: &crate::AppState,
    tasks: &tokio_util::task::TaskTracker,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Started, MqttError> {
    #[cfg(feature = "embedded-broker")]
    let embedded = match prepared.broker {
        Some(plan) => Some(plan.start(std::sync::Arc::downgrade(cloud), tasks, stop.clone())?),
        None => None,
    };
    #[cfg(not(feature = "embedded-broker"))]
    let _ = prepared;
    let up = client.spawn(tasks, cloud.clone(), stop.clone());
    #[cfg(feature = "embedded-broker")]
    if let Some(addr) = embedded.as_ref().map(|b| b.addr) {
        let mut watch = up.clone();
        let ready = tokio::time::timeout(EMBEDDED_BROKER_DEADLINE, watch.wait_for(|u| *u))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ready {
            stop.cancel();
            tasks.close();
            tasks.wait().await;
            return Err(MqttError::BrokerDown {
                addr,
                secs: EMBEDDED_BROKER_DEADLINE.as_secs(),
            });
        }
    }
    Ok(Started {
        up,
        #[cfg(feature = "embedded-broker")]
        broker: embedded,
    })
}

/// Resolves `mode` into client options (and a broker plan in embedded mode). `None` when
/// MQTT is disabled.
#[cfg_attr(not(feature = "embedded-broker"), allow(unused_variables))]
pub(crate) fn prepare(
    mode: &MqttMode,
    dir: &Path,
    pki: &Pki,
    mqtt_ca: &ca::MqttCa,
    device_url: Option<String>,
    #[cfg(feature = "embedded-broker")] limits: broker::Limits,
) -> Result<Option<Prepared>, MqttError> {
    if let Some(url) = device_url.as_deref().filter(|u| u.starts_with("mqtt://")) {
        // Devices are told this URL and send their credentials to it: clear text only to
        // loopback (`BrokerUrl::parse` refuses the rest with `PlainNotLoopback`).
        BrokerUrl::parse(url)?;
    }
    let Some(identity) = mode.identity() else {
        return Ok(None);
    };
    // The cloud's own login: a certificate from the MQTT CA, its key only in memory.
    let cert = mqtt_ca.issue_cloud(&identity)?;
    match mode {
        MqttMode::Disabled => Ok(None),
        #[cfg(feature = "embedded-broker")]
        MqttMode::Embedded { listen } => {
            // Clouds before certificate logins kept a broker password here; nothing reads
            // it any more, so no stale secret is left lying in the state dir.
            match std::fs::remove_file(dir.join(OLD_CLOUD_SECRET_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, "cannot remove the old mqtt_cloud_password file");
                }
                _ => {}
            }
            let plan = broker::Plan::new(*listen, pki, mqtt_ca, &identity, limits)?;
            let local = plan.local_addr();
            let url = BrokerUrl {
                tls: true,
                // rumqttc cannot dial an IPv6 literal; the certificate also names localhost.
                host: match local.ip() {
                    IpAddr::V4(ip) => ip.to_string(),
                    IpAddr::V6(_) => "localhost".into(),
                },
                port: local.port(),
            };
            let id = format!("{identity}:{}", token::random_base62(8).expose());
            let tls = tls::client_config_with_cert(pki.ca_pem.as_bytes(), cert.chain, cert.key)?;
            let options = client_options(&id, &url, tls);
            Ok(Some(Prepared {
                device_url: device_url.unwrap_or_else(|| plan.device_url()),
                options,
                vouched_presence: true,
                broker: Some(plan),
            }))
        }
        MqttMode::External(ext) => {
            let url = BrokerUrl::parse(&ext.url)?;
            let ca_pem = match &ext.ca_file {
                Some(path) => std::fs::read(path).map_err(|source| MqttError::CaFile {
                    path: path.clone(),
                    source,
                })?,
                None => pki.ca_pem.as_bytes().to_vec(),
            };
            let tls = tls::client_config_with_cert(&ca_pem, cert.chain, cert.key)?;
            let id = format!("{identity}:{}", token::random_base62(8).expose());
            let mut options = client_options(&id, &url, tls);
            if let Some(user) = &ext.username {
                let pass = ext.password.as_ref().map(|p| p.expose().clone());
                options.set_credentials(user.as_str(), pass.unwrap_or_default());
            }
            Ok(Some(Prepared {
                device_url: device_url.unwrap_or_else(|| url.to_string()),
                options,
                vouched_presence: false,
                #[cfg(feature = "embedded-broker")]
                broker: None,
            }))
        }
    }
}

/// Options of the cloud's session: clean session (the outbox, not the broker, remembers
/// what is owed), TLS with the given trust, a keep-alive that notices a dead broker.
fn client_options(
    client_id: &str,
    url: &BrokerUrl,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, url.host.as_str(), url.port);
    options.set_clean_session(true);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    // As many QoS 1 publishes unacknowledged as the outbox keeps in flight (rumqttc's
    // default, 100, would make the broker's round trip the fan-out's ceiling).
    options.set_inflight(outbox::RETRY_WINDOW as u16);
    if url.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    options
}

/// Device id named by a `octomil/v1/devices/{id}/{leaf}` topic.
pub fn device_of_topic<'a>(topic: &'a str, leaf: &str) -> Option<&'a str> {
    topic
        .strip_prefix("octomil/v1/devices/")?
        .strip_suffix(leaf)?
        .strip_suffix('/')
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports_and_refuse_clear_text_off_loopback() {
        let u = BrokerUrl::parse("mqtts://broker.example:8884").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.example", 8884)
        );
        assert_eq!(BrokerUrl::parse("mqtts://b").unwrap().port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://127.0.0.1").unwrap().port, 1883);
        assert_eq!(
            BrokerUrl::parse("mqtt://localhost:1884/")
                .unwrap()
                .to_string(),
            "mqtt://localhost:1884"
        );
        assert!(matches!(
            BrokerUrl::parse("mqtt://broker.example:1883"),
            Err(MqttError::PlainNotLoopback { .. })
        ));
        for bad in [
            "tcp://x:1",
            "mqtts://",
            "mqtts://x:0",
            "mqtts://x:port",
            "mqtts://u@x:1",
            "mqtts://x:1/path",
            "mqtts://[::1]:1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_name_their_device() {
        assert_eq!(
            device_of_topic("octomil/v1/devices/d-1/status", "status"),
            Some("d-1")
        );
        assert_eq!(
            device_of_topic("octomil/v1/devices//status", "status"),
            None
        );
        assert_eq!(
            device_of_topic("octomil/v1/devices/a/b/status", "status"),
            None
        );
        assert_eq!(
            device_of_topic("octomil/v1/devices/a/revocation", "status"),
            None
        );
    }
}
