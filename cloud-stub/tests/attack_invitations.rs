//! Issue 11, members enrol themselves. Reproduced before: `POST /org/members` answered the new
//! member's password and TOTP secret, so whoever added a member (or read the answer in a CI
//! log) held that member's second factor. Now it answers a one-time invitation; the invitee
//! sets their own password and TOTP; recovery codes work once; a member the preset later
//! requires MFA of is led through enrolment, not locked out; MFA reset by an Owner or Admin.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use octomil_cloud::session;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn preset(env: &support::Env, p: &str) {
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"compliance_preset": p})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

async fn owner_session(env: &support::Env) -> String {
    let pw = env.handle.owner_password().unwrap();
    let totp = env.handle.owner_totp_secret().unwrap();
    env.login(&env.handle.info.owner_email, pw.expose(), &totp)
        .await
}

async fn accept(env: &support::Env, body: Value) -> support::Answer {
    env.call(Method::POST, "/auth/invitations/accept", None, Some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_never_sees_an_invitees_secrets() {
    let env = support::start().await;
    let a = env
        .owner(
            Method::POST,
            "/org/members",
            Some(json!({"email": "new@example.com", "role": "admin"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let mut keys: Vec<&str> = a
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "email",
            "expires_at",
            "invitation_id",
            "invitation_link",
            "invitation_token",
            "role"
        ]
    );
    // 72 hours by default, stated in the answer.
    assert_eq!(
        a.body["expires_at"].as_u64().unwrap(),
        env.clock_secs() + 72 * 3600
    );
    let token = a.body["invitation_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("edg_invite_"));
    assert!(
        a.body["invitation_link"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/invite#{token}"))
    );
    // The invitee picks the password and gets the TOTP secret; the owner's view shows neither.
    let password = "the invitee's own passphrase";
    let totp = env.accept_invitation(&token, password).await;
    let listed = env.owner(Method::GET, "/org/members", None).await;
    let text = listed.body.to_string();
    assert!(!text.contains(password));
    assert!(!text.contains(&session::totp_base32(&totp)));
    assert!(!text.contains("totp_secret") && !text.contains("password"));
    // Only the hash of the token is stored.
    let stored = env
        .handle
        .cloud
        .store
        .read(|m| format!("{:?}", m.invitations));
    assert!(!stored.contains(&token[11..]));
    env.login("new@example.com", password, &totp).await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_expired_or_unknown_invitation_is_refused_alike() {
    let env = support::start().await;
    let used = env.invite("used@example.com", "member").await;
    env.accept_invitation(&used, "a long enough password").await;
    let expired = env.invite("late@example.com", "member").await;
    let replaced = env.invite("twice@example.com", "member").await;
    let _newer = env.invite("twice@example.com", "member").await;
    env.clock.advance(Duration::from_secs(72 * 3600 + 1));
    let mut answers = Vec::new();
    for token in [
        used.as_str(),
        expired.as_str(),
        replaced.as_str(),
        "edg_invite_0000000000000000000000000000000a",
        "not even a token",
    ] {
        let a = accept(
            &env,
            json!({"token": token, "password": "a long enough password"}),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token}: {:?}", a.body);
        answers.push(a.body);
        let a = env
            .call(
                Method::POST,
                "/auth/invitations/totp",
                None,
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        answers.push(a.body);
    }
    assert!(answers.iter().all(|b| *b == answers[0]), "{answers:?}");
    assert_eq!(answers[0]["error"], "invitation_invalid");
    // Only one member came of it.
    assert!(
        env.handle
            .cloud
            .store
            .read(|m| !m.members.contains_key("late@example.com"))
    );

    // Guessing spends the address's failure budget: 429 once it is spent.
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"rate_limits": {"auth_failures": {"limit": 3, "period_secs": 3600}}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let mut last = StatusCode::OK;
    for _ in 0..5 {
        last = accept(
            &env,
            json!({"token": "edg_invite_guess", "password": "a long enough password"}),
        )
        .await
        .status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_is_mandatory_at_enrolment_when_the_preset_requires_it() {
    let env = support::start().await;
    preset(&env, "gdpr").await;
    // GDPR: Admins need TOTP...
    let token = env.invite("admin@example.com", "admin").await;
    let a = accept(
        &env,
        json!({"token": token, "password": "a long enough password"}),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "mfa_enrolment_required")
    );
    // ...and a wrong code does not enrol.
    let a = env
        .call(
            Method::POST,
            "/auth/invitations/totp",
            None,
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(a.body["mfa_required"], true);
    let a = accept(
        &env,
        json!({"token": token, "password": "a long enough password", "mfa_code": "000000"}),
    )
    .await;
    assert_eq!(a.code(), "invalid_credentials");
    env.accept_invitation(&token, "a long enough password")
        .await;
    // ...Members do not.
    let token = env.invite("member@example.com", "member").await;
    let a = accept(
        &env,
        json!({"token": token, "password": "a long enough password"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.body["mfa_enrolled"], false);
    assert_eq!(a.body["recovery_codes"], json!([]));
    // Too short a password is refused.
    let token = env.invite("short@example.com", "member").await;
    let a = accept(&env, json!({"token": token, "password": "short"})).await;
    assert_eq!(a.code(), "invalid_argument");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_code_works_once() {
    let env = support::start().await;
    let token = env.invite("r@example.com", "admin").await;
    let a = env
        .call(
            Method::POST,
            "/auth/invitations/totp",
            None,
            Some(json!({"token": token})),
        )
        .await;
    let totp = session::totp_from_base32(a.body["totp_secret"].as_str().unwrap()).unwrap();
    let a = accept(
        &env,
        json!({"token": token, "password": "a long enough password", "mfa_code": env.totp_code(&totp)}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let codes: Vec<String> = a.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    // Stored hashed only.
    let stored = env
        .handle
        .cloud
        .store
        .read(|m| format!("{:?}", m.members["r@example.com"]));
    assert!(!stored.contains(&codes[0]));
    let login = |code: String| {
        let env = &env;
        async move {
            env.call(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({"email": "r@example.com", "password": "a long enough password", "mfa_code": code})),
            )
            .await
        }
    };
    let a = login(codes[0].clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // The session counts as having a fresh second factor.
    let s = a.body["token"].as_str().unwrap().to_owned();
    let a = env
        .call(
            Method::PATCH,
            "/org/settings",
            Some(&s),
            Some(json!({"compliance_preset": "soc2"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = login(codes[0].clone()).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    let a = login(codes[1][1..].to_owned()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = login(codes[1].clone()).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = env
        .owner(Method::GET, "/audit?action=member.recovery_code", None)
        .await;
    let reasons: Vec<&str> = a.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["9 recovery codes left", "8 recovery codes left"]);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_mfa_under_a_stricter_preset_is_led_to_enrolment() {
    let env = support::start().await;
    let token = env.invite("m@example.com", "member").await;
    let a = accept(
        &env,
        json!({"token": token, "password": "a long enough password"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let login = || async {
        env.call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": "m@example.com", "password": "a long enough password"})),
        )
        .await
    };
    assert_eq!(login().await.body["enrolment_required"], false);
    preset(&env, "hipaa").await;
    let a = login().await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["enrolment_required"], true);
    assert_eq!(
        a.body["expires_at"].as_u64().unwrap(),
        env.clock_secs() + session::ENROLMENT_TTL_SECS
    );
    let s = a.body["token"].as_str().unwrap().to_owned();
    // Good for enrolment only.
    let a = env.call(Method::GET, "/devices", Some(&s), None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "mfa_enrolment_required")
    );
    let a = env
        .call(
            Method::POST,
            "/auth/mfa/confirm",
            Some(&s),
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_eq!(a.code(), "invalid_argument");
    let a = env
        .call(Method::POST, "/auth/mfa/totp", Some(&s), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let totp = session::totp_from_base32(a.body["totp_secret"].as_str().unwrap()).unwrap();
    assert!(
        a.body["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let a = env
        .call(
            Method::POST,
            "/auth/mfa/confirm",
            Some(&s),
            Some(json!({"code": env.totp_code(&totp)})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["recovery_codes"].as_array().unwrap().len(), 10);
    // The same token is now a full session.
    let a = env.call(Method::GET, "/devices", Some(&s), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = env
        .call(Method::POST, "/auth/mfa/totp", Some(&s), None)
        .await;
    assert_eq!(a.code(), "mfa_already_enrolled");
    // From now on the login needs the code.
    assert_eq!(login().await.code(), "mfa_required");
    env.clock.advance(Duration::from_secs(30));
    env.login("m@example.com", "a long enough password", &totp)
        .await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_reset_ends_sessions_and_an_admin_cannot_act_on_an_owner() {
    let env = support::start().await;
    preset(&env, "gdpr").await;
    let (pw, totp) = env.add_member("admin@example.com", "admin").await;
    let admin = env.login("admin@example.com", &pw, &totp).await;
    let owner_email = env.handle.info.owner_email.clone();
    // An Admin cannot reset, re-role or remove an Owner, nor lower the preset.
    let a = env
        .call(
            Method::POST,
            &format!("/org/members/{owner_email}/mfa-reset"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    for (m, body) in [
        (Method::PATCH, Some(json!({"role": "member"}))),
        (Method::DELETE, None),
    ] {
        let a = env
            .call(
                m,
                &format!("/org/members/{owner_email}"),
                Some(&admin),
                body,
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    }
    let a = env
        .call(
            Method::PATCH,
            "/org/settings",
            Some(&admin),
            Some(json!({"compliance_preset": "none"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    assert_eq!(a.code(), "forbidden");

    // The Owner resets the Admin's MFA: the Admin's session ends, the old code is useless.
    let owner = owner_session(&env).await;
    let a = env
        .call(
            Method::POST,
            "/org/members/admin@example.com/mfa-reset",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    let a = env
        .call(Method::GET, "/org/members", Some(&admin), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    env.clock.advance(Duration::from_secs(30));
    assert_eq!(
        env.try_login("admin@example.com", &pw, &totp).await.code(),
        "invalid_credentials"
    );
    // The next login leads through enrolment.
    let a = env
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": "admin@example.com", "password": pw})),
        )
        .await;
    assert_eq!(a.body["enrolment_required"], true, "{:?}", a.body);
    // An enrolment session may still log out.
    let s = a.body["token"].as_str().unwrap().to_owned();
    let a = env.call(Method::POST, "/auth/logout", Some(&s), None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    let a = env
        .call(Method::POST, "/auth/mfa/totp", Some(&s), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = env
        .owner(Method::GET, "/audit?action=member.mfa_reset", None)
        .await;
    assert_eq!(a.body["records"][0]["target"], "admin@example.com");
    env.handle.shutdown().await;
}
