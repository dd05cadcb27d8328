//! Revocation push and presence over MQTT: the embedded broker, an external broker that is
//! away and comes back, the persisted outbox across a restart.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use octomil_cloud::mqtt::MqttError;
use octomil_cloud::{ExternalBroker, MqttMode};
use octomil_common::envelope;
use octomil_common::proof;
use octomil_common::wire::Presence;
use reqwest::{Method, StatusCode};
use rumqttc::{LastWill, QoS};
use serde_json::Value;

use support::mqtt::{
    Login, TestClient, eventually, free_port, observer, plain_broker, start_with, tls_of,
};
use support::{Device, Env};

fn embedded() -> MqttMode {
    MqttMode::Embedded {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn external(url: String) -> MqttMode {
    MqttMode::External(ExternalBroker {
        url,
        username: None,
        password: None,
        ca_file: None,
    })
}

fn mqtt_url(env: &Env) -> String {
    env.handle.info.mqtt_url.clone().unwrap()
}

/// Logs in as a registered device: its certificate, client id = device id, a persistent session.
async fn device_session(
    env: &Env,
    d: &Device,
    reg: &octomil_common::wire::RegisterResponse,
    will: Option<LastWill>,
) -> Result<TestClient, String> {
    support::mqtt::device_session(env, &d.id, tls_of(env, d, reg), will, false).await
}

/// An observer with the cloud's identity on the embedded broker.
async fn cloud_session(env: &Env) -> TestClient {
    observer(env, "test-observer").await
}

async fn revoke(env: &Env, id: &str) -> (StatusCode, Value) {
    let a = env.revoke(id).await;
    (a.status, a.body)
}

fn assert_envelope_for(env: &Env, payload: &[u8], id: &str) -> envelope::Revocation {
    let key = proof::decode_public_key(&env.handle.info.revocation_public_key).unwrap();
    let rev = envelope::open(payload, &key).unwrap();
    assert_eq!(rev.device_id, id);
    assert_eq!(rev.reason, "stolen");
    rev
}

async fn outbox_len(env: &Env) -> usize {
    env.handle.cloud.store.read(|m| m.outbox.len())
}

#[tokio::test]
async fn a_subscribed_device_receives_a_verifiable_revocation_after_the_puback() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    assert!(env.handle.mqtt_connected());
    assert!(mqtt_url(&env).starts_with("mqtts://127.0.0.1:"));
    let d = Device::new("edge-mqtt-1");
    let reg = d.register(&env).await;
    let info = reg.mqtt.clone().unwrap();
    assert_eq!(info.url, mqtt_url(&env));
    assert_eq!(info.username, d.id);
    assert_eq!(info.topic, "octomil/v1/devices/edge-mqtt-1/revocation");

    let mut dev = device_session(&env, &d, &reg, None).await.unwrap();
    dev.subscribe(&info.topic).await;

    let (status, body) = revoke(&env, &d.id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revocation_published"], true);
    let ack_ms = body["revocation_ack_ms"].as_u64().unwrap();
    println!("embedded broker: publish to PUBACK {ack_ms} ms");

    let p = dev.next_publish(&info.topic).await;
    let rev = assert_envelope_for(&env, &p.payload, &d.id);
    assert_eq!(rev.seq, 1);
    eventually("the outbox entry to be deleted", || async {
        (outbox_len(&env).await == 0).then_some(())
    })
    .await;

    // A revoked device's certificate still opens a session, to read its revocation only
    // (mqtt_client_certs: a_revoked_device_reads_its_revocation_and_nothing_else).
    env.handle.shutdown().await;
}

#[tokio::test]
async fn the_broker_refuses_a_client_without_a_certificate_or_with_anothers() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let d = Device::new("edge-mqtt-2");
    let reg = d.register(&env).await;
    let other = Device::new("edge-mqtt-3");
    let other_reg = other.register(&env).await;

    // No certificate: refused at the TLS handshake, whatever the CONNECT would have said (a
    // device key, or the cloud's name, as the password logins of old clouds did).
    let refused = [
        (d.id.as_str(), d.id.as_str(), reg.api_key.expose().as_str()),
        ("octomil-cloud:x", "octomil-cloud", "any-secret"),
        ("x", "no such/user", "x"),
    ];
    for (client_id, username, password) in refused {
        let r = TestClient::connect(Login {
            url: &mqtt_url(&env),
            ca_pem: Some(&env.handle.ca_pem),
            client_id,
            username,
            password,
            will: None,
            clean: true,
        })
        .await;
        assert!(r.is_err(), "{client_id}/{username} must be refused");
    }
    // Refused before any CONNECT was read: no login was even attempted.
    let stats = env.handle.broker().unwrap().stats();
    assert_eq!(
        stats
            .refused_logins
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Another device's certificate under this device's client id.
    let wrong =
        support::mqtt::device_session(&env, &d.id, tls_of(&env, &other, &other_reg), None, true)
            .await;
    assert!(
        wrong.is_err(),
        "another device's certificate must be refused"
    );
    assert!(device_session(&env, &d, &reg, None).await.is_ok());
    // The cloud's own name is not available as a device id.
    let a = Device::new("octomil-cloud").try_register(&env).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    env.handle.shutdown().await;
}

fn presence_of(list: &Value, id: &str) -> Value {
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn presence_shows_online_and_then_offline_by_last_will() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let d = Device::new("edge-mqtt-4");
    let reg = d.register(&env).await;
    let status_topic = format!("octomil/v1/devices/{}/status", d.id);
    let will = LastWill::new(
        status_topic.clone(),
        serde_json::to_vec(&Presence::last_will()).unwrap(),
        QoS::AtLeastOnce,
        true,
    );
    let mut dev = device_session(&env, &d, &reg, Some(will)).await.unwrap();
    let online = Presence {
        online: true,
        state: "active".into(),
        daemon_version: Some("9.9.9".into()),
        expires_at: Some(reg.expires_at),
    };
    dev.publish_retained(&status_topic, serde_json::to_vec(&online).unwrap())
        .await;

    let seen = eventually("the device to show online", || async {
        let list = env.owner(Method::GET, "/devices", None).await.body;
        let p = presence_of(&list, &d.id);
        (p["online"] == true).then_some(p)
    })
    .await;
    assert_eq!(seen["daemon_version"], "9.9.9");
    assert_eq!(seen["reported_state"], "active");
    assert!(seen["last_seen"].as_u64().is_some());

    // Garbage on the status topic changes nothing.
    dev.publish_retained(&status_topic, b"{not json".to_vec())
        .await;
    dev.publish_retained(&status_topic, vec![b' '; 4096]).await;
    let ignored = eventually("junk to be counted", || async {
        let n = env.handle.cloud.presence.ignored();
        (n >= 2).then_some(n)
    })
    .await;
    assert_eq!(ignored, 2);

    dev.kill();
    let seen = eventually("the Last Will to mark it offline", || async {
        let a = env
            .owner(Method::GET, &format!("/devices/{}", d.id), None)
            .await;
        (a.body["online"] == false).then_some(a.body)
    })
    .await;
    assert_eq!(seen["reported_state"], "offline");
    assert_eq!(seen["daemon_version"], "9.9.9");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_broker_gets_202_and_the_outbox_delivers_when_it_appears() {
    let port = free_port();
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(external(format!("mqtt://127.0.0.1:{port}")))
            .mqtt_ack_timeout(Duration::from_millis(300))
    })
    .await;
    assert_eq!(mqtt_url(&env), format!("mqtt://127.0.0.1:{port}"));
    let d = Device::new("edge-mqtt-5");
    d.register(&env).await;
    let (status, body) = revoke(&env, &d.id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["revocation_published"], false);
    assert_eq!(body["state"], "revoked");
    assert_eq!(outbox_len(&env).await, 1);

    plain_broker(port);
    let mut observer = eventually("the late broker to accept a client", || async {
        TestClient::connect(Login {
            url: &format!("mqtt://127.0.0.1:{port}"),
            ca_pem: None,
            client_id: "observer",
            username: "observer",
            password: "x",
            will: None,
            clean: true,
        })
        .await
        .ok()
    })
    .await;
    let topic = format!("octomil/v1/devices/{}/revocation", d.id);
    observer.subscribe(&topic).await;
    let p = observer.next_publish(&topic).await;
    assert_envelope_for(&env, &p.payload, &d.id);
    eventually("the outbox to empty", || async {
        (outbox_len(&env).await == 0).then_some(())
    })
    .await;
    env.handle.shutdown().await;
}

#[tokio::test]
async fn the_outbox_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = start_with(dir, |b| {
        b.mqtt(external(format!("mqtt://127.0.0.1:{port}")))
            .mqtt_ack_timeout(Duration::from_millis(200))
    })
    .await;
    let d = Device::new("edge-mqtt-6");
    d.register(&env).await;
    let (status, _) = revoke(&env, &d.id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let Env { handle, dir, .. } = env;
    handle.shutdown().await;

    let env = start_with(dir, |b| b.mqtt(embedded())).await;
    let mut observer = cloud_session(&env).await;
    let topic = format!("octomil/v1/devices/{}/revocation", d.id);
    observer.subscribe(&topic).await;
    let p = observer.next_publish(&topic).await;
    assert!(p.retain, "revocations are retained");
    assert_envelope_for(&env, &p.payload, &d.id);
    eventually("the outbox to empty", || async {
        (outbox_len(&env).await == 0).then_some(())
    })
    .await;
    env.handle.shutdown().await;
}

#[tokio::test]
async fn deleting_a_device_clears_its_retained_revocation() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let d = Device::new("edge-mqtt-7");
    d.register(&env).await;
    let (status, _) = revoke(&env, &d.id).await;
    assert_eq!(status, StatusCode::OK);
    let topic = format!("octomil/v1/devices/{}/revocation", d.id);
    let mut observer = cloud_session(&env).await;
    observer.subscribe(&topic).await;
    assert!(observer.next_publish(&topic).await.retain);

    let a = env
        .owner(Method::DELETE, &format!("/devices/{}", d.id), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    // The clear reaches live subscribers as an empty message, and the broker drops the
    // retained revocation with it (MQTT 3.1.1 §3.3.1.3), so a re-provisioned id starts clean.
    assert!(observer.next_publish(&topic).await.payload.is_empty());
    // The acknowledged entry is deleted by its own write, queued after the PUBACK.
    eventually("the outbox entry to be deleted", || async {
        (outbox_len(&env).await == 0).then_some(())
    })
    .await;
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_broker_url_off_loopback_is_refused_at_start() {
    support::install_crypto();
    // The library: for the cloud's own broker and for the URL devices are told.
    let dir = tempfile::tempdir().unwrap();
    let r = octomil_cloud::CloudStub::builder(dir.path().join("a"))
        .mqtt(external("mqtt://broker.example:1883".into()))
        .spawn()
        .await;
    assert!(
        matches!(
            r,
            Err(octomil_cloud::CloudError::Mqtt(
                MqttError::PlainNotLoopback { .. }
            ))
        ),
        "{r:?}"
    );
    let r = octomil_cloud::CloudStub::builder(dir.path().join("b"))
        .mqtt(embedded())
        .mqtt_device_url("mqtt://10.1.2.3:1883")
        .spawn()
        .await;
    assert!(
        matches!(
            r,
            Err(octomil_cloud::CloudError::Mqtt(
                MqttError::PlainNotLoopback { .. }
            ))
        ),
        "{r:?}"
    );
    // Loopback stays allowed (development), and so does TLS anywhere.
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(embedded())
            .mqtt_device_url("mqtts://broker.example:8883")
    })
    .await;
    env.handle.shutdown().await;

    // The binary says why and exits non-zero, for either flag.
    for flag in [
        ["--mqtt-broker", "mqtt://broker.example:1883"],
        ["--mqtt-device-url", "mqtt://192.0.2.7:1883"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_octomil-cloud"))
            .args(["serve", "--state-dir"])
            .arg(dir.path().join("bin"))
            .args(flag)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag:?}: {stderr}");
        assert!(
            stderr.contains("clear text") && stderr.contains("mqtts://"),
            "{flag:?}: {stderr}"
        );
        assert!(!dir.path().join("bin/cloud.json").exists());
    }
}
