//! The clock matrix (issue 2/6): the real cloud process on the real clock, real daemons under
//! libfaketime at -1 h, -10 min, +4 min, +1 h and +30 days. Each registers, serves its key
//! and refuses it promptly after `octomil devices revoke`; and one daemon whose clock starts
//! 400 days before its build shows `waiting_for_clock`, then registers within 10 s of its
//! clock being set while it runs. Fails under `CI=true` without libfaketime; says SKIPPED
//! otherwise.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use octomil_e2e::push::{until_refused, wait_mqtt};
use octomil_e2e::{CloudProcess, DaemonOptions, DaemonProcess, run};

fn faketime(test: &str) -> Option<PathBuf> {
    octomil_e2e::libfaketime(test)
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// libfaketime for one daemon: its wall clock at `offset` (read from `file` on every call,
/// so the test can set the clock while the daemon runs); monotonic time untouched.
fn clock_env(lib: &Path, file: &Path, offset_secs: i64) -> Vec<(String, String)> {
    std::fs::write(file, format!("{offset_secs:+}\n")).unwrap();
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

fn daemon(cloud: &CloudProcess, dir: &Path, id: &str, env: Vec<(String, String)>) -> DaemonProcess {
    let mut o = DaemonOptions::for_cloud(&cloud.info, Some(cloud.bootstrap_token()), id);
    o.env = env;
    DaemonProcess::start(&dir.join(id), &o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_at_any_clock_offset_register_serve_and_refuse_after_a_revoke() {
    let Some(lib) =
        faketime("daemons_at_any_clock_offset_register_serve_and_refuse_after_a_revoke")
    else {
        return;
    };
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&tmp.path().join("cloud"));
    let offsets: [(&str, i64); 5] = [
        ("minus-1h", -3600),
        ("minus-10m", -600),
        ("plus-4m", 240),
        ("plus-1h", 3600),
        ("plus-30d", 30 * 86_400),
    ];
    let daemons: Vec<(&str, DaemonProcess)> = offsets
        .iter()
        .map(|&(id, off)| {
            let env = clock_env(&lib, &tmp.path().join(format!("{id}.faketime")), off);
            (id, daemon(&cloud, tmp.path(), id, env))
        })
        .collect();
    for (id, d) in &daemons {
        let s = d.wait_state("active", Duration::from_secs(30)).await;
        assert_eq!(s["device_id"], *id);
        assert!(d.token().await.starts_with("edg_"), "{id}");
        wait_mqtt(d, String::new).await;
    }
    let mut figures = Vec::new();
    for (id, d) in &daemons {
        let t0 = Instant::now();
        let (out, stdout, stderr) = run(cloud.cli().args(["devices", "revoke", id]));
        assert!(out.status.success(), "{stdout}{stderr}");
        let took = until_refused(d, t0, Duration::from_secs(5)).await;
        d.wait_state("revoked", Duration::from_secs(5)).await;
        figures.push(format!("{id}: {} ms", took.as_millis()));
    }
    eprintln!("revoke-to-refusal by clock offset: {}", figures.join(", "));
}

/// 400 days behind is before the build (the daemon knows without asking anyone); 3 days
/// behind is past the build but before the cloud's certificates (backdated 2 days), which
/// only TLS can tell. Both wait for the clock, say so, and register once it is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_far_behind_waits_for_the_clock_then_registers_once_it_is_set() {
    let Some(lib) =
        faketime("a_daemon_far_behind_waits_for_the_clock_then_registers_once_it_is_set")
    else {
        return;
    };
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&tmp.path().join("cloud"));
    let cases: [(&str, i64, &str); 2] = [
        ("rtc-less", -400 * 86_400, "before this build"),
        ("three-days-behind", -3 * 86_400, "not valid yet"),
    ];
    let daemons: Vec<_> = cases
        .iter()
        .map(|&(id, offset, why)| {
            let file = tmp.path().join(format!("{id}.faketime"));
            let env = clock_env(&lib, &file, offset);
            (daemon(&cloud, tmp.path(), id, env), file, why)
        })
        .collect();
    for (d, _, why) in &daemons {
        let s = d
            .wait_state("waiting_for_clock", Duration::from_secs(20))
            .await;
        let detail = s["detail"].as_str().unwrap();
        assert!(detail.contains(why) && detail.contains("clock"), "{detail}");
        let (code, _) = d.get("/v1/token").await;
        assert_eq!(code, 503, "no key before registering");
    }
    // NTP answers: each clock is set right while its daemon runs.
    for (d, file, why) in &daemons {
        let set = Instant::now();
        std::fs::write(file, "+0\n").unwrap();
        d.wait_state("active", Duration::from_secs(10)).await;
        eprintln!(
            "waiting_for_clock ({why}) to active after the clock was set: {} ms",
            set.elapsed().as_millis()
        );
        assert!(d.token().await.starts_with("edg_"));
    }
}
