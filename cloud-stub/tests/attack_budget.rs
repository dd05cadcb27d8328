//! Unauthenticated traffic never spends a device's or a key's budget (issue 11, point 5).
//! Before: 150 refreshes with random refresh tokens naming a victim device spent its
//! control-plane budget (100/min), and the victim's own refresh was then refused with 429.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_common::token::{self, TokenKind};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Device;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_refreshes_do_not_spend_the_victims_budget() {
    let env = support::start().await;
    let victim = Device::new("victim-1");
    let reg = victim.register(&env).await;
    let (mut unauthorized, mut limited) = (0, 0);
    for _ in 0..150 {
        let forged = token::generate(TokenKind::Refresh);
        let a = victim.try_refresh(&env, forged.expose()).await;
        match a.status {
            StatusCode::UNAUTHORIZED => {
                assert_eq!(a.code(), "invalid_refresh_token");
                unauthorized += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(a.headers.get("retry-after").is_some());
                limited += 1;
            }
            s => panic!("unexpected {s}: {:?}", a.body),
        }
    }
    // The source address's failure budget (60/min by default) ran out, not the device's.
    assert_eq!((unauthorized, limited), (60, 90));
    // The victim, from the very same address, refreshes and uses its key.
    let fresh = victim.refresh(&env, reg.refresh_token.expose()).await;
    let a = env.device_call(fresh.api_key.expose()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_do_not_lock_out_valid_ones_from_the_same_address() {
    let env = support::start().await;
    let good = env.create_key(&["models:read"]).await;
    let mut last = StatusCode::OK;
    for _ in 0..100 {
        let forged = token::generate(TokenKind::Live);
        last = env
            .call(Method::GET, "/models", Some(forged.expose()), None)
            .await
            .status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    let a = env.call(Method::GET, "/models", Some(&good), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // The limit is the operator's to set.
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"rate_limits": {"auth_failures": {"limit": 5, "period_secs": 60}}})),
        )
        .await;
    assert_eq!(a.body["rate_limits"]["auth_failures"]["limit"], 5);
    env.handle.shutdown().await;
}
