//! Trusted proxies: the source address (login throttling, failure budgets, audit) is the TCP
//! peer unless the peer is a configured trusted proxy, whose `X-Forwarded-For` then names it
//! (the right-most untrusted hop). A spoofed header from an untrusted peer changes nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use octomil_cloud::CloudStub;
use octomil_cloud::proxy::TrustedProxies;
use octomil_common::ManualClock;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn start(trusted: &[&str]) -> support::Env {
    support::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let handle = CloudStub::builder(dir.path().join("state"))
        .clock(Arc::new(clock.clone()))
        .trusted_proxies(TrustedProxies::parse(trusted).unwrap())
        .spawn()
        .await
        .unwrap();
    support::env_for(handle, clock, dir)
}

/// A login with a wrong password, claiming to come from `xff`.
async fn bad_login(env: &support::Env, xff: &str) -> StatusCode {
    env.client
        .post(format!("{}/api/v1/auth/login", env.handle.http_url))
        .header("x-forwarded-for", xff)
        .json(&json!({"email": "owner@octomil.local", "password": "wrong"}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Creates a key with the owner key, claiming to come from `xff`; returns the audit source.
async fn audited_source(env: &support::Env, xff: &str) -> String {
    let a = env
        .client
        .post(format!("{}/api/v1/api-keys", env.handle.http_url))
        .bearer_auth(&env.owner_key)
        .header("x-forwarded-for", xff)
        .json(&json!({"name": "k", "scopes": ["models:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::CREATED);
    let a = env
        .owner(Method::GET, "/audit?action=api_key.create", None)
        .await;
    let records = a.body["records"].as_array().unwrap();
    records.last().unwrap()["source"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_a_spoofed_header_changes_nothing() {
    let env = start(&[]).await;
    assert_eq!(audited_source(&env, "203.0.113.9").await, "127.0.0.1");
    // Every attempt counts against (owner, 127.0.0.1), whatever address it claims: the
    // pair is locked after the sixth.
    let mut statuses = Vec::new();
    for i in 0..7 {
        statuses.push(bad_login(&env, &format!("198.51.100.{i}")).await);
    }
    assert_eq!(statuses[..6], [StatusCode::UNAUTHORIZED; 6]);
    assert_eq!(statuses[6], StatusCode::TOO_MANY_REQUESTS);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_spoof_even_when_proxies_are_configured() {
    // A proxy range that does not include the test client (127.0.0.1).
    let env = start(&["10.0.0.0/8"]).await;
    assert_eq!(
        audited_source(&env, "203.0.113.9, 10.0.0.1").await,
        "127.0.0.1"
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_source() {
    let env = start(&["127.0.0.1/32", "10.0.0.0/8"]).await;
    // The client forged the left hop; the real one was appended by the proxy chain.
    assert_eq!(
        audited_source(&env, "192.0.2.66, 203.0.113.9, 10.1.2.3").await,
        "203.0.113.9"
    );
    // Throttling follows the forwarded address: six failures from one client...
    for _ in 0..6 {
        assert_eq!(
            bad_login(&env, "203.0.113.9").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        bad_login(&env, "203.0.113.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...do not throttle another client behind the same proxy.
    assert_eq!(
        bad_login(&env, "198.51.100.20").await,
        StatusCode::UNAUTHORIZED
    );
    env.handle.shutdown().await;
}
