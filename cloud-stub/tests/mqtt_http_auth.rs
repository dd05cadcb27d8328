//! `POST /mqtt/auth` and `/mqtt/acl` speak EMQX's HTTP authenticator/authorizer contract: the
//! broker forwards the client certificate's CN, the client id, the action and topic; the
//! cloud answers `{"result": "allow"|"deny", "is_superuser": false}` from the embedded
//! broker's own table. The broker authenticates with the cloud's `mqtt_broker_secret`, and its
//! calls are rate-limited per address.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use octomil_cloud::MqttMode;
use octomil_common::wire::RateLimit;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::mqtt::start_with;
use support::{Device, Env};

async fn cloud() -> Env {
    start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        })
    })
    .await
}

fn secret(env: &Env) -> String {
    std::fs::read_to_string(env.handle.state_dir.join("mqtt_broker_secret"))
        .unwrap()
        .trim()
        .to_owned()
}

/// One call as EMQX makes it: POST, JSON body, the configured bearer.
async fn call(env: &Env, path: &str, bearer: Option<&str>, body: Value) -> (StatusCode, Value) {
    let a = env
        .call(reqwest::Method::POST, path, bearer, Some(body))
        .await;
    (a.status, a.body)
}

async fn authn(env: &Env, clientid: &str, cn: Option<&str>) -> String {
    let mut body = json!({"clientid": clientid, "username": cn, "peerhost": "192.0.2.7"});
    if let Some(cn) = cn {
        body["cert_common_name"] = json!(cn);
    }
    let (status, answer) = call(env, "/mqtt/auth", Some(&secret(env)), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["is_superuser"], false);
    answer["result"].as_str().unwrap().to_owned()
}

async fn authz(env: &Env, cn: &str, action: &str, topic: &str) -> String {
    let body = json!({
        "clientid": cn, "username": cn, "cert_common_name": cn, "peerhost": "192.0.2.7",
        "action": action, "topic": topic, "qos": 1, "retain": true,
    });
    let (status, answer) = call(env, "/mqtt/acl", Some(&secret(env)), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["result"].as_str().unwrap().to_owned()
}

fn revocation(id: &str) -> String {
    format!("octomil/v1/devices/{id}/revocation")
}

fn status(id: &str) -> String {
    format!("octomil/v1/devices/{id}/status")
}

#[tokio::test]
async fn devices_and_the_cloud_get_the_embedded_brokers_table() {
    let env = cloud().await;
    let a = Device::new("edge-http-a");
    let b = Device::new("edge-http-b");
    a.register(&env).await;
    b.register(&env).await;

    // Authentication: the CN of a registered device, or the cloud's identity.
    assert_eq!(authn(&env, &a.id, Some(&a.id)).await, "allow");
    assert_eq!(
        authn(&env, "octomil-cloud", Some("octomil-cloud")).await,
        "allow"
    );
    // Unknown device, no certificate, another device's client id.
    assert_eq!(
        authn(&env, "edge-nobody", Some("edge-nobody")).await,
        "deny"
    );
    assert_eq!(authn(&env, &a.id, None).await, "deny");
    assert_eq!(authn(&env, &b.id, Some(&a.id)).await, "deny");

    // Authorization: own revocation and own status only.
    assert_eq!(
        authz(&env, &a.id, "subscribe", &revocation(&a.id)).await,
        "allow"
    );
    assert_eq!(authz(&env, &a.id, "publish", &status(&a.id)).await, "allow");
    assert_eq!(
        authz(&env, &a.id, "subscribe", &revocation(&b.id)).await,
        "deny"
    );
    assert_eq!(authz(&env, &a.id, "publish", &status(&b.id)).await, "deny");
    assert_eq!(
        authz(&env, &a.id, "publish", &revocation(&b.id)).await,
        "deny"
    );
    assert_eq!(
        authz(&env, &a.id, "publish", &revocation(&a.id)).await,
        "deny"
    );
    assert_eq!(
        authz(&env, &a.id, "subscribe", "octomil/v1/devices/+/revocation").await,
        "deny"
    );
    assert_eq!(authz(&env, &a.id, "subscribe", "#").await, "deny");
    assert_eq!(authz(&env, &a.id, "all", &revocation(&a.id)).await, "deny");
    assert_eq!(
        authz(&env, "edge-nobody", "subscribe", &revocation("edge-nobody")).await,
        "deny"
    );
    // The cloud publishes revocations and reads statuses.
    assert_eq!(
        authz(&env, "octomil-cloud", "publish", &revocation(&b.id)).await,
        "allow"
    );
    assert_eq!(
        authz(
            &env,
            "octomil-cloud",
            "subscribe",
            "octomil/v1/devices/+/status"
        )
        .await,
        "allow"
    );
    assert_eq!(
        authz(&env, "octomil-cloud", "publish", &status(&b.id)).await,
        "deny"
    );

    // Revoked: it still logs in and reads its revocation, and publishes nothing.
    env.revoke(&a.id).await;
    assert_eq!(authn(&env, &a.id, Some(&a.id)).await, "allow");
    assert_eq!(
        authz(&env, &a.id, "subscribe", &revocation(&a.id)).await,
        "allow"
    );
    assert_eq!(authz(&env, &a.id, "publish", &status(&a.id)).await, "deny");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_caller_without_the_brokers_secret_is_refused() {
    let env = cloud().await;
    let d = Device::new("edge-http-c");
    d.register(&env).await;
    let body = json!({"clientid": d.id, "cert_common_name": d.id});
    for bearer in [None, Some("wrong"), Some(env.owner_key.as_str())] {
        let (status, answer) = call(&env, "/mqtt/auth", bearer, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(answer["error"], "unauthenticated");
        let (status, _) = call(
            &env,
            "/mqtt/acl",
            bearer,
            json!({
                "clientid": d.id, "cert_common_name": d.id, "action": "subscribe",
                "topic": revocation(&d.id),
            }),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The secret file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.handle.state_dir.join("mqtt_broker_secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn broker_calls_are_rate_limited_per_caller_and_not_charged_to_devices() {
    let env = cloud().await;
    let d = Device::new("edge-http-d");
    let reg = d.register(&env).await;
    env.handle
        .cloud
        .mqtt_http_auth
        .set_limit(RateLimit::per_minute(5));
    for _ in 0..5 {
        assert_eq!(authn(&env, &d.id, Some(&d.id)).await, "allow");
    }
    let body = json!({"clientid": d.id, "cert_common_name": d.id});
    let (status, answer) = call(&env, "/mqtt/auth", Some(&secret(&env)), body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    let a = env
        .call(
            reqwest::Method::POST,
            "/mqtt/acl",
            Some(&secret(&env)),
            Some(json!({"clientid": d.id, "cert_common_name": d.id, "action": "subscribe", "topic": revocation(&d.id)})),
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.get("retry-after").is_some());
    // The device's own budget was not touched: its calls still go through.
    assert_eq!(
        env.device_call(reg.api_key.expose()).await.status,
        StatusCode::OK
    );
    d.refresh(&env, reg.refresh_token.expose()).await;
    env.handle.shutdown().await;
}
