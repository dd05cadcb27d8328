//! Interop: the cloud in `--mqtt-broker` mode against a real Mosquitto with a TLS listener,
//! a password file and per-device pattern ACLs (the setup docs/mosquitto.conf.example shows).
//! Without `mosquitto` installed it fails in CI and skips, saying so, elsewhere.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_cloud::{ExternalBroker, MqttMode};
use octomil_common::wire::Presence;
use octomil_common::{Secret, envelope, proof, token};
use octomil_testkit::mosquitto::{self, Mosquitto};
use octomil_testkit::skip;
use reqwest::{Method, StatusCode};

use support::Device;
use support::mqtt::{Login, TestClient, eventually, start_with};

#[tokio::test]
async fn revocations_and_presence_flow_through_mosquitto() {
    if !mosquitto::available() {
        skip::missing_dependency(
            "revocations_and_presence_flow_through_mosquitto",
            "mosquitto is not installed (apt-get install mosquitto)",
        );
        return;
    }
    support::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The cloud's PKI first: Mosquitto serves the cloud's own server certificate.
    octomil_cloud::tls::Pki::load_or_create(&state, &[]).unwrap();
    let broker = Mosquitto::start(
        &dir.path().join("mosquitto"),
        &state,
        mosquitto::free_port(),
    );
    let cloud_password = token::random_base62(32);
    broker.add_user("octomil-cloud", cloud_password.expose());

    let env = start_with(dir, |b| {
        b.mqtt(MqttMode::External(ExternalBroker {
            url: broker.url(),
            username: Some("octomil-cloud".into()),
            password: Some(Secret::new(cloud_password.expose().clone())),
            ca_file: None,
        }))
    })
    .await;
    assert_eq!(
        env.handle.info.mqtt_url.as_deref(),
        Some(broker.url().as_str())
    );
    let d = Device::new("edge-mosq-1");
    let reg = d.register(&env).await;
    // A static password file cannot follow key rotation; here the test enrols the current
    // key by hand (see docs/mqtt.md for what production setups do instead).
    broker.add_user(&d.id, reg.api_key.expose());
    eventually("the cloud to log in to Mosquitto", || async {
        env.handle.mqtt_connected().then_some(())
    })
    .await;

    let login = Login {
        url: &reg.mqtt.as_ref().unwrap().url,
        ca_pem: Some(&env.handle.ca_pem),
        client_id: &d.id,
        username: &d.id,
        password: reg.api_key.expose(),
        will: None,
        clean: false,
    };
    let mut dev = TestClient::connect(login).await.unwrap();
    let topic = format!("octomil/v1/devices/{}/revocation", d.id);
    dev.subscribe(&topic).await;
    // The ACL keeps a device out of every other device's topic: Mosquitto 2.0 grants the
    // subscription but never delivers what the device may not read (checked below).
    let other = Device::new("edge-mosq-2");
    other.register(&env).await;
    let other_topic = format!("octomil/v1/devices/{}/revocation", other.id);
    dev.subscribe_result(&other_topic).await;

    // Presence through Mosquitto.
    let status = format!("octomil/v1/devices/{}/status", d.id);
    let online = Presence {
        online: true,
        state: "active".into(),
        daemon_version: Some("1.2.3".into()),
        expires_at: None,
    };
    dev.publish_retained(&status, serde_json::to_vec(&online).unwrap())
        .await;
    eventually("the device to show online", || async {
        let a = env
            .owner(Method::GET, &format!("/devices/{}", d.id), None)
            .await;
        (a.body["online"] == true).then_some(())
    })
    .await;

    // The other device first: if the ACL leaked, its envelope would reach `dev` first.
    let mut answers = Vec::new();
    for id in [&other.id, &d.id] {
        let a = env.revoke(id).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{:?}\n{}",
            a.body,
            broker.log_text()
        );
        answers.push(a);
    }
    let a = answers.pop().unwrap();
    assert_eq!(a.body["revocation_published"], true);
    println!(
        "mosquitto: publish to PUBACK {} ms",
        a.body["revocation_ack_ms"].as_u64().unwrap()
    );
    let p = dev.next_any_publish().await;
    assert_eq!(p.topic, topic, "a device read another device's revocation");
    let key = proof::decode_public_key(&env.handle.info.revocation_public_key).unwrap();
    let rev = envelope::open(&p.payload, &key).unwrap();
    assert_eq!(rev.device_id, d.id);
    env.handle.shutdown().await;
    drop(broker);
}
