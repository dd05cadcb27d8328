//! Organisation settings and the overview in a real headless Chromium: the device token expiry
//! changed through the review step with the keyboard alone, and the overview (counts, version
//! spread, the last day's chart) laid out at 390 px without sideways scrolling. Every wait is
//! on a page condition with a generous deadline, never a sleep.

#![allow(clippy::unwrap_used)]

mod support;

use fantoccini::Locator;
use octomil_testkit::browser::{Browser, WAIT};
use octomil_testkit::poll::eventually_or;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Device, Env};

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
const END: &str = "\u{E010}";
const BACKSPACE: &str = "\u{E003}";

async fn register_with(env: &Env, id: &str, metadata: serde_json::Value) {
    let d = Device::new(id);
    let mut body = d.register_body(env, &env.bootstrap_token()).await;
    body["metadata"] = metadata;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

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

async fn sign_in(b: &Browser, env: &Env, email: &str, password: &str, code: &str) {
    b.client
        .goto(&format!("{}/dashboard/", env.handle.http_url))
        .await
        .unwrap();
    wait_text(b, "h1", "Sign in").await;
    fill(b, "input[name=email]", email).await;
    fill(b, "input[name=password]", password).await;
    fill(b, "input[name=mfa_code]", code).await;
    b.client
        .find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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

/// Presses Tab until the element with `id` has focus (at most 80 presses): the page's own
/// focus order, as a keyboard user meets it.
async fn tab_to(b: &Browser, id: &str) {
    for _ in 0..80 {
        if focused_id(b).await == id {
            return;
        }
        keys(b, TAB).await;
    }
    panic!("#{id} never took the focus by Tab");
}

/// Types `text` into the focused element.
async fn keys(b: &Browser, text: &str) {
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
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
async fn settings_through_the_review_step_by_keyboard_and_the_overview_on_a_phone() {
    let test = "settings_through_the_review_step_by_keyboard_and_the_overview_on_a_phone";
    let Some(b) = Browser::start(test).await else {
        return;
    };
    let env = support::start().await;
    env.relax_limits().await;
    for i in 0..4 {
        register_with(&env, &format!("phone-{i:02}"), json!({"site": "lima"})).await;
    }
    assert_eq!(env.revoke("phone-00").await.status, StatusCode::OK);
    b.guard(async {
        let owner = env.handle.info.owner_email.clone();
        let password = env.handle.owner_password().unwrap();
        let secret = env.handle.owner_totp_secret().unwrap();
        sign_in(&b, &env, &owner, password.expose(), &env.totp_code(&secret)).await;

        // Settings: the expiry field, by Tab from the top of the page, then the review.
        b.client
            .goto(&format!("{}/dashboard/settings", env.handle.http_url))
            .await
            .unwrap();
        wait_text(&b, "#current-expiry", "1d").await;
        shots(&b, "settings").await;
        tab_to(&b, "expiry").await;
        keys(&b, END).await;
        for _ in 0..8 {
            keys(&b, BACKSPACE).await;
        }
        keys(&b, "1h").await;
        tab_to(&b, "review-button").await;
        keys(&b, ENTER).await;
        wait_text(&b, "h1", "Review the changes").await;
        let spelled = wait_text(&b, "#change-expiry", "3 active devices will refresh").await;
        assert!(spelled.contains("next refresh"), "{spelled}");
        shots(&b, "settings-review").await;
        let unchanged = env.owner(Method::GET, "/org/settings", None).await;
        assert_eq!(unchanged.body["device_token_expiry"], "1d", "not saved yet");
        tab_to(&b, "save-button").await;
        keys(&b, ENTER).await;
        wait_text(&b, "#saved", "saved").await;
        wait_text(&b, "#current-expiry", "1h").await;
        let saved = env.owner(Method::GET, "/org/settings", None).await;
        assert_eq!(saved.body["device_token_expiry"], "1h");

        // The overview at 390 px: counts, versions and the chart, nothing wider than the
        // screen.
        b.width(390).await;
        b.client
            .goto(&format!("{}/dashboard/", env.handle.http_url))
            .await
            .unwrap();
        wait_text(&b, "h1", "Overview").await;
        wait_text(&b, "#registrations-24h", "4").await;
        wait_text(&b, "#revocations-24h", "1").await;
        wait_text(&b, "#versions", "not reported").await;
        assert_eq!(count(&b, "svg.chart rect.reg").await, 1);
        let fits = b
            .client
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
                vec![],
            )
            .await
            .unwrap();
        let (scroll, client) = (fits[0].as_u64().unwrap(), fits[1].as_u64().unwrap());
        assert!(client <= 420, "a phone-wide viewport: {client}");
        assert!(scroll <= client, "no sideways scrolling at 390 px: {scroll} > {client}");
        b.width(1280).await;
        shots(&b, "overview").await;
    })
    .await;
    b.close().await;
    env.handle.shutdown().await;
}
