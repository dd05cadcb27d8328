//! Organisation settings and the overview in a real headless Chromium: the device token expiry
//! changed through the review step with the keyboard alone, and the overview (counts, version
//! spread, the last day's chart) laid out at 390 px without sideways scrolling. Every wait is
//! on a page condition with a generous deadline, never a sleep.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_testkit::browser::Browser;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::dashboard::register_with;
use support::ui::{ENTER, count, shots, sign_in, tab_to, wait_text};

const END: &str = "\u{E010}";
const BACKSPACE: &str = "\u{E003}";

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
