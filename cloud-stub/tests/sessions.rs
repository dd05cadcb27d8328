//! Dashboard logins and MFA by compliance preset.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;

async fn login(
    env: &support::Env,
    email: &str,
    password: &str,
    code: Option<String>,
) -> support::Answer {
    let mut body = json!({"email": email, "password": password});
    if let Some(c) = code {
        body["mfa_code"] = json!(c);
    }
    env.call(Method::POST, "/auth/login", None, Some(body))
        .await
}

async fn preset(env: &support::Env, p: &str) {
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"compliance_preset": p})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_follows_the_compliance_preset() {
    let env = support::start().await;
    let (mp, mt) = env.add_member("member@example.com", "member").await;
    let (ap, at) = env.add_member("admin@example.com", "admin").await;

    // none: nobody needs a code.
    assert_eq!(
        login(&env, "member@example.com", &mp, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        login(&env, "admin@example.com", &ap, None).await.status,
        StatusCode::OK
    );

    // hipaa (and pci): everyone.
    for p in ["hipaa", "pci"] {
        // A TOTP code is accepted once: each round uses the next step's.
        env.clock.advance(std::time::Duration::from_secs(30));
        preset(&env, p).await;
        let a = login(&env, "member@example.com", &mp, None).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNAUTHORIZED, "mfa_required"),
            "{p}"
        );
        let a = login(&env, "member@example.com", &mp, Some(env.totp_code(&mt))).await;
        assert_eq!(a.status, StatusCode::OK, "{p}");
    }

    // gdpr (and soc2): Owners and Admins only.
    for p in ["gdpr", "soc2"] {
        // A TOTP code is accepted once: each round uses the next step's.
        env.clock.advance(std::time::Duration::from_secs(30));
        preset(&env, p).await;
        assert_eq!(
            login(&env, "member@example.com", &mp, None).await.status,
            StatusCode::OK,
            "{p}"
        );
        let a = login(&env, "admin@example.com", &ap, None).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNAUTHORIZED, "mfa_required"),
            "{p}"
        );
        let a = login(&env, "admin@example.com", &ap, Some(env.totp_code(&at))).await;
        assert_eq!(a.status, StatusCode::OK, "{p}");
    }
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_codes_are_refused_alike() {
    let env = support::start().await;
    let (p, t) = env.add_member("x@example.com", "member").await;
    let a = login(&env, "x@example.com", "wrong", None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    let a = login(&env, "nobody@example.com", &p, None).await;
    assert_eq!(a.code(), "invalid_credentials");
    let a = login(&env, "x@example.com", &p, Some("000000".into())).await;
    let good = env.totp_code(&t);
    if good != "000000" {
        assert_eq!(a.code(), "invalid_credentials");
    }
    // The first-start Owner can log in with the files the cloud wrote.
    let owner_pw = env.handle.owner_password().unwrap();
    let owner_totp = env.handle.owner_totp_secret().unwrap();
    let a = login(
        &env,
        &env.handle.info.owner_email,
        owner_pw.expose(),
        Some(env.totp_code(&owner_totp)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let token = a.body["token"].as_str().unwrap();
    assert_eq!(
        env.call(Method::GET, "/org/billing", Some(token), None)
            .await
            .status,
        StatusCode::OK
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_owner_cannot_leave_and_deleting_the_org_stops_everything() {
    let env = support::start().await;
    let owner_email = env.handle.info.owner_email.clone();
    let a = env
        .owner(Method::DELETE, &format!("/org/members/{owner_email}"), None)
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "last_owner"));
    let a = env
        .owner(
            Method::PATCH,
            &format!("/org/members/{owner_email}"),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(a.code(), "last_owner");
    let org_id = env.owner(Method::GET, "/org/settings", None).await.body["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = env
        .owner(Method::DELETE, "/org", Some(json!({"confirm": org_id})))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        env.owner(Method::GET, "/org/settings", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    env.handle.shutdown().await;
}
