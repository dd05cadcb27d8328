//! Local rate limits end to end: the daemon mirrors the cloud's limits, a cloud 429 pauses
//! the surface, a restart keeps a spent budget, and concurrent callers never over-grant.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use octomil_cloud::faults::DeviceCall;
use octomil_e2e::{DaemonProcess, TestCloud};
use serde_json::json;

async fn limits(c: &TestCloud, body: serde_json::Value) {
    c.settings(json!({ "rate_limits": body })).await;
}

async fn acquire(
    d: &DaemonProcess,
    surface: &str,
    n: u32,
) -> (u16, serde_json::Value, Option<u64>) {
    let r = d
        .client()
        .request(
            http::Method::POST,
            &format!("/v1/limits/{surface}/acquire?n={n}"),
            None,
        )
        .await
        .unwrap();
    let retry = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or_default(),
        retry,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_inference_permits_then_a_refusal_correct_to_the_second() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    // Real time passes while 1000 requests cross the socket: a one-hour period keeps the
    // refill (one permit per 3.6 s) out of the count. The exact 1000/min arithmetic with a
    // paused clock is the limiter's unit test.
    limits(
        &c,
        json!({"inference": {"limit": 1000, "period_secs": 3600}}),
    )
    .await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("lim-1000"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let mut conn = d.client().connect().await.unwrap();
    for i in 0..1000 {
        let r = conn
            .request(http::Method::POST, "/v1/limits/inference/acquire", None)
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 200, "permit {i}");
    }
    let (code, body, retry) = acquire(&d, "inference", 1).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    // Retry-After is the exact wait rounded up to whole seconds; the wait is at most one
    // emission interval (3.6 s).
    let exact = body["retry_after_ms"].as_u64().unwrap();
    assert!(exact <= 3_600, "{body}");
    assert_eq!(retry, Some(exact.div_ceil(1000).max(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_reaches_the_daemon_at_the_next_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("lim-change"));
    d.wait_state("active", Duration::from_secs(20)).await;
    limits(&c, json!({"inference": {"limit": 5, "period_secs": 60}})).await;
    let (_, status) = d.get("/v1/status").await;
    assert_eq!(
        status["rate_limits"]["inference"]["limit"], 1000,
        "old limit until the refresh"
    );
    let (code, _) = d.call(http::Method::POST, "/v1/admin/refresh").await;
    assert_eq!(code, 200);
    let (_, status) = d.get("/v1/status").await;
    assert_eq!(status["rate_limits"]["inference"]["limit"], 5);
    assert_eq!(acquire(&d, "inference", 5).await.0, 200);
    let (code, body, retry) = acquire(&d, "inference", 1).await;
    assert_eq!(code, 429, "{body}");
    assert!(
        matches!(retry, Some(11 | 12)),
        "one permit per 12 s: {retry:?}"
    );
    let (code, body, _) = acquire(&d, "inference", 6).await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (400, "invalid_argument"),
        "a batch over the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_429_pauses_the_surface_for_its_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("lim-429"));
    d.wait_state("active", Duration::from_secs(20)).await;
    c.handle
        .cloud
        .faults
        .rate_limit_next(DeviceCall::Refresh, 1, 7);
    let (code, _) = d.call(http::Method::POST, "/v1/admin/refresh").await;
    assert_eq!(code, 502, "the forced refresh reports the cloud's refusal");
    let (code, body, retry) = acquire(&d, "control_plane", 1).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "paused");
    assert!(matches!(retry, Some(6 | 7)), "Retry-After {retry:?}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 6_000);
    let (code, _, _) = acquire(&d, "inference", 1).await;
    assert_eq!(code, 200, "only the control plane is paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_reset_a_spent_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    limits(&c, json!({"inference": {"limit": 3, "period_secs": 60}})).await;
    let dir = tmp.path().join("d");
    let d = DaemonProcess::start(&dir, &c.opts("lim-restart"));
    d.wait_state("active", Duration::from_secs(20)).await;
    assert_eq!(acquire(&d, "inference", 3).await.0, 200);
    assert!(d.terminate().success());
    let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
    d.wait_state("active", Duration::from_secs(20)).await;
    assert_eq!(
        acquire(&d, "inference", 1).await.0,
        429,
        "clean restart kept the budget"
    );
    // A crash loses at most the last second: a second device spends its budget, waits for
    // the periodic save, and is killed with SIGKILL.
    let dir2 = tmp.path().join("d2");
    let d2 = DaemonProcess::start(&dir2, &c.opts("lim-crash"));
    d2.wait_state("active", Duration::from_secs(20)).await;
    let state = dir2.join("state/limits.bin");
    let before = std::fs::read(&state).unwrap_or_default();
    assert_eq!(acquire(&d2, "inference", 3).await.0, 200);
    octomil_e2e::wait_for(Duration::from_secs(5), "the periodic save", || {
        (std::fs::read(&state).unwrap_or_default() != before).then_some(())
    });
    d2.kill9();
    let d2 = DaemonProcess::start_with_config(&dir2, &dir2.join("octomild.toml"), &[]);
    d2.wait_state("active", Duration::from_secs(20)).await;
    let (code, _, retry) = acquire(&d2, "inference", 1).await;
    assert_eq!(code, 429, "the budget survived kill -9");
    assert!(
        retry.unwrap() > 10,
        "3/min: the next permit is ~20 s away: {retry:?}"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients_never_get_more_than_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    limits(&c, json!({"inference": {"limit": 120, "period_secs": 60}})).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("lim-race"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = d.client();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            let mut granted = 0u64;
            for _ in 0..40 {
                let r = conn
                    .request(http::Method::POST, "/v1/limits/inference/acquire", None)
                    .await
                    .unwrap();
                match r.status.as_u16() {
                    200 => granted += 1,
                    429 => {}
                    other => panic!("unexpected {other}"),
                }
            }
            granted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    // 120 burst plus 2 per second of the run.
    let refill = started.elapsed().as_secs() * 2 + 2;
    assert!(total >= 120, "the budget was usable: {total}");
    assert!(
        total <= 120 + refill,
        "over-granted: {total} > 120 + {refill}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acquire_requests_get_clear_errors_and_cost_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCloud::start(tmp.path()).await;
    limits(&c, json!({"inference": {"limit": 2, "period_secs": 60}})).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("lim-bad"));
    d.wait_state("active", Duration::from_secs(20)).await;
    for (path, code, error) in [
        ("/v1/limits/training/acquire", 404, "not_found"),
        ("/v1/limits/inference/acquire?n=0", 400, "invalid_argument"),
        (
            "/v1/limits/inference/acquire?n=abc",
            400,
            "invalid_argument",
        ),
        ("/v1/limits/inference/acquire?n=-1", 400, "invalid_argument"),
        ("/v1/limits/inference/acquire?n=3", 400, "invalid_argument"),
        (
            "/v1/limits/inference/acquire?count=1",
            400,
            "invalid_argument",
        ),
    ] {
        let (status, body) = d.call(http::Method::POST, path).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap_or("")),
            (code, error),
            "{path}: {body}"
        );
    }
    let (status, _) = d
        .call(http::Method::GET, "/v1/limits/inference/acquire")
        .await;
    assert_eq!(status, 405);
    // Nothing was spent by the refused calls.
    assert_eq!(acquire(&d, "inference", 2).await.0, 200);
    // The CLI client.
    let (out, stdout, _) = octomil_e2e::run(
        std::process::Command::new(octomil_e2e::bin("octomild"))
            .args(["acquire", "inference", "--socket"])
            .arg(&d.socket),
    );
    assert_eq!(out.status.code(), Some(75), "{stdout}");
    let text = d.metrics().await;
    assert!(
        text.contains("octomild_limit_permits_granted_total{surface=\"inference\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("octomild_limit_refusals_total{surface=\"inference\",reason=\"budget\"}"),
        "{text}"
    );
}
