//! The simulator's command line as an operator meets it. Also makes `cargo test --workspace`
//! build the binary, which the end-to-end crate's fleet test runs.

use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_octomil-fleet-sim"))
}

#[test]
fn jitter_needs_no_cloud_and_spreads_a_fleet_over_seconds() {
    let out = sim()
        .args(["jitter", "--devices", "10000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("MQTT reconnect"), "{text}");
    // The busiest 100 ms after a drop holds a small share of 10,000 devices (the daemon's
    // reconnect jitter), never the whole fleet.
    let line = text
        .lines()
        .find(|l| l.contains("first attempt after the session dropped"))
        .unwrap();
    let busiest: u32 = line
        .rsplit("busiest 100 ms")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(busiest < 2_000, "{line}");
}

#[test]
fn a_run_without_its_cloud_is_a_usage_error_that_names_what_is_missing() {
    let out = sim().args(["run", "--devices", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--url") && err.contains("--ca"), "{err}");
}
