//! MQTT helpers for the cloud's tests: a cloud with a broker, an rumqttc client that plays a
//! device (or an observer), a throwaway plain broker, and polling with deadlines.

use std::sync::Arc;
use std::time::Duration;

use octomil_cloud::{Builder, CloudStub};
use octomil_common::ManualClock;
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, LastWill, MqttOptions, NetworkOptions, Publish,
    QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

use super::Env;

/// How long any single wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Starts a cloud in `dir` with the builder adjusted by `f` (the MQTT mode, mostly).
pub async fn start_with(dir: tempfile::TempDir, f: impl FnOnce(Builder) -> Builder) -> Env {
    super::install_crypto();
    let clock = ManualClock::new();
    let builder = CloudStub::builder(dir.path().join("state")).clock(Arc::new(clock.clone()));
    let handle = f(builder).spawn().await.unwrap();
    super::env_for(handle, clock, dir)
}

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Polls `f` until it returns `Some`, failing the test at [`DEADLINE`]
/// ([`octomil_testkit::poll::eventually`] with this file's deadline).
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    octomil_testkit::poll::eventually(DEADLINE, what, f).await
}

/// An MQTT client whose event loop runs in a task; events arrive on a channel.
pub struct TestClient {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

/// Connection parameters for [`TestClient::connect`].
pub struct Login<'a> {
    pub url: &'a str,
    pub ca_pem: Option<&'a str>,
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub will: Option<LastWill>,
    pub clean: bool,
}

/// A certificate login for [`TestClient::connect_cert`]: no username or password.
pub struct CertLogin<'a> {
    pub url: &'a str,
    pub client_id: &'a str,
    /// The client's TLS config: trusts the broker's CA, presents the certificate.
    pub tls: Arc<rustls::ClientConfig>,
    pub will: Option<LastWill>,
    pub clean: bool,
}

/// A TLS config presenting a device's certificate (`MqttInfo::client_cert`) with its
/// Ed25519 identity key, trusting `ca_pem` for the broker.
pub fn device_tls(
    ca_pem: &str,
    cert_pem: &str,
    key: &ed25519_dalek::SigningKey,
) -> Arc<rustls::ClientConfig> {
    octomil_common::tls::client_config_with_cert(
        ca_pem.as_bytes(),
        cert_pem.as_bytes(),
        &key.to_bytes(),
    )
    .unwrap()
}

/// A TLS config presenting a fresh certificate for the cloud's identity `name` from the
/// cloud's MQTT CA in `state_dir` (an observer that may read everything).
pub fn cloud_tls(
    state_dir: &std::path::Path,
    ca_pem: &str,
    name: &str,
) -> Arc<rustls::ClientConfig> {
    let ca = octomil_cloud::mqtt::ca::MqttCa::load_or_create(state_dir).unwrap();
    let cert = ca.issue_cloud(name).unwrap();
    octomil_cloud::tls::client_config_with_cert(ca_pem.as_bytes(), cert.chain, cert.key).unwrap()
}

/// The TLS config a registered device presents: the certificate of its registration answer
/// (`mqtt.client_cert`) with its key.
pub fn tls_of(
    env: &Env,
    d: &super::Device,
    reg: &octomil_common::wire::RegisterResponse,
) -> Arc<rustls::ClientConfig> {
    let cert = reg.mqtt.as_ref().unwrap().client_cert.as_deref().unwrap();
    device_tls(&env.handle.ca_pem, cert, &d.key)
}

/// A device session on the cloud's broker with the TLS config `tls` (see [`tls_of`]).
pub async fn device_session(
    env: &Env,
    client_id: &str,
    tls: Arc<rustls::ClientConfig>,
    will: Option<LastWill>,
    clean: bool,
) -> Result<TestClient, String> {
    TestClient::connect_cert(CertLogin {
        url: env.handle.info.mqtt_url.as_deref().unwrap(),
        client_id,
        tls,
        will,
        clean,
    })
    .await
}

/// An observer that may read everything: the cloud's identity (a certificate for CN
/// `octomil-cloud` from the cloud's MQTT CA) under its own client id `octomil-cloud:{name}`,
/// so the cloud's own session is not taken over.
pub async fn observer(env: &Env, name: &str) -> TestClient {
    let tls = cloud_tls(&env.handle.state_dir, &env.handle.ca_pem, "octomil-cloud");
    device_session(env, &format!("octomil-cloud:{name}"), tls, None, true)
        .await
        .unwrap()
}

impl TestClient {
    /// Connects over TLS with a client certificate and no password; like [`Self::connect`].
    pub async fn connect_cert(login: CertLogin<'_>) -> Result<Self, String> {
        let rest = login.url.strip_prefix("mqtts://").unwrap();
        let (host, port) = rest.rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(login.client_id, host, port.parse().unwrap());
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(login.clean);
        if let Some(w) = login.will {
            o.set_last_will(w);
        }
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            login.tls,
        )));
        Self::start(o).await
    }

    /// Connects and waits for the CONNACK; returns the connection error instead if the broker
    /// refuses (or drops) the login. The event loop stops at its first error.
    pub async fn connect(login: Login<'_>) -> Result<Self, String> {
        let (tls, rest) = match login.url.strip_prefix("mqtts://") {
            Some(r) => (true, r),
            None => (false, login.url.strip_prefix("mqtt://").unwrap()),
        };
        let (host, port) = rest.rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(login.client_id, host, port.parse().unwrap());
        o.set_credentials(login.username, login.password)
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(login.clean);
        if let Some(w) = login.will {
            o.set_last_will(w);
        }
        if tls {
            let cfg =
                octomil_cloud::tls::client_config_from_ca_pem(login.ca_pem.unwrap().as_bytes())
                    .unwrap();
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
        }
        Self::start(o).await
    }

    async fn start(o: MqttOptions) -> Result<Self, String> {
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let e = eventloop.poll().await;
                let stop = e.is_err();
                if tx
                    .send(e.map_err(|e: ConnectionError| e.to_string()))
                    .is_err()
                    || stop
                {
                    break;
                }
            }
        });
        let mut c = Self {
            client,
            events,
            task,
        };
        match c.next_event().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => Ok(c),
            Ok(other) => Err(format!("expected CONNACK, got {other:?}")),
            Err(e) => Err(e),
        }
    }

    async fn next_event(&mut self) -> Result<Event, String> {
        match tokio::time::timeout(DEADLINE, self.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => Err("event loop ended".into()),
            Err(_) => panic!("no MQTT event within {DEADLINE:?}"),
        }
    }

    /// Subscribes at QoS 1 and waits for a successful SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        let codes = self.subscribe_result(filter).await;
        assert!(
            codes.iter().all(|c| *c != SubscribeReasonCode::Failure),
            "subscription to {filter} refused"
        );
    }

    /// Subscribes at QoS 1 and returns the SUBACK's return codes.
    pub async fn subscribe_result(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match self.next_event().await.unwrap() {
                Event::Incoming(Incoming::SubAck(a)) => return a.return_codes,
                Event::Incoming(Incoming::Publish(p)) => panic!("publish before SUBACK: {p:?}"),
                _ => {}
            }
        }
    }

    /// The next message on any topic.
    pub async fn next_any_publish(&mut self) -> Publish {
        loop {
            match self.next_event().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting for a message: {e}"),
            }
        }
    }

    /// The next message on `topic` (others are skipped).
    pub async fn next_publish(&mut self, topic: &str) -> Publish {
        loop {
            match self.next_event().await {
                Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == topic => return p,
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting on {topic}: {e}"),
            }
        }
    }

    /// Publishes retained at QoS 1 and waits for the PUBACK.
    pub async fn publish_retained(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = self.next_event().await.unwrap() {
                return;
            }
        }
    }

    /// Drops the connection without DISCONNECT, as a power cut would: the broker sends the
    /// Last Will.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a plain-TCP broker on `127.0.0.1:port` that lets anyone in as the cloud (publish
/// revocations, subscribe anywhere): a broker that "appears" in the middle of a test. It is
/// the embedded broker without TLS and with an allow-all authenticator; it serves until the
/// test's runtime ends.
#[cfg(feature = "embedded-broker")]
pub fn plain_broker(port: u16) {
    use octomil_cloud::mqtt::auth::{Authenticator, Identity, Login, Refused};
    use octomil_cloud::mqtt::broker::{self, Limits};

    struct Anyone;
    impl Authenticator for Anyone {
        fn authenticate(&self, _: &Login<'_>) -> Result<Identity, Refused> {
            Ok(Identity::Cloud)
        }
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let tasks = tokio_util::task::TaskTracker::new();
    broker::serve(
        listener,
        None,
        Arc::new(Anyone),
        Limits::default(),
        &tasks,
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
}
