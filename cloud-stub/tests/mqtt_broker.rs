//! The embedded broker cannot be crashed or stalled by clients: resets during CONNECT, a
//! reconnect storm over the connection cap, idle sockets and half TLS hellos from many
//! addresses, silent connections past the deadlines, the per-address cap. Real TLS (rustls,
//! ring), real MQTT, the real `octomil-cloud` binary where a crash would show.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use octomil_cloud::mqtt::broker::Limits;
use octomil_cloud::{CloudInfo, MqttMode};
use octomil_common::wire::RegisterResponse;
use reqwest::{Method, StatusCode};
use rumqttc::{Connect, LastWill, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use support::Device;
use support::mqtt::{CertLogin, DEADLINE, Login, TestClient, device_tls, eventually, start_with};

/// How long a device may take to connect while the broker is under attack (the benchmark
/// reports the real figure).
const GENEROUS: Duration = Duration::from_secs(5);

fn embedded() -> MqttMode {
    MqttMode::Embedded {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn broker_addr(url: &str) -> SocketAddr {
    let port = url.rsplit(':').next().unwrap().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

async fn tls(stream: TcpStream, cfg: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), stream)
        .await
        .unwrap()
}

/// CONNECT bytes for a device session as the daemon sends it (persistent, with a will; the
/// identity is the TLS client certificate).
fn connect_bytes(id: &str) -> Vec<u8> {
    let mut c = Connect::new(id);
    c.clean_session = false;
    c.keep_alive = 30;
    c.last_will = Some(LastWill::new(
        format!("octomil/v1/devices/{id}/status"),
        br#"{"online":false,"state":"offline"}"#.to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    let mut out = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut out, 64 * 1024).unwrap();
    out.to_vec()
}

/// A device session with the certificate of its registration answer.
async fn device_login(
    url: &str,
    ca_pem: &str,
    d: &Device,
    reg: &RegisterResponse,
) -> Result<TestClient, String> {
    let cert = reg.mqtt.as_ref().unwrap().client_cert.as_deref().unwrap();
    TestClient::connect_cert(CertLogin {
        url,
        client_id: &d.id,
        tls: device_tls(ca_pem, cert, &d.key),
        will: None,
        clean: false,
    })
    .await
}

/// Reads until the server closes the connection; the time that took.
async fn closed_by_server(mut s: TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept a silent connection open for {DEADLINE:?}"),
        }
    }
}

/// The first 60 bytes of a TLS record that announces a 512-byte ClientHello.
fn half_hello() -> Vec<u8> {
    let mut b = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    b.resize(60, 0x42);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connects_reset_before_the_connack_leave_the_cloud_serving() {
    support::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log_path = dir.path().join("cloud.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_octomil-cloud"))
        .args(["serve", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let info = eventually("cloud.json", || async { CloudInfo::read(&state).ok() }).await;
    let ca_pem = std::fs::read_to_string(&info.ca_file).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let bootstrap = std::fs::read_to_string(&info.bootstrap_token_file).unwrap();
    let owner_key = std::fs::read_to_string(&info.owner_api_key_file).unwrap();
    let id = "edge-reset-1";
    let challenge: serde_json::Value = http
        .post(format!(
            "{}/api/v1/devices/register/challenge",
            info.http_url
        ))
        .json(&serde_json::json!({ "device_id": id }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = Device::new(id);
    let body =
        device.register_body_with(bootstrap.trim(), challenge["challenge"].as_str().unwrap());
    let reg: RegisterResponse = http
        .post(format!("{}/api/v1/devices/register", info.http_url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = info.mqtt_url.clone().unwrap();
    let cert = reg.mqtt.as_ref().unwrap().client_cert.clone().unwrap();
    let dev_tls = device_tls(&ca_pem, &cert, &device.key);
    let addr = broker_addr(&url);

    // A power cut right after CONNECT, fifty times, with valid credentials, a will and a
    // persistent session (rumqttd 0.20 aborted the cloud on the second one).
    let connect = connect_bytes(id);
    for _ in 0..50 {
        let mut s = tls(tcp_from(Ipv4Addr::LOCALHOST, addr).await, dev_tls.clone()).await;
        s.write_all(&connect).await.unwrap();
        s.flush().await.unwrap();
        s.get_ref().0.set_zero_linger().unwrap();
        drop(s);
    }

    let mut dev = device_login(&url, &ca_pem, &device, &reg)
        .await
        .expect("a normal connect after the resets");
    dev.subscribe(&format!("octomil/v1/devices/{id}/revocation"))
        .await;
    let list = http
        .get(format!("{}/api/v1/devices", info.http_url))
        .bearer_auth(owner_key.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK, "the HTTP API still answers");
    assert!(child.try_wait().unwrap().is_none(), "the cloud is running");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("panicked"),
        "no panic, contained or not:\n{log}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_connection_cap_are_refused_and_the_sessions_carry_on() {
    // Two devices take two of five places (the cloud's session has its own); ten clients
    // fight for the rest.
    let limits = Limits {
        max_connections: 5,
        ..Limits::default()
    };
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(embedded()).mqtt_broker_limits(limits)
    })
    .await;
    env.relax_limits().await;
    let url = env.handle.info.mqtt_url.clone().unwrap();
    let ca = env.handle.ca_pem.clone();
    let a = Device::new("edge-cap-a");
    let a_reg = a.register(&env).await;
    let b = Device::new("edge-cap-b");
    let b_reg = b.register(&env).await;
    let mut a_dev = device_login(&url, &ca, &a, &a_reg).await.unwrap();
    a_dev
        .subscribe(&format!("octomil/v1/devices/{}/revocation", a.id))
        .await;
    let mut b_dev = device_login(&url, &ca, &b, &b_reg).await.unwrap();
    b_dev
        .subscribe(&format!("octomil/v1/devices/{}/revocation", b.id))
        .await;

    let mut stormers = Vec::new();
    for i in 0..10 {
        let d = Device::new(&format!("edge-storm-{i}"));
        let reg = d.register(&env).await;
        let (url, ca) = (url.clone(), ca.clone());
        stormers.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..15 {
                match device_login(&url, &ca, &d, &reg).await {
                    Ok(c) => drop(c),
                    Err(_) => refused += 1,
                }
            }
            refused
        }));
    }
    // While the storm goes on, a revocation reaches its device and gets its PUBACK.
    let answer = env.revoke(&a.id).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["revocation_published"], true);
    let p = a_dev
        .next_publish(&format!("octomil/v1/devices/{}/revocation", a.id))
        .await;
    assert!(!p.payload.is_empty());
    let mut refused = 0;
    for s in stormers {
        refused += s.await.unwrap();
    }
    assert!(refused > 0, "the cap was reached");
    let broker = env.handle.broker().unwrap();
    assert!(broker.stats().refused_at_accept.load(Ordering::Relaxed) > 0);
    assert_eq!(broker.stats().panics.load(Ordering::Relaxed), 0);

    // B's session lived through it; the cloud's session too.
    assert!(env.handle.mqtt_connected());
    let answer = env.revoke(&b.id).await;
    assert_eq!(answer.body["revocation_published"], true);
    b_dev
        .next_publish(&format!("octomil/v1/devices/{}/revocation", b.id))
        .await;
    env.handle.shutdown().await;
}

/// `max_connections` counts devices only: with a cap of 2 and the cloud's session up, two
/// devices get in, a third is refused, and gets in once a place frees up; the cloud's
/// session never took a device's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_devices_not_the_clouds_own_session() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(embedded()).mqtt_broker_limits(limits)
    })
    .await;
    env.relax_limits().await;
    let url = env.handle.info.mqtt_url.clone().unwrap();
    let ca = env.handle.ca_pem.clone();
    eventually("the cloud's session to be up", || async {
        env.handle.mqtt_connected().then_some(())
    })
    .await;
    let mut regs = Vec::new();
    for id in ["edge-capd-1", "edge-capd-2", "edge-capd-3"] {
        let d = Device::new(id);
        let reg = d.register(&env).await;
        regs.push((d, reg));
    }
    let first = device_login(&url, &ca, &regs[0].0, &regs[0].1)
        .await
        .unwrap();
    let _second = device_login(&url, &ca, &regs[1].0, &regs[1].1)
        .await
        .unwrap();
    let third = device_login(&url, &ca, &regs[2].0, &regs[2].1).await;
    assert!(third.is_err(), "a third device got past a cap of 2");
    assert!(
        env.handle.mqtt_connected(),
        "the cloud's session keeps its place"
    );

    drop(first);
    eventually("a freed place to admit the third device", || async {
        device_login(&url, &ca, &regs[2].0, &regs[2].1).await.ok()
    })
    .await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_half_hellos_from_many_addresses_do_not_keep_a_device_out() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let url = env.handle.info.mqtt_url.clone().unwrap();
    let addr = broker_addr(&url);
    let d = Device::new("edge-stall-1");
    let reg = d.register(&env).await;

    let mut held = Vec::new();
    for i in 0..100u8 {
        held.push(tcp_from(Ipv4Addr::new(127, 0, 0, 2 + i), addr).await);
    }
    for i in 0..100u8 {
        let mut s = tcp_from(Ipv4Addr::new(127, 0, 1, 2 + i), addr).await;
        s.write_all(&half_hello()).await.unwrap();
        held.push(s);
    }
    let start = Instant::now();
    let dev = device_login(&url, &env.handle.ca_pem, &d, &reg).await;
    let took = start.elapsed();
    assert!(dev.is_ok(), "{:?}", dev.err());
    assert!(
        took < GENEROUS,
        "a device took {took:?} to connect past 200 stalled sockets"
    );
    let answer = env
        .owner(Method::GET, &format!("/devices/{}", d.id), None)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        env.handle
            .broker()
            .unwrap()
            .stats()
            .panics
            .load(Ordering::Relaxed),
        0
    );
    drop(held);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_handshake_and_connect_deadlines() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(embedded()).mqtt_broker_limits(limits)
    })
    .await;
    let addr = broker_addr(env.handle.info.mqtt_url.as_deref().unwrap());
    // No TLS hello at all; half a hello.
    closed_by_server(tcp_from(Ipv4Addr::LOCALHOST, addr).await).await;
    let mut half = tcp_from(Ipv4Addr::LOCALHOST, addr).await;
    half.write_all(&half_hello()).await.unwrap();
    closed_by_server(half).await;
    // TLS done (with a valid client certificate), then no CONNECT: the server ends the
    // session (EOF or close_notify).
    let cert = support::mqtt::cloud_tls(&env.handle.state_dir, &env.handle.ca_pem, "octomil-cloud");
    let mut s = tls(tcp_from(Ipv4Addr::LOCALHOST, addr).await, cert).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("closed within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let stats = env.handle.broker().unwrap().stats();
    eventually("three timeouts counted", || async {
        (stats.timed_out.load(Ordering::Relaxed) == 3).then_some(())
    })
    .await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_per_address_and_devices_are_not() {
    let limits = Limits {
        max_unauthenticated_per_address: 5,
        ..Limits::default()
    };
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(embedded()).mqtt_broker_limits(limits)
    })
    .await;
    env.relax_limits().await;
    let url = env.handle.info.mqtt_url.clone().unwrap();
    let addr = broker_addr(&url);
    let ca = env.handle.ca_pem.clone();
    // Devices behind one NAT address: logged in, they no longer count against it.
    let mut sessions = Vec::new();
    for i in 0..8 {
        let d = Device::new(&format!("edge-nat-{i}"));
        let reg = d.register(&env).await;
        sessions.push(device_login(&url, &ca, &d, &reg).await.unwrap());
    }
    // Five idle sockets from 127.0.0.9 fill its quota; the sixth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tcp_from(Ipv4Addr::new(127, 0, 0, 9), addr).await);
    }
    // Eight devices, the cloud's own session, five idle sockets.
    let open = 8 + 1 + 5;
    eventually("the five to be counted", || async {
        (env.handle.broker().unwrap().connections() >= open).then_some(())
    })
    .await;
    let sixth = tcp_from(Ipv4Addr::new(127, 0, 0, 9), addr).await;
    closed_by_server(sixth).await;
    let stats = env.handle.broker().unwrap().stats();
    assert_eq!(stats.refused_at_accept.load(Ordering::Relaxed), 1);
    // Another address is not affected.
    let d = Device::new("edge-nat-late");
    let reg = d.register(&env).await;
    assert!(device_login(&url, &ca, &d, &reg).await.is_ok());
    drop(idle);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_connection_ends_only_that_connection() {
    use octomil_cloud::mqtt::auth::{Authenticator, Identity, Login as AuthLogin, Refused};
    use octomil_cloud::mqtt::broker;

    /// A bug stand-in: panics on the login named "boom".
    struct Buggy;
    impl Authenticator for Buggy {
        fn authenticate(&self, login: &AuthLogin<'_>) -> Result<Identity, Refused> {
            assert_ne!(login.username, Some("boom"), "a bug in the broker");
            Ok(Identity::Cloud)
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let b = broker::serve(
        listener,
        None,
        std::sync::Arc::new(Buggy),
        Limits::default(),
        &tasks,
        stop.clone(),
    )
    .unwrap();
    let url = format!("mqtt://127.0.0.1:{}", b.addr.port());
    let login = |id: &'static str, user: &'static str| Login {
        url: &url,
        ca_pem: None,
        client_id: id,
        username: user,
        password: "x",
        will: None,
        clean: true,
    };
    let mut before = TestClient::connect(login("before", "ok")).await.unwrap();
    before.subscribe("octomil/v1/devices/+/revocation").await;
    assert!(TestClient::connect(login("boom", "boom")).await.is_err());
    // Unwinding closes the socket before the catch counts the panic: poll for the count.
    eventually("the panic to be counted", || async {
        (b.stats().panics.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    // The broker, and the session that was there before, carry on; the slot was released.
    let mut after = TestClient::connect(login("after", "ok")).await.unwrap();
    after
        .publish_retained("octomil/v1/devices/edge-1/revocation", b"r".to_vec())
        .await;
    let p = before
        .next_publish("octomil/v1/devices/edge-1/revocation")
        .await;
    assert_eq!(&p.payload[..], b"r");
    // The panicked connection's slot is released as its state is dropped.
    eventually("two connections left", || async {
        (b.connections() == 2).then_some(())
    })
    .await;
    stop.cancel();
    tasks.close();
    tokio::time::timeout(DEADLINE, tasks.wait())
        .await
        .expect("the broker stops");
}
