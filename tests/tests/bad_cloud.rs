//! A cloud that answers with absurd values (scripted through the cloud's fault switches): the
//! daemon never crashes, refuses what it cannot use and says why in its status, clamps the
//! rest, and recovers once the cloud answers sanely. Also: a new daemon talking to a cloud
//! older than protocol 2 says so instead of failing silently.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use octomil_cloud::faults::DeviceCall;
use octomil_e2e::{DaemonProcess, TestCloud};
use octomil_testkit::poll::eventually_or;
use serde_json::json;

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn wait_detail(d: &DaemonProcess, needle: &str) -> serde_json::Value {
    let what = format!("status to say {needle:?}");
    eventually_or(Duration::from_secs(20), &what, || async {
        let (_, s) = d.get("/v1/status").await;
        if s["detail"].as_str().is_some_and(|t| t.contains(needle)) {
            return Ok(s);
        }
        Err(format!("{s}\n{}", d.log_text()))
    })
    .await
}

/// Waits until the daemon has counted `n` failed registrations.
async fn wait_register_failures(d: &DaemonProcess, n: usize) {
    let want = format!("octomild_registration_total{{result=\"failure\"}} {n}");
    let end = Instant::now() + Duration::from_secs(20);
    while !d.metrics().await.lines().any(|l| l == want) {
        assert!(Instant::now() < end, "never saw {want}\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Register answers the daemon must refuse: it stays up, says why, retries slowly; a SIGHUP
/// retries at once and the (then sane) cloud gets it registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_register_answers_are_refused_with_a_reason_and_never_crash_the_daemon() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    c.relax_limits().await;
    let cases = [
        // (patch, what the status must say)
        (
            json!({"revocation_public_key": "AAAA"}),
            "revocation_public_key",
        ),
        (
            json!({"revocation_public_key": ""}),
            "revocation_public_key",
        ),
        (json!({"expires_in": null}), "expires_in"),
        (
            json!({"mqtt": {"url": "mqtt://broker.example:1883", "topic": "t", "username": "u"}}),
            "plaintext",
        ),
    ];
    let faults = &c.handle.cloud.faults;
    faults.patch_next(
        DeviceCall::Register,
        cases.iter().map(|(p, _)| p.clone()).collect(),
    );
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("absurd-1"));
    for (i, (patch, needle)) in cases.iter().enumerate() {
        wait_register_failures(&d, i + 1).await;
        let s = wait_detail(&d, needle).await;
        assert_eq!(s["state"], "unregistered", "{patch}: {s}");
        assert!(s["detail"].as_str().unwrap().contains("retrying in"), "{s}");
        let (code, _) = d.get("/v1/token").await;
        assert_eq!(code, 503, "no key from a refused answer ({patch})");
        assert_eq!(faults.calls(DeviceCall::Register).len(), i + 1);
        d.signal("HUP");
    }
    d.wait_state("active", Duration::from_secs(20)).await;
    assert!(d.token().await.starts_with("edg_"));
}

/// Refresh answers with values to clamp: a `limit` above the period in nanoseconds (a
/// division by zero before), a zero period, a zero and a huge lifetime. The daemon keeps
/// serving, mirrors clamped limits and grants permits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_refresh_values_are_clamped_and_the_daemon_keeps_serving() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    c.relax_limits().await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("absurd-2"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let absurd = json!({"limit": u32::MAX, "period_secs": 0});
    let patches = vec![
        json!({"rate_limits": {"control_plane": absurd, "inference": absurd}, "expires_in": u64::MAX}),
        json!({"expires_in": 0}),
    ];
    c.handle
        .cloud
        .faults
        .patch_next(DeviceCall::Refresh, patches.clone());
    for _ in &patches {
        let (code, body) = d.call(http::Method::POST, "/v1/admin/refresh").await;
        assert_eq!(code, 200, "{body}\n{}", d.log_text());
        let (code, body) = d
            .call(http::Method::POST, "/v1/limits/inference/acquire")
            .await;
        assert_eq!(code, 200, "{body}");
        let (code, _) = d.get("/v1/token").await;
        assert_eq!(code, 200);
    }
    let (_, s) = d.get("/v1/status").await;
    assert_eq!(s["state"], "active", "{s}");
    // Still alive: the process has not exited.
    assert!(d.get("/v1/status").await.0 == 200);
}

/// A protocol-2 daemon and a cloud without the challenge endpoint (an older cloud, played
/// here by a router answering 404 to it): the status names the protocol, not a bare error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_older_than_protocol_2_is_named_in_the_status() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    // Point the daemon at a path prefix where nothing exists: every call is a 404, as the
    // challenge call is on a protocol-1 cloud.
    let mut o = c.opts("old-cloud-1");
    o.cloud_url = format!("{}/older", c.handle.http_url);
    let d = DaemonProcess::start(&tmp.path().join("d"), &o);
    let s = wait_detail(&d, "older than device protocol 2").await;
    assert_eq!(s["state"], "unregistered");
}
