//! Per-device ACLs and quotas on the embedded broker: a device reads only its own revocation,
//! writes only its own status, cannot take another's client id, cannot flood the cloud; only
//! the cloud publishes revocations, and no device may register under the cloud's broker name.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use octomil_cloud::{ExternalBroker, MqttMode};
use reqwest::StatusCode;
use rumqttc::{QoS, SubscribeReasonCode};

use support::mqtt::{
    TestClient, device_session, eventually, free_port, observer, start_with, tls_of,
};
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

type Tls = std::sync::Arc<rustls::ClientConfig>;

async fn login(env: &Env, client_id: &str, tls: Tls) -> Result<TestClient, String> {
    device_session(env, client_id, tls, None, true).await
}

/// A registered device connected with its certificate, and that certificate's TLS config.
async fn device(env: &Env, id: &str) -> (TestClient, Tls) {
    let d = Device::new(id);
    let reg = d.register(env).await;
    let tls = tls_of(env, &d, &reg);
    (login(env, id, tls.clone()).await.unwrap(), tls)
}

#[tokio::test]
async fn a_device_may_subscribe_only_to_its_own_revocation_topic() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let (mut a, _) = device(&env, "edge-acl-a").await;
    for filter in [
        "#".to_owned(),
        "octomil/#".to_owned(),
        "octomil/v1/devices/+/revocation".to_owned(),
        revocation("edge-acl-b"),
        status("edge-acl-b"),
        status("edge-acl-a"),
    ] {
        assert_eq!(
            a.subscribe_result(&filter).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    assert_eq!(
        a.subscribe_result(&revocation("edge-acl-a")).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let stats = env.handle.broker().unwrap().stats();
    assert_eq!(stats.denied_subscriptions.load(Ordering::Relaxed), 6);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_device_cannot_publish_on_another_devices_topics_nor_clear_a_revocation() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let (mut a, _) = device(&env, "edge-acl-c").await;
    let (mut b, _) = device(&env, "edge-acl-d").await;
    b.subscribe(&revocation("edge-acl-d")).await;
    let mut watch = observer(&env, "acl-observer").await;
    watch.subscribe("octomil/v1/devices/#").await;

    // B's real revocation, retained.
    let answer = env.revoke("edge-acl-d").await;
    assert_eq!(answer.body["revocation_published"], true);
    let real = b.next_publish(&revocation("edge-acl-d")).await;
    watch.next_publish(&revocation("edge-acl-d")).await;

    // A forges B's status, B's revocation (and clears it), and its own revocation.
    a.publish_retained(&status("edge-acl-d"), br#"{"online":false}"#.to_vec())
        .await;
    a.publish_retained(&revocation("edge-acl-d"), b"forged".to_vec())
        .await;
    a.publish_retained(&revocation("edge-acl-d"), Vec::new())
        .await;
    a.publish_retained(&revocation("edge-acl-c"), b"forged".to_vec())
        .await;
    a.publish_retained("anything/else", b"x".to_vec()).await;
    // Then its own status, which is allowed: the observer sees it first, so none of the
    // above was delivered.
    a.publish_retained(&status("edge-acl-c"), br#"{"online":true}"#.to_vec())
        .await;
    let first = watch.next_any_publish().await;
    assert_eq!(first.topic, status("edge-acl-c"));

    let router = env.handle.broker().unwrap().router();
    assert_eq!(
        router.retained(&revocation("edge-acl-d")),
        Some(real.payload)
    );
    assert_eq!(router.retained(&status("edge-acl-d")), None);
    assert_eq!(router.retained(&revocation("edge-acl-c")), None);
    assert_eq!(router.retained("anything/else"), None);
    assert!(router.retained(&status("edge-acl-c")).is_some());
    let stats = env.handle.broker().unwrap().stats();
    assert_eq!(stats.denied_publishes.load(Ordering::Relaxed), 5);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_client_id_other_than_the_identity_is_refused_and_no_session_is_taken_over() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let (_a, a_tls) = device(&env, "edge-acl-e").await;
    let (mut b, _) = device(&env, "edge-acl-f").await;
    b.subscribe(&revocation("edge-acl-f")).await;
    // A's valid certificate under B's client id, and under made-up ones.
    for client_id in ["edge-acl-f", "edge-acl-x", "octomil-cloud:x"] {
        assert!(
            login(&env, client_id, a_tls.clone()).await.is_err(),
            "{client_id}"
        );
    }
    assert_eq!(
        env.handle
            .broker()
            .unwrap()
            .stats()
            .refused_logins
            .load(Ordering::Relaxed),
        3
    );
    // B was never kicked: its revocation still reaches it.
    let answer = env.revoke("edge-acl-f").await;
    assert_eq!(answer.body["revocation_published"], true);
    b.next_publish(&revocation("edge-acl-f")).await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_flood_from_one_device_does_not_delay_another_devices_revocation() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let (flooder, _) = device(&env, "edge-flood").await;
    let (mut victim, _) = device(&env, "edge-victim").await;
    victim.subscribe(&revocation("edge-victim")).await;

    let topic = status("edge-flood");
    let client = flooder.client.clone();
    let flood = tokio::spawn(async move {
        let payload = vec![b' '; 1024];
        loop {
            if client
                .publish(topic.as_str(), QoS::AtMostOnce, true, payload.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stats = env.handle.broker().unwrap().stats();
    eventually("the flood to be throttled", || async {
        (stats.throttled.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;
    let answer = env.revoke("edge-victim").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(
        answer.body["revocation_published"], true,
        "the PUBACK came within the ack timeout"
    );
    println!(
        "revocation PUBACK during a status flood: {} ms ({} status messages throttled)",
        answer.body["revocation_ack_ms"],
        stats.throttled.load(Ordering::Relaxed)
    );
    victim.next_publish(&revocation("edge-victim")).await;
    flood.abort();
    drop(flooder);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn registration_refuses_the_clouds_broker_name_whatever_it_is() {
    // Embedded: the fixed name.
    let env = start_with(tempfile::tempdir().unwrap(), |b| b.mqtt(embedded())).await;
    let a = Device::new("octomil-cloud").try_register(&env).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    env.handle.shutdown().await;
    // External, with the name the operator configured.
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::External(ExternalBroker {
            url: format!("mqtt://127.0.0.1:{}", free_port()),
            username: Some("fleet-pusher".into()),
            password: None,
            ca_file: None,
        }))
        .mqtt_ack_timeout(Duration::from_millis(100))
    })
    .await;
    let a = Device::new("fleet-pusher").try_register(&env).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(a.code(), "invalid_device_id");
    Device::new("fleet-pusher-2").register(&env).await;
    env.handle.shutdown().await;
}
