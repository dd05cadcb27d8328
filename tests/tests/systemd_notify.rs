//! systemd notification protocol with a fake `NOTIFY_SOCKET`: READY=1 once the socket
//! serves, STATUS= lines, and WATCHDOG=1 pings that stop while the refresh loop is wedged.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use octomil_cloud::CloudStub;
use octomil_e2e::{DaemonOptions, DaemonProcess};

fn recv_all(sock: &UnixDatagram, for_at_least: Duration) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let end = Instant::now() + for_at_least;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_and_a_watchdog_that_follows_the_refresh_loop() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudStub::builder(tmp.path().join("cloud"))
        .spawn()
        .await
        .unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let mut opts = DaemonOptions::for_cloud(
        &cloud.info,
        Some(cloud.bootstrap_token().unwrap().expose().clone()),
        "notify-1",
    );
    opts.extra = "cloud_timeout = \"30s\"\n".into();
    opts.env = vec![
        ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts);
    d.wait_state("active", Duration::from_secs(20)).await;

    let msgs = recv_all(&sock, Duration::from_millis(1500));
    let text: Vec<&str> = msgs.iter().map(|(_, m)| m.as_str()).collect();
    // READY may have arrived before we started reading: read it from the full stream.
    assert!(text.iter().any(|m| m.contains("STATUS=active")), "{text:?}");
    let pings = text.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 4,
        "expected a ping every 200 ms while healthy: {text:?}"
    );

    // Wedge the refresh loop: the cloud holds the refresh answer for 3 s.
    let forced = d.refresh_held_by(&cloud.cloud, Duration::from_secs(3));
    let wedged = recv_all(&sock, Duration::from_millis(2000));
    let late_pings: Vec<_> = wedged
        .iter()
        .filter(|(t, m)| {
            m.contains("WATCHDOG=1") && t.duration_since(wedged[0].0) > Duration::from_millis(500)
        })
        .collect();
    assert!(
        late_pings.is_empty(),
        "pings went on while the loop was wedged: {wedged:?}"
    );
    // The answer arrives, the loop moves again, and so do the pings.
    let _ = forced.await;
    let after = recv_all(&sock, Duration::from_millis(1500));
    assert!(
        after.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "pings did not resume: {after:?}"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_once_the_socket_serves() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudStub::builder(tmp.path().join("cloud"))
        .spawn()
        .await
        .unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut opts = DaemonOptions::for_cloud(
        &cloud.info,
        Some(cloud.bootstrap_token().unwrap().expose().clone()),
        "notify-2",
    );
    opts.env = vec![("NOTIFY_SOCKET".into(), notify_path.display().to_string())];
    let dir = tmp.path().join("d");
    let config = opts.write(&dir);
    let mut child = std::process::Command::new(octomil_e2e::bin("octomild"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    let ready_at_socket =
        std::os::unix::net::UnixStream::connect(dir.join("run/octomild.sock")).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("READY=1"), "{first}");
    assert!(first.contains("STATUS="), "{first}");
    assert!(
        ready_at_socket,
        "READY=1 before the socket accepted connections"
    );
}
