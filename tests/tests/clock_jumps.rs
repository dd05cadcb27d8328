//! Wall-clock jumps on the device (libfaketime under the daemon only; the cloud keeps real
//! time): the refresh schedule and key validity run on the monotonic clock, so a jump neither
//! skips a refresh, nor causes a refresh storm, nor makes the daemon serve or withhold a key
//! wrongly. Without libfaketime it fails in CI and skips, saying so, elsewhere.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use octomil_cloud::faults::DeviceCall;
use octomil_e2e::{DaemonProcess, TestCloud};
use serde_json::json;

/// libfaketime, or `None` after reporting it missing (which fails `test` in CI).
fn faketime(test: &str) -> Option<PathBuf> {
    octomil_e2e::libfaketime(test)
}

/// Sets the daemon's wall-clock offset in seconds (read on every clock call).
fn jump(file: &Path, offset_secs: i64) {
    std::fs::write(file, format!("{offset_secs:+}\n")).unwrap();
}

async fn setup(tmp: &Path, lib: &Path, id: &str) -> (TestCloud, DaemonProcess, PathBuf) {
    let c = TestCloud::start(tmp).await;
    c.settings(json!({"device_token_expiry": "6s"})).await;
    let offset = tmp.join("faketime");
    jump(&offset, 0);
    let mut opts = c.opts(id);
    opts.env = vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let d = DaemonProcess::start(&tmp.join("d"), &opts);
    d.wait_state("active", Duration::from_secs(20)).await;
    (c, d, offset)
}

/// Polls the token for `window`: every answer must be 200; returns the distinct keys seen.
async fn watch_tokens(d: &DaemonProcess, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut seen: Vec<String> = Vec::new();
    while Instant::now() < end {
        let (code, body) = d.get("/v1/token").await;
        assert_eq!(code, 200, "{body}\n{}", d.log_text());
        let t = body["token"].as_str().unwrap().to_owned();
        if seen.last() != Some(&t) {
            seen.push(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backward_jump_does_not_skip_a_refresh() {
    let Some(lib) = faketime("a_backward_jump_does_not_skip_a_refresh") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, d, offset) = setup(tmp.path(), &lib, "clock-back").await;
    // Half an hour back (the server certificate is backdated one hour, so TLS still works).
    jump(&offset, -1800);
    let before = cloud.handle.cloud.faults.calls(DeviceCall::Refresh).len();
    // A 6 s key refreshes at 4.2-4.8 s: within 8 s there must be a new key, and the old one
    // served until then.
    let seen = watch_tokens(&d, Duration::from_secs(8)).await;
    assert!(
        seen.len() >= 2,
        "no refresh after the clock went back\n{}",
        d.log_text()
    );
    let refreshes = cloud.handle.cloud.faults.calls(DeviceCall::Refresh).len() - before;
    assert!(refreshes <= 3, "{refreshes} refreshes in 8 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_jump_causes_no_refresh_storm_and_keeps_the_key() {
    let Some(lib) = faketime("a_forward_jump_causes_no_refresh_storm_and_keeps_the_key") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, d, offset) = setup(tmp.path(), &lib, "clock-fwd").await;
    // Two hours ahead: by the wall clock the 6 s key is long expired, but it is not.
    jump(&offset, 7200);
    let before = cloud.handle.cloud.faults.calls(DeviceCall::Refresh).len();
    let seen = watch_tokens(&d, Duration::from_secs(8)).await;
    let refreshes = cloud.handle.cloud.faults.calls(DeviceCall::Refresh).len() - before;
    // One refresh per 4.2-4.8 s of a 6 s key: at most 2 in 8 s, at least 1.
    assert!(
        (1..=2).contains(&refreshes),
        "{refreshes} refreshes in 8 s after the jump\n{}",
        d.log_text()
    );
    // The refresh counted above may still be on its way to the socket (the daemon serves a
    // new key only once it is saved): give it a deadline rather than a fixed window.
    let mut seen = seen;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 && Instant::now() < deadline {
        for t in watch_tokens(&d, Duration::from_millis(200)).await {
            if !seen.contains(&t) {
                seen.push(t);
            }
        }
    }
    assert!(seen.len() >= 2, "no new key served after the refresh");
    // The jump really reached the daemon: its last refresh is stamped two hours ahead.
    let (_, status) = d.get("/v1/status").await;
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        status["last_refresh"].as_u64().unwrap() > real_now + 7000,
        "{status}"
    );
}
