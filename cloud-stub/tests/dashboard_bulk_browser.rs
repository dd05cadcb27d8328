//! Bulk revoke in a real headless Chromium (Debian's chromium + chromium-driver): tick one
//! row with the keyboard and one with a click, "Revoke selected", give the reason, the code
//! and the confirmation, watch the progress page reach done, and find both rows revoked and
//! the others untouched. Every wait is on a page condition with a generous deadline.

#![allow(clippy::unwrap_used)]

mod support;

use fantoccini::Locator;
use octomil_testkit::browser::{Browser, WAIT};
use octomil_testkit::poll::eventually_or;
use reqwest::Method;
use support::{Device, Env};

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// Waits until the element at `css` exists and its text contains `want`.
async fn wait_text(b: &Browser, css: &str, want: &str) -> String {
    eventually_or(WAIT, &format!("{css} to show {want:?}"), || async {
        match b.client.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) if t.contains(want) => Ok(t),
                Ok(t) => Err(format!("text is {t:?}")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

async fn count(b: &Browser, css: &str) -> usize {
    b.client.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn fill(b: &Browser, css: &str, text: &str) {
    let e = b.client.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn click(b: &Browser, css: &str) {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn sign_in(b: &Browser, env: &Env, email: &str, password: &str, code: &str) {
    b.client
        .goto(&format!("{}/dashboard/", env.handle.http_url))
        .await
        .unwrap();
    wait_text(b, "h1", "Sign in").await;
    fill(b, "input[name=email]", email).await;
    fill(b, "input[name=password]", password).await;
    fill(b, "input[name=mfa_code]", code).await;
    click(b, "main form button[type=submit]").await;
    wait_text(b, "h1", "Devices").await;
}

/// The active element's id (after keyboard moves).
async fn focused_id(b: &Browser) -> String {
    let v = b
        .client
        .execute("return document.activeElement.id || ''", vec![])
        .await
        .unwrap();
    v.as_str().unwrap_or("").to_owned()
}

async fn press(b: &Browser, keys: &str) {
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

/// Presses Tab until the element with `id` has focus (at most 80 presses).
async fn tab_to(b: &Browser, id: &str) {
    for _ in 0..80 {
        if focused_id(b).await == id {
            return;
        }
        press(b, TAB).await;
    }
    panic!("#{id} never took the focus by Tab");
}

async fn checked(b: &Browser, css: &str) -> bool {
    let v = b
        .client
        .execute(
            "return document.querySelector(arguments[0]).checked",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap();
    v.as_bool().unwrap()
}

async fn state_of(env: &Env, id: &str) -> String {
    let a = env
        .owner(Method::GET, &format!("/devices/{id}"), None)
        .await;
    a.body["state"].as_str().unwrap().to_owned()
}

/// Screenshots of the current page at 1280 and 390 px, light and dark.
async fn shots(b: &Browser, name: &str) {
    for (width, label) in [(1280, "1280"), (390, "390")] {
        b.width(width).await;
        for dark in [false, true] {
            b.color_scheme(dark).await;
            let scheme = if dark { "dark" } else { "light" };
            b.screenshot(&format!("{name}-{label}-{scheme}")).await;
        }
    }
    b.color_scheme(false).await;
    b.width(1280).await;
}

#[tokio::test]
async fn bulk_revoke_of_a_selection_in_a_real_browser() {
    let Some(b) = Browser::start("bulk_revoke_of_a_selection_in_a_real_browser").await else {
        return;
    };
    let env = support::start().await;
    env.relax_limits().await;
    let ids = ["unit-1", "unit-2", "unit-3", "unit-4"];
    for id in ids {
        Device::new(id).register(&env).await;
    }
    b.guard(async {
        let owner = env.handle.info.owner_email.clone();
        let password = env.handle.owner_password().unwrap();
        let secret = env.handle.owner_totp_secret().unwrap();
        sign_in(&b, &env, &owner, password.expose(), &env.totp_code(&secret)).await;
        assert_eq!(count(&b, "input.bulk-pick").await, 4);
        // One row ticked with the keyboard (Tab to its box, Space), one with a click.
        tab_to(&b, "pick-unit-2").await;
        press(&b, " ").await;
        assert!(checked(&b, "#pick-unit-2").await);
        click(&b, "#pick-unit-4").await;
        assert!(checked(&b, "#pick-unit-4").await);
        shots(&b, "bulk-list").await;
        tab_to(&b, "bulk-selected").await;
        press(&b, ENTER).await;

        // The confirmation: the count, then reason, code, tick, button in Tab order.
        wait_text(&b, "h1", "Revoke 2 devices").await;
        wait_text(&b, "#bulk-count", "2").await;
        // Past the sign-in's grace, so the code is checked.
        env.clock.advance(std::time::Duration::from_secs(11 * 60));
        shots(&b, "bulk-confirm").await;
        tab_to(&b, "bulk-reason").await;
        press(&b, "site closed").await;
        press(&b, TAB).await;
        assert_eq!(focused_id(&b).await, "bulk-totp");
        press(&b, &env.totp_code(&secret)).await;
        press(&b, TAB).await;
        assert_eq!(focused_id(&b).await, "bulk-confirm");
        press(&b, " ").await;
        press(&b, TAB).await;
        assert_eq!(focused_id(&b).await, "bulk-revoke-button");
        press(&b, ENTER).await;

        // The progress page reaches done (htmx polls it while it runs).
        wait_text(&b, "h1", "Bulk revocation").await;
        wait_text(&b, "#bulk-done", "Done").await;
        wait_text(&b, "#bulk-revoked", "2 of 2").await;
        shots(&b, "bulk-progress").await;

        // The rows show revoked; the others stay active and selectable.
        b.client
            .goto(&format!("{}/dashboard/devices", env.handle.http_url))
            .await
            .unwrap();
        wait_text(&b, "h1", "Devices").await;
        assert_eq!(count(&b, "input.bulk-pick").await, 2);
        assert_eq!(count(&b, "#pick-unit-2").await, 0);
        assert_eq!(count(&b, "#pick-unit-1").await, 1);
        let revoked = b
            .client
            .find_all(Locator::Css("tbody .pill.bad"))
            .await
            .unwrap()
            .len();
        assert_eq!(revoked, 2);
        let mut states = Vec::new();
        for id in ids {
            states.push(state_of(&env, id).await);
        }
        assert_eq!(states, ["active", "revoked", "active", "revoked"]);
    })
    .await;
    b.close().await;
    env.handle.shutdown().await;
}
