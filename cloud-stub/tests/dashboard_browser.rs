//! The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven over
//! WebDriver): sign in with a computed TOTP code; metadata holding markup shows as text; a
//! form posted without its CSRF token is refused; a revoke done with the keyboard alone; an
//! API key seen once, then only its prefix; a Member sees no revoke button; screenshots at
//! 1280 and 390 px wide, light and dark (`OCTOMIL_SCREENSHOTS=DIR` saves them). Every wait is
//! on a page condition with a generous deadline, never a sleep.

#![allow(clippy::unwrap_used)]

mod support;

use fantoccini::Locator;
use octomil_testkit::browser::Browser;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::dashboard::register_with;
use support::ui::{
    ENTER, TAB, count, fill, focused_id, shots, sign_in, state_of, tab_to, wait_text,
};

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Some(b) = Browser::start("the_dashboard_in_a_real_browser").await else {
        return;
    };
    let env = support::start().await;
    env.relax_limits().await;
    register_with(
        &env,
        "evil-1",
        json!({"note": "<script>alert(1)</script>", "label": "<b>bold</b>"}),
    )
    .await;
    for (i, site) in ["berlin", "lagos", "lima", "osaka", "perth", "quebec"]
        .iter()
        .enumerate()
    {
        register_with(
            &env,
            &format!("sensor-{i:02}"),
            json!({"site": site, "model": "rpi4"}),
        )
        .await;
    }
    b.guard(async {
        let owner = env.handle.info.owner_email.clone();
        let password = env.handle.owner_password().unwrap();
        let secret = env.handle.owner_totp_secret().unwrap();
        sign_in(&b, &env, &owner, password.expose(), &env.totp_code(&secret)).await;
        assert!(count(&b, "tbody tr").await >= 7);
        shots(&b, "devices").await;

        // Markup in metadata is text: the cell reads the characters, no element is made,
        // and no script ran (an alert would be open).
        b.client
            .goto(&format!("{}/dashboard/devices/evil-1", env.handle.http_url))
            .await
            .unwrap();
        wait_text(&b, "#metadata", "<script>alert(1)</script>").await;
        wait_text(&b, "#metadata", "<b>bold</b>").await;
        assert_eq!(count(&b, "#metadata b").await, 0);
        assert_eq!(count(&b, "#metadata script").await, 0);
        assert!(b.client.get_alert_text().await.is_err(), "no alert opened");

        // A revoke form posted without its CSRF token is refused, and nothing changes.
        b.client
            .goto(&format!(
                "{}/dashboard/devices/sensor-00",
                env.handle.http_url
            ))
            .await
            .unwrap();
        wait_text(&b, "#device-state", "active").await;
        shots(&b, "device").await;
        b.client
            .execute(
                "document.querySelector('#revoke-form input[name=csrf]').remove()",
                vec![],
            )
            .await
            .unwrap();
        fill(&b, "#revoke-reason-input", "forged").await;
        fill(&b, "#revoke-totp", &env.totp_code(&secret)).await;
        b.client
            .find(Locator::Css("#revoke-confirm"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.client
            .find(Locator::Css("#revoke-button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&b, "h1", "Error 403").await;
        wait_text(&b, "[role=alert]", "CSRF").await;
        assert_eq!(state_of(&env, "sensor-00").await, "active");

        // Revoke with the keyboard alone: Tab through the page to the reason, type, Tab to
        // the code, Tab to the confirmation, Space, Tab to the button, Enter.
        b.client
            .goto(&format!(
                "{}/dashboard/devices/sensor-00",
                env.handle.http_url
            ))
            .await
            .unwrap();
        wait_text(&b, "#device-state", "active").await;
        tab_to(&b, "revoke-reason-input").await;
        let typing = |text: String| {
            let b = &b;
            async move {
                b.client
                    .active_element()
                    .await
                    .unwrap()
                    .send_keys(&text)
                    .await
                    .unwrap();
            }
        };
        typing("lost in transit".into()).await;
        typing(TAB.into()).await;
        assert_eq!(focused_id(&b).await, "revoke-totp");
        typing(env.totp_code(&secret)).await;
        typing(TAB.into()).await;
        assert_eq!(focused_id(&b).await, "revoke-confirm");
        typing(" ".into()).await;
        typing(TAB.into()).await;
        assert_eq!(focused_id(&b).await, "revoke-button");
        typing(ENTER.into()).await;
        wait_text(&b, "#device-state", "revoked").await;
        wait_text(&b, "#revoke-reason", "lost in transit").await;
        assert_eq!(state_of(&env, "sensor-00").await, "revoked");
        assert_eq!(count(&b, "#revoke-button").await, 0);

        // An API key: shown once with a copy button; after a reload only its prefix.
        b.client
            .goto(&format!("{}/dashboard/api-keys", env.handle.http_url))
            .await
            .unwrap();
        wait_text(&b, "h1", "API keys").await;
        fill(&b, "#key-name", "grafana").await;
        b.client
            .find(Locator::Css("input[name=scope][value='devices:read']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.client
            .find(Locator::Css("#create-key-button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let key = wait_text(&b, "#new-key", "edg_").await.trim().to_owned();
        assert_eq!(count(&b, "button[data-copy=new-key]").await, 1);
        shots(&b, "api-keys").await;
        let works = env.call(Method::GET, "/devices", Some(&key), None).await;
        assert_eq!(works.status, StatusCode::OK);
        b.client.refresh().await.unwrap();
        wait_text(&b, "#api-keys", "grafana").await;
        assert_eq!(count(&b, "#new-key").await, 0);
        let source = b.client.source().await.unwrap();
        assert!(!source.contains(&key), "the key is never shown again");
        // Only its listed prefix (`edg_live_` and its first random characters).
        let prefix = &key[.."edg_live_".len() + octomil_cloud::store::KEY_PREFIX_CHARS];
        assert!(source.contains(&format!("{prefix}…")));

        // Sign out; a Member signs in and sees no revoke button.
        b.client
            .find(Locator::Css("header form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&b, "h1", "Sign in").await;
        let (mpw, mtotp) = env.add_member("mia@example.com", "member").await;
        sign_in(&b, &env, "mia@example.com", &mpw, &env.totp_code(&mtotp)).await;
        b.client
            .goto(&format!(
                "{}/dashboard/devices/sensor-01",
                env.handle.http_url
            ))
            .await
            .unwrap();
        wait_text(&b, "#device-state", "active").await;
        assert_eq!(count(&b, "#revoke-button").await, 0);
        assert_eq!(count(&b, "#revoke-form").await, 0);
    })
    .await;
    b.close().await;
    env.handle.shutdown().await;
}
