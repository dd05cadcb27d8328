//! Live updates in a real headless Chromium: the device list is open; a device revoked
//! through the API (not the browser) and a device going online and offline over a real MQTT
//! session change their rows in place, without a reload; a `resync` and a dropped stream
//! re-fetch the table (a device registered meanwhile appears); the device page's status block
//! follows a revoke. Prints the latency from the API call to the DOM change (no assert on it).
//! Every wait is on a page condition with a generous deadline, never a sleep.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use fantoccini::Locator;
use octomil_cloud::MqttMode;
use octomil_common::wire::Presence;
use octomil_testkit::browser::Browser;
use rumqttc::{LastWill, QoS};
use support::ui::{fill, wait_js, wait_text};
use support::{Device, Env};

async fn sign_in(b: &Browser, env: &Env) {
    let password = env.handle.owner_password().unwrap();
    let secret = env.handle.owner_totp_secret().unwrap();
    b.client
        .goto(&format!("{}/dashboard/", env.handle.http_url))
        .await
        .unwrap();
    wait_text(b, "h1", "Sign in").await;
    fill(b, "input[name=email]", &env.handle.info.owner_email).await;
    fill(b, "input[name=password]", password.expose()).await;
    fill(b, "input[name=mfa_code]", &env.totp_code(&secret)).await;
    b.client
        .find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(b, "h1", "Devices").await;
}

/// Opens `path` and waits until its event stream is open, marking the page so a reload
/// would show (the mark is gone after one).
async fn open_live(b: &Browser, env: &Env, path: &str) {
    b.client
        .goto(&format!("{}{path}", env.handle.http_url))
        .await
        .unwrap();
    wait_js(
        b,
        "the live stream to open",
        "return document.documentElement.getAttribute('data-live-status') === 'on'",
    )
    .await;
    b.client
        .execute("window.octomilMark = 'not reloaded'; return true", vec![])
        .await
        .unwrap();
}

async fn not_reloaded(b: &Browser) {
    let v = b
        .client
        .execute("return window.octomilMark || ''", vec![])
        .await
        .unwrap();
    assert_eq!(v, "not reloaded", "the page was reloaded");
}

fn row(id: &str, field: &str) -> String {
    format!("tr[data-live-device='{id}'] [data-live='{field}']")
}

fn epoch_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test]
async fn rows_change_in_place_and_resync_refetches_the_table() {
    let Some(b) = Browser::start("rows_change_in_place_and_resync_refetches_the_table").await
    else {
        return;
    };
    let env = support::mqtt::start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        })
    })
    .await;
    env.relax_limits().await;
    let mut devices = Vec::new();
    for i in 0..3 {
        let d = Device::new(&format!("live-{i:02}"));
        let reg = d.register(&env).await;
        devices.push((d, reg));
    }
    b.guard(async {
        sign_in(&b, &env).await;
        open_live(&b, &env, "/dashboard/devices").await;
        wait_text(&b, &row("live-01", "state"), "active").await;

        // Revoked through the API: the row's state changes in place. The page records when.
        b.client
            .execute(
                "var cell = document.querySelector(\"tr[data-live-device='live-01'] [data-live='state']\");
                 new MutationObserver(function () {
                   if (!window.octomilChangedAt) window.octomilChangedAt = Date.now();
                 }).observe(cell, {childList: true, characterData: true, subtree: true});
                 return true",
                vec![],
            )
            .await
            .unwrap();
        let called_at = epoch_ms();
        assert_eq!(env.revoke("live-01").await.status, reqwest::StatusCode::OK);
        wait_text(&b, &row("live-01", "state"), "revoked").await;
        let changed_at = b
            .client
            .execute("return window.octomilChangedAt", vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap();
        println!(
            "live update: revoke API call to DOM change {} ms",
            changed_at.saturating_sub(called_at)
        );
        let class = b
            .client
            .find(Locator::Css(&row("live-01", "state")))
            .await
            .unwrap()
            .attr("class")
            .await
            .unwrap();
        assert_eq!(class.as_deref(), Some("pill bad"));
        not_reloaded(&b).await;

        // A real MQTT session: online after its status message, offline by its Last Will.
        let (d, reg) = &devices[2];
        let topic = format!("octomil/v1/devices/{}/status", d.id);
        let will = LastWill::new(
            topic.clone(),
            serde_json::to_vec(&Presence::last_will()).unwrap(),
            QoS::AtLeastOnce,
            true,
        );
        let tls = support::mqtt::tls_of(&env, d, reg);
        let mut dev = support::mqtt::device_session(&env, &d.id, tls, Some(will), false)
            .await
            .unwrap();
        let online_at = epoch_ms();
        dev.publish_retained(
            &topic,
            serde_json::to_vec(&Presence {
                online: true,
                state: "active".into(),
                // Device-controlled text with markup: shown as text, never as HTML.
                daemon_version: Some("<b>4.5.6</b>".into()),
                expires_at: Some(reg.expires_at),
            })
            .unwrap(),
        )
        .await;
        wait_text(&b, &row("live-02", "online"), "online").await;
        println!(
            "live update: status message to DOM change at most {} ms (polled)",
            epoch_ms().saturating_sub(online_at)
        );
        wait_text(&b, &row("live-02", "version"), "<b>4.5.6</b>").await;
        assert!(
            b.client
                .find(Locator::Css("tr[data-live-device='live-02'] b"))
                .await
                .is_err(),
            "the version became markup"
        );
        dev.kill();
        wait_text(&b, &row("live-02", "online"), "offline").await;
        not_reloaded(&b).await;

        // A device registered now is not on the page (events update rows, they do not add
        // them); a resync re-fetches the table and it appears.
        Device::new("live-10").register(&env).await;
        assert!(
            b.client
                .find(Locator::Css("tr[data-live-device='live-10']"))
                .await
                .is_err()
        );
        env.handle.cloud.events.resync();
        wait_text(&b, "tr[data-live-device='live-10']", "live-10").await;
        not_reloaded(&b).await;

        // The stream drops (the server ends it): the browser reconnects and re-fetches.
        Device::new("live-11").register(&env).await;
        env.handle.cloud.events.end_streams();
        wait_text(&b, "tr[data-live-device='live-11']", "live-11").await;
        wait_js(
            &b,
            "the stream to be open again",
            "return document.documentElement.getAttribute('data-live-status') === 'on'",
        )
        .await;
        not_reloaded(&b).await;
        // Rows fetched again still update in place.
        assert_eq!(env.revoke("live-10").await.status, reqwest::StatusCode::OK);
        wait_text(&b, &row("live-10", "state"), "revoked").await;

        // The device page: its status block follows a revoke, with the reason, no reload.
        open_live(&b, &env, "/dashboard/devices/live-00").await;
        wait_text(&b, "#device-state", "active").await;
        wait_text(&b, "#rate-limits", "per 60 s").await;
        assert_eq!(env.revoke("live-00").await.status, reqwest::StatusCode::OK);
        wait_text(&b, "#device-state", "revoked").await;
        wait_text(&b, "#revoke-reason", "stolen").await;
        not_reloaded(&b).await;
        // The page with its rate limits at 1280 and 390 px, light and dark
        // (`OCTOMIL_SCREENSHOTS=DIR` saves them).
        for (width, label) in [(1280, "1280"), (390, "390")] {
            b.width(width).await;
            for dark in [false, true] {
                b.color_scheme(dark).await;
                let scheme = if dark { "dark" } else { "light" };
                b.screenshot(&format!("device-live-{label}-{scheme}")).await;
            }
        }
    })
    .await;
    b.close().await;
    env.handle.shutdown().await;
}
