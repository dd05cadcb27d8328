//! `kill -9` at random instants during registration and during refresh: no credential the
//! cloud considers current is ever lost, the store never corrupts, and no re-bootstrap is
//! needed unless the cloud says so.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use octomil_cloud::faults::DeviceCall;
use octomil_e2e::{DaemonProcess, TestCloud};

/// A small deterministic generator, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn cloud(dir: &std::path::Path) -> TestCloud {
    let c = TestCloud::start(dir).await;
    c.relax_limits().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    // Stretch the registration window so kills land inside it.
    c.handle
        .cloud
        .faults
        .delay(DeviceCall::Register, Duration::from_millis(40));
    let mut rng = Rng(0x5eed_0001);
    for round in 0..20 {
        let dir = tmp.path().join(format!("reg-{round}"));
        let opts = c.opts(&format!("crash-reg-{round}"));
        let d = DaemonProcess::start(&dir, &opts);
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        d.kill9();
        // Restart: whatever instant the kill hit, the daemon ends up registered with a key the
        // cloud accepts (re-registering with its own key if the answer was lost).
        let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
        d.wait_state("active", Duration::from_secs(20)).await;
        let key = d.token().await;
        assert!(
            c.accepts(&key).await,
            "round {round}: key refused by the cloud\n{}",
            d.log_text()
        );
        let registrations = c.handle.cloud.faults.calls(DeviceCall::Register).len();
        // Once registered, the bootstrap token is never needed again.
        std::fs::remove_file(dir.join("bootstrap_token")).unwrap();
        d.kill9();
        let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
        d.wait_state("active", Duration::from_secs(20)).await;
        assert_eq!(d.token().await, key, "round {round}");
        assert_eq!(
            c.handle.cloud.faults.calls(DeviceCall::Register).len(),
            registrations,
            "round {round}: re-registered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    let dir = tmp.path().join("d");
    let opts = c.opts("crash-refresh");
    let d = DaemonProcess::start(&dir, &opts);
    d.wait_state("active", Duration::from_secs(20)).await;
    drop(d);
    std::fs::remove_file(dir.join("bootstrap_token")).unwrap();
    c.handle
        .cloud
        .faults
        .delay(DeviceCall::Refresh, Duration::from_millis(30));
    let mut rng = Rng(0x5eed_0002);
    for round in 0..20 {
        let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
        d.wait_state("active", Duration::from_secs(20)).await;
        let client = d.client();
        let refresh = tokio::spawn(async move {
            client
                .request(http::Method::POST, "/v1/admin/refresh", None)
                .await
        });
        tokio::time::sleep(Duration::from_millis(rng.below(80))).await;
        d.kill9();
        let _ = refresh.await;
        let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
        d.wait_state("active", Duration::from_secs(20)).await;
        let key = d.token().await;
        assert!(
            c.accepts(&key).await,
            "round {round}: served key refused\n{}",
            d.log_text()
        );
        // And the refresh token it holds still works: refresh now.
        let (code, body) = d.call(http::Method::POST, "/v1/admin/refresh").await;
        assert_eq!(code, 200, "round {round}: {body}\n{}", d.log_text());
        assert!(c.accepts(&d.token().await).await);
        drop(d);
    }
    assert_eq!(
        c.handle.cloud.faults.calls(DeviceCall::Register).len(),
        1,
        "never re-bootstrapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_within_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("drain"));
    d.wait_state("active", Duration::from_secs(20)).await;
    // A refresh in flight at the cloud when the daemon is told to stop.
    let inflight = d.refresh_held_by(&c.handle.cloud, Duration::from_millis(500));
    let started = std::time::Instant::now();
    let status = d.terminate();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    // shutdown_grace is 2 s in the test config.
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    let answer = inflight.await.unwrap();
    assert!(
        answer.is_ok() || took >= Duration::from_secs(2),
        "an in-flight request was cut before the grace period"
    );
}

/// A cloud call that hangs far past the grace period cannot hold shutdown: SIGTERM exits
/// within `shutdown_grace` (2 s in the test config) plus a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_cloud_call_hangs_exits_within_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cloud(tmp.path()).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &c.opts("hang"));
    d.wait_state("active", Duration::from_secs(20)).await;
    // The refresh reaches the cloud and is held there for a minute.
    let _inflight = d.refresh_held_by(&c.handle.cloud, Duration::from_secs(60));
    let started = std::time::Instant::now();
    let status = d.terminate();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}
