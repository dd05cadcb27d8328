//! Device lifecycle: registration, re-registration, refresh rotation with its grace rule,
//! key lifetime from org settings, revocation and deletion.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use octomil_common::wire::codes;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Device;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_answers_everything_a_daemon_needs() {
    let env = support::start().await;
    let d = Device::new("edge-01");
    let r = d.register(&env).await;
    assert_eq!(r.device_id.as_str(), "edge-01");
    assert!(r.api_key.expose().starts_with("edg_live_"));
    assert!(r.refresh_token.expose().starts_with("edg_refresh_"));
    assert_eq!(r.expires_at, env.clock_secs() + 24 * 3600);
    assert_eq!(
        r.revocation_public_key,
        env.handle.info.revocation_public_key
    );
    assert_eq!(r.rate_limits.control_plane.limit, 100);
    assert_eq!(r.rate_limits.inference.limit, 1000);
    // The key works, and the device shows up for operators.
    let a = env.device_call(r.api_key.expose()).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = env.owner(Method::GET, "/devices/edge-01", None).await;
    assert_eq!(a.body["state"], "active");
    assert_eq!(a.body["metadata"]["model"], "rpi4");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregistration_needs_the_same_key_and_rotates_credentials() {
    let env = support::start().await;
    let d = Device::new("edge-02");
    let first = d.register(&env).await;
    // Same key (a device that crashed before saving the answer): accepted, new credentials.
    let second = d.register(&env).await;
    assert_ne!(first.api_key.expose(), second.api_key.expose());
    let a = env.device_call(first.api_key.expose()).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "old key dies on re-registration"
    );
    // Another key with the fleet's bootstrap token: refused.
    let thief = Device::new("edge-02");
    let a = thief.try_register(&env).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, codes::DEVICE_ID_TAKEN)
    );
    let a = env.device_call(second.api_key.expose()).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "the thief's attempt changed nothing"
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_tolerates_a_lost_answer_but_not_reuse() {
    let env = support::start().await;
    let d = Device::new("edge-03");
    let reg = d.register(&env).await;
    let r0 = reg.refresh_token.expose().clone();

    // The answer to this refresh is "lost": the device retries with r0.
    let lost = d.refresh(&env, &r0).await;
    let retry = d.refresh(&env, &r0).await;
    assert_ne!(lost.refresh_token.expose(), retry.refresh_token.expose());
    // The lost pair is dead; the retried one works.
    let a = env.device_call(lost.api_key.expose()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let r1 = retry.refresh_token.expose().clone();

    // Using r1 confirms it: r0 is now spent.
    let next = d.refresh(&env, &r1).await;
    let a = d.try_refresh(&env, &r0).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, codes::REFRESH_TOKEN_REUSED)
    );
    // Reuse invalidates every credential of the device.
    let a = env.device_call(next.api_key.expose()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = d.try_refresh(&env, next.refresh_token.expose()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // ...and re-registration with the device's own key brings it back.
    let again = d.register(&env).await;
    assert_eq!(
        env.device_call(again.api_key.expose()).await.status,
        StatusCode::OK
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_the_new_key_also_confirms_the_new_pair() {
    let env = support::start().await;
    let d = Device::new("edge-04");
    let reg = d.register(&env).await;
    let r0 = reg.refresh_token.expose().clone();
    let new = d.refresh(&env, &r0).await;
    assert_eq!(
        env.device_call(new.api_key.expose()).await.status,
        StatusCode::OK
    );
    let a = d.try_refresh(&env, &r0).await;
    assert_eq!(a.code(), codes::REFRESH_TOKEN_REUSED);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_token_expiry_applies_to_keys_issued_afterwards() {
    let env = support::start().await;
    let d = Device::new("edge-05");
    let before = d.register(&env).await;
    assert_eq!(before.expires_at - env.clock_secs(), 24 * 3600);
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"device_token_expiry": "48h"})),
        )
        .await;
    assert_eq!(a.body["device_token_expiry"], "2d");
    let after = d.refresh(&env, before.refresh_token.expose()).await;
    assert_eq!(after.expires_at - env.clock_secs(), 48 * 3600);
    // Keys really stop working at expiry.
    env.clock.advance(Duration::from_secs(48 * 3600));
    let a = env.device_call(after.api_key.expose()).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, codes::TOKEN_EXPIRED)
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_kills_credentials_and_blocks_reregistration_until_deleted() {
    let env = support::start().await;
    let d = Device::new("edge-06");
    let reg = d.register(&env).await;
    let a = env.owner(Method::DELETE, "/devices/edge-06", None).await;
    assert_eq!(
        a.status,
        StatusCode::CONFLICT,
        "an active device cannot be deleted"
    );
    let a = env.revoke("edge-06").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["state"], "revoked");
    assert_eq!(a.body["revoke_reason"], "stolen");
    let a = env.device_call(reg.api_key.expose()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = d.try_refresh(&env, reg.refresh_token.expose()).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, codes::DEVICE_REVOKED)
    );
    let a = d.try_register(&env).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, codes::DEVICE_REVOKED)
    );
    // Deleting frees the id for a new provisioning, with any key.
    let a = env.owner(Method::DELETE, "/devices/edge-06", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    Device::new("edge-06").register(&env).await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_honour_max_uses_and_expiry() {
    let env = support::start().await;
    let a = env
        .owner(
            Method::POST,
            "/bootstrap-tokens",
            Some(json!({"max_uses": 1, "expires_in": "1h"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let tok = a.body["token"].as_str().unwrap().to_owned();
    assert!(tok.starts_with("edg_bootstrap_"));
    let d1 = Device::new("once-1");
    let a = env
        .call(
            Method::POST,
            "/devices/register",
            None,
            Some(d1.register_body(&env, &tok).await),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let d2 = Device::new("once-2");
    let a = env
        .call(
            Method::POST,
            "/devices/register",
            None,
            Some(d2.register_body(&env, &tok).await),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, codes::INVALID_BOOTSTRAP_TOKEN)
    );

    let a = env
        .owner(
            Method::POST,
            "/bootstrap-tokens",
            Some(json!({"expires_in": "1h"})),
        )
        .await;
    let tok = a.body["token"].as_str().unwrap().to_owned();
    env.clock.advance(Duration::from_secs(3600));
    let a = env
        .call(
            Method::POST,
            "/devices/register",
            None,
            Some(d2.register_body(&env, &tok).await),
        )
        .await;
    assert_eq!(a.code(), codes::INVALID_BOOTSTRAP_TOKEN);
    env.handle.shutdown().await;
}
