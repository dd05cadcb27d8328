//! Bootstrap tokens have a lifecycle (issue 11, point 6), bulk revocation answers a leaked
//! token, and a deleted organisation refuses devices too (point 10). Before: tokens could
//! not be listed or revoked, the first-start token never expired and had unlimited uses, and
//! a deleted organisation still registered and refreshed devices.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Device, Env};

async fn register_with(env: &Env, id: &str, token: &str) -> support::Answer {
    let d = Device::new(id);
    let body = d.register_body(env, token).await;
    env.call(Method::POST, "/devices/register", None, Some(body))
        .await
}

async fn new_token(env: &Env, body: Value) -> (String, String) {
    let a = env
        .owner(Method::POST, "/bootstrap-tokens", Some(body))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    (
        a.body["id"].as_str().unwrap().to_owned(),
        a.body["token"].as_str().unwrap().to_owned(),
    )
}

async fn listed(env: &Env, id: &str) -> Value {
    let a = env.owner(Method::GET, "/bootstrap-tokens", None).await;
    a.body["bootstrap_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_expires_and_has_a_use_limit_and_can_be_revoked() {
    let env = support::start().await;
    env.relax_limits().await;
    // The first-start token too.
    let a = env.owner(Method::GET, "/bootstrap-tokens", None).await;
    let first = &a.body["bootstrap_tokens"][0];
    let now = env.clock_secs();
    assert_eq!(first["max_uses"], 10_000);
    assert_eq!(first["expires_at"].as_u64().unwrap(), now + 90 * 86_400);
    let (id, token) = new_token(&env, json!({})).await;
    assert_eq!(
        register_with(&env, "d-1", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(listed(&env, &id).await["devices"], 1);
    let a = env
        .owner(Method::DELETE, &format!("/bootstrap-tokens/{id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = register_with(&env, "d-2", &token).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "invalid_bootstrap_token")
    );
    assert_eq!(listed(&env, &id).await["status"], "revoked");
    // Idempotent, and a revoked token cannot be brought back.
    let a = env
        .owner(Method::DELETE, &format!("/bootstrap-tokens/{id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = env
        .owner(
            Method::PATCH,
            &format!("/bootstrap-tokens/{id}"),
            Some(json!({"expires_in": "30d"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_warehouse_image_can_be_extended() {
    let env = support::start().await;
    env.relax_limits().await;
    let (id, token) = new_token(&env, json!({"max_uses": 1, "expires_in": "1h"})).await;
    assert_eq!(
        register_with(&env, "w-1", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        register_with(&env, "w-2", &token).await.code(),
        "invalid_bootstrap_token"
    );
    let a = env
        .owner(
            Method::PATCH,
            &format!("/bootstrap-tokens/{id}"),
            Some(json!({"max_uses": 100, "expires_in": "30d"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["status"], "active");
    env.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(
        register_with(&env, "w-2", &token).await.status,
        StatusCode::OK
    );
    let a = env
        .owner(
            Method::PATCH,
            &format!("/bootstrap-tokens/{id}"),
            Some(json!({"max_uses": 1})),
        )
        .await;
    assert_eq!(a.code(), "invalid_argument");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_token_s_devices_are_revoked_in_one_call() {
    let env = support::start().await;
    env.relax_limits().await;
    let (leaked, token) = new_token(&env, json!({})).await;
    for i in 0..3 {
        register_with(&env, &format!("leak-{i}"), &token).await;
    }
    let other = Device::new("safe-1").register(&env).await;
    let writer = env.create_key(&["devices:write"]).await;
    let revoke = |body: Value, key: String| {
        let env = &env;
        async move {
            env.call(Method::POST, "/revocations", Some(&key), Some(body))
                .await
        }
    };
    let a = revoke(json!({"bootstrap_token_id": leaked}), writer.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["revoked"].as_array().unwrap().len(), 3);
    // Re-running it is harmless.
    let a = revoke(json!({"bootstrap_token_id": leaked}), writer.clone()).await;
    assert_eq!(
        (
            a.body["revoked"].as_array().unwrap().len(),
            a.body["already_revoked"].as_u64()
        ),
        (0, Some(3))
    );
    let a = env.owner(Method::GET, "/devices/leak-0", None).await;
    assert_eq!(a.body["state"], "revoked");
    assert_eq!(
        env.device_call(other.api_key.expose()).await.status,
        StatusCode::OK
    );
    // A list of ids; unknown ones are reported.
    let a = revoke(json!({"device_ids": ["leak-1", "nope"]}), writer.clone()).await;
    assert_eq!(a.body["not_found"], json!(["nope"]));
    // Every device at once needs org:admin, the Owner role and the org id.
    let a = revoke(json!({"all": true}), writer.clone()).await;
    assert_eq!(a.code(), "insufficient_scope");
    let a = revoke(json!({"all": true}), env.owner_key.clone()).await;
    assert_eq!(a.code(), "invalid_argument");
    let org = env.owner(Method::GET, "/org/settings", None).await.body["org_id"].clone();
    let a = revoke(json!({"all": true, "confirm": org}), env.owner_key.clone()).await;
    assert_eq!(a.body["revoked"], json!(["safe-1"]), "{:?}", a.body);
    assert_eq!(
        env.device_call(other.api_key.expose()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Exactly one selector.
    let a = revoke(
        json!({"device_ids": [], "all": true}),
        env.owner_key.clone(),
    )
    .await;
    assert_eq!(a.code(), "invalid_argument");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_org_refuses_devices_too() {
    let env = support::start().await;
    let dev = Device::new("d-1");
    let reg = dev.register(&env).await;
    let org = env.owner(Method::GET, "/org/settings", None).await.body["org_id"].clone();
    let a = env
        .owner(Method::DELETE, "/org", Some(json!({"confirm": org})))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = dev.try_refresh(&env, reg.refresh_token.expose()).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "org_deleted"));
    let a = Device::new("d-2").try_register(&env).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "org_deleted"));
    let a = env.device_call(reg.api_key.expose()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}

/// The leaked-token drill from the CLI: `octomil bootstrap-tokens revoke ID --devices`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octomil_revokes_a_token_and_its_devices() {
    use clap::Parser;
    let env = support::start().await;
    env.relax_limits().await;
    let (id, token) = new_token(&env, json!({})).await;
    register_with(&env, "cli-1", &token).await;
    let ca = env.dir.path().join("ca-for-cli.pem");
    std::fs::write(&ca, env.handle.ca_pem.as_bytes()).unwrap();
    let cli = octomil_cloud::cli::Cli::try_parse_from([
        "octomil",
        "--api-url",
        &env.handle.http_url,
        "--api-key",
        &env.owner_key,
        "--ca-file",
        ca.to_str().unwrap(),
        "bootstrap-tokens",
        "revoke",
        &id,
        "--devices",
    ])
    .unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut out = octomil_cloud::cli::Out::new(&mut stdout, &mut stderr, false, 0);
    octomil_cloud::cli::run(cli, &mut out).await.unwrap();
    let note = String::from_utf8_lossy(&stderr).into_owned();
    assert!(note.contains("1 devices revoked"), "{note}");
    assert_eq!(listed(&env, &id).await["status"], "revoked");
    let a = env.owner(Method::GET, "/devices/cli-1", None).await;
    assert_eq!(a.body["state"], "revoked");
    env.handle.shutdown().await;
}
