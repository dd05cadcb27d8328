//! Sandbox vs live (issue 11, point 7): every device, bootstrap token, resource and audit
//! record carries an environment; a device takes its bootstrap token's; an `edg_test_` key
//! sees and changes the sandbox only and an `edg_live_` key the live data only (another
//! environment's record answers 404 as if absent), route by route; a session sees both.
//! Before, a sandbox key was refused everywhere and nothing carried an environment.

#![allow(clippy::unwrap_used)]

mod support;

use clap::Parser;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Device, Env};

const ALL_SCOPES: [&str; 10] = [
    "models:read",
    "models:write",
    "devices:read",
    "devices:write",
    "rollouts:write",
    "federations:admin",
    "training:write",
    "experiments:write",
    "org:admin",
    "metrics:read",
];

fn ids(a: &Value, list: &str, field: &str) -> Vec<String> {
    let mut v: Vec<String> = a[list]
        .as_array()
        .unwrap_or_else(|| panic!("{a:?}"))
        .iter()
        .map(|d| d[field].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn register_with(env: &Env, id: &str, bootstrap: &str) -> Value {
    let d = Device::new(id);
    let body = d.register_body(env, bootstrap).await;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body
}

struct World {
    env: Env,
    live: String,
    test: String,
    session: String,
    sandbox_token_id: String,
    sandbox_token: String,
    live_token_id: String,
    sandbox_device_key: String,
}

async fn world() -> World {
    let env = support::start().await;
    env.relax_limits().await;
    let a = env
        .owner(
            Method::POST,
            "/api-keys",
            Some(json!({"name": "sandbox", "scopes": ALL_SCOPES, "environment": "test"})),
        )
        .await;
    let test = a.body["key"].as_str().unwrap().to_owned();
    assert!(test.starts_with("edg_test_"));
    let live = env.owner_key.clone();
    // A bootstrap token takes the environment of the key that made it.
    let a = env
        .call(Method::POST, "/bootstrap-tokens", Some(&test), None)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.body["environment"], "test");
    let sandbox_token_id = a.body["id"].as_str().unwrap().to_owned();
    let sandbox_token = a.body["token"].as_str().unwrap().to_owned();
    // A device takes its bootstrap token's: its key is a sandbox key.
    let reg = register_with(&env, "sbx-1", &sandbox_token).await;
    let sandbox_device_key = reg["api_key"].as_str().unwrap().to_owned();
    assert!(sandbox_device_key.starts_with("edg_test_"));
    register_with(&env, "sbx-2", &sandbox_token).await;
    let reg = register_with(&env, "live-1", &env.bootstrap_token()).await;
    assert!(reg["api_key"].as_str().unwrap().starts_with("edg_live_"));
    register_with(&env, "live-2", &env.bootstrap_token()).await;
    let a = env.owner(Method::GET, "/bootstrap-tokens", None).await;
    let live_token_id = ids(&a.body, "bootstrap_tokens", "id").remove(0);
    let session = env.session("o2@example.com", "owner").await;
    World {
        env,
        live,
        test,
        session,
        sandbox_token_id,
        sandbox_token,
        live_token_id,
        sandbox_device_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_bootstrap_tokens_are_seen_only_in_their_environment() {
    let w = world().await;
    let env = &w.env;
    let call = |m: Method, p: String, k: &str, b: Option<Value>| {
        let k = k.to_owned();
        async move { env.call(m, &p, Some(&k), b).await }
    };

    // Lists.
    let a = call(Method::GET, "/devices".into(), &w.test, None).await;
    assert_eq!(ids(&a.body, "devices", "device_id"), ["sbx-1", "sbx-2"]);
    assert!(
        a.body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["environment"] == "test")
    );
    let a = call(Method::GET, "/devices".into(), &w.live, None).await;
    assert_eq!(ids(&a.body, "devices", "device_id"), ["live-1", "live-2"]);
    let a = call(Method::GET, "/devices".into(), &w.session, None).await;
    assert_eq!(a.body["devices"].as_array().unwrap().len(), 4);
    let a = call(
        Method::GET,
        "/devices?environment=test".into(),
        &w.session,
        None,
    )
    .await;
    assert_eq!(ids(&a.body, "devices", "device_id"), ["sbx-1", "sbx-2"]);
    let a = call(
        Method::GET,
        "/devices?environment=live".into(),
        &w.test,
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "wrong_environment")
    );
    let a = call(Method::GET, "/bootstrap-tokens".into(), &w.test, None).await;
    assert_eq!(
        ids(&a.body, "bootstrap_tokens", "id"),
        [w.sandbox_token_id.as_str()]
    );
    let a = call(Method::GET, "/bootstrap-tokens".into(), &w.live, None).await;
    assert_eq!(
        ids(&a.body, "bootstrap_tokens", "id"),
        [w.live_token_id.as_str()]
    );
    // The live token's devices, filtered by token, are not the sandbox key's to see.
    let a = call(
        Method::GET,
        format!("/devices?bootstrap_token={}", w.live_token_id),
        &w.test,
        None,
    )
    .await;
    assert_eq!(a.body["devices"], json!([]));

    // Reading, revoking, deleting, updating a record of the other environment: 404.
    for (key, dev, tok) in [
        (&w.test, "live-1", &w.live_token_id),
        (&w.live, "sbx-1", &w.sandbox_token_id),
    ] {
        for (m, p, b) in [
            (Method::GET, format!("/devices/{dev}"), None),
            (Method::POST, format!("/devices/{dev}/revoke"), None),
            (Method::DELETE, format!("/devices/{dev}"), None),
            (
                Method::PATCH,
                format!("/bootstrap-tokens/{tok}"),
                Some(json!({"max_uses": 50})),
            ),
            (Method::DELETE, format!("/bootstrap-tokens/{tok}"), None),
        ] {
            let a = call(m.clone(), p.clone(), key, b).await;
            assert_eq!(
                (a.status, a.code()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{m} {p}"
            );
        }
        let a = call(
            Method::POST,
            "/revocations".into(),
            key,
            Some(json!({"bootstrap_token_id": tok})),
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "bulk by {tok}");
        let a = call(
            Method::POST,
            "/revocations".into(),
            key,
            Some(json!({"device_ids": [dev]})),
        )
        .await;
        assert_eq!(a.body["not_found"], json!([dev]), "{:?}", a.body);
        assert_eq!(a.body["revoked"], json!([]));
    }
    // Naming the other environment for a new token is refused; a session may choose.
    let a = call(
        Method::POST,
        "/bootstrap-tokens".into(),
        &w.test,
        Some(json!({"environment": "live"})),
    )
    .await;
    assert_eq!(a.code(), "wrong_environment");
    let a = call(Method::POST, "/bootstrap-tokens".into(), &w.session, None).await;
    assert_eq!(a.body["environment"], "live");
    let a = call(
        Method::POST,
        "/bootstrap-tokens".into(),
        &w.session,
        Some(json!({"environment": "test"})),
    )
    .await;
    assert_eq!(a.body["environment"], "test");

    // Nothing above touched the live devices.
    let a = call(
        Method::GET,
        "/devices?state=revoked".into(),
        &w.session,
        None,
    )
    .await;
    assert_eq!(a.body["devices"], json!([]));
    w.env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_revocation_of_a_sandbox_key_reaches_the_sandbox_only() {
    let w = world().await;
    let env = &w.env;
    let org_id = env.owner(Method::GET, "/org/settings", None).await.body["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // By bootstrap token: the sandbox token's devices.
    let a = env
        .call(
            Method::POST,
            "/revocations",
            Some(&w.test),
            Some(json!({"bootstrap_token_id": w.sandbox_token_id})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let mut revoked: Vec<String> = serde_json::from_value(a.body["revoked"].clone()).unwrap();
    revoked.sort();
    assert_eq!(revoked, ["sbx-1", "sbx-2"]);
    // "All devices" for a sandbox key means every sandbox device.
    register_with(env, "sbx-3", &w.sandbox_token).await;
    let a = env
        .call(
            Method::POST,
            "/revocations",
            Some(&w.test),
            Some(json!({"all": true, "confirm": org_id})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["revoked"], json!(["sbx-3"]));
    assert_eq!(a.body["already_revoked"], 2);
    let a = env.owner(Method::GET, "/devices?state=active", None).await;
    assert_eq!(ids(&a.body, "devices", "device_id"), ["live-1", "live-2"]);
    // A live key's "all" leaves the sandbox alone too (sbx-4 stays active).
    register_with(env, "sbx-4", &w.sandbox_token).await;
    let a = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"all": true, "confirm": org_id})),
        )
        .await;
    let mut revoked: Vec<String> = serde_json::from_value(a.body["revoked"].clone()).unwrap();
    revoked.sort();
    assert_eq!(revoked, ["live-1", "live-2"]);
    let a = env
        .call(Method::GET, "/devices/sbx-4", Some(&w.test), None)
        .await;
    assert_eq!(a.body["state"], "active");
    w.env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_audit_records_are_seen_only_in_their_environment() {
    let w = world().await;
    let env = &w.env;
    let a = env
        .call(
            Method::POST,
            "/models",
            Some(&w.test),
            Some(json!({"name": "sandbox-model"})),
        )
        .await;
    assert_eq!(a.body["environment"], "test");
    let sandbox_model = a.body["id"].as_str().unwrap().to_owned();
    let a = env
        .owner(Method::POST, "/models", Some(json!({"name": "live-model"})))
        .await;
    assert_eq!(a.body["environment"], "live");
    let live_model = a.body["id"].as_str().unwrap().to_owned();

    let names = |a: &Value| ids(a, "items", "name");
    let a = env.call(Method::GET, "/models", Some(&w.test), None).await;
    assert_eq!(names(&a.body), ["sandbox-model"]);
    let a = env.owner(Method::GET, "/models", None).await;
    assert_eq!(names(&a.body), ["live-model"]);
    let a = env
        .call(Method::GET, "/models", Some(&w.session), None)
        .await;
    assert_eq!(names(&a.body), ["live-model", "sandbox-model"]);
    // A sandbox device reads the sandbox's models.
    let a = env.device_call(&w.sandbox_device_key).await;
    assert_eq!(names(&a.body), ["sandbox-model"]);
    // Another environment's model is absent as a parent.
    for (key, model) in [(&w.test, &live_model), (&w.live, &sandbox_model)] {
        for m in [Method::GET, Method::POST] {
            let a = env
                .call(
                    m.clone(),
                    &format!("/models/{model}/versions"),
                    Some(key),
                    (m == Method::POST).then(|| json!({"name": "v2"})),
                )
                .await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{m} versions of {model}");
        }
    }
    // A session's version lands beside its model.
    let a = env
        .call(
            Method::POST,
            &format!("/models/{sandbox_model}/versions"),
            Some(&w.session),
            Some(json!({"name": "v1"})),
        )
        .await;
    assert_eq!(a.body["environment"], "test", "{:?}", a.body);

    // Audit: the sandbox key reads the sandbox's records, the live key the live ones.
    let a = env.call(Method::GET, "/audit", Some(&w.test), None).await;
    let records = a.body["records"].as_array().unwrap();
    assert!(records.iter().all(|r| r["environment"] == "test"));
    let targets: Vec<&str> = records
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    for t in ["sbx-1", "sbx-2", sandbox_model.as_str()] {
        assert!(targets.contains(&t), "{t} in {targets:?}");
    }
    let a = env.owner(Method::GET, "/audit", None).await;
    let records = a.body["records"].as_array().unwrap();
    assert!(records.iter().all(|r| r["environment"] == "live"));
    assert!(records.iter().any(|r| r["target"] == "live-1"));
    let a = env
        .call(
            Method::GET,
            "/audit?environment=test",
            Some(&w.session),
            None,
        )
        .await;
    assert!(
        a.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["environment"] == "test")
    );

    // Either key verifies the whole chain: the other environment's records come as links.
    let ca = env.dir.path().join("ca-for-cli.pem");
    std::fs::write(&ca, env.handle.ca_pem.as_bytes()).unwrap();
    for key in [&w.test, &w.live, &w.session] {
        let cli = octomil_cloud::cli::Cli::try_parse_from([
            "octomil",
            "--api-url",
            &env.handle.http_url,
            "--api-key",
            key,
            "--ca-file",
            ca.to_str().unwrap(),
            "audit",
            "verify",
        ])
        .unwrap();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut out = octomil_cloud::cli::Out::new(&mut stdout, &mut stderr, false, 0);
        let r = octomil_cloud::cli::run(cli, &mut out).await;
        assert!(r.is_ok(), "{r:?} {}", String::from_utf8_lossy(&stderr));
    }
    w.env.handle.shutdown().await;
}
