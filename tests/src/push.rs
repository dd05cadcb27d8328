//! The revocation-push pair the MQTT tests share (`tests/revocation.rs`,
//! `tests/client_certs.rs`): a cloud with its embedded broker, or in front of a real Mosquitto
//! that checks client certificates; daemon options with a short keep-alive; and the waits for
//! a daemon's MQTT session and for its first refusal after a revoke.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use octomil_cloud::{CloudStub, ExternalBroker, MqttMode};
use octomil_testkit::poll::eventually_or;
use serde_json::{Value, json};

use crate::mosquitto::{self, Mosquitto};
use crate::{DaemonOptions, DaemonProcess, TestCloud};

/// A cloud in `dir/cloud` with its embedded broker on a free loopback port, or on `listen`
/// with devices told `url` (a proxy in front of it) when `device_url` is given.
pub async fn embedded(dir: &Path, device_url: Option<(SocketAddr, String)>) -> TestCloud {
    let b = CloudStub::builder(dir.join("cloud"));
    let b = match device_url {
        Some((listen, url)) => b.mqtt(MqttMode::Embedded { listen }).mqtt_device_url(url),
        None => b.mqtt(MqttMode::Embedded {
            listen: "127.0.0.1:0".parse().expect("an address"),
        }),
    };
    TestCloud::with(b).await
}

/// A real Mosquitto in `dir/mosquitto` set up from docs/mosquitto.conf.example (client
/// certificates from the cloud's MQTT CA, identity = CN), and a cloud in `dir/cloud` that
/// publishes through it, logging in with its own certificate (and `username`, if given).
/// The caller checks first that Mosquitto is installed.
pub async fn mosquitto_cloud(dir: &Path, username: Option<&str>) -> (Mosquitto, TestCloud) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = dir.join("cloud");
    // The cloud's CAs first: Mosquitto serves the cloud's server certificate and verifies
    // client certificates (the cloud's and the daemon's) against its MQTT CA.
    octomil_cloud::tls::Pki::load_or_create(&state, &[]).expect("the cloud's PKI");
    octomil_cloud::mqtt::ca::MqttCa::load_or_create(&state).expect("the cloud's MQTT CA");
    let broker =
        Mosquitto::start_with_client_certs(&dir.join("mosquitto"), &state, mosquitto::free_port());
    let handle = CloudStub::builder(&state)
        .mqtt(MqttMode::External(ExternalBroker {
            url: broker.url(),
            username: username.map(str::to_owned),
            password: None,
            ca_file: None,
        }))
        .spawn()
        .await
        .expect("cloud starts");
    (broker, TestCloud::wrap(handle))
}

/// Daemon options for `id` with a 2 s MQTT keep-alive (presence goes offline within 3 s).
pub fn opts(c: &TestCloud, id: &str) -> DaemonOptions {
    let mut o = c.opts(id);
    o.extra = "mqtt_keepalive = \"2s\"\n".into();
    o
}

/// `POST /devices/{id}/revoke` as the Owner, reason "test revocation".
pub async fn revoke(c: &TestCloud, id: &str) -> (u16, Value) {
    c.owner(
        reqwest::Method::POST,
        &format!("/devices/{id}/revoke"),
        Some(json!({"reason": "test revocation"})),
    )
    .await
}

/// `GET /devices/{id}` as the Owner.
pub async fn device(c: &TestCloud, id: &str) -> Value {
    c.owner(reqwest::Method::GET, &format!("/devices/{id}"), None)
        .await
        .1
}

/// Waits until the daemon reports an MQTT session; on failure shows its status, its log and
/// `extra()` (a broker's log, say).
pub async fn wait_mqtt(d: &DaemonProcess, extra: impl Fn() -> String) {
    eventually_or(Duration::from_secs(20), "an MQTT session", || async {
        let (_, s) = d.get("/v1/status").await;
        if s["mqtt_connected"] == true {
            return Ok(());
        }
        Err(format!("{s}\n{}\n{}", d.log_text(), extra()))
    })
    .await
}

/// Polls `/v1/token` until it answers 403 `device_revoked`; returns how long that took.
pub async fn until_refused(d: &DaemonProcess, since: Instant, limit: Duration) -> Duration {
    loop {
        let (code, body) = d.get("/v1/token").await;
        if code == 403 {
            assert_eq!(body["error"], "device_revoked");
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "still serving a key {:?} after the revoke\n{}",
            since.elapsed(),
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
