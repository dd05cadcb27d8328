//! Sessions are revocable server-side (issue 11, point 2): a session JWT alone proves nothing
//! once its session record is gone. Before, there was no logout, and removing and re-adding a
//! member brought their old sessions back.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use clap::Parser;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn works(env: &support::Env, token: &str) -> StatusCode {
    env.call(Method::GET, "/models", Some(token), None)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let env = support::start().await;
    let s = env.session("m@example.com", "member").await;
    assert_eq!(works(&env, &s).await, StatusCode::OK);
    let a = env.call(Method::POST, "/auth/logout", Some(&s), None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(works(&env, &s).await, StatusCode::UNAUTHORIZED);
    // Keys cannot "log out".
    let a = env.owner(Method::POST, "/auth/logout", None).await;
    assert_eq!(a.code(), "forbidden");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octomil_auth_logout_ends_the_session() {
    let env = support::start().await;
    let s = env.session("m@example.com", "member").await;
    let ca = env.dir.path().join("ca-for-cli.pem");
    std::fs::write(&ca, env.handle.ca_pem.as_bytes()).unwrap();
    let cli = octomil_cloud::cli::Cli::try_parse_from([
        "octomil",
        "--api-url",
        &env.handle.http_url,
        "--api-key",
        &s,
        "--ca-file",
        ca.to_str().unwrap(),
        "auth",
        "logout",
    ])
    .unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut out = octomil_cloud::cli::Out::new(&mut stdout, &mut stderr, false, 0);
    octomil_cloud::cli::run(cli, &mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&stderr).contains("logged out"));
    assert_eq!(works(&env, &s).await, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_and_re_adding_a_member_does_not_revive_old_sessions() {
    let env = support::start().await;
    let old = env.session("m@example.com", "admin").await;
    assert_eq!(works(&env, &old).await, StatusCode::OK);
    env.owner(Method::DELETE, "/org/members/m@example.com", None)
        .await;
    env.add_member("m@example.com", "admin").await;
    assert_eq!(works(&env, &old).await, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_change_ends_the_members_sessions() {
    let env = support::start().await;
    let s = env.session("m@example.com", "admin").await;
    env.owner(
        Method::PATCH,
        "/org/members/m@example.com",
        Some(json!({"role": "owner"})),
    )
    .await;
    // Even a promotion: the session was opened for another role.
    assert_eq!(works(&env, &s).await, StatusCode::UNAUTHORIZED);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_every_session_of_the_member() {
    let env = support::start().await;
    let (password, totp) = env.add_member("m@example.com", "member").await;
    let s1 = env.login("m@example.com", &password, &totp).await;
    env.clock.advance(Duration::from_secs(30));
    let s2 = env.login("m@example.com", &password, &totp).await;
    let bystander = env.session("other@example.com", "member").await;
    let a = env
        .call(
            Method::POST,
            "/auth/password",
            Some(&s1),
            Some(json!({"current_password": "wrong", "new_password": "a much longer password"})),
        )
        .await;
    assert_eq!(a.code(), "invalid_credentials");
    let a = env
        .call(
            Method::POST,
            "/auth/password",
            Some(&s1),
            Some(json!({"current_password": password, "new_password": "a much longer password"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    assert_eq!(works(&env, &s1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(works(&env, &s2).await, StatusCode::UNAUTHORIZED);
    assert_eq!(works(&env, &bystander).await, StatusCode::OK);
    env.clock.advance(Duration::from_secs(30));
    let a = env.try_login("m@example.com", &password, &totp).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    env.login("m@example.com", "a much longer password", &totp)
        .await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_that_requires_mfa_ends_sessions_opened_without_it() {
    let env = support::start().await;
    let (password, totp) = env.add_member("m@example.com", "member").await;
    let a = env
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": "m@example.com", "password": password})),
        )
        .await;
    let without = a.body["token"].as_str().unwrap().to_owned();
    env.clock.advance(Duration::from_secs(30));
    let with = env.login("m@example.com", &password, &totp).await;
    env.owner(
        Method::PATCH,
        "/org/settings",
        Some(json!({"compliance_preset": "gdpr"})),
    )
    .await;
    // GDPR requires MFA of Owners and Admins only: the Member's sessions stay.
    assert_eq!(works(&env, &without).await, StatusCode::OK);
    env.owner(
        Method::PATCH,
        "/org/settings",
        Some(json!({"compliance_preset": "hipaa"})),
    )
    .await;
    assert_eq!(works(&env, &without).await, StatusCode::UNAUTHORIZED);
    assert_eq!(works(&env, &with).await, StatusCode::OK);
    env.handle.shutdown().await;
}
