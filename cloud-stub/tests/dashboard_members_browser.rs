//! Invitations and first-time enrolment in a real headless Chromium: an Owner invites a member
//! on the members page and copies the link shown once; the invitee opens it in a fresh browser
//! (the token travels in the fragment, which the page's script moves into the form), reads the
//! secret from the page, computes the TOTP code, sets a password, sees the recovery codes and
//! signs in; later, under a stricter preset and after an MFA reset, signing in leads them
//! through setting up a new authenticator and into the dashboard. Every wait is on a page condition with a generous deadline, never a sleep.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use fantoccini::Locator;
use octomil_testkit::browser::Browser;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Env;
use support::ui::{ENTER, click, count, fill, script, wait_text};

async fn sign_in(b: &Browser, env: &Env, email: &str, password: &str, code: &str) {
    b.client
        .goto(&format!("{}/dashboard/login", env.handle.http_url))
        .await
        .unwrap();
    wait_text(b, "h1", "Sign in").await;
    fill(b, "input[name=email]", email).await;
    fill(b, "input[name=password]", password).await;
    fill(b, "input[name=mfa_code]", code).await;
    click(b, "main form button[type=submit]").await;
    wait_text(b, "h1", "Devices").await;
}

/// Screenshots of the current page at 1280 and 390 px, light and dark
/// (`OCTOMIL_SCREENSHOTS=DIR`).
async fn shots(b: &Browser, name: &str) {
    for width in [1280, 390] {
        b.width(width).await;
        for dark in [false, true] {
            b.color_scheme(dark).await;
            let scheme = if dark { "dark" } else { "light" };
            b.screenshot(&format!("{name}-{width}-{scheme}")).await;
        }
    }
    b.color_scheme(false).await;
    b.width(1280).await;
}

#[tokio::test]
async fn an_owner_invites_and_the_invitee_enrols_in_a_browser() {
    let Some(owner) = Browser::start("an_owner_invites_and_the_invitee_enrols_in_a_browser").await
    else {
        return;
    };
    let env = support::start().await;
    let link = owner
        .guard(async {
            let email = env.handle.info.owner_email.clone();
            let password = env.handle.owner_password().unwrap();
            let secret = env.handle.owner_totp_secret().unwrap();
            sign_in(
                &owner,
                &env,
                &email,
                password.expose(),
                &env.totp_code(&secret),
            )
            .await;
            owner
                .client
                .goto(&format!("{}/dashboard/members", env.handle.http_url))
                .await
                .unwrap();
            wait_text(&owner, "h1", "Members").await;
            fill(&owner, "#invite-email", "ivy@example.com").await;
            click(&owner, "#invite-button").await;
            let link = wait_text(&owner, "#invite-link", "/invite#edg_invite_").await;
            assert_eq!(count(&owner, "button[data-copy=invite-link]").await, 1);
            wait_text(&owner, "#invitations", "ivy@example.com").await;
            shots(&owner, "members").await;
            // Shown once: a reload lists the invitation, not its link.
            owner.client.refresh().await.unwrap();
            wait_text(&owner, "#invitations", "ivy@example.com").await;
            assert_eq!(count(&owner, "#invite-link").await, 0);
            link.trim().to_owned()
        })
        .await;
    owner.close().await;

    // The invitee, in a browser of their own.
    let Some(b) =
        Browser::start("an_owner_invites_and_the_invitee_enrols_in_a_browser-invitee").await
    else {
        return;
    };
    b.guard(async {
        let token = link.rsplit_once('#').unwrap().1.to_owned();
        b.client.goto(&link).await.unwrap();
        wait_text(&b, "#token-found", "invitation link was read").await;
        assert_eq!(
            script(&b, "return document.getElementById('invite-token').value").await,
            token
        );
        // The token left the address bar.
        assert_eq!(script(&b, "return location.hash").await, "");
        shots(&b, "enrol-start").await;
        click(&b, "#enrol-start").await;
        wait_text(&b, "h1", "Set up your sign-in").await;
        wait_text(&b, "#enrol-email", "ivy@example.com").await;
        assert_eq!(count(&b, "img#totp-qr").await, 1);
        let shown = wait_text(&b, "#totp-secret", "").await;
        let secret = octomil_cloud::session::totp_from_base32(shown.trim()).unwrap();
        shots(&b, "enrol-qr").await;
        fill(&b, "#enrol-password", "correct horse battery").await;
        fill(&b, "#enrol-password2", "correct horse battery").await;
        fill(&b, "#enrol-code", &env.totp_code(&secret)).await;
        // Submitted from the keyboard.
        b.client
            .find(Locator::Css("#enrol-code"))
            .await
            .unwrap()
            .send_keys(ENTER)
            .await
            .unwrap();
        wait_text(&b, "#codes-title", "recovery codes").await;
        assert_eq!(count(&b, "#recovery-codes li").await, 10);
        shots(&b, "enrol-done").await;
        click(&b, "#enrol-next").await;
        wait_text(&b, "h1", "Sign in").await;
        // The next time step, so the enrolment's code is not replayed.
        env.clock.advance(Duration::from_secs(30));
        sign_in(
            &b,
            &env,
            "ivy@example.com",
            "correct horse battery",
            &env.totp_code(&secret),
        )
        .await;
        wait_text(&b, "header .who", "ivy@example.com (member)").await;

        // The preset now requires MFA of everyone and Ivy's was reset: signing in leads through
        // setting up a new authenticator, then into the dashboard (no dead end).
        click(&b, "header form button").await;
        wait_text(&b, "h1", "Sign in").await;
        let a = env
            .owner(
                Method::PATCH,
                "/org/settings",
                Some(json!({"compliance_preset": "hipaa"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        let a = env
            .owner(Method::POST, "/org/members/ivy@example.com/mfa-reset", None)
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
        fill(&b, "input[name=email]", "ivy@example.com").await;
        fill(&b, "input[name=password]", "correct horse battery").await;
        click(&b, "main form button[type=submit]").await;
        wait_text(&b, "h1", "Set up your sign-in").await;
        assert_eq!(
            count(&b, "#enrol-password").await,
            0,
            "no password step here"
        );
        let shown = wait_text(&b, "#totp-secret", "").await;
        let secret = octomil_cloud::session::totp_from_base32(shown.trim()).unwrap();
        fill(&b, "#enrol-code", &env.totp_code(&secret)).await;
        b.client
            .find(Locator::Css("#enrol-code"))
            .await
            .unwrap()
            .send_keys(ENTER)
            .await
            .unwrap();
        wait_text(&b, "#codes-title", "recovery codes").await;
        assert_eq!(count(&b, "#recovery-codes li").await, 10);
        click(&b, "#enrol-next").await;
        wait_text(&b, "h1", "Devices").await;
        wait_text(&b, "header .who", "ivy@example.com (member)").await;
    })
    .await;
    b.close().await;
    env.handle.shutdown().await;
}
