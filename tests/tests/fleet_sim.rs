//! `octomil-fleet-sim` end to end at a small N, so the simulator behind the fleet benchmark
//! (`cargo bench -p octomil-e2e --bench fleet`) keeps working: a real cloud process, 50
//! devices registered with real proofs, 50 TLS MQTT sessions, a refresh storm and a bulk
//! revocation every device must verify. Counts only; no timing is asserted.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use octomil_e2e::{CloudProcess, bin, read_trimmed, run};

#[test]
fn the_fleet_simulator_refreshes_and_bulk_revokes_50_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&tmp.path().join("cloud"));
    let report = tmp.path().join("report.json");
    let before = settings(&cloud);
    let (out, stdout, stderr) = run(Command::new(bin("octomil-fleet-sim"))
        .arg("run")
        .args(["--url", &cloud.info.http_url])
        .arg("--ca")
        .arg(&cloud.info.ca_file)
        .arg("--api-key-file")
        .arg(&cloud.info.owner_api_key_file)
        .args(["--devices", "50", "--http-connections", "8"])
        .args(["--scenario", "refresh-storm,bulk-revoke"])
        .args(["--refresh-window-ms", "500"])
        .arg("--report")
        .arg(&report));
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        cloud.log_text()
    );
    assert!(
        stdout.contains("raised the org's registration limit"),
        "{stdout}"
    );
    // Every device logs in to the broker by the client certificate the cloud issued it.
    assert!(
        stdout.contains("MQTT login: 50 devices with their client certificate"),
        "{stdout}"
    );
    let owner = read_trimmed(&cloud.info.owner_api_key_file);
    assert!(
        !stdout.contains(&owner) && !stderr.contains(&owner),
        "the admin key leaked"
    );

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["connected"], 50, "{r}");
    let scenarios = r["scenarios"].as_array().unwrap();
    let refresh = &scenarios[0];
    assert_eq!(refresh["scenario"], "refresh-storm");
    assert_eq!(refresh["ok"], 50, "{refresh}");
    assert_eq!(refresh["status_5xx"], 0, "{refresh}");
    let revoke = &scenarios[1];
    assert_eq!(revoke["scenario"], "bulk-revoke");
    assert_eq!(revoke["verified"], 50, "{revoke}");
    assert_eq!(revoke["problems"], 0, "{revoke}");
    assert_eq!(revoke["http"]["revoked"], 50, "{revoke}");
    // The run put the org's registration limit back.
    assert_eq!(settings(&cloud), before);
}

/// The org's registration limit, through the CLI.
fn settings(cloud: &CloudProcess) -> serde_json::Value {
    let (out, stdout, stderr) = run(cloud.cli().args(["--json", "org", "settings"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    v["rate_limits"]["registration"].clone()
}
