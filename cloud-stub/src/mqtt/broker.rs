//! The embedded broker: rumqttd serving MQTT 3.1.1 over TLS with the cloud's server certificate, authenticating against the cloud's store.
//!
//! Limits of rumqttd 0.20 that shape this module:
//! - It cannot report the port of a `:0` bind, so [`Plan::new`] binds a std listener to find
//!   a free port and drops it before rumqttd binds the same port. Another process may take
//!   the port in between; the cloud then fails to start (its own session cannot connect)
//!   rather than serving without a broker.
//! - It has no shutdown API (upstream issue #771): once started, the broker's threads (router
//!   and listener, each with its own runtime) live as long as the process. A stopped cloud
//!   leaves its broker listening; its auth hook holds the cloud only weakly, so every login
//!   is refused from then on and the cloud's state is freed. Tests that start many clouds in
//!   one process get one broker each, on distinct ports and with distinct router ids.
//! - It has no ACLs: any logged-in client may subscribe or publish to any topic. Revocation
//!   envelopes are signed, so a forged one changes nothing, but a device could read another
//!   device's revocation, clear its retained revocation (the victim still learns it at its
//!   next refresh), or publish on its status topic. The cloud believes an "online" status
//!   only from a device that logged in to this broker, and ignores status for unknown ids;
//!   a production fleet should use an external broker with per-device ACLs (README).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::atomic::{AtomicUsize, Ordering};

use octomil_common::Secret;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

use super::MqttError;
use super::auth::{self, CloudLogin, Verdict};
use crate::app::Cloud;

/// Router ids name the broker's threads; distinct per broker in this process.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Connection limits: room for a fleet of a few thousand devices on one cloud.
const MAX_CONNECTIONS: usize = 10_000;
/// Also the number of retained messages rumqttd delivers on one subscribe (it truncates the
/// retained set to the in-flight window), so keep it above the fleet the cloud resyncs.
const MAX_INFLIGHT: usize = 1_000;
const MAX_PAYLOAD: usize = 20 * 1024;
/// A TCP connection must send CONNECT within this long.
const CONNECT_TIMEOUT_MS: u16 = 5_000;

/// A broker to start: the address chosen and the files it serves.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    login: CloudLogin,
}

impl Plan {
    /// Resolves `listen` (port 0: a free port, chosen now; see the module docs for the race).
    pub fn new(listen: SocketAddr, dir: &Path, secret: &Secret<String>) -> Result<Self, MqttError> {
        let probe = std::net::TcpListener::bind(listen).map_err(|source| MqttError::Listen {
            addr: listen,
            source,
        })?;
        let addr = probe.local_addr().map_err(|source| MqttError::Listen {
            addr: listen,
            source,
        })?;
        drop(probe);
        Ok(Self {
            addr,
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            login: CloudLogin::new(secret),
        })
    }

    /// The URL devices are told: TLS, the listen host (loopback for a wildcard bind; pass
    /// the public name with `--mqtt-device-url`), the chosen port.
    pub fn device_url(&self) -> String {
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("mqtts://{host}:{}", self.addr.port())
    }

    /// The cloud's own session connects to the broker over loopback when it listens on a
    /// wildcard address.
    pub fn local_addr(&self) -> SocketAddr {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a
    }
}

/// Starts the broker on its own threads. `cloud` is held weakly (see the module docs).
pub fn start(plan: Plan, cloud: Weak<Cloud>) -> Result<(), MqttError> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let login = plan.login;
    let mut connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: MAX_INFLIGHT,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        std::future::ready(authorize(&cloud, &login, &client_id, &user, &pass))
    });
    let server = ServerSettings {
        name: format!("octomil-mqtt-{id}"),
        listen: plan.addr,
        tls: Some(TlsConfig::Rustls {
            capath: None,
            certpath: plan.cert.display().to_string(),
            keypath: plan.key.display().to_string(),
        }),
        next_connection_delay_ms: 0,
        connections,
    };
    let config = Config {
        id,
        router: RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some([("1".to_owned(), server)].into_iter().collect()),
        ..Config::default()
    };
    let addr = plan.addr;
    std::thread::Builder::new()
        .name(format!("mqtt-broker-{id}"))
        .spawn(move || {
            // `start` returns only if every listener failed (for example, the port was
            // taken after we chose it).
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(%addr, error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|source| MqttError::Listen { addr, source })?;
    tracing::info!(%addr, "embedded MQTT broker starting");
    Ok(())
}

/// The broker's auth hook: checks the credentials against the live store and, for a
/// device, records the login as presence activity. Refusals are logged at debug.
fn authorize(
    cloud: &Weak<Cloud>,
    login: &CloudLogin,
    client_id: &str,
    user: &str,
    pass: &str,
) -> bool {
    let Some(cloud) = cloud.upgrade() else {
        return false;
    };
    let now = cloud.clock.now_secs();
    let verdict = cloud
        .store
        .read(|m| auth::check(m, now, login, client_id, user, pass));
    match verdict {
        Verdict::Cloud => true,
        Verdict::Device(id) => {
            cloud.presence.note_login(id.as_str(), now);
            true
        }
        Verdict::Refused(reason) => {
            tracing::debug!(reason, "MQTT login refused");
            false
        }
    }
}
