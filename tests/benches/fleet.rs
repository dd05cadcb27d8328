//! Fleet scale (issue 13): `octomil-fleet-sim` against a cloud process, with the embedded
//! broker and with Mosquitto side by side: bulk revocation of N connected devices, a refresh
//! storm, a reconnect storm (embedded: the cloud process restarts; Mosquitto: it stops, every
//! device is revoked while it is away, and it starts again), the cloud's RSS with N sessions,
//! and the daemon's own reconnect and refresh spread for N devices.
//!
//! Run (release-like binaries next to the bench; `ci-release` builds much faster than
//! `release` and is what BENCHMARKS.md used):
//!
//! ```text
//! cargo build --profile ci-release -p octomil-cloud -p octomil-fleet-sim
//! cargo bench --profile ci-release -p octomil-e2e --bench fleet
//! ```
//!
//! The bench process only drives the two binaries, so it may be built in any profile and
//! pointed at them: `BENCH_BIN_DIR=target/ci-release cargo bench --profile dev -p octomil-e2e
//! --bench fleet` saves building the harness in ci-release.
//!
//! Environment: `BENCH_DEVICES` (10000), `BENCH_REFRESH_WINDOW_MS` (60 s per 10,000 devices),
//! `BENCH_HTTP` (64 HTTP requests in flight), `BENCH_SKIP` (comma list of `mosquitto`,
//! `embedded`, `revoke`, `storm`). Timings are printed, never asserted.

#![allow(clippy::unwrap_used)]

#[path = "fleet/cloud.rs"]
mod cloud;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use octomil_testkit::bench::env_or;
use serde_json::Value;

use crate::cloud::{Broker, Cloud};

fn skipped(what: &str) -> bool {
    std::env::var("BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim() == what)
}

/// The directory of the binaries: `BENCH_BIN_DIR`, or the one built with this bench's
/// profile (`target/<profile>/`).
fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("BENCH_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(Path::parent).unwrap().to_owned()
        }
    };
    for name in ["octomil-cloud", "octomil-fleet-sim"] {
        if !dir.join(name).exists() {
            eprintln!(
                "{} is missing: run `cargo build --profile <this bench's profile> -p octomil-cloud -p octomil-fleet-sim` first",
                dir.join(name).display()
            );
            std::process::exit(2);
        }
    }
    dir
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One simulator run against a fresh cloud: its report, and the cloud's (and Mosquitto's)
/// RSS when the fleet was connected.
struct Run {
    report: Value,
    cloud_rss: Option<u64>,
    mosquitto_rss: Option<u64>,
    restart: Option<(f64, f64)>,
}

fn sim_run(bins: &Path, broker: Broker, devices: usize, scenarios: &str) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let cloud_bin = bins.join("octomil-cloud");
    let mut cloud = Cloud::start(tmp.path(), broker, &cloud_bin);
    let report = tmp.path().join("report.json");
    let window = env_or::<usize>("BENCH_REFRESH_WINDOW_MS", 60_000 * devices / 10_000);
    let mut cmd = Command::new(bins.join("octomil-fleet-sim"));
    cmd.arg("run")
        .args(["--url", &cloud.info.http_url])
        .arg("--ca")
        .arg(&cloud.info.ca_file)
        .arg("--api-key-file")
        .arg(&cloud.info.owner_api_key_file)
        .args(["--devices", &devices.to_string()])
        .args(["--scenario", scenarios])
        .args(["--refresh-window-ms", &window.to_string()])
        .args([
            "--http-connections",
            &env_or::<usize>("BENCH_HTTP", 64).to_string(),
        ])
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let revoke_while_down = broker == Broker::Mosquitto && scenarios.contains("reconnect-storm");
    if revoke_while_down {
        cmd.arg("--revoke-while-down");
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut cloud_rss, mut mosquitto_rss, mut restart) = (None, None, None);
    for line in out.lines() {
        let line = line.unwrap();
        println!("  | {line}");
        if line.starts_with("@ready") {
            (cloud_rss, mosquitto_rss) = cloud.rss();
            println!(
                "  (bench) RSS with the fleet connected: cloud {} MiB, mosquitto {} MiB",
                cloud_rss.map_or("?".into(), |m| m.to_string()),
                mosquitto_rss.map_or("-".into(), |m| m.to_string())
            );
        } else if line == "@outage" {
            match broker {
                Broker::Embedded => {
                    let (stopped, back) = cloud.restart(&cloud_bin);
                    restart = Some((stopped.as_secs_f64() * 1e3, back.as_secs_f64() * 1e3));
                    println!(
                        "  (bench) cloud restarted: stopped after {:.0} ms, serving again after {:.0} ms",
                        stopped.as_secs_f64() * 1e3,
                        back.as_secs_f64() * 1e3
                    );
                }
                Broker::Mosquitto if revoke_while_down => {
                    cloud.stop_mosquitto();
                    println!("  (bench) mosquitto stopped");
                }
                Broker::Mosquitto => {
                    cloud.stop_mosquitto();
                    cloud.start_mosquitto();
                    println!("  (bench) mosquitto restarted");
                }
            }
        } else if line == "@revoked-while-down" {
            cloud.start_mosquitto();
            println!("  (bench) mosquitto started again");
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "octomil-fleet-sim failed ({status}); cloud log:\n{}",
        cloud.log_tail(30)
    );
    let report = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    Run {
        report,
        cloud_rss,
        mosquitto_rss,
        restart,
    }
}

fn scenario<'a>(run: &'a Run, name: &str) -> &'a Value {
    run.report["scenarios"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["scenario"] == name))
        .unwrap_or(&Value::Null)
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bins = bin_dir();
    let devices = env_or::<usize>("BENCH_DEVICES", 10_000).max(1);
    println!(
        "fleet bench: {devices} devices; {} cores, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    let ok = Command::new(bins.join("octomil-fleet-sim"))
        .args(["jitter", "--devices", &devices.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());

    let mut brokers = Vec::new();
    if !skipped("embedded") {
        brokers.push(Broker::Embedded);
    }
    if !skipped("mosquitto") {
        if octomil_e2e::mosquitto::available() {
            brokers.push(Broker::Mosquitto);
        } else {
            octomil_testkit::skip::missing_dependency(
                "fleet bench, Mosquitto runs",
                "mosquitto is not installed (apt-get install -y mosquitto)",
            );
        }
    }
    let mut cols: Vec<(Broker, Option<Run>, Option<Run>)> = Vec::new();
    for &b in &brokers {
        let a = (!skipped("revoke")).then(|| {
            println!(
                "\n=== {} broker: refresh storm, then bulk revocation",
                b.name()
            );
            sim_run(&bins, b, devices, "refresh-storm,bulk-revoke")
        });
        let s = (!skipped("storm")).then(|| {
            println!("\n=== {} broker: reconnect storm", b.name());
            sim_run(&bins, b, devices, "reconnect-storm")
        });
        cols.push((b, a, s));
    }

    println!(
        "\nSummary: {devices} devices, load average at the end {}\n",
        load()
    );
    let head: Vec<&str> = cols.iter().map(|c| c.0.name()).collect();
    println!("| measure | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    type Cell = fn(&Run) -> String;
    let rows_a: Vec<(&str, Cell)> = vec![
        ("registrations/s (64 in flight)", |r| {
            f(&r.report["registrations_per_s"])
        }),
        ("sessions up, connect time (s)", |r| {
            format!(
                "{} in {}",
                f(&r.report["connected"]),
                f(&r.report["connect_s"])
            )
        }),
        ("cloud RSS with the fleet connected (MiB)", |r| {
            let c = r.cloud_rss.map_or("?".into(), |m| m.to_string());
            match r.mosquitto_rss {
                Some(m) => format!("{c} (+ mosquitto {m})"),
                None => c,
            }
        }),
        ("simulator RSS with the fleet connected (MiB)", |r| {
            f(&r.report["sim_rss_mib"])
        }),
        ("bulk revoke: last device verified (ms)", |r| {
            f(&scenario(r, "bulk-revoke")["last_verified_ms"])
        }),
        ("bulk revoke: per device p50 / p99 (ms)", |r| {
            let s = &scenario(r, "bulk-revoke")["per_device"];
            format!("{} / {}", f(&s["p50_ms"]), f(&s["p99_ms"]))
        }),
        ("bulk revoke: verified / devices", |r| {
            let s = scenario(r, "bulk-revoke");
            format!("{} / {}", f(&s["verified"]), f(&s["devices"]))
        }),
        ("bulk revoke: HTTP answer (ms), acknowledged", |r| {
            let s = &scenario(r, "bulk-revoke")["http"];
            format!("{}, {}", f(&s["answer_ms"]), f(&s["published"]))
        }),
        ("refresh storm: window (s)", |r| {
            let ms = scenario(r, "refresh-storm")["window_ms"]
                .as_f64()
                .unwrap_or(0.0);
            format!("{:.1}", ms / 1e3)
        }),
        ("refresh storm: ok / 4xx / 5xx / transport", |r| {
            let s = scenario(r, "refresh-storm");
            format!(
                "{} / {} / {} / {}",
                f(&s["ok"]),
                f(&s["status_4xx"]),
                f(&s["status_5xx"]),
                f(&s["transport_errors"])
            )
        }),
        ("refresh storm: latency p50 / p99 (ms)", |r| {
            let s = &scenario(r, "refresh-storm")["latency"];
            format!("{} / {}", f(&s["p50_ms"]), f(&s["p99_ms"]))
        }),
        ("refresh storm: refreshes/s", |r| {
            f(&scenario(r, "refresh-storm")["refreshes_per_s"])
        }),
    ];
    let rows_s: Vec<(&str, Cell)> = vec![
        ("storm: cloud RSS with the fleet connected (MiB)", |r| {
            r.cloud_rss.map_or("?".into(), |m| m.to_string())
        }),
        ("storm: cloud restart, stopped / serving (ms)", |r| {
            r.restart
                .map_or("-".into(), |(a, b)| format!("{a:.0} / {b:.0}"))
        }),
        ("storm: drop -> broker back (ms)", |r| {
            f(&scenario(r, "reconnect-storm")["outage_ms"])
        }),
        ("storm: drop -> all subscribed again (ms)", |r| {
            f(&scenario(r, "reconnect-storm")["all_back_ms"])
        }),
        ("storm: back -> subscribed p50 / p99 (ms)", |r| {
            let s = &scenario(r, "reconnect-storm")["back_to_subscribed"];
            format!("{} / {}", f(&s["p50_ms"]), f(&s["p99_ms"]))
        }),
        ("storm: reconnected / devices", |r| {
            let s = scenario(r, "reconnect-storm");
            format!("{} / {}", f(&s["reconnected"]), f(&s["devices"]))
        }),
        ("storm: busiest second, busiest 100 ms (subscribed)", |r| {
            let s = scenario(r, "reconnect-storm");
            let per_s = s["subscribed_per_second"]
                .as_array()
                .and_then(|a| a.iter().filter_map(Value::as_u64).max());
            format!(
                "{}, {}",
                per_s.map_or("-".into(), |p| p.to_string()),
                f(&s["peak_per_100ms"])
            )
        }),
        ("storm: reconnect attempts (all devices)", |r| {
            f(&scenario(r, "reconnect-storm")["attempts"])
        }),
        ("storm: revoked while down, verified after return", |r| {
            let s = scenario(r, "reconnect-storm");
            if s["revoked_while_down"].is_null() {
                return "-".into();
            }
            format!(
                "{} / {}, p99 {} ms, last {} ms",
                f(&s["verified"]),
                f(&s["devices"]),
                f(&s["back_to_verified"]["p99_ms"]),
                f(&s["back_to_verified"]["max_ms"])
            )
        }),
    ];
    for (name, cell) in rows_a {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| c.1.as_ref().map_or("-".into(), cell))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    for (name, cell) in rows_s {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| c.2.as_ref().map_or("-".into(), cell))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}
