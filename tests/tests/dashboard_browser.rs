//! The dashboard end to end: the real cloud (embedded broker), the real `octomild`, and a real
//! headless Chromium. An operator signs in with a computed TOTP code, finds the running
//! daemon's device online in the list, revokes it with a reason, and the daemon refuses its
//! key promptly (bounded at a generous 5 s here; the revocation benchmark measures it).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fantoccini::Locator;
use octomil_cloud::{CloudStub, MqttMode};
use octomil_e2e::{DaemonProcess, TestCloud};
use octomil_testkit::browser::{Browser, WAIT};
use octomil_testkit::poll::eventually_or;

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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_a_running_daemon_from_the_dashboard() {
    let Some(b) = Browser::start("an_operator_revokes_a_running_daemon_from_the_dashboard").await
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::with(CloudStub::builder(tmp.path().join("cloud")).mqtt(
        MqttMode::Embedded {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
    ))
    .await;
    let mut opts = c.opts("kiosk-7");
    opts.extra = "mqtt_keepalive = \"2s\"\n".into();
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts);
    d.wait_state("active", Duration::from_secs(20)).await;
    assert_eq!(d.get("/v1/token").await.0, 200);
    let url = c.handle.http_url.clone();
    let secret = c.handle.owner_totp_secret().unwrap();
    let code = || octomil_cloud::session::totp_code(&secret, now_secs()).unwrap();
    b.guard(async {
        b.client
            .goto(&format!("{url}/dashboard/login"))
            .await
            .unwrap();
        wait_text(&b, "h1", "Sign in").await;
        fill(&b, "input[name=email]", &c.handle.info.owner_email).await;
        fill(
            &b,
            "input[name=password]",
            c.handle.owner_password().unwrap().expose(),
        )
        .await;
        fill(&b, "input[name=mfa_code]", &code()).await;
        click(&b, "main form button[type=submit]").await;
        wait_text(&b, "h1", "Devices").await;

        // Find it: search, then the row says online once the daemon's status arrived.
        let row = eventually_or(
            Duration::from_secs(20),
            "kiosk-7 online in the list",
            || async {
                b.client
                    .goto(&format!("{url}/dashboard/devices?q=kiosk"))
                    .await
                    .map_err(|e| e.to_string())?;
                let t = wait_text(&b, "tbody", "kiosk-7").await;
                if t.contains("● online") {
                    Ok(t)
                } else {
                    Err(t)
                }
            },
        )
        .await;
        assert!(row.contains("active"), "{row}");
        click(&b, "tbody a").await;
        wait_text(&b, "#device-state", "active").await;

        fill(&b, "#revoke-reason-input", "kiosk stolen from lobby").await;
        fill(&b, "#revoke-totp", &code()).await;
        click(&b, "#revoke-confirm").await;
        let t0 = Instant::now();
        click(&b, "#revoke-button").await;
        loop {
            let (status, body) = d.get("/v1/token").await;
            if status == 403 {
                assert_eq!(body["error"], "device_revoked");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the daemon still serves its key {:?} after the revoke\n{}",
                t0.elapsed(),
                d.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("dashboard revoke to daemon refusal: {:?}", t0.elapsed());
        wait_text(&b, "#device-state", "revoked").await;
        wait_text(&b, "#revoke-reason", "kiosk stolen from lobby").await;
        let s = d.wait_state("revoked", Duration::from_secs(5)).await;
        assert_eq!(s["revoked"]["reason"], "kiosk stolen from lobby");
        // The audit log says it came from the dashboard.
        let (_, audit) = c
            .owner(reqwest::Method::GET, "/audit?action=device.revoke", None)
            .await;
        let last = audit["records"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["origin"], "dashboard");
        assert_eq!(last["target"], "kiosk-7");
    })
    .await;
    b.close().await;
    d.kill9();
}
