//! The embedded broker: MQTT 3.1.1 over TLS on tokio + tokio-rustls (ring), serving exactly what the revocation channel needs, with per-device ACLs and quotas.
//!
//! Why our own and not a library: see `docs/mqtt.md` ("The embedded broker"). In short,
//! rumqttd 0.20 panics on client input and stalls on an idle socket, and the embeddable
//! alternatives bring aws-lc or a second runtime. The packet codec is rumqttc's `mqttbytes::v4`
//! (already our client's), whose parsers return errors on bad input; topic matching is ours
//! (rumqttc's `matches` slices a string by byte and panics on a multi-byte first character).
//!
//! Shape: one accept loop ([`serve`]) that only counts and spawns; each connection is its own
//! task ([`conn`]) that does the TLS handshake, reads CONNECT, authenticates, and then serves
//! the session, every step under a deadline; [`router`] holds sessions, subscriptions and
//! retained messages behind one short lock. Nothing a client sends reaches an `unwrap` or an
//! index. A panic anyway (a bug) ends only its own connection when the cloud is built with
//! `panic = "unwind"` (its `cloud-release` profile): tokio contains it in the task, the
//! connection's guards release its slots, [`Stats::panics`] counts it, and the accept loop,
//! restarted by [`serve`] if it ever panics itself, carries on.
//!
//! Limits ([`Limits`]): a TLS handshake and a CONNECT must each finish within a few seconds;
//! connections not yet authenticated are capped per source address (authenticated ones are
//! not: fleets sit behind NAT); connections in total are capped (one over the cap is closed
//! at once and nothing else changes); packets are capped in size, device status messages in
//! size and rate, retained messages in number.

pub mod acl;
mod conn;
pub mod router;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::MqttError;
use super::auth::Authenticator;
use acl::Identity;
use router::Router;

/// What the broker allows; the defaults suit a fleet of up to a few thousand devices.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Device connections at once, authenticated or not; one more is closed right after
    /// accept (or refused, `ServiceUnavailable`, at login). The cloud's own session has a
    /// place of its own beyond it, so it does not take a device's.
    pub max_connections: usize,
    /// Connections from one source address that have not yet authenticated.
    pub max_unauthenticated_per_address: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// From the end of the handshake to a complete CONNECT.
    pub connect_timeout: Duration,
    /// Largest packet accepted from a client (and sent to one).
    pub max_packet_bytes: usize,
    /// Retained messages held (two per device at most: its revocation and its status).
    pub max_retained: usize,
    /// Keep-alive granted to a client that asks for none (0) or for more.
    pub max_keep_alive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_unauthenticated_per_address: 64,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_packet_bytes: 20 * 1024,
            max_retained: 100_000,
            max_keep_alive: Duration::from_secs(3600),
        }
    }
}

/// Counters of what the broker refused or dropped; read by tests and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections closed at accept: over the total cap or the per-address cap.
    pub refused_at_accept: AtomicU64,
    /// Handshakes or CONNECTs that did not finish in time.
    pub timed_out: AtomicU64,
    /// CONNECTs refused (bad credentials, client id, will).
    pub refused_logins: AtomicU64,
    pub denied_publishes: AtomicU64,
    pub denied_subscriptions: AtomicU64,
    /// Status messages over the rate or size limit.
    pub throttled: AtomicU64,
    /// Deliveries dropped: a subscriber's queue was full, or an offline queue overflowed.
    pub dropped: AtomicU64,
    pub retained_full: AtomicU64,
    /// Connection tasks that ended in a panic (a bug; contained under `panic = "unwind"`).
    pub panics: AtomicU64,
}

/// What every connection task shares.
struct Shared {
    router: Router,
    auth: Arc<dyn Authenticator>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    stats: Arc<Stats>,
    gate: Gate,
    stop: CancellationToken,
    next_conn: AtomicU64,
}

/// A started broker.
#[derive(Clone)]
pub struct Broker {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Broker {
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Connections open right now (authenticated or not).
    pub fn connections(&self) -> usize {
        self.shared.gate.total.load(Ordering::Relaxed)
    }

    pub fn router(&self) -> &Router {
        &self.shared.router
    }
}

/// Starts serving on `listener` (already bound: port 0 is resolved before anyone is told).
/// `tls: None` serves plain MQTT, for tests that need a throwaway broker; the cloud always
/// passes its server certificate. Stops when `stop` is cancelled; `tasks` tracks the accept
/// loop and every connection.
pub fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Arc<dyn Authenticator>,
    limits: Limits,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Broker, MqttError> {
    let addr = listener.local_addr().map_err(|source| MqttError::Listen {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let listen_err = |source| MqttError::Listen { addr, source };
    listener.set_nonblocking(true).map_err(listen_err)?;
    let listener = Arc::new(TcpListener::from_std(listener).map_err(listen_err)?);
    let shared = Arc::new(Shared {
        router: Router::new(limits.max_retained),
        auth,
        tls: tls.map(TlsAcceptor::from),
        gate: Gate::default(),
        limits,
        stats: Arc::default(),
        stop,
        next_conn: AtomicU64::new(1),
    });
    let supervisor_tasks = tasks.clone();
    let s = shared.clone();
    tasks.spawn(async move {
        // The accept loop has nothing that should panic; if it ever does, start it again
        // rather than leave the fleet without a broker.
        loop {
            let run = tokio::spawn(accept_loop(
                listener.clone(),
                s.clone(),
                supervisor_tasks.clone(),
            ));
            match run.await {
                Err(e) if e.is_panic() => {
                    s.stats.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%addr, "MQTT accept loop panicked; restarting it");
                }
                _ => break,
            }
        }
    });
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(Broker { addr, shared })
}

async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off so a full fd table is not a busy loop.
                tracing::debug!(error = %e, "MQTT accept failed");
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let Some(slot) = admit(&shared, peer.ip()) else {
            shared
                .stats
                .refused_at_accept
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "MQTT connection refused: over the connection caps");
            drop(stream);
            continue;
        };
        tasks.spawn(conn::run(stream, peer, slot));
    }
}

/// The connection caps: a total, and a per-address count of connections that have not yet
/// authenticated.
#[derive(Debug, Default)]
struct Gate {
    total: AtomicUsize,
    /// Of `total`, the sessions that logged in as the cloud (not counted against devices).
    clouds: AtomicUsize,
    unauthenticated: Mutex<HashMap<IpAddr, usize>>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn release_address(&self, ip: IpAddr) {
        let mut pre = self.lock();
        if let Some(n) = pre.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pre.remove(&ip);
            }
        }
    }
}

/// Takes a place under both caps for a connection from `ip`, or `None`.
fn admit(shared: &Arc<Shared>, ip: IpAddr) -> Option<Slot> {
    let limits = &shared.limits;
    let gate = &shared.gate;
    let mut pre = gate.lock();
    let from_ip = pre.get(&ip).copied().unwrap_or(0);
    if from_ip >= limits.max_unauthenticated_per_address {
        return None;
    }
    // Counted under the same lock, so two accepts cannot both take the last place. One place
    // beyond the cap is the cloud's; a device that takes it is refused at login.
    if gate.total.load(Ordering::Relaxed) >= limits.max_connections.saturating_add(1) {
        return None;
    }
    gate.total.fetch_add(1, Ordering::Relaxed);
    pre.insert(ip, from_ip + 1);
    Some(Slot {
        shared: shared.clone(),
        ip,
        authenticated: false,
        cloud: false,
    })
}

/// A connection's place under the caps; released on drop, also when its task panics.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    authenticated: bool,
    /// Logged in as the cloud: its place is not a device's.
    cloud: bool,
}

impl Slot {
    /// The connection authenticated as `who`: it no longer counts against its address.
    /// False when it is a device over the device cap (it took the cloud's place).
    fn authenticated(&mut self, who: &Identity) -> bool {
        if !self.authenticated {
            self.authenticated = true;
            self.shared.gate.release_address(self.ip);
        }
        let gate = &self.shared.gate;
        if matches!(who, Identity::Cloud) {
            if !self.cloud {
                self.cloud = true;
                gate.clouds.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        let _pre = gate.lock();
        let devices = gate
            .total
            .load(Ordering::Relaxed)
            .saturating_sub(gate.clouds.load(Ordering::Relaxed));
        devices <= self.shared.limits.max_connections
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.authenticated {
            self.shared.gate.release_address(self.ip);
        }
        if self.cloud {
            self.shared.gate.clouds.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections the kernel may queue before the accept loop takes them.
const LISTEN_BACKLOG: u32 = 1024;

/// The cloud's embedded broker, bound and ready to start once the cloud's state exists.
pub struct Plan {
    listener: std::net::TcpListener,
    pub addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    /// The CN of the cloud's own certificate.
    identity: String,
    limits: Limits,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("addr", &self.addr)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// Binds `listen` now (port 0: the port is known before anyone is told it). Must run
    /// inside the tokio runtime. Clients are verified against `mqtt_ca`; `identity` is the
    /// CN of the cloud's own certificate. A client without a certificate from `mqtt_ca` is
    /// refused at the handshake.
    pub fn new(
        listen: SocketAddr,
        pki: &crate::tls::Pki,
        mqtt_ca: &super::ca::MqttCa,
        identity: &str,
        limits: Limits,
    ) -> Result<Self, MqttError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(mqtt_ca.der().clone())
            .map_err(|e| MqttError::Tls(crate::tls::TlsError::Rustls(e)))?;
        let tls = pki.server_config_verifying_clients(roots)?;
        let err = |source| MqttError::Listen {
            addr: listen,
            source,
        };
        // A deep backlog: a burst of connects (a fleet coming back, or someone opening
        // hundreds of idle sockets) must not fill the kernel's queue and make a device's SYN
        // wait for a retransmit (1 s); std's `bind` listens with 128.
        let socket = match listen {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.bind(listen).map_err(err)?;
        let listener = socket
            .listen(LISTEN_BACKLOG)
            .map_err(err)?
            .into_std()
            .map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(Self {
            listener,
            addr,
            tls,
            identity: identity.to_owned(),
            limits,
        })
    }

    /// The URL devices are told: TLS, the listen host (loopback for a wildcard bind; pass
    /// the public name with `--mqtt-device-url`), the bound port.
    pub fn device_url(&self) -> String {
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("mqtts://{host}:{}", self.addr.port())
    }

    /// The cloud's own session connects over loopback when the broker listens on a wildcard.
    pub fn local_addr(&self) -> SocketAddr {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a
    }

    /// Starts serving, authenticating against `cloud`'s store (held weakly).
    pub fn start(
        self,
        cloud: std::sync::Weak<crate::app::Cloud>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Broker, MqttError> {
        let auth = super::auth::StoreAuthenticator::new(cloud, self.identity);
        serve(
            self.listener,
            Some(self.tls),
            Arc::new(auth),
            self.limits,
            tasks,
            stop,
        )
    }
}
