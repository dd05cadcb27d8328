//! The dashboard's organisation settings (review step, then save; a preset change needs a
//! fresh code; invalid values change nothing; a Member reads only), bootstrap-token extend and
//! "revoke every device enrolled with it", and the overview's version spread and last day,
//! over real HTTPS.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::dashboard::{
    Browser, Page, audit_of, device_state, member_browser, owner_browser, register_with,
};
use support::{Device, Env};

/// Registers `id` with bootstrap token `token`.
async fn register_with_token(env: &Env, id: &str, token: &str) {
    let d = Device::new(id);
    let body = d.register_body(env, token).await;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

/// A new bootstrap token made with the owner key: (id, token).
async fn new_token(env: &Env, max_uses: u32) -> (String, String) {
    let a = env
        .owner(
            Method::POST,
            "/bootstrap-tokens",
            Some(json!({"max_uses": max_uses, "expires_in": "1d"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    (
        a.body["id"].as_str().unwrap().to_owned(),
        a.body["token"].as_str().unwrap().to_owned(),
    )
}

/// The token `id` as `GET /bootstrap-tokens` lists it.
async fn token_view(env: &Env, id: &str) -> Value {
    let a = env
        .owner(Method::GET, "/bootstrap-tokens?limit=1000", None)
        .await;
    a.body["bootstrap_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap()
}

async fn settings(env: &Env) -> Value {
    let a = env.owner(Method::GET, "/org/settings", None).await;
    assert_eq!(a.status, StatusCode::OK);
    a.body
}

async fn post(b: &mut Browser, path: &str, f: &[(&str, String)]) -> Page {
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    b.post(path, &f).await
}

#[tokio::test]
async fn extend_changes_a_tokens_expiry_and_uses() {
    let env = support::start().await;
    let (id, _) = new_token(&env, 2).await;
    let mut b = owner_browser(&env).await;
    let path = format!("/dashboard/bootstrap-tokens/{id}");
    let page = b.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("0 of 2"));
    assert!(page.body.contains("id=\"extend-form\""));
    // The list links each token to its page.
    let list = b.get("/dashboard/bootstrap-tokens").await;
    assert!(list.body.contains(&format!("href=\"{path}\"")));
    let csrf = page.csrf();
    let action = format!("{path}/extend");
    let before = token_view(&env, &id).await;

    let no_csrf = post(&mut b, &action, &[("max_uses", "10".into())]).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    let bad = post(
        &mut b,
        &action,
        &[("csrf", csrf.clone()), ("max_uses", "lots".into())],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("whole number"), "{}", bad.body);
    let nothing = post(&mut b, &action, &[("csrf", csrf.clone())]).await;
    assert_eq!(nothing.status, StatusCode::BAD_REQUEST);
    let neg = post(
        &mut b,
        &action,
        &[("csrf", csrf.clone()), ("expires_in", "-3d".into())],
    )
    .await;
    assert_eq!(neg.status, StatusCode::BAD_REQUEST, "{}", neg.body);
    assert!(neg.body.contains("positive duration"), "{}", neg.body);
    assert_eq!(token_view(&env, &id).await, before, "nothing changed");

    let done = post(
        &mut b,
        &action,
        &[
            ("csrf", csrf.clone()),
            ("max_uses", "10".into()),
            ("expires_in", "30d".into()),
        ],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), format!("{path}?extended=1"));
    let t = token_view(&env, &id).await;
    assert_eq!(t["max_uses"], 10);
    assert_eq!(
        t["expires_at"].as_u64().unwrap(),
        env.clock_secs() + 30 * 86_400
    );
    let shown = b.get(done.location()).await;
    assert!(shown.body.contains("id=\"extended\""));
    assert!(shown.body.contains("0 of 10"));
    let records = audit_of(&env, "bootstrap_token.update").await;
    assert_eq!(records.last().unwrap()["origin"], "dashboard");

    // A Member: no page, and a forged extend (with their own valid CSRF token) is refused.
    let mut m = member_browser(&env, "mo@example.com", "member").await;
    assert_eq!(m.get(&path).await.status, StatusCode::FORBIDDEN);
    let mcsrf = m.get("/dashboard/devices").await.csrf();
    let forged = post(
        &mut m,
        &action,
        &[("csrf", mcsrf), ("max_uses", "1000".into())],
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(token_view(&env, &id).await["max_uses"], 10);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn revoke_enrolled_revokes_exactly_that_tokens_devices_with_a_fresh_code() {
    let env = support::start().await;
    let (id, token) = new_token(&env, 10).await;
    register_with_token(&env, "leak-1", &token).await;
    register_with_token(&env, "leak-2", &token).await;
    register_with(&env, "other-1", json!({})).await;
    let mut b = owner_browser(&env).await;
    // Past the 10-minute grace of the TOTP sign-in: the bulk revoke asks for a fresh code.
    env.clock.advance(Duration::from_secs(11 * 60));
    let path = format!("/dashboard/bootstrap-tokens/{id}");
    let page = b.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    // The count before confirming.
    assert!(
        page.body.contains("id=\"active-devices\">2<"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Revoke 2 devices"));
    let csrf = page.csrf();
    let secret = env.handle.owner_totp_secret().unwrap();
    let action = format!("{path}/revoke-devices");
    let full = |csrf: &str, code: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("reason", "token leaked".to_owned()),
            ("confirm", "yes".to_owned()),
            ("totp", code.to_owned()),
        ]
    };
    let code = env.totp_code(&secret);
    let without = |skip: &str| -> Vec<(&'static str, String)> {
        full(&csrf, &code)
            .into_iter()
            .filter(|(k, _)| *k != skip)
            .collect()
    };
    assert_eq!(
        post(&mut b, &action, &without("csrf")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&mut b, &action, &without("reason")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&mut b, &action, &without("confirm")).await.status,
        StatusCode::BAD_REQUEST
    );
    let no_code = post(&mut b, &action, &without("totp")).await;
    assert_eq!(no_code.status, StatusCode::FORBIDDEN);
    assert!(
        no_code.body.contains("authenticator code"),
        "{}",
        no_code.body
    );
    for d in ["leak-1", "leak-2", "other-1"] {
        assert_eq!(device_state(&env, d).await, "active", "{d}");
    }

    // A Member's forged POST (their own valid CSRF token) is refused.
    let mut m = member_browser(&env, "mo@example.com", "member").await;
    let mcsrf = m.get("/dashboard/devices").await.csrf();
    let mcode = "000000".to_owned();
    let forged = post(&mut m, &action, &full(&mcsrf, &mcode)).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    for d in ["leak-1", "leak-2", "other-1"] {
        assert_eq!(device_state(&env, d).await, "active", "{d}");
    }

    // member_browser moved the clock a TOTP step: a new code.
    let code = env.totp_code(&secret);
    let done = post(&mut b, &action, &full(&csrf, &code)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), format!("{path}?revoked=2&already=0"));
    let after = b.get(done.location()).await;
    assert!(after.body.contains("Revoked 2 devices"), "{}", after.body);
    assert!(after.body.contains("id=\"no-devices\""));
    assert_eq!(device_state(&env, "leak-1").await, "revoked");
    assert_eq!(device_state(&env, "leak-2").await, "revoked");
    assert_eq!(device_state(&env, "other-1").await, "active");
    let records = audit_of(&env, "device.revoke").await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["origin"], "dashboard");
        assert_eq!(r["reason"], "token leaked");
    }
    env.handle.shutdown().await;
}

#[tokio::test]
async fn settings_review_spells_out_the_consequences_then_saves() {
    let env = support::start().await;
    env.relax_limits().await;
    for i in 0..3 {
        register_with(&env, &format!("fleet-{i}"), json!({})).await;
    }
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/settings").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("id=\"settings-form\""));
    assert!(
        page.body.contains("id=\"current-expiry\">1d<"),
        "{}",
        page.body
    );
    let csrf = page.csrf();

    // Review: what 24 h -> 1 h means for these 3 devices; nothing saved yet.
    let review = post(
        &mut b,
        "/dashboard/settings/review",
        &[("csrf", csrf.clone()), ("expiry", "1h".into())],
    )
    .await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.body);
    for want in [
        "id=\"change-expiry\"",
        "3 active devices will refresh about 1.33 times an hour each instead of 0.06",
        "about 4 refreshes an hour across the fleet instead of 0.17 refreshes an hour",
        "devices pick up the new lifetime at their next refresh",
        "id=\"save-button\"",
    ] {
        assert!(review.body.contains(want), "{want}: {}", review.body);
    }
    assert!(
        !review.body.contains("id=\"settings-totp\""),
        "an expiry change needs no code"
    );
    assert_eq!(settings(&env).await["device_token_expiry"], "1d");

    // A rate-limit change: its per-minute meaning and that devices mirror it.
    let review = post(
        &mut b,
        "/dashboard/settings/review",
        &[
            ("csrf", csrf.clone()),
            ("inference_limit", "30".into()),
            ("inference_period", "60".into()),
        ],
    )
    .await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.body);
    assert!(
        review.body.contains("30 a minute per API key"),
        "{}",
        review.body
    );
    assert!(review.body.contains("daemons mirror it"));
    assert!(review.body.contains("This tightens the limit"));

    // Save (the review's form posts the same fields).
    let saved = post(
        &mut b,
        "/dashboard/settings",
        &[("csrf", csrf.clone()), ("expiry", "1h".into())],
    )
    .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.location(), "/dashboard/settings?saved=1");
    assert_eq!(settings(&env).await["device_token_expiry"], "1h");
    let shown = b.get(saved.location()).await;
    assert!(shown.body.contains("id=\"saved\""));
    assert!(shown.body.contains("id=\"current-expiry\">1h<"));
    let records = audit_of(&env, "org.settings").await;
    assert_eq!(records.last().unwrap()["origin"], "dashboard");
    // The same values again: nothing to save.
    let same = post(
        &mut b,
        "/dashboard/settings/review",
        &[("csrf", csrf.clone()), ("expiry", "1h".into())],
    )
    .await;
    assert!(same.body.contains("id=\"no-change\""));
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_preset_change_without_a_fresh_code_is_refused_and_changes_nothing() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    env.clock.advance(Duration::from_secs(11 * 60));
    let csrf = b.get("/dashboard/settings").await.csrf();
    let review = post(
        &mut b,
        "/dashboard/settings/review",
        &[("csrf", csrf.clone()), ("preset", "hipaa".into())],
    )
    .await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.body);
    for want in [
        "id=\"change-preset\"",
        "required of every member instead of nobody",
        "2190 days instead of 90",
        "Password rules do not change",
        "needs a fresh authenticator code",
        "id=\"settings-totp\"",
    ] {
        assert!(review.body.contains(want), "{want}: {}", review.body);
    }
    let before = settings(&env).await;
    let refused = post(
        &mut b,
        "/dashboard/settings",
        &[("csrf", csrf.clone()), ("preset", "hipaa".into())],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("authenticator code"));
    let wrong = post(
        &mut b,
        "/dashboard/settings",
        &[
            ("csrf", csrf.clone()),
            ("preset", "hipaa".into()),
            ("totp", "000000".into()),
        ],
    )
    .await;
    assert!(wrong.status.is_client_error(), "{}", wrong.status);
    assert_eq!(settings(&env).await, before, "nothing changed");

    // Past the login throttle's backoff after the wrong code, and a new TOTP step.
    env.clock.advance(Duration::from_secs(30));
    let secret = env.handle.owner_totp_secret().unwrap();
    let done = post(
        &mut b,
        "/dashboard/settings",
        &[
            ("csrf", csrf.clone()),
            ("preset", "hipaa".into()),
            ("totp", env.totp_code(&secret)),
        ],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(settings(&env).await["compliance_preset"], "hipaa");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn invalid_values_give_a_clear_error_and_change_nothing() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    let csrf = b.get("/dashboard/settings").await.csrf();
    let before = settings(&env).await;
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("expiry", "0".into())],
            "whole number followed by s, m, h or d",
        ),
        (vec![("expiry", "0s".into())], "between 5s and 365d"),
        (
            vec![("expiry", "-1h".into())],
            "whole number followed by s, m, h or d",
        ),
        (vec![("expiry", "400d".into())], "between 5s and 365d"),
        (
            vec![("expiry", "99999999999999999999999d".into())],
            "out of range",
        ),
        (vec![("preset", "lax".into())], "compliance presets"),
        (
            vec![("control_plane_limit", "0".into())],
            "limit must be 1-1000000",
        ),
        (
            vec![("control_plane_limit", "-5".into())],
            "Control plane: the limit must be a whole number",
        ),
        (
            vec![("registration_limit", "5000000".into())],
            "limit must be 1-1000000",
        ),
        (
            vec![("auth_failures_period", "99999999999".into())],
            "period must be a whole number",
        ),
    ];
    for (fields, want) in cases {
        for path in ["/dashboard/settings/review", "/dashboard/settings"] {
            let mut f = vec![("csrf", csrf.clone())];
            f.extend(fields.iter().cloned());
            let page = post(&mut b, path, &f).await;
            assert_eq!(page.status, StatusCode::BAD_REQUEST, "{path} {fields:?}");
            assert!(
                page.body.contains("id=\"form-error\"") && page.body.contains(want),
                "{path} {fields:?}: {want}: {}",
                page.body
            );
            // The form keeps what was typed, escaped.
            assert!(page.body.contains("id=\"settings-form\""));
        }
    }
    assert_eq!(settings(&env).await, before, "nothing changed");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_member_reads_the_settings_and_a_forged_save_is_refused() {
    let env = support::start().await;
    let mut m = member_browser(&env, "mia@example.com", "member").await;
    let page = m.get("/dashboard/settings").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("id=\"read-only\""));
    assert!(
        page.body.contains("id=\"current-expiry\">1d<"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("settings-form"));
    let csrf = page.csrf();
    let before = settings(&env).await;
    for path in ["/dashboard/settings/review", "/dashboard/settings"] {
        let forged = post(
            &mut m,
            path,
            &[("csrf", csrf.clone()), ("expiry", "1h".into())],
        )
        .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{path}");
    }
    // Without the CSRF token, refused before anything else.
    let mut o = owner_browser(&env).await;
    o.get("/dashboard/settings").await;
    let no_csrf = post(&mut o, "/dashboard/settings", &[("expiry", "1h".into())]).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    assert_eq!(settings(&env).await, before);
    env.handle.shutdown().await;
}

/// Says `version` (or nothing) on `id`'s status topic, as a daemon would.
fn report(env: &Env, id: &str, version: Option<&str>) {
    let p = octomil_common::wire::Presence {
        online: true,
        state: "active".into(),
        daemon_version: version.map(str::to_owned),
        expires_at: None,
    };
    env.handle
        .cloud
        .presence
        .ingest(
            &format!("octomil/v1/devices/{id}/status"),
            &serde_json::to_vec(&p).unwrap(),
            env.clock_secs(),
            |_| true,
        )
        .unwrap();
}

#[tokio::test]
async fn the_overview_shows_version_spread_and_the_last_day() {
    let env = support::start().await;
    env.relax_limits().await;
    // 12 devices: 1.2.0 on three, 1.1.0 on one, seven single 0.9.x, one never reporting.
    let mut versions: Vec<Option<String>> = vec![Some("1.2.0".into()); 3];
    versions.push(Some("1.1.0".into()));
    versions.extend((0..7).map(|k| Some(format!("0.9.{k}"))));
    versions.push(None);
    for (i, v) in versions.iter().enumerate() {
        let id = format!("ov-{i:02}");
        register_with(&env, &id, json!({})).await;
        if v.is_some() {
            report(&env, &id, v.as_deref());
        }
    }
    assert_eq!(env.revoke("ov-00").await.status, StatusCode::OK);
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/").await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    for want in [
        "<strong>12</strong>devices",
        "<strong>11</strong>active",
        "<strong>1</strong>revoked",
        "<strong>11</strong>online",
        // The revoked device is left out of the spread.
        "href=\"/dashboard/devices?version=1.2.0\">1.2.0</a></td><td>2</td>",
        // Eight versions by name; 1.1.0 (one device, last by name among the ties) is "other".
        "<td class=\"mono\">other</td><td>1</td>",
        "<td class=\"mono\">not reported</td><td>1</td>",
        "id=\"registrations-24h\">12<",
        "id=\"revocations-24h\">1<",
        "<svg class=\"chart\"",
    ] {
        assert!(body.contains(want), "{want}: {body}");
    }
    assert!(!body.contains("style="), "no inline style");
    // A day later the chart is empty; the counts stay.
    env.clock.advance(Duration::from_secs(25 * 3600));
    let mut b = owner_browser(&env).await;
    let later = b.get("/dashboard/").await;
    assert!(later.body.contains("id=\"registrations-24h\">0<"));
    assert!(later.body.contains("id=\"revocations-24h\">0<"));
    assert!(later.body.contains("<strong>12</strong>devices"));
    env.handle.shutdown().await;
}
