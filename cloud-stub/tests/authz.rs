//! The whole scope x endpoint matrix and role x action matrix, table-driven. The table here
//! restates the contract (docs/control-plane-api.md) independently of the server's code.

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
    scope: Option<&'static str>,
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
        ep!(GET "list devices", Some("devices:read"), Member, |_e, _n| fixed("/devices", None)),
        ep!(GET "show device", Some("devices:read"), Member, |e, _n| {
            let d = Device::new("show-me");
            if e.owner(Method::GET, "/devices/show-me", None).await.status != StatusCode::OK {
                d.register(e).await;
            }
            fixed("/devices/show-me", None)
        }),
        ep!(POST "revoke device", Some("devices:write"), Admin, |e, n| {
            let d = Device::new(&format!("rev-{n}"));
            d.register(e).await;
            (format!("/devices/{}/revoke", d.id), Some(json!({"reason": "test"})))
        }),
        ep!(DELETE "delete device", Some("devices:write"), Admin, |e, n| {
            (format!("/devices/{}", revoked_device(e, n).await), None)
        }),
        ep!(POST "create bootstrap token", Some("devices:write"), Admin, |_e, _n| {
            fixed("/bootstrap-tokens", Some(json!({"max_uses": 5, "expires_in": "1d"})))
        }),
        ep!(POST "create api key", None, Admin, |_e, _n| {
            fixed("/api-keys", Some(json!({"name": "k", "scopes": ["devices:read"]})))
        }),
        ep!(GET "list api keys", None, Admin, |_e, _n| fixed("/api-keys", None)),
        ep!(DELETE "delete api key", None, Admin, |e, _n| {
            let a = e.owner(Method::POST, "/api-keys", Some(json!({"name": "victim", "scopes": ["models:read"]}))).await;
            (format!("/api-keys/{}", a.body["id"].as_str().unwrap()), None)
        }),
        ep!(GET "show settings", None, Member, |_e, _n| fixed("/org/settings", None)),
        ep!(PATCH "change settings", None, Admin, |_e, _n| {
            fixed("/org/settings", Some(json!({"device_token_expiry": "24h"})))
        }),
        ep!(GET "list members", None, Admin, |_e, _n| fixed("/org/members", None)),
        ep!(POST "add member", None, Owner, |_e, n| {
            ("/org/members".into(), Some(json!({"email": format!("new{n}@example.com"), "role": "member"})))
        }),
        ep!(PATCH "change member role", None, Owner, |e, n| {
            let email = format!("chg{n}@example.com");
            e.add_member(&email, "member").await;
            (format!("/org/members/{email}"), Some(json!({"role": "admin"})))
        }),
        ep!(DELETE "remove member", None, Owner, |e, n| {
            let email = format!("rm{n}@example.com");
            e.add_member(&email, "member").await;
            (format!("/org/members/{email}"), None)
        }),
        ep!(GET "billing", None, Owner, |_e, _n| fixed("/org/billing", None)),
        ep!(GET "list models", Some("models:read"), Member, |_e, _n| fixed("/models", None)),
        ep!(POST "create model", Some("models:write"), Admin, |_e, _n| fixed("/models", Some(json!({"name": "resnet"})))),
        ep!(GET "list model versions", Some("models:read"), Member, |e, _n| {
            (format!("/models/{}/versions", model(e).await), None)
        }),
        ep!(POST "create model version", Some("models:write"), Admin, |e, _n| {
            (format!("/models/{}/versions", model(e).await), Some(json!({"name": "v2"})))
        }),
        ep!(GET "list device groups", Some("devices:read"), Member, |_e, _n| fixed("/device-groups", None)),
        ep!(POST "create device group", Some("devices:write"), Admin, |_e, _n| {
            fixed("/device-groups", Some(json!({"name": "lab"})))
        }),
        ep!(GET "list rollouts", Some("models:read"), Member, |_e, _n| fixed("/rollouts", None)),
        ep!(POST "create rollout", Some("rollouts:write"), Admin, |_e, _n| {
            fixed("/rollouts", Some(json!({"name": "canary", "spec": {"percent": 5}})))
        }),
        ep!(GET "list federations", Some("federations:admin"), Admin, |_e, _n| fixed("/federations", None)),
        ep!(POST "create federation", Some("federations:admin"), Admin, |_e, _n| {
            fixed("/federations", Some(json!({"name": "fed"})))
        }),
        ep!(GET "list training rounds", Some("training:write"), Member, |_e, _n| fixed("/training/rounds", None)),
        ep!(POST "submit training round", Some("training:write"), Member, |_e, _n| {
            fixed("/training/rounds", Some(json!({"name": "round-1"})))
        }),
        ep!(GET "list experiments", Some("experiments:write"), Admin, |_e, _n| fixed("/experiments", None)),
        ep!(POST "create experiment", Some("experiments:write"), Admin, |_e, _n| {
            fixed("/experiments", Some(json!({"name": "ab"})))
        }),
        ep!(POST "inference", Some("models:read"), Member, |_e, _n| {
            fixed("/inference", Some(json!({"input": [1, 2, 3]})))
        }),
    ]
}

const ALL_SCOPES: [&str; 8] = [
    "models:read",
    "models:write",
    "devices:read",
    "devices:write",
    "rollouts:write",
    "federations:admin",
    "training:write",
    "experiments:write",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_by_endpoint_matrix() {
    let env = support::start().await;
    env.relax_limits().await;
    let full = env.create_key(&ALL_SCOPES).await;
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

        match ep.scope {
            Some(scope) => {
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
                let others: Vec<&str> =
                    ALL_SCOPES.iter().copied().filter(|s| *s != scope).collect();
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
            }
            None => {
                // Role-only routes: an Owner's key passes whatever its scopes.
                n += 1;
                let (path, body) = (ep.setup)(&env, n).await;
                let a = env.call(ep.method.clone(), &path, Some(&full), body).await;
                assert!(
                    a.status.is_success(),
                    "{} with an owner key: {} {:?}",
                    ep.name,
                    a.status,
                    a.body
                );
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
        match ep.scope {
            Some("models:read") => assert!(
                a.status.is_success(),
                "device may {}: {:?}",
                ep.name,
                a.body
            ),
            Some(_) => assert_eq!(a.code(), "insufficient_scope", "device may not {}", ep.name),
            None => assert_eq!(a.code(), "forbidden", "device may not {}", ep.name),
        }
    }
    env.handle.shutdown().await;
}

/// A key cannot mint a key with scopes it lacks; a session can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_escalate() {
    let env = support::start().await;
    env.relax_limits().await;
    let narrow = env.create_key(&["models:read"]).await;
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

/// Removing a member or demoting them takes effect on their live session at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_apply_to_live_sessions() {
    let env = support::start().await;
    env.relax_limits().await;
    let s = env.session("m@example.com", "admin").await;
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
    assert_eq!(a.code(), "forbidden");
    env.owner(Method::DELETE, "/org/members/m@example.com", None)
        .await;
    let a = env.call(Method::GET, "/org/settings", Some(&s), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}
