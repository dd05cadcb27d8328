//! Bad input everywhere gets 400 with a clear code and changes nothing; a restart keeps
//! every org, key, device and setting.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Device, Env};

/// Everything an operator can see, to prove a refused call changed nothing.
async fn snapshot(env: &Env) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/devices",
        "/api-keys",
        "/org/settings",
        "/org/members",
        "/models",
    ] {
        let mut body = env.owner(Method::GET, path, None).await.body;
        // last_used_at moves with our own reads; everything else must be identical.
        if let Some(keys) = body["api_keys"].as_array_mut() {
            for k in keys {
                k["last_used_at"] = Value::Null;
            }
        }
        out.push(body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_code_and_changes_nothing() {
    let env = support::start().await;
    env.relax_limits().await;
    let d = Device::new("good");
    let reg = d.register(&env).await;
    let before = snapshot(&env).await;
    let owner = env.owner_key.clone();
    let big = vec![b' '; 64 * 1024 + 1];
    let mut huge_json = b"{\"name\":\"".to_vec();
    huge_json.extend(std::iter::repeat_n(b'a', 70_000));
    huge_json.extend(b"\",\"scopes\":[\"models:read\"]}");

    let raw_cases: Vec<(Method, &str, Vec<u8>, &str)> = vec![
        (
            Method::POST,
            "/api-keys",
            b"{not json".to_vec(),
            "malformed_json",
        ),
        (Method::POST, "/api-keys", b"".to_vec(), "malformed_json"),
        (Method::POST, "/api-keys", b"[1,2]".to_vec(), "invalid_body"),
        (Method::POST, "/api-keys", huge_json, "body_too_large"),
        (Method::POST, "/models", big.clone(), "body_too_large"),
        (Method::POST, "/devices/register", big, "body_too_large"),
        (
            Method::PATCH,
            "/org/settings",
            b"{\"device_token_expiry\": 5}".to_vec(),
            "invalid_body",
        ),
        (
            Method::POST,
            "/devices/refresh",
            b"\xff\xfe".to_vec(),
            "malformed_json",
        ),
    ];
    for (m, path, body, code) in raw_cases {
        let a = env.call_raw(m.clone(), path, Some(&owner), body).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, code),
            "{m} {path}: {:?}",
            a.body
        );
        assert!(!a.body["message"].as_str().unwrap().is_empty());
    }

    let pk = octomil_common::proof::encode_public_key(&d.key.verifying_key());
    let reg_body = d.register_body(&env, &env.bootstrap_token()).await;
    let with = |k: &str, v: Value| {
        let mut b = reg_body.clone();
        b[k] = v;
        b
    };
    let json_cases: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            "/api-keys".into(),
            json!({"name": "x", "scopes": ["models:delete"]}),
            "unknown_scope",
        ),
        (
            Method::POST,
            "/api-keys".into(),
            json!({"name": "x", "scopes": []}),
            "unknown_scope",
        ),
        (
            Method::POST,
            "/api-keys".into(),
            json!({"name": "", "scopes": ["models:read"]}),
            "invalid_argument",
        ),
        (
            Method::POST,
            "/api-keys".into(),
            json!({"name": "x", "scopes": ["models:read"], "environment": "prod"}),
            "invalid_body",
        ),
        (
            Method::POST,
            "/api-keys".into(),
            json!({"name": "x", "scopes": ["models:read"], "extra": 1}),
            "invalid_body",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("device_id", json!("bad/id")),
            "invalid_device_id",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("device_id", json!("")),
            "invalid_device_id",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("device_id", json!("x".repeat(129))),
            "invalid_device_id",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("bootstrap_token", json!(env.owner_key)),
            "invalid_token_format",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("bootstrap_token", json!("edg_bootstrap_short")),
            "invalid_token_format",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("device_public_key", json!("AAAA")),
            "invalid_proof",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("proof", json!({"timestamp": 1, "signature": "x"})),
            "challenge_required",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("proof", json!("AAAA")),
            "invalid_proof",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            with("device_id", json!("other")),
            "invalid_challenge",
        ),
        (
            Method::POST,
            "/devices/register".into(),
            json!({"device_id": "x", "device_public_key": pk}),
            "invalid_body",
        ),
        (
            Method::POST,
            "/devices/refresh".into(),
            json!({"device_id": "good", "refresh_token": reg.api_key.expose()}),
            "invalid_token_format",
        ),
        (
            Method::POST,
            "/devices/refresh".into(),
            json!({"device_id": "g d", "refresh_token": reg.refresh_token.expose()}),
            "invalid_device_id",
        ),
        (
            Method::GET,
            "/devices/bad%2Fid".into(),
            Value::Null,
            "invalid_device_id",
        ),
        (
            Method::POST,
            "/devices/a%20b/revoke".into(),
            Value::Null,
            "invalid_device_id",
        ),
        (
            Method::POST,
            "/devices/good/revoke".into(),
            json!({"reason": "r".repeat(300)}),
            "invalid_argument",
        ),
        (
            Method::PATCH,
            "/org/settings".into(),
            json!({"device_token_expiry": "48 hours"}),
            "invalid_argument",
        ),
        (
            Method::PATCH,
            "/org/settings".into(),
            json!({"device_token_expiry": "1s"}),
            "invalid_argument",
        ),
        (
            Method::PATCH,
            "/org/settings".into(),
            json!({"device_token_expiry": "48h", "compliance_preset": "fedramp"}),
            "invalid_body",
        ),
        (
            Method::PATCH,
            "/org/settings".into(),
            json!({"rate_limits": {"inference": {"limit": 0, "period_secs": 60}}}),
            "invalid_argument",
        ),
        (
            Method::PATCH,
            "/org/settings".into(),
            json!({"device_token_expiry": "48h", "rate_limits": {"inference": {"limit": 5, "period_secs": 0}}}),
            "invalid_argument",
        ),
        (
            Method::POST,
            "/org/members".into(),
            json!({"email": "not-an-email", "role": "admin"}),
            "invalid_argument",
        ),
        (
            Method::POST,
            "/org/members".into(),
            json!({"email": "a@b.c", "role": "root"}),
            "invalid_body",
        ),
        (
            Method::POST,
            "/bootstrap-tokens".into(),
            json!({"max_uses": 0}),
            "invalid_argument",
        ),
        (
            Method::POST,
            "/bootstrap-tokens".into(),
            json!({"expires_in": "soon"}),
            "invalid_argument",
        ),
        (
            Method::POST,
            "/models".into(),
            json!({"spec": {}}),
            "invalid_body",
        ),
        (
            Method::DELETE,
            "/org".into(),
            json!({"confirm": "wrong"}),
            "invalid_argument",
        ),
    ];
    for (m, path, body, code) in json_cases {
        let body = (!body.is_null()).then_some(body);
        let a = env.call(m.clone(), &path, Some(&owner), body).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, code),
            "{m} {path}: {:?}",
            a.body
        );
    }
    // Messages never echo a secret that was sent in the wrong place.
    let a = env
        .call(
            Method::POST,
            "/devices/register",
            None,
            Some(with("bootstrap_token", json!(env.owner_key))),
        )
        .await;
    assert!(!a.body.to_string().contains(&env.owner_key));

    assert_eq!(snapshot(&env).await, before, "a refused call changed state");
    // The device's credentials still work.
    assert_eq!(
        env.device_call(reg.api_key.expose()).await.status,
        StatusCode::OK
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_in_the_error_vocabulary() {
    let env = support::start().await;
    let a = env.owner(Method::GET, "/nope", None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "not_found"));
    let a = env.owner(Method::PUT, "/devices", None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let a = env.owner(Method::GET, "/devices/ghost", None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "not_found"));
    let a = env
        .call(Method::GET, "/devices", Some("Basic abc"), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = env.call(Method::GET, "/devices", Some("a.b.c"), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_orgs_keys_devices_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_owned();
    let env = support::start_in(dir).await;
    let key = env.create_key(&["devices:read"]).await;
    let reg = Device::new("persist").register(&env).await;
    env.owner(
        Method::PATCH,
        "/org/settings",
        Some(json!({"device_token_expiry": "48h", "compliance_preset": "gdpr"})),
    )
    .await;
    env.add_member("keep@example.com", "admin").await;
    let before = snapshot(&env).await;
    let support::Env { handle, dir, .. } = env;
    let first_url = handle.http_url.clone();
    handle.shutdown().await;
    assert_eq!(state, dir.path());

    let env = support::start_in(dir).await;
    assert_ne!(env.handle.http_url, "", "{first_url}");
    assert_eq!(snapshot(&env).await, before);
    assert_eq!(
        env.call(Method::GET, "/devices", Some(&key), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        env.device_call(reg.api_key.expose()).await.status,
        StatusCode::OK
    );
    env.handle.shutdown().await;
}

/// Random bytes and random JSON shapes at every body-taking endpoint: always a 4xx in the
/// error vocabulary, never a 5xx or a dropped connection, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_never_break_the_server() {
    let env = support::start().await;
    env.relax_limits().await;
    let before = snapshot(&env).await;
    let targets = [
        (Method::POST, "/devices/register"),
        (Method::POST, "/devices/refresh"),
        (Method::POST, "/api-keys"),
        (Method::PATCH, "/org/settings"),
        (Method::POST, "/org/members"),
        (Method::POST, "/auth/login"),
        (Method::POST, "/bootstrap-tokens"),
        (Method::DELETE, "/org"),
    ];
    let shapes = [
        json!(null),
        json!(42),
        json!("edg_live_"),
        json!({"device_id": 7}),
        json!({"bootstrap_token": null, "device_id": "a", "device_public_key": "", "proof": {}}),
        json!({"name": ["x"], "scopes": "models:read"}),
        json!({"rate_limits": {"inference": {"limit": -1, "period_secs": 60}}}),
        json!({"email": {"nested": true}, "role": "admin"}),
        json!({"max_uses": 1e40}),
        json!({"confirm": null}),
    ];
    // A small deterministic generator: the same inputs on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..240 {
        let (m, path) = &targets[round % targets.len()];
        let body = if round % 2 == 0 {
            let len = (next() % 300) as usize;
            (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            serde_json::to_vec(&shapes[(next() % shapes.len() as u64) as usize]).unwrap()
        };
        let a = env
            .call_raw(m.clone(), path, Some(&env.owner_key), body)
            .await;
        assert!(
            a.status.is_client_error(),
            "{m} {path}: {} {:?}",
            a.status,
            a.body
        );
        assert!(!a.code().is_empty(), "{m} {path}: {:?}", a.body);
    }
    assert_eq!(snapshot(&env).await, before);
    env.handle.shutdown().await;
}
