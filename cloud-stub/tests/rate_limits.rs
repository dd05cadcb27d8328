//! The three cloud-side limits, driven by the manual clock (no sleeps).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Device;

fn retry_after(a: &support::Answer) -> u64 {
    a.headers["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_registration_from_one_ip_in_a_minute_is_refused() {
    let env = support::start().await;
    for i in 0..10 {
        Device::new(&format!("ip-{i}")).register(&env).await;
    }
    let a = Device::new("ip-10").try_register(&env).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let wait = retry_after(&a);
    assert!(wait >= 1, "Retry-After {wait}");
    // Honouring Retry-After is enough.
    env.clock.advance(Duration::from_secs(wait));
    Device::new("ip-10").register(&env).await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_and_first_control_plane_call_of_a_device_is_refused() {
    let env = support::start().await;
    let d = Device::new("busy");
    let reg = d.register(&env).await; // the registration is call 1
    let key = reg.api_key.expose().clone();
    for i in 2..=100 {
        let a = env.device_call(&key).await;
        assert_eq!(a.status, StatusCode::OK, "call {i}");
    }
    let a = env.device_call(&key).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&a);
    assert!(wait >= 1);
    // Refresh draws from the same per-device budget.
    let a = d.try_refresh(&env, reg.refresh_token.expose()).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // Another device is unaffected.
    let other = Device::new("idle").register(&env).await;
    assert_eq!(
        env.device_call(other.api_key.expose()).await.status,
        StatusCode::OK
    );
    env.clock.advance(Duration::from_secs(wait));
    assert_eq!(env.device_call(&key).await.status, StatusCode::OK);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_allows_a_thousand_a_minute_per_key() {
    let env = support::start().await;
    let k1 = env.create_key(&["models:read"]).await;
    let k2 = env.create_key(&["models:read"]).await;
    let body = json!({"input": "x"});
    for i in 0..1000 {
        let a = env
            .call(Method::POST, "/inference", Some(&k1), Some(body.clone()))
            .await;
        assert_eq!(a.status, StatusCode::OK, "call {i}");
    }
    let a = env
        .call(Method::POST, "/inference", Some(&k1), Some(body.clone()))
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&a), 1);
    // Per key: another key still has its whole budget.
    let a = env
        .call(Method::POST, "/inference", Some(&k2), Some(body.clone()))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    env.clock.advance(Duration::from_secs(1));
    let a = env
        .call(Method::POST, "/inference", Some(&k1), Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_can_change_limits() {
    let env = support::start().await;
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"rate_limits": {"registration": {"limit": 2, "period_secs": 60}}})),
        )
        .await;
    assert_eq!(a.body["rate_limits"]["registration"]["limit"], 2);
    assert_eq!(
        a.body["rate_limits"]["inference"]["limit"], 1000,
        "other limits untouched"
    );
    Device::new("a").register(&env).await;
    Device::new("b").register(&env).await;
    assert_eq!(
        Device::new("c").try_register(&env).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    env.handle.shutdown().await;
}
