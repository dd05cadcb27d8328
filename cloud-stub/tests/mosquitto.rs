//! Interop: the cloud in `--mqtt-broker` mode against a real Mosquitto run with exactly
//! docs/mosquitto.conf.example and docs/mosquitto.acl.example: TLS, client certificates from
//! the cloud's MQTT CA (identity = CN, client id = CN), `%u` pattern ACLs, no password file.
//! Devices are rumqttc clients presenting the certificate of a real register or refresh answer
//! with their Ed25519 identity key. Without `mosquitto` installed it fails in CI and skips,
//! saying so, elsewhere.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use octomil_cloud::{ExternalBroker, MqttMode};
use octomil_common::wire::{MqttInfo, Presence};
use octomil_common::{envelope, proof};
use octomil_testkit::mosquitto::{self, Mosquitto};
use octomil_testkit::skip;
use reqwest::{Method, StatusCode};
use rumqttc::{LastWill, QoS};
use serde_json::json;

use support::mqtt::{CertLogin, TestClient, device_tls, eventually, start_with};
use support::{Device, Env};

fn revocation(id: &str) -> String {
    format!("octomil/v1/devices/{id}/revocation")
}

fn status(id: &str) -> String {
    format!("octomil/v1/devices/{id}/status")
}

/// A cloud whose broker is a Mosquitto started from the docs' files; `None` (and a skip
/// notice) without Mosquitto.
async fn cloud_with_mosquitto(test: &str) -> Option<(Env, Mosquitto)> {
    if !mosquitto::available() {
        skip::missing_dependency(
            test,
            "mosquitto is not installed (apt-get install mosquitto)",
        );
        return None;
    }
    support::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The cloud's CAs first: Mosquitto serves the cloud's server certificate and trusts its
    // MQTT CA for client certificates.
    octomil_cloud::tls::Pki::load_or_create(&state, &[]).unwrap();
    octomil_cloud::mqtt::ca::MqttCa::load_or_create(&state).unwrap();
    let broker = Mosquitto::start_with_client_certs(
        &dir.path().join("mosquitto"),
        &state,
        mosquitto::free_port(),
    );
    let env = start_with(dir, |b| {
        b.mqtt(MqttMode::External(ExternalBroker {
            url: broker.url(),
            username: None,
            password: None,
            ca_file: None,
        }))
    })
    .await;
    eventually(
        "the cloud to log in to Mosquitto with its certificate",
        || async { env.handle.mqtt_connected().then_some(()) },
    )
    .await;
    Some((env, broker))
}

/// Connects as the daemon does: the answer's certificate, the device key, a will on its
/// status topic, a persistent session.
async fn connect(
    env: &Env,
    info: &MqttInfo,
    d: &Device,
    client_id: &str,
) -> Result<TestClient, String> {
    connect_tls(
        env,
        info,
        client_id,
        device_tls(
            &env.handle.ca_pem,
            info.client_cert.as_ref().unwrap(),
            &d.key,
        ),
        &d.id,
    )
    .await
}

async fn connect_tls(
    _env: &Env,
    info: &MqttInfo,
    client_id: &str,
    tls: Arc<rustls::ClientConfig>,
    id: &str,
) -> Result<TestClient, String> {
    TestClient::connect_cert(CertLogin {
        url: &info.url,
        client_id,
        tls,
        will: Some(LastWill::new(
            status(id),
            br#"{"online":false,"state":"offline"}"#.to_vec(),
            QoS::AtLeastOnce,
            true,
        )),
        clean: false,
    })
    .await
}

fn check_envelope(env: &Env, payload: &[u8], id: &str) {
    let key = proof::decode_public_key(&env.handle.info.revocation_public_key).unwrap();
    assert_eq!(envelope::open(payload, &key).unwrap().device_id, id);
}

#[tokio::test]
async fn a_device_with_its_certificate_gets_presence_and_its_revocation_through_mosquitto() {
    let Some((env, broker)) = cloud_with_mosquitto(
        "a_device_with_its_certificate_gets_presence_and_its_revocation_through_mosquitto",
    )
    .await
    else {
        return;
    };
    let d = Device::new("edge-mosq-1");
    let reg = d.register(&env).await;
    let info = reg.mqtt.clone().unwrap();
    assert_eq!(info.url, broker.url());
    let mut dev = connect(&env, &info, &d, &d.id).await.unwrap();
    dev.subscribe(&revocation(&d.id)).await;

    let online = Presence {
        online: true,
        state: "active".into(),
        daemon_version: Some("1.2.3".into()),
        expires_at: None,
    };
    dev.publish_retained(&status(&d.id), serde_json::to_vec(&online).unwrap())
        .await;
    eventually("the device to show online", || async {
        let a = env
            .owner(Method::GET, &format!("/devices/{}", d.id), None)
            .await;
        (a.body["online"] == true).then_some(())
    })
    .await;

    let a = env.revoke(&d.id).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{:?}\n{}",
        a.body,
        broker.log_text()
    );
    assert_eq!(a.body["revocation_published"], true);
    let p = dev.next_publish(&revocation(&d.id)).await;
    check_envelope(&env, &p.payload, &d.id);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_device_reconnects_across_three_refreshes_and_its_old_certificate_expires() {
    let Some((env, broker)) = cloud_with_mosquitto(
        "a_device_reconnects_across_three_refreshes_and_its_old_certificate_expires",
    )
    .await
    else {
        return;
    };
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"device_token_expiry": "5s"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let d = Device::new("edge-mosq-2");
    let reg = d.register(&env).await;
    let first = reg.mqtt.clone().unwrap();
    assert_eq!(first.client_cert_expires_in, Some(5));
    let mut conn = connect(&env, &first, &d, &d.id).await.unwrap();
    conn.subscribe(&revocation(&d.id)).await;
    let mut refresh_token = reg.refresh_token.expose().clone();
    let mut last = first.clone();
    for round in 1..=3 {
        let r = d.refresh(&env, &refresh_token).await;
        refresh_token = r.refresh_token.expose().clone();
        let info = r.mqtt.unwrap();
        assert_ne!(
            info.client_cert, last.client_cert,
            "round {round}: a new certificate"
        );
        // Reconnect with the renewed certificate (the daemon does so at each refresh).
        drop(conn);
        conn = connect(&env, &info, &d, &d.id)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", broker.log_text()));
        conn.subscribe(&revocation(&d.id)).await;
        last = info;
    }
    // The first certificate's five seconds run out: Mosquitto refuses it at the handshake,
    // while the last one still works.
    eventually("the first certificate to be refused", || async {
        connect(&env, &first, &d, &d.id).await.err()
    })
    .await;
    let r = d.refresh(&env, &refresh_token).await;
    let fresh = r.mqtt.unwrap();
    let mut conn = connect(&env, &fresh, &d, &d.id).await.unwrap();
    conn.subscribe(&revocation(&d.id)).await;
    env.revoke(&d.id).await;
    let p = conn.next_publish(&revocation(&d.id)).await;
    check_envelope(&env, &p.payload, &d.id);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn cross_device_reads_writes_and_client_id_takeover_are_refused_by_mosquitto() {
    let Some((env, _broker)) = cloud_with_mosquitto(
        "cross_device_reads_writes_and_client_id_takeover_are_refused_by_mosquitto",
    )
    .await
    else {
        return;
    };
    let a = Device::new("edge-mosq-3a");
    let b = Device::new("edge-mosq-3b");
    let a_info = a.register(&env).await.mqtt.unwrap();
    let b_info = b.register(&env).await.mqtt.unwrap();
    let mut b_conn = connect(&env, &b_info, &b, &b.id).await.unwrap();
    b_conn.subscribe(&revocation(&b.id)).await;

    // A presents its own certificate with B's client id: Mosquitto names the session after
    // the CN (use_username_as_clientid), so A gets a session of its own and B's stays.
    let mut a_conn = connect(&env, &a_info, &a, &b.id).await.unwrap();
    // A subscribes to B's revocation (Mosquitto grants the SUBACK but never delivers what the
    // ACL forbids) and forges B's status (dropped).
    a_conn.subscribe_result(&revocation(&b.id)).await;
    a_conn
        .publish_retained(
            &status(&b.id),
            br#"{"online":true,"state":"active"}"#.to_vec(),
        )
        .await;
    // A's own revocation topic still works for A: it is the proof nothing of B's came first.
    a_conn.subscribe(&revocation(&a.id)).await;

    // B is revoked: only B hears it, and B's session was not taken over.
    env.revoke(&b.id).await;
    let p = b_conn.next_publish(&revocation(&b.id)).await;
    check_envelope(&env, &p.payload, &b.id);
    env.revoke(&a.id).await;
    let first = a_conn.next_any_publish().await;
    assert_eq!(first.topic, revocation(&a.id), "A read B's revocation");
    // The forged status never reached the cloud.
    let shown = env
        .owner(Method::GET, &format!("/devices/{}", b.id), None)
        .await;
    assert_ne!(shown.body["online"], true, "{:?}", shown.body);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_revoked_device_still_receives_its_revocation_from_mosquitto() {
    let Some((env, _broker)) =
        cloud_with_mosquitto("a_revoked_device_still_receives_its_revocation_from_mosquitto").await
    else {
        return;
    };
    let d = Device::new("edge-mosq-4");
    let info = d.register(&env).await.mqtt.unwrap();
    // Revoked while offline: the retained envelope waits on the broker.
    let a = env.revoke(&d.id).await;
    assert_eq!(a.body["revocation_published"], true, "{:?}", a.body);
    let mut conn = connect(&env, &info, &d, &d.id).await.unwrap();
    conn.subscribe(&revocation(&d.id)).await;
    let p = conn.next_publish(&revocation(&d.id)).await;
    assert!(p.retain);
    check_envelope(&env, &p.payload, &d.id);
    env.handle.shutdown().await;
}
