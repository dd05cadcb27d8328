//! Login under attack (issue 11, point 3). Before: no throttling at all (every attempt ran a
//! 19 MiB Argon2 hash), and a TOTP code could be replayed within its window.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

/// A client whose connections come from `ip` (a loopback alias), trusting the cloud's CA.
fn client_from(env: &support::Env, ip: [u8; 4]) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(env.handle.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn login(
    client: &reqwest::Client,
    env: &support::Env,
    email: &str,
    password: &str,
    code: Option<String>,
) -> (StatusCode, Option<u64>) {
    let resp = client
        .post(format!("{}/api/v1/auth/login", env.handle.http_url))
        .json(&json!({"email": email, "password": password, "mfa_code": code}))
        .send()
        .await
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (resp.status(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_throttled_per_account_and_address() {
    let env = support::start().await;
    let owner = env.handle.state_dir.join("owner_password");
    let owner_pw = std::fs::read_to_string(owner).unwrap();
    let (member_pw, _) = env.add_member("m@example.com", "member").await;
    let here = client_from(&env, [127, 0, 0, 1]);
    let there = client_from(&env, [127, 0, 0, 2]);
    let email = "owner@octomil.local";
    for i in 0..6 {
        let (s, _) = login(&here, &env, email, "wrong password", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // In backoff now: even the right password is not tried until Retry-After has passed.
    let (s, retry) = login(&here, &env, email, &owner_pw, None).await;
    assert_eq!((s, retry), (StatusCode::TOO_MANY_REQUESTS, Some(1)));
    // Another member's login from another address is unaffected, and the owner's own from
    // another address too.
    let (s, _) = login(&there, &env, "m@example.com", &member_pw, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = login(&there, &env, email, &owner_pw, None).await;
    assert_eq!(s, StatusCode::OK);
    // Once Retry-After has passed, the owner logs in from here as well.
    env.clock.advance(Duration::from_secs(1));
    let (s, _) = login(&here, &env, email, &owner_pw, None).await;
    assert_eq!(s, StatusCode::OK);
    // Backoff doubles: 6 failures more -> 1 s, then 2 s.
    for _ in 0..6 {
        login(&here, &env, email, "wrong", None).await;
    }
    env.clock.advance(Duration::from_secs(1));
    login(&here, &env, email, "wrong", None).await;
    let (s, retry) = login(&here, &env, email, "wrong", None).await;
    assert_eq!((s, retry), (StatusCode::TOO_MANY_REQUESTS, Some(2)));
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_are_answered_and_throttled_like_known_ones() {
    let env = support::start().await;
    let here = client_from(&env, [127, 0, 0, 1]);
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..7 {
        known.push(login(&here, &env, "owner@octomil.local", "wrong", None).await);
        unknown.push(login(&here, &env, "nobody@octomil.local", "wrong", None).await);
    }
    assert_eq!(known, unknown);
    assert_eq!(known[6], (StatusCode::TOO_MANY_REQUESTS, Some(1)));
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_code_is_accepted_once() {
    let env = support::start().await;
    let (password, totp) = env.add_member("m@example.com", "admin").await;
    let here = client_from(&env, [127, 0, 0, 1]);
    let code = env.totp_code(&totp);
    let (s, _) = login(&here, &env, "m@example.com", &password, Some(code.clone())).await;
    assert_eq!(s, StatusCode::OK);
    // The same code again, still inside its window: refused.
    let (s, _) = login(&here, &env, "m@example.com", &password, Some(code.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The code of the previous step (accepted for clock skew) is older still: refused.
    env.clock.advance(Duration::from_secs(30));
    let (s, _) = login(&here, &env, "m@example.com", &password, Some(code)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = login(
        &here,
        &env,
        "m@example.com",
        &password,
        Some(env.totp_code(&totp)),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    env.handle.shutdown().await;
}
