//! Attacks on authorization (issue 11, point 1), each of which succeeded before the one
//! authorization table: a leaked narrow key administering the org, a key outliving its
//! creator's rights, an Admin taking away an Owner's keys.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;

/// Reproduced on the release build before: a `models:read` key created an Owner member
/// (201, with the new member's password and TOTP secret) and turned the compliance preset off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_read_key_cannot_create_an_owner_or_change_settings() {
    let env = support::start().await;
    let leaked = env.create_key(&["models:read"]).await;
    let a = env
        .call(
            Method::POST,
            "/org/members",
            Some(&leaked),
            Some(json!({"email": "attacker@example.com", "role": "owner"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    assert!(a.body.get("initial_password").is_none());
    let a = env
        .call(
            Method::PATCH,
            "/org/settings",
            Some(&leaked),
            Some(json!({"compliance_preset": "none"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    for (m, path) in [
        (Method::GET, "/org/members"),
        (Method::GET, "/api-keys"),
        (Method::GET, "/org/billing"),
    ] {
        let a = env.call(m, path, Some(&leaked), None).await;
        assert_eq!(a.code(), "insufficient_scope", "{path}");
    }
    // Nothing changed.
    let a = env.owner(Method::GET, "/org/members", None).await;
    assert_eq!(a.body["members"].as_array().unwrap().len(), 1);
    env.handle.shutdown().await;
}

/// A key acts with its creator's current role: demote the creator and the key is demoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_follows_its_creators_current_role() {
    let env = support::start().await;
    let admin = env.session("admin@example.com", "admin").await;
    let a = env
        .call(
            Method::POST,
            "/api-keys",
            Some(&admin),
            Some(json!({"name": "ci", "scopes": ["org:admin", "models:write", "models:read"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let key = a.body["key"].as_str().unwrap().to_owned();
    let made = || {
        env.call(
            Method::POST,
            "/models",
            Some(&key),
            Some(json!({"name": "m"})),
        )
    };
    assert_eq!(made().await.status, StatusCode::CREATED);
    let a = env
        .call(Method::GET, "/org/members", Some(&key), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);

    env.owner(
        Method::PATCH,
        "/org/members/admin@example.com",
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(made().await.code(), "forbidden");
    let a = env
        .call(Method::GET, "/org/members", Some(&key), None)
        .await;
    assert_eq!(a.code(), "forbidden");
    // What a Member may do, it still may.
    let a = env.call(Method::GET, "/models", Some(&key), None).await;
    assert_eq!(a.status, StatusCode::OK);

    // Promoting the creator back does not lift the key past the role it was made with.
    env.owner(
        Method::PATCH,
        "/org/members/admin@example.com",
        Some(json!({"role": "owner"})),
    )
    .await;
    let a = env
        .call(
            Method::POST,
            "/org/members",
            Some(&key),
            Some(json!({"email": "x@example.com", "role": "member"})),
        )
        .await;
    assert_eq!(a.code(), "forbidden");

    // Removing the creator kills the key.
    env.owner(Method::DELETE, "/org/members/admin@example.com", None)
        .await;
    let a = env.call(Method::GET, "/models", Some(&key), None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    env.handle.shutdown().await;
}

/// An Admin may manage API keys, but not take away an Owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cannot_delete_the_owners_keys() {
    let env = support::start().await;
    let admin = env.session("admin@example.com", "admin").await;
    let a = env.call(Method::GET, "/api-keys", Some(&admin), None).await;
    let owner_key_id = a.body["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let a = env
        .call(
            Method::DELETE,
            &format!("/api-keys/{owner_key_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(
        env.owner(Method::GET, "/devices", None).await.status,
        StatusCode::OK
    );
    env.handle.shutdown().await;
}

/// A deleted key is refused at once and stays listed as revoked; an expired one likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_keys_are_refused_and_stay_listed() {
    let env = support::start().await;
    let a = env
        .owner(
            Method::POST,
            "/api-keys",
            Some(json!({"name": "short", "scopes": ["models:read"], "expires_in": "1h"})),
        )
        .await;
    let short = a.body["key"].as_str().unwrap().to_owned();
    let gone = env.create_key(&["models:read"]).await;
    let a = env.owner(Method::GET, "/api-keys", None).await;
    let gone_id = a.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = env
        .owner(Method::DELETE, &format!("/api-keys/{gone_id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        env.device_call(&gone).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(env.device_call(&short).await.status, StatusCode::OK);
    env.clock.advance(std::time::Duration::from_secs(3601));
    assert_eq!(
        env.device_call(&short).await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = env.owner(Method::GET, "/api-keys", None).await;
    let status: Vec<(String, String)> = a.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_owned(),
                k["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        status.contains(&("test".into(), "revoked".into())),
        "{status:?}"
    );
    assert!(
        status.contains(&("short".into(), "expired".into())),
        "{status:?}"
    );
    // After 90 days they are gone from the list.
    env.clock
        .advance(std::time::Duration::from_secs(91 * 86_400));
    let a = env.owner(Method::GET, "/api-keys", None).await;
    assert_eq!(a.body["api_keys"].as_array().unwrap().len(), 1);
    env.handle.shutdown().await;
}

/// Reproduced before: an Admin lowered the compliance preset, turning MFA off for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cannot_lower_the_compliance_preset() {
    let env = support::start().await;
    let admin = env.session("admin@example.com", "admin").await;
    let set = |token: String, p: &'static str| {
        let env = &env;
        async move {
            env.call(
                Method::PATCH,
                "/org/settings",
                Some(&token),
                Some(json!({"compliance_preset": p})),
            )
            .await
        }
    };
    // Raising is fine for an Admin.
    assert_eq!(set(admin.clone(), "soc2").await.status, StatusCode::OK);
    // Lowering is not; the preset stays.
    let a = set(admin.clone(), "none").await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let a = env.owner(Method::GET, "/org/settings", None).await;
    assert_eq!(a.body["compliance_preset"], "soc2");
    // An Owner may.
    assert_eq!(
        set(env.owner_key.clone(), "none").await.status,
        StatusCode::OK
    );
    env.handle.shutdown().await;
}
