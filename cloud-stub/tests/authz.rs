//! The whole scope x endpoint matrix and role x action matrix, table-driven: every route with
//! no credential, an unknown key, a key with exactly its scope, a key with every scope but
//! that one, a sandbox key, a device key, and each role's session. The table here restates
//! the contract (docs/control-plane-api.md) independently of the server's code.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Device, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Member,
    Admin,
    Owner,
}

/// Builds the path and body for one call, creating whatever the call needs first.
type Setup = for<'a> fn(
    &'a Env,
    u32,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = (String, Option<Value>)> + 'a>,
>;

struct Endpoint {
    method: Method,
    name: &'static str,
    scope: &'static str,
    min_role: Role,
    setup: Setup,
}

fn fixed(path: &'static str, body: Option<Value>) -> (String, Option<Value>) {
    (path.to_owned(), body)
}

macro_rules! ep {
    ($m:ident $name:literal, $scope:expr, $role:ident, |$env:ident, $n:ident| $body:expr) => {
        Endpoint {
            method: Method::$m,
            name: $name,
            scope: $scope,
            min_role: Role::$role,
            setup: |$env, $n| Box::pin(async move { $body }),
        }
    };
}

async fn revoked_device(env: &Env, n: u32) -> String {
    let d = Device::new(&format!("del-{n}"));
    d.register(env).await;
    let a = env
        .owner(Method::POST, &format!("/devices/{}/revoke", d.id), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    d.id
}

async fn model(env: &Env) -> String {
    let a = env
        .owner(Method::POST, "/models", Some(json!({"name": "m"})))
        .await;
    a.body["id"].as_str().unwrap().to_owned()
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        ep!(GET "list devices", "devices:read", Member, |_e, _n| fixed("/devices", None)),
        ep!(GET "show device", "devices:read", Member, |e, _n| {
            let d = Device::new("show-me");
            if e.owner(Method::GET, "/devices/show-me", None).await.status != StatusCode::OK {
                d.register(e).await;
            }
            fixed("/devices/show-me", None)
        }),
        ep!(POST "revoke device", "devices:write", Admin, |e, n| {
            let d = Device::new(&format!("rev-{n}"));
            d.register(e).await;
            (format!("/devices/{}/revoke", d.id), Some(json!({"reason": "test"})))
        }),
        ep!(DELETE "delete device", "devices:write", Admin, |e, n| {
            (format!("/devices/{}", revoked_device(e, n).await), None)
        }),
        ep!(POST "create bootstrap token", "org:admin", Admin, |_e, _n| {
            fixed("/bootstrap-tokens", Some(json!({"max_uses": 5, "expires_in": "1d"})))
        }),
        ep!(GET "list bootstrap tokens", "org:admin", Admin, |_e, _n| fixed("/bootstrap-tokens", None)),
        ep!(PATCH "extend bootstrap token", "org:admin", Admin, |e, _n| {
            let a = e.owner(Method::POST, "/bootstrap-tokens", None).await;
            (format!("/bootstrap-tokens/{}", a.body["id"].as_str().unwrap()), Some(json!({"expires_in": "30d"})))
        }),
        ep!(DELETE "revoke bootstrap token", "org:admin", Admin, |e, _n| {
            let a = e.owner(Method::POST, "/bootstrap-tokens", None).await;
            (format!("/bootstrap-tokens/{}", a.body["id"].as_str().unwrap()), None)
        }),
        ep!(POST "bulk revoke", "devices:write", Admin, |e, n| {
            let d = Device::new(&format!("bulk-{n}"));
            d.register(e).await;
            fixed("/revocations", Some(json!({"device_ids": [d.id]})))
        }),
        ep!(GET "read audit log", "org:admin", Admin, |_e, _n| fixed("/audit", None)),
        ep!(GET "metrics", "metrics:read", Admin, |_e, _n| fixed("/metrics", None)),
        ep!(POST "create api key", "org:admin", Admin, |_e, _n| {
            fixed("/api-keys", Some(json!({"name": "k", "scopes": ["org:admin"]})))
        }),
        ep!(GET "list api keys", "org:admin", Admin, |_e, _n| fixed("/api-keys", None)),
        ep!(DELETE "delete api key", "org:admin", Admin, |e, n| {
            // An Admin's key: an Admin may delete it (an Owner's, only an Owner).
            let maker = e.session(&format!("keymaker{n}@example.com"), "admin").await;
            let a = e.call(Method::POST, "/api-keys", Some(&maker), Some(json!({"name": "victim", "scopes": ["models:read"]}))).await;
            (format!("/api-keys/{}", a.body["id"].as_str().unwrap()), None)
        }),
        ep!(GET "show settings", "org:admin", Member, |_e, _n| fixed("/org/settings", None)),
        ep!(PATCH "change settings", "org:admin", Admin, |_e, _n| {
            fixed("/org/settings", Some(json!({"device_token_expiry": "24h"})))
        }),
        ep!(GET "list members", "org:admin", Admin, |_e, _n| fixed("/org/members", None)),
        ep!(POST "add member", "org:admin", Owner, |_e, n| {
            ("/org/members".into(), Some(json!({"email": format!("new{n}@example.com"), "role": "member"})))
        }),
        ep!(PATCH "change member role", "org:admin", Owner, |e, n| {
            let email = format!("chg{n}@example.com");
            e.add_member(&email, "member").await;
            (format!("/org/members/{email}"), Some(json!({"role": "admin"})))
        }),
        ep!(DELETE "remove member", "org:admin", Owner, |e, n| {
            let email = format!("rm{n}@example.com");
            e.add_member(&email, "member").await;
            (format!("/org/members/{email}"), None)
        }),
        ep!(GET "billing", "org:admin", Owner, |_e, _n| fixed("/org/billing", None)),
        ep!(GET "list models", "models:read", Member, |_e, _n| fixed("/models", None)),
        ep!(POST "create model", "models:write", Admin, |_e, _n| fixed("/models", Some(json!({"name": "resnet"})))),
        ep!(GET "list model versions", "models:read", Member, |e, _n| {
            (format!("/models/{}/versions", model(e).await), None)
        }),
        ep!(POST "create model version", "models:write", Admin, |e, _n| {
            (format!("/models/{}/versions", model(e).await), Some(json!({"name": "v2"})))
        }),
        ep!(GET "list device groups", "devices:read", Member, |_e, _n| fixed("/device-groups", None)),
        ep!(POST "create device group", "devices:write", Admin, |_e, _n| {
            fixed("/device-groups", Some(json!({"name": "lab"})))
        }),
        ep!(GET "list rollouts", "models:read", Member, |_e, _n| fixed("/rollouts", None)),
        ep!(POST "create rollout", "rollouts:write", Admin, |_e, _n| {
            fixed("/rollouts", Some(json!({"name": "canary", "spec": {"percent": 5}})))
        }),
        ep!(GET "list federations", "federations:admin", Admin, |_e, _n| fixed("/federations", None)),
        ep!(POST "create federation", "federations:admin", Admin, |_e, _n| {
            fixed("/federations", Some(json!({"name": "fed"})))
        }),
        ep!(GET "list training rounds", "training:write", Member, |_e, _n| fixed("/training/rounds", None)),
        ep!(POST "submit training round", "training:write", Member, |_e, _n| {
            fixed("/training/rounds", Some(json!({"name": "round-1"})))
        }),
        ep!(GET "list experiments", "experiments:write", Admin, |_e, _n| fixed("/experiments", None)),
        ep!(POST "create experiment", "experiments:write", Admin, |_e, _n| {
            fixed("/experiments", Some(json!({"name": "ab"})))
        }),
        ep!(POST "inference", "models:read", Member, |_e, _n| {
            fixed("/inference", Some(json!({"input": [1, 2, 3]})))
        }),
    ]
}

/// What an `edg_test_` key gets on a route whose setup made live records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sandbox {
    /// Organization administration: 403 `wrong_environment`.
    Refused,
    /// A live record named by id: 404, as if absent.
    NotFound,
    /// Acts in the sandbox (lists come back without live records).
    Own,
}

fn sandbox_sees(name: &str) -> Sandbox {
    match name {
        "metrics" | "create api key" | "list api keys" | "delete api key" | "show settings"
        | "change settings" | "list members" | "add member" | "change member role"
        | "remove member" | "billing" => Sandbox::Refused,
        "show device"
        | "revoke device"
        | "delete device"
        | "extend bootstrap token"
        | "revoke bootstrap token"
        | "list model versions"
        | "create model version" => Sandbox::NotFound,
        _ => Sandbox::Own,
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_by_endpoint_matrix() {
    let env = support::start().await;
    env.relax_limits().await;
    let a = env
        .owner(
            Method::POST,
            "/api-keys",
            Some(json!({"name": "sandbox", "scopes": ALL_SCOPES, "environment": "test"})),
        )
        .await;
    let sandbox = a.body["key"].as_str().unwrap().to_owned();
    assert!(sandbox.starts_with("edg_test_"));
    let mut n = 0;
    for ep in endpoints() {
        // No credentials, or unknown ones: 401.
        n += 1;
        let (path, body) = (ep.setup)(&env, n).await;
        let a = env.call(ep.method.clone(), &path, None, body.clone()).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNAUTHORIZED, "unauthenticated"),
            "{} without auth",
            ep.name
        );
        let a = env
            .call(
                ep.method.clone(),
                &path,
                Some("edg_live_0000000000aaaaaaaaaaBBBBBBBBBB99"),
                body,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{} with an unknown key",
            ep.name
        );

        let scope = ep.scope;
        // Exactly the scope: allowed.
        let only = env.create_key(&[scope]).await;
        n += 1;
        let (path, body) = (ep.setup)(&env, n).await;
        let a = env.call(ep.method.clone(), &path, Some(&only), body).await;
        assert!(
            a.status.is_success(),
            "{} with only {scope}: {} {:?}",
            ep.name,
            a.status,
            a.body
        );
        // Every scope but that one: refused.
        let others: Vec<&str> = ALL_SCOPES.iter().copied().filter(|s| *s != scope).collect();
        let without = env.create_key(&others).await;
        n += 1;
        let (path, body) = (ep.setup)(&env, n).await;
        let a = env
            .call(ep.method.clone(), &path, Some(&without), body)
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::FORBIDDEN, "insufficient_scope"),
            "{} without {scope}",
            ep.name
        );
        // A sandbox key with every scope: organization administration is refused; on data
        // that carries an environment it acts in the sandbox, where the live record the
        // setup made does not exist (404, never 403); inference is stateless.
        n += 1;
        let (path, body) = (ep.setup)(&env, n).await;
        let a = env
            .call(ep.method.clone(), &path, Some(&sandbox), body)
            .await;
        match sandbox_sees(ep.name) {
            Sandbox::Refused => assert_eq!(
                (a.status, a.code()),
                (StatusCode::FORBIDDEN, "wrong_environment"),
                "{} with a sandbox key",
                ep.name
            ),
            Sandbox::NotFound => assert_eq!(
                (a.status, a.code()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{} with a sandbox key",
                ep.name
            ),
            Sandbox::Own => {
                assert!(
                    a.status.is_success(),
                    "{} with a sandbox key: {} {:?}",
                    ep.name,
                    a.status,
                    a.body
                );
                // Lists and what it creates are the sandbox's only.
                for list in ["devices", "items", "bootstrap_tokens", "records"] {
                    if let Some(items) = a.body[list].as_array() {
                        assert!(
                            items.iter().all(|i| i["environment"] == "test"),
                            "{}: {:?}",
                            ep.name,
                            a.body
                        );
                    }
                }
                if a.status == StatusCode::CREATED {
                    assert_eq!(a.body["environment"], "test", "{}", ep.name);
                }
                if ep.name == "bulk revoke" {
                    assert_eq!(a.body["revoked"], json!([]), "{:?}", a.body);
                    assert_eq!(a.body["not_found"].as_array().unwrap().len(), 1);
                }
            }
        }
    }
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_by_action_matrix() {
    let env = support::start().await;
    env.relax_limits().await;
    let sessions = [
        (
            Role::Member,
            env.session("member@example.com", "member").await,
        ),
        (Role::Admin, env.session("admin@example.com", "admin").await),
        (
            Role::Owner,
            env.session("owner2@example.com", "owner").await,
        ),
    ];
    let mut n = 1000;
    for ep in endpoints() {
        for (role, token) in &sessions {
            n += 1;
            let (path, body) = (ep.setup)(&env, n).await;
            let a = env.call(ep.method.clone(), &path, Some(token), body).await;
            if *role >= ep.min_role {
                assert!(
                    a.status.is_success(),
                    "{:?} may {}: {} {:?}",
                    role,
                    ep.name,
                    a.status,
                    a.body
                );
            } else {
                assert_eq!(
                    (a.status, a.code()),
                    (StatusCode::FORBIDDEN, "forbidden"),
                    "{:?} may not {}",
                    role,
                    ep.name
                );
            }
        }
    }
    env.handle.shutdown().await;
}

/// Device keys carry `models:read` and no role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_keys_reach_only_models_read() {
    let env = support::start().await;
    env.relax_limits().await;
    let mut n = 2000;
    for ep in endpoints() {
        n += 1;
        let (path, body) = (ep.setup)(&env, n).await;
        // A fresh device per call keeps its control-plane budget out of the picture.
        let dev = Device::new(&format!("caller-{n}")).register(&env).await;
        let a = env
            .call(ep.method.clone(), &path, Some(dev.api_key.expose()), body)
            .await;
        if ep.scope == "models:read" {
            assert!(
                a.status.is_success(),
                "device may {}: {:?}",
                ep.name,
                a.body
            );
        } else {
            assert_eq!(a.code(), "insufficient_scope", "device may not {}", ep.name);
        }
    }
    env.handle.shutdown().await;
}

/// A key cannot mint a key with scopes it lacks; a session can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_escalate() {
    let env = support::start().await;
    env.relax_limits().await;
    let narrow = env.create_key(&["models:read", "org:admin"]).await;
    let a = env
        .call(
            Method::POST,
            "/api-keys",
            Some(&narrow),
            Some(json!({"name": "x", "scopes": ["devices:write"]})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let a = env
        .call(
            Method::POST,
            "/api-keys",
            Some(&narrow),
            Some(json!({"name": "x", "scopes": ["models:read"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    // A key made by an Admin session is an Admin key: it cannot manage members.
    let admin = env.session("a@example.com", "admin").await;
    let a = env
        .call(
            Method::POST,
            "/api-keys",
            Some(&admin),
            Some(json!({"name": "adm", "scopes": ALL_SCOPES})),
        )
        .await;
    let admin_key = a.body["key"].as_str().unwrap().to_owned();
    let a = env
        .call(
            Method::POST,
            "/org/members",
            Some(&admin_key),
            Some(json!({"email": "z@example.com", "role": "owner"})),
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden"));
    env.handle.shutdown().await;
}

/// Removing a member or demoting them ends their sessions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_apply_to_live_sessions() {
    let env = support::start().await;
    env.relax_limits().await;
    let (password, totp) = env.add_member("m@example.com", "admin").await;
    let s = env.login("m@example.com", &password, &totp).await;
    assert!(
        env.call(Method::GET, "/org/members", Some(&s), None)
            .await
            .status
            .is_success()
    );
    env.owner(
        Method::PATCH,
        "/org/members/m@example.com",
        Some(json!({"role": "member"})),
    )
    .await;
    let a = env.call(Method::GET, "/org/members", Some(&s), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A TOTP code is accepted once: log in again with the next one.
    env.clock.advance(std::time::Duration::from_secs(30));
    let s = env.login("m@example.com", &password, &totp).await;
    let a = env.call(Method::GET, "/org/members", Some(&s), None).await;
    assert_eq!(a.code(), "forbidden");
    env.owner(Method::DELETE, "/org/members/m@example.com", None)
        .await;
    let a = env.call(Method::GET, "/org/settings", Some(&s), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}
