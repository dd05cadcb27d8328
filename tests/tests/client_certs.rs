//! MQTT client certificates end to end (issue 9 point 4): the real daemon logs in to the
//! embedded broker with the certificate the cloud issued for its identity key, and to a real
//! Mosquitto set up from docs/mosquitto.conf.example and docs/mosquitto.acl.example
//! (`require_certificate`, `use_identity_as_username`, no password file), following three key
//! rotations; a revoked daemon still receives its revocation over the broker. Without
//! `mosquitto` installed the Mosquitto test fails in CI and skips, saying so, elsewhere.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use octomil_cloud::faults::DeviceCall;
use octomil_e2e::DaemonProcess;
use octomil_e2e::mosquitto::{self, Mosquitto};
use octomil_e2e::push::{
    device, embedded, mosquitto_cloud, opts, revoke, until_refused, wait_mqtt,
};
use octomil_testkit::poll::eventually_or;
use octomil_testkit::skip;
use serde_json::json;

fn install() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How many times the daemon's log says its revocation session connected with a client
/// certificate, and how many times with the device key.
fn connects(log: &str) -> (usize, usize) {
    let log = strip_ansi(log);
    let lines = log
        .lines()
        .filter(|l| l.contains("revocation session connected"));
    let (cert, key): (Vec<&str>, Vec<&str>) =
        lines.partition(|l| l.contains("client_certificate=true"));
    (cert.len(), key.len())
}

/// `text` without terminal colour codes (the daemon's log has them).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The embedded broker: the daemon presents its certificate (no password is sent with one,
/// and the broker refuses a login with neither), the broker lets it publish its presence,
/// and a revoke reaches it within a second or so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_in_to_the_embedded_broker_by_certificate_and_is_revoked_promptly() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let c = embedded(tmp.path(), None).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts(&c, "cert-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    let (by_cert, by_key) = connects(&d.log_text());
    assert!(by_cert >= 1, "no certificate login\n{}", d.log_text());
    assert_eq!(by_key, 0, "a device-key login\n{}", d.log_text());
    // Broker side: the cloud sees the presence the device published through the broker, so
    // the broker took the certificate login (there was no password to take).
    eventually_or(
        Duration::from_secs(10),
        "the cloud sees the device online",
        || async {
            let v = device(&c, "cert-1").await;
            if v["online"] == true {
                return Ok(());
            }
            Err(v.to_string())
        },
    )
    .await;
    // The device key never reaches a log line (it is no MQTT password any more either).
    let key = d.token().await;
    assert!(!d.log_text().contains(&key), "the device key is in the log");
    let refreshes = c.handle.cloud.faults.calls(DeviceCall::Refresh).len();
    let t0 = Instant::now();
    let (code, body) = revoke(&c, "cert-1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["revocation_published"], true);
    let took = until_refused(&d, t0, Duration::from_secs(5)).await;
    eprintln!("revoke-to-refusal by certificate login: {took:?}");
    d.wait_state("revoked", Duration::from_secs(5)).await;
    assert_eq!(
        c.handle.cloud.faults.calls(DeviceCall::Refresh).len(),
        refreshes,
        "revoked by the push, not by a refresh"
    );
}

/// A daemon stopped while it was revoked logs in again with the certificate it holds (the
/// broker lets a revoked device in to read its own revocation) and ends revoked from the
/// retained revocation alone: no refresh reached the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_daemon_logs_in_with_its_certificate_and_reads_its_revocation() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let c = embedded(tmp.path(), None).await;
    let dir = tmp.path().join("d");
    let d = DaemonProcess::start(&dir, &opts(&c, "cert-2"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    // The log file is appended to by the restarted daemon.
    let before = connects(&d.log_text());
    assert!(d.terminate().success());
    let (code, body) = revoke(&c, "cert-2").await;
    assert_eq!(code, 200, "{body}");
    let refreshes = c.handle.cloud.faults.calls(DeviceCall::Refresh).len();
    let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
    d.wait_state("revoked", Duration::from_secs(10)).await;
    assert_eq!(d.get("/v1/token").await.0, 403);
    let (by_cert, by_key) = connects(&d.log_text());
    assert_eq!(
        (by_cert - before.0, by_key - before.1),
        (1, 0),
        "one certificate login after the restart\n{}",
        d.log_text()
    );
    assert_eq!(
        c.handle.cloud.faults.calls(DeviceCall::Refresh).len(),
        refreshes,
        "revoked over the broker, not by a refresh"
    );
}

/// Connections Mosquitto accepted for `id` (its username is the certificate's CN).
fn logins(broker: &Mosquitto, id: &str) -> usize {
    broker
        .log_text()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&format!("u'{id}'")))
        .count()
}

/// Mosquitto with client certificates: the daemon stays connected (or reconnects with its
/// renewed certificate) across three key rotations of 6 s keys, and once revoked still
/// receives its revocation over the broker with the certificate it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_client_certificates_follows_three_key_rotations_and_delivers_the_revocation()
 {
    let test = "mosquitto_with_client_certificates_follows_three_key_rotations_and_delivers_the_revocation";
    if mosquitto::find("mosquitto").is_none() {
        skip::missing_dependency(
            test,
            "mosquitto is not installed (apt-get install mosquitto)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (broker, c) = mosquitto_cloud(tmp.path(), Some("octomil-cloud")).await;
    c.settings(json!({"device_token_expiry": "6s"})).await;
    let id = "mosq-cert-1";
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts(&c, id));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, || broker.log_text()).await;
    assert!(logins(&broker, id) >= 1, "{}", broker.log_text());

    // Three rotations: a 6 s key (and certificate) is refreshed every 4.2-4.8 s.
    let before = c.handle.cloud.faults.calls(DeviceCall::Refresh).len();
    eventually_or(Duration::from_secs(30), "three key rotations", || async {
        let n = c.handle.cloud.faults.calls(DeviceCall::Refresh).len() - before;
        if n >= 3 {
            return Ok(());
        }
        Err(format!("{n} refreshes\n{}", d.log_text()))
    })
    .await;
    // Connected throughout, or connected again: with renewed certificates, since Mosquitto
    // checks the certificate's dates at each handshake and the first one has expired.
    wait_mqtt(&d, || broker.log_text()).await;
    let (by_cert, by_key) = connects(&d.log_text());
    assert_eq!(by_key, 0, "a device-key login\n{}", d.log_text());
    // Broker side: the live session moved to a renewed certificate before the one it
    // connected with expired (at 90 % of its 6 s), so Mosquitto saw the device log in again.
    let logins = logins(&broker, id);
    eprintln!("Mosquitto logins of {id}: {logins}; daemon certificate logins: {by_cert}");
    assert!(logins >= 2, "{}", broker.log_text());
    assert!(
        !broker.log_text().contains("not authorised"),
        "{}",
        broker.log_text()
    );

    // Long keys again, so the revocation can only come over the broker: the next refresh is
    // far away.
    c.settings(json!({"device_token_expiry": "1h"})).await;
    let (code, body) = d.call(http::Method::POST, "/v1/admin/refresh").await;
    assert_eq!(code, 200, "{body}");
    wait_mqtt(&d, || broker.log_text()).await;
    let refreshes = c.handle.cloud.faults.calls(DeviceCall::Refresh).len();
    let t0 = Instant::now();
    let (code, body) = revoke(&c, id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["revocation_published"], true, "{body}");
    let took = until_refused(&d, t0, Duration::from_secs(5)).await;
    eprintln!("revoke-to-refusal through Mosquitto with certificates: {took:?}");
    d.wait_state("revoked", Duration::from_secs(5)).await;
    assert_eq!(
        c.handle.cloud.faults.calls(DeviceCall::Refresh).len(),
        refreshes,
        "revoked by the push, not by a refresh"
    );
}
