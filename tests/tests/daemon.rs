//! `octomild` end to end: the real daemon as a process against the real cloud (in-process,
//! with its failure switches), on temp dirs and port 0.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use octomil_cloud::CloudStub;
use octomil_cloud::faults::DeviceCall;
use octomil_e2e::{DaemonProcess, TestCloud, run};
use serde_json::json;

async fn cloud(dir: &std::path::Path) -> TestCloud {
    TestCloud::start(dir).await
}

async fn expiry(c: &TestCloud, e: &str) {
    c.settings(json!({"device_token_expiry": e})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_serves_a_working_key_and_restarts_without_registering_again() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    let dir = tmp.path().join("d1");
    let d = DaemonProcess::start(&dir, &c.opts("dev-reg"));
    let status = d.wait_state("active", Duration::from_secs(20)).await;
    assert_eq!(status["device_id"], "dev-reg");
    let key = d.token().await;
    assert!(key.starts_with("edg_live_"));
    assert!(c.accepts(&key).await, "the served key works at the cloud");
    assert_eq!(c.handle.cloud.faults.calls(DeviceCall::Register).len(), 1);

    // Fleet images delete the bootstrap token after first boot: a restart must not need it.
    assert!(d.terminate().success(), "clean exit on SIGTERM");
    std::fs::remove_file(dir.join("bootstrap_token")).unwrap();
    let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
    d.wait_state("active", Duration::from_secs(20)).await;
    assert_eq!(d.token().await, key, "same key after restart");
    assert_eq!(
        c.handle.cloud.faults.calls(DeviceCall::Register).len(),
        1,
        "no second registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_before_expiry_with_the_lifetime_the_cloud_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    expiry(&c, "6s").await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("dev-refresh"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let first = d.token().await;
    // Poll the key continuously: it must change before it expires, and /v1/token must never
    // stop answering 200 in between.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = vec![first.clone()];
    while seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 2 refreshes in 20 s; log:\n{}",
            d.log_text()
        );
        let t = d.token().await;
        if *seen.last().unwrap() != t {
            seen.push(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.accepts(seen.last().unwrap()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusals_park_with_a_clear_status_instead_of_looping() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    let mut opts = c.opts("dev-badboot");
    opts.bootstrap_token = Some("edg_bootstrap_0000000000aaaaaaaaaaBBBBBBBBBB99".into());
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts);
    let status = d.wait_state("unregistered", Duration::from_secs(20)).await;
    assert!(
        status["detail"]
            .as_str()
            .unwrap()
            .contains("invalid_bootstrap_token"),
        "{status}"
    );
    let (code, body) = d.get("/v1/token").await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (503, "not_registered")
    );
    let calls = c.handle.cloud.faults.calls(DeviceCall::Register).len();
    assert_eq!(calls, 1);

    // A good token and SIGHUP: it registers.
    std::fs::write(
        d.dir.join("bootstrap_token"),
        c.handle.bootstrap_token().unwrap().expose(),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_state("active", Duration::from_secs(20)).await;
    assert_eq!(
        c.handle.cloud.faults.calls(DeviceCall::Register).len(),
        calls + 1,
        "parked: no retry loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_429() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    c.handle
        .cloud
        .faults
        .rate_limit_next(DeviceCall::Register, 1, 2);
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("dev-429"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let calls = c.handle.cloud.faults.calls(DeviceCall::Register);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[1] - calls[0] >= 2000,
        "retried after {} ms, before Retry-After: 2",
        calls[1] - calls[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_stops_serving_and_restarts_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    let dir = tmp.path().join("d");
    let d = DaemonProcess::start(&dir, &c.opts("dev-rev"));
    d.wait_state("active", Duration::from_secs(20)).await;
    c.owner(
        reqwest::Method::POST,
        "/devices/dev-rev/revoke",
        Some(json!({"reason": "stolen"})),
    )
    .await;
    // Without MQTT the daemon learns it at its next refresh: force one.
    let (code, body) = d.call(http::Method::POST, "/v1/admin/refresh").await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (403, "device_revoked")
    );
    d.wait_state("revoked", Duration::from_secs(10)).await;
    let (code, body) = d.get("/v1/token").await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (403, "device_revoked")
    );
    d.kill9();
    let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
    let s = d.wait_state("revoked", Duration::from_secs(10)).await;
    assert!(s["revoked"]["reason"].as_str().is_some());
    assert_eq!(d.get("/v1/token").await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_down_past_a_refresh_keeps_serving_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    expiry(&c, "20s").await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("dev-down"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let key = d.token().await;
    // The cloud goes away (port closed) past the refresh point (14-16 s into a 20 s key).
    let addr = c.handle.addr;
    let state_dir = c.handle.state_dir.clone();
    c.handle.shutdown().await;
    d.wait_state("offline", Duration::from_secs(25)).await;
    assert_eq!(
        d.token().await,
        key,
        "the still-valid key is served while offline"
    );
    // Back on the same port: the daemon recovers by itself.
    let handle = CloudStub::builder(&state_dir)
        .http_listen(addr)
        .spawn()
        .await
        .unwrap();
    let c = TestCloud::wrap(handle);
    d.wait_state("active", Duration::from_secs(20)).await;
    let fresh = d.token().await;
    assert_ne!(fresh, key);
    assert!(c.accepts(&fresh).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    expiry(&c, "5s").await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("dev-exp"));
    d.wait_state("active", Duration::from_secs(20)).await;
    c.handle.cloud.faults.fail_next(DeviceCall::Refresh, 1000);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    loop {
        let (code, body) = d.get("/v1/token").await;
        if code == 503 {
            assert_eq!(body["error"], "token_expired");
            break;
        }
        assert_eq!(code, 200);
        served += 1;
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Answers from the socket's fast path (200) and from the router (503) count alike.
    let metrics = d.metrics().await;
    for line in [
        format!("octomild_requests_total{{route=\"/v1/token\",status=\"200\"}} {served}"),
        "octomild_requests_total{route=\"/v1/token\",status=\"503\"} 1".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // Recovery once the cloud answers again.
    c.handle.cloud.faults.fail_next(DeviceCall::Refresh, 0);
    d.wait_state("active", Duration::from_secs(20)).await;
    assert!(c.accepts(&d.token().await).await);
}

#[test]
fn bad_configs_exit_78_naming_every_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "cloud_url = \"http://x\"\nsocket_mode = \"9\"\nunknown_key = 1\n",
    )
    .unwrap();
    let (out, _, stderr) = run(std::process::Command::new(octomil_e2e::bin("octomild"))
        .args(["run", "--config"])
        .arg(&path));
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for needle in [
        "cloud_url",
        "socket_mode",
        "unknown_key",
        "ca_file",
        path.to_str().unwrap(),
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
    let (out, _, stderr) = run(std::process::Command::new(octomil_e2e::bin("octomild"))
        .args(["run", "--config"])
        .arg(tmp.path().join("missing.toml")));
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr.contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_checked_by_uid() {
    let tmp = tempfile::tempdir().unwrap();
    // The nobody user must reach the socket: make the path traversable.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = cloud(tmp.path()).await;
    let mut opts = c.opts("dev-uid");
    opts.extra = "socket_mode = \"0666\"\n".into();
    let dir = tmp.path().join("d");
    let d = DaemonProcess::start(&dir, &opts);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.wait_state("active", Duration::from_secs(20)).await;
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(octomil_e2e::bin("octomild"))
            .args(args)
            .arg("--socket")
            .arg(&d.socket);
        run(&mut cmd)
    };
    let (out, stdout, stderr) = as_nobody(&["token"]);
    assert_eq!(out.status.code(), Some(77), "{stdout} {stderr}");
    assert!(stdout.is_empty(), "no key for a stranger");
    // Allowed on reload.
    let cfg = std::fs::read_to_string(&d.config).unwrap() + "allowed_uids = [65534]\n";
    std::fs::write(&d.config, cfg).unwrap();
    d.signal("HUP");
    octomil_e2e::wait_for(Duration::from_secs(10), "the reload to apply", || {
        (as_nobody(&["token"]).0.status.code() == Some(0)).then_some(())
    });
    // Readers may not force a refresh: root only.
    let (out, _, _) = as_nobody(&["refresh"]);
    assert_eq!(out.status.code(), Some(77));
    let (out, _, stderr) = run(std::process::Command::new(octomil_e2e::bin("octomild"))
        .args(["refresh", "--socket"])
        .arg(&d.socket));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_have_script_friendly_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let octomild = octomil_e2e::bin("octomild");
    let (out, _, stderr) = run(std::process::Command::new(&octomild)
        .args(["status", "--socket"])
        .arg(tmp.path().join("none.sock")));
    assert_eq!(out.status.code(), Some(69), "not running: {stderr}");
    let c = cloud(tmp.path()).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("dev-cli"));
    d.wait_state("active", Duration::from_secs(20)).await;
    let (out, stdout, _) = run(std::process::Command::new(&octomild)
        .args(["status", "--socket"])
        .arg(&d.socket));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("active") && stdout.contains("dev-cli"),
        "{stdout}"
    );
    let (out, stdout, _) = run(std::process::Command::new(&octomild)
        .args(["token", "--socket"])
        .arg(&d.socket));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout.trim(), d.token().await);
    let (_, stdout, _) = run(std::process::Command::new(&octomild)
        .args(["status", "--json", "--socket"])
        .arg(&d.socket));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["state"], "active");
}

/// No secret in any log line at any level: a full run at trace level, then grep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    expiry(&c, "5s").await;
    let mut opts = c.opts("dev-logs");
    opts.env = vec![("RUST_LOG".into(), "trace".into())];
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts);
    d.wait_state("active", Duration::from_secs(20)).await;
    let first = d.token().await;
    let (code, _) = d.call(http::Method::POST, "/v1/admin/refresh").await;
    assert_eq!(code, 200);
    let second = d.token().await;
    let bootstrap = c.handle.bootstrap_token().unwrap().expose().clone();
    let log = d.log_text();
    assert!(log.len() > 1000, "trace logging produced output");
    for (name, secret) in [
        ("first key", &first),
        ("second key", &second),
        ("bootstrap token", &bootstrap),
    ] {
        assert!(
            !log.contains(secret.as_str()),
            "{name} found in the daemon log"
        );
        assert!(
            !log.contains(&secret[secret.len() - 20..]),
            "part of the {name} found in the log"
        );
    }
    // Refresh tokens never leave the daemon: check their prefix does not appear either.
    assert!(
        !log.contains("edg_refresh_"),
        "a refresh token reached the log"
    );
}
