//! The embedded broker authenticates by client certificate: the cloud's MQTT CA verifies it at
//! the handshake, its CN is the identity, the client id must be that identity, a revoked
//! device may still read its own revocation and nothing else, an expired or foreign
//! certificate never gets past TLS. Real TLS (rustls, ring) and real MQTT on port 0.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use octomil_cloud::MqttMode;
use octomil_cloud::mqtt::ca::MqttCa;
use reqwest::{Method, StatusCode};
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

use support::mqtt::{CertLogin, TestClient, cloud_tls, device_tls, eventually, start_with};
use support::{Device, Env};

fn embedded() -> MqttMode {
    MqttMode::Embedded {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn revocation(id: &str) -> String {
    format!("octomil/v1/devices/{id}/revocation")
}

fn status(id: &str) -> String {
    format!("octomil/v1/devices/{id}/status")
}

async fn cloud() -> Env {
    start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await
}

/// Connects as a device does: with a will on `client_id`'s status topic (none for the cloud).
async fn connect(
    env: &Env,
    client_id: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<TestClient, String> {
    let will = (!client_id.starts_with("octomil-cloud")).then(|| {
        LastWill::new(
            status(client_id),
            br#"{"online":false}"#.to_vec(),
            QoS::AtLeastOnce,
            true,
        )
    });
    TestClient::connect_cert(CertLogin {
        url: env.handle.info.mqtt_url.as_deref().unwrap(),
        client_id,
        tls,
        will,
        clean: true,
    })
    .await
}

/// A registered device and the TLS config presenting the certificate it was given.
async fn enrolled(env: &Env, id: &str) -> (Device, std::sync::Arc<rustls::ClientConfig>) {
    let d = Device::new(id);
    let reg = d.register(env).await;
    let cert = reg.mqtt.unwrap().client_cert.unwrap();
    let tls = device_tls(&env.handle.ca_pem, &cert, &d.key);
    (d, tls)
}

fn observer_tls(env: &Env) -> std::sync::Arc<rustls::ClientConfig> {
    cloud_tls(&env.handle.state_dir, &env.handle.ca_pem, "octomil-cloud")
}

#[tokio::test]
async fn a_device_with_its_issued_certificate_receives_its_revocation() {
    let env = cloud().await;
    let (d, tls) = enrolled(&env, "edge-cc-1").await;
    let mut c = connect(&env, &d.id, tls).await.unwrap();
    c.subscribe(&revocation(&d.id)).await;
    assert_eq!(env.revoke(&d.id).await.body["revocation_published"], true);
    let p = c.next_publish(&revocation(&d.id)).await;
    assert!(!p.payload.is_empty());
    // The cloud's own session logged in with its certificate too (no password).
    assert!(env.handle.mqtt_connected());
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let env = cloud().await;
    let (d, _) = enrolled(&env, "edge-cc-2").await;
    // Same CN, same device key, but signed by a CA the broker does not trust.
    let other = tempfile::tempdir().unwrap();
    let forged = MqttCa::load_or_create(other.path())
        .unwrap()
        .issue_device(
            &d.id,
            d.key.verifying_key().as_bytes(),
            Duration::from_secs(600),
        )
        .unwrap();
    let tls = device_tls(&env.handle.ca_pem, &forged.chain_pem, &d.key);
    let err = connect(&env, &d.id, tls).await.err().unwrap();
    assert!(!err.contains("ConnAck"), "{err}");
    // Refused before any CONNECT was read: no login was even attempted.
    let stats = env.handle.broker().unwrap().stats();
    assert_eq!(stats.refused_logins.load(Ordering::Relaxed), 0);
    // A cloud certificate from the foreign CA is no better.
    let forged_cloud = MqttCa::load_or_create(other.path())
        .unwrap()
        .issue_cloud("octomil-cloud")
        .unwrap();
    let tls = octomil_cloud::tls::client_config_with_cert(
        env.handle.ca_pem.as_bytes(),
        forged_cloud.chain,
        forged_cloud.key,
    )
    .unwrap();
    assert!(connect(&env, "octomil-cloud", tls).await.is_err());
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_device_certificate_cannot_log_in_under_another_devices_client_id() {
    let env = cloud().await;
    let (_a, a_tls) = enrolled(&env, "edge-cc-3a").await;
    let (b, b_tls) = enrolled(&env, "edge-cc-3b").await;
    let mut b_conn = connect(&env, &b.id, b_tls).await.unwrap();
    b_conn.subscribe(&revocation(&b.id)).await;
    // A presents its own certificate but B's client id (a session takeover attempt).
    assert!(connect(&env, &b.id, a_tls.clone()).await.is_err());
    // Nor may it pose as the cloud.
    assert!(connect(&env, "octomil-cloud", a_tls).await.is_err());
    // B's session is untouched: it still receives its revocation.
    env.revoke(&b.id).await;
    b_conn.next_publish(&revocation(&b.id)).await;
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_revoked_device_reads_its_revocation_and_nothing_else() {
    let env = cloud().await;
    let (d, tls) = enrolled(&env, "edge-cc-4").await;
    let (other, _) = enrolled(&env, "edge-cc-4b").await;
    assert_eq!(env.revoke(&d.id).await.status, StatusCode::OK);

    let mut watch = connect(&env, "octomil-cloud:watch", observer_tls(&env))
        .await
        .unwrap();
    watch.subscribe("octomil/v1/devices/+/status").await;

    // Its certificate has not expired: it connects (its will is dropped, not refused) ...
    let mut c = connect(&env, &d.id, tls).await.unwrap();
    // ... reads its retained revocation ...
    c.subscribe(&revocation(&d.id)).await;
    let p = c.next_publish(&revocation(&d.id)).await;
    assert!(p.retain);
    // ... and may subscribe nowhere else ...
    for filter in [revocation(&other.id), status(&d.id), "#".to_owned()] {
        assert_eq!(
            c.subscribe_result(&filter).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // ... nor publish, not even its own status.
    let stats = env.handle.broker().unwrap().stats();
    let denied = stats.denied_publishes.load(Ordering::Relaxed);
    c.publish_retained(&status(&d.id), br#"{"online":true}"#.to_vec())
        .await;
    assert_eq!(stats.denied_publishes.load(Ordering::Relaxed), denied + 1);
    let router = env.handle.broker().unwrap().router();
    assert_eq!(router.retained(&status(&d.id)), None);
    // Its will was dropped: killing the link publishes nothing.
    c.kill();
    // A message the observer can see proves the order: nothing came before it.
    let mut o = connect(&env, &other.id, enrolled_tls_again(&env, &other).await)
        .await
        .unwrap();
    o.publish_retained(&status(&other.id), br#"{"online":true}"#.to_vec())
        .await;
    let first = watch.next_any_publish().await;
    assert_eq!(first.topic, status(&other.id));
    env.handle.shutdown().await;
}

/// A fresh certificate for an already registered device (a refresh).
async fn enrolled_tls_again(env: &Env, d: &Device) -> std::sync::Arc<rustls::ClientConfig> {
    let ca = MqttCa::load_or_create(&env.handle.state_dir).unwrap();
    let cert = ca
        .issue_device(
            &d.id,
            d.key.verifying_key().as_bytes(),
            Duration::from_secs(600),
        )
        .unwrap();
    device_tls(&env.handle.ca_pem, &cert.chain_pem, &d.key)
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let env = cloud().await;
    let (d, _) = enrolled(&env, "edge-cc-5").await;
    let ca = MqttCa::load_or_create(&env.handle.state_dir).unwrap();
    let short = ca
        .issue_device(
            &d.id,
            d.key.verifying_key().as_bytes(),
            Duration::from_secs(1),
        )
        .unwrap();
    // A client that tries to resume its TLS session: the broker must not take the
    // certificate of the first handshake on trust (it keeps no sessions and sends no tickets).
    let mut resuming = (*device_tls(&env.handle.ca_pem, &short.chain_pem, &d.key)).clone();
    resuming.resumption = rustls::client::Resumption::default();
    let tls = std::sync::Arc::new(resuming);
    let _ = connect(&env, &d.id, tls.clone()).await;
    // Once its second has passed, the handshake fails (rustls checks notAfter).
    let err = eventually("the 1 s certificate to be refused", || {
        let tls = tls.clone();
        let env = &env;
        let id = d.id.clone();
        async move { connect(env, &id, tls).await.err() }
    })
    .await;
    assert!(!err.is_empty());
    // The certificate from the register answer still works.
    let fresh = enrolled_tls_again(&env, &d).await;
    connect(&env, &d.id, fresh).await.unwrap();
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_certificate_does_not_outlive_its_device_record() {
    let env = cloud().await;
    let (d, tls) = enrolled(&env, "edge-cc-6").await;
    connect(&env, &d.id, tls.clone()).await.unwrap();
    env.revoke(&d.id).await;
    let a = env
        .owner(Method::DELETE, &format!("/devices/{}", d.id), None)
        .await;
    assert!(a.status.is_success(), "{:?}", a.body);
    let err = connect(&env, &d.id, tls.clone()).await.err().unwrap();
    assert!(err.contains("NotAuthorized"), "{err}");
    // Re-registered under another key: the old key's certificate is still refused.
    let again = Device::new(&d.id);
    again.register(&env).await;
    assert!(connect(&env, &d.id, tls).await.is_err());
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_device_certificate_reaches_only_its_own_topics() {
    let env = cloud().await;
    let (a, a_tls) = enrolled(&env, "edge-cc-7a").await;
    let (b, _) = enrolled(&env, "edge-cc-7b").await;
    let mut c = connect(&env, &a.id, a_tls).await.unwrap();
    for filter in [
        revocation(&b.id),
        status(&b.id),
        "octomil/v1/devices/+/revocation".to_owned(),
        "#".to_owned(),
    ] {
        assert_eq!(
            c.subscribe_result(&filter).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    c.subscribe(&revocation(&a.id)).await;
    let stats = env.handle.broker().unwrap().stats();
    let denied = stats.denied_publishes.load(Ordering::Relaxed);
    c.publish_retained(&status(&b.id), br#"{"online":true}"#.to_vec())
        .await;
    c.publish_retained(&revocation(&b.id), b"forged".to_vec())
        .await;
    c.publish_retained(&revocation(&a.id), Vec::new()).await;
    assert_eq!(stats.denied_publishes.load(Ordering::Relaxed), denied + 3);
    c.publish_retained(&status(&a.id), br#"{"online":true}"#.to_vec())
        .await;
    let router = env.handle.broker().unwrap().router();
    assert_eq!(router.retained(&status(&b.id)), None);
    assert_eq!(router.retained(&revocation(&b.id)), None);
    assert!(router.retained(&status(&a.id)).is_some());
    env.handle.shutdown().await;
}
