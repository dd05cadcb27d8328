//! Helpers of the dashboard's browser tests (a real Chromium over WebDriver, see
//! `octomil_testkit::browser`): every wait is on a page condition with a deadline.

use fantoccini::Locator;
use octomil_testkit::browser::{Browser, WAIT};
use octomil_testkit::poll::eventually_or;
use reqwest::Method;

use super::Env;

/// WebDriver's Tab key.
pub const TAB: &str = "\u{E004}";
/// WebDriver's Enter key.
pub const ENTER: &str = "\u{E007}";

/// Waits until the element at `css` exists and its text contains `want`.
pub async fn wait_text(b: &Browser, css: &str, want: &str) -> String {
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

pub async fn count(b: &Browser, css: &str) -> usize {
    b.client.find_all(Locator::Css(css)).await.unwrap().len()
}

pub async fn fill(b: &Browser, css: &str, text: &str) {
    let e = b.client.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

pub async fn click(b: &Browser, css: &str) {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub async fn sign_in(b: &Browser, env: &Env, email: &str, password: &str, code: &str) {
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
pub async fn focused_id(b: &Browser) -> String {
    let v = b
        .client
        .execute("return document.activeElement.id || ''", vec![])
        .await
        .unwrap();
    v.as_str().unwrap_or("").to_owned()
}

pub async fn press(b: &Browser, keys: &str) {
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

/// Presses Tab until the element with `id` has focus (at most 80 presses).
pub async fn tab_to(b: &Browser, id: &str) {
    for _ in 0..80 {
        if focused_id(b).await == id {
            return;
        }
        press(b, TAB).await;
    }
    panic!("#{id} never took the focus by Tab");
}

pub async fn checked(b: &Browser, css: &str) -> bool {
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

pub async fn state_of(env: &Env, id: &str) -> String {
    let a = env
        .owner(Method::GET, &format!("/devices/{id}"), None)
        .await;
    a.body["state"].as_str().unwrap().to_owned()
}

/// Screenshots of the current page at 1280 and 390 px, light and dark.
pub async fn shots(b: &Browser, name: &str) {
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

pub async fn script(b: &Browser, js: &str) -> String {
    let v = b.client.execute(js, vec![]).await.unwrap();
    v.as_str().unwrap_or("").to_owned()
}

/// Waits until the script `js` returns true.
pub async fn wait_js(b: &Browser, what: &str, js: &str) {
    eventually_or(WAIT, what, || async {
        match b.client.execute(js, vec![]).await {
            Ok(serde_json::Value::Bool(true)) => Ok(()),
            Ok(v) => Err(format!("{v}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}
