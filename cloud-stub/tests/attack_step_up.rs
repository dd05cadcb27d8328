//! Issue 11, step-up: a stolen session cookie (or a laptop left unlocked) could revoke the
//! fleet, delete the org or re-role members with no second factor, hours after the login.
//! Destructive calls made with a session now need a second factor from the last 10 minutes
//! (`session::require_recent_second_factor`, 403 `step_up_required`), given by a TOTP login
//! or `POST /auth/step-up`; a TOTP step is never accepted twice; API keys are not asked.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Device;

async fn owner_session(env: &support::Env) -> (String, Vec<u8>) {
    let pw = env.handle.owner_password().unwrap();
    let totp = env.handle.owner_totp_secret().unwrap();
    let s = env
        .login(&env.handle.info.owner_email, pw.expose(), &totp)
        .await;
    (s, totp)
}

async fn step_up(env: &support::Env, session: &str, code: &str) -> support::Answer {
    env.call(
        Method::POST,
        "/auth/step-up",
        Some(session),
        Some(json!({"code": code})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_session_must_step_up_to_revoke_and_passes_after() {
    let env = support::start().await;
    env.relax_limits().await;
    let (s, totp) = owner_session(&env).await;
    Device::new("victim-1").register(&env).await;
    Device::new("victim-2").register(&env).await;
    let revoke = |id: &'static str| {
        let env = &env;
        let s = s.clone();
        async move {
            env.call(
                Method::POST,
                &format!("/devices/{id}/revoke"),
                Some(&s),
                Some(json!({"reason": "stolen"})),
            )
            .await
        }
    };
    // Within 10 minutes of the TOTP login: no question asked.
    env.clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(revoke("victim-1").await.status, StatusCode::OK);
    // Past 10 minutes: step up first.
    env.clock.advance(Duration::from_secs(2 * 60));
    let a = revoke("victim-2").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "step_up_required"),
        "{:?}",
        a.body
    );
    assert_eq!(
        env.handle.cloud.store.read(|m| m.devices["victim-2"].state),
        octomil_cloud::store::DeviceState::Active
    );
    let code = env.totp_code(&totp);
    assert_eq!(
        step_up(&env, &s, "000000").await.code(),
        "invalid_credentials"
    );
    assert_eq!(
        step_up(&env, &s, &code).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(revoke("victim-2").await.status, StatusCode::OK);
    let a = env
        .owner(Method::GET, "/audit?action=session.step_up", None)
        .await;
    assert_eq!(a.body["records"].as_array().unwrap().len(), 1);

    // An API key is never asked (its scopes bound it).
    env.clock.advance(Duration::from_secs(3600));
    Device::new("victim-3").register(&env).await;
    assert_eq!(env.revoke("victim-3").await.status, StatusCode::OK);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_step_is_never_accepted_twice_for_step_up() {
    let env = support::start().await;
    let (s, totp) = owner_session(&env).await;
    // The code that opened the session cannot step it up again.
    let login_code = env.totp_code(&totp);
    assert_eq!(
        step_up(&env, &s, &login_code).await.code(),
        "invalid_credentials"
    );
    env.clock.advance(Duration::from_secs(30));
    let code = env.totp_code(&totp);
    assert_eq!(
        step_up(&env, &s, &code).await.status,
        StatusCode::NO_CONTENT
    );
    let a = step_up(&env, &s, &code).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    // Nor can a second session use it.
    let pw = env.handle.owner_password().unwrap();
    let a = env
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": env.handle.info.owner_email, "password": pw.expose(), "mfa_code": code})),
        )
        .await;
    assert_eq!(a.code(), "invalid_credentials");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_destructive_session_call_asks_for_a_fresh_second_factor() {
    let env = support::start().await;
    env.relax_limits().await;
    let (pw, member_totp) = env.add_member("m@example.com", "member").await;
    let _ = (pw, member_totp);
    let (s, totp) = owner_session(&env).await;
    Device::new("dev-1").register(&env).await;
    let org_id = env.owner(Method::GET, "/org/settings", None).await.body["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.clock.advance(Duration::from_secs(10 * 60));
    let calls: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::POST, "/devices/dev-1/revoke".into(), None),
        (Method::DELETE, "/devices/dev-1".into(), None),
        (
            Method::POST,
            "/revocations".into(),
            Some(json!({"device_ids": ["dev-1"]})),
        ),
        (
            Method::PATCH,
            "/org/members/m@example.com".into(),
            Some(json!({"role": "admin"})),
        ),
        (Method::DELETE, "/org/members/m@example.com".into(), None),
        (
            Method::POST,
            "/org/members/m@example.com/mfa-reset".into(),
            None,
        ),
        (
            Method::PATCH,
            "/org/settings".into(),
            Some(json!({"compliance_preset": "soc2"})),
        ),
        (
            Method::DELETE,
            "/org".into(),
            Some(json!({"confirm": org_id})),
        ),
    ];
    for (m, path, body) in &calls {
        let a = env.call(m.clone(), path, Some(&s), body.clone()).await;
        assert_eq!(a.code(), "step_up_required", "{m} {path}: {:?}", a.body);
    }
    // Non-destructive calls are not asked.
    let a = env
        .call(
            Method::PATCH,
            "/org/settings",
            Some(&s),
            Some(json!({"device_token_expiry": "48h"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(
        env.call(Method::GET, "/devices", Some(&s), None)
            .await
            .status,
        StatusCode::OK
    );
    // After a step-up the first one goes through.
    assert_eq!(
        step_up(&env, &s, &env.totp_code(&totp)).await.status,
        StatusCode::NO_CONTENT
    );
    let (m, path, body) = &calls[3];
    let a = env.call(m.clone(), path, Some(&s), body.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    env.handle.shutdown().await;
}
