//! State made by the previous release (format version 2, main at 11ee2c3) opens in this one
//! and every device, bootstrap token, resource and audit record in it has an environment:
//! the organization's. `tests/fixtures/state-v2-env/` (a live organization) and
//! `state-v2-env-sandbox/` (one made with `--sandbox`) were written by that release running
//! `state-v2-env/generate.rs.txt` as a test (`FIXTURE_OUT=DIR cargo test --test gen_v2_env`).
//! The audit chain written before the migration still verifies, with records written after it.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_cloud::store::{Checkpoint, Environment, FORMAT_VERSION, Store, audit};
use reqwest::{Method, StatusCode};

#[test]
fn every_record_takes_the_organizations_environment() {
    assert_eq!(FORMAT_VERSION, 5);
    for (name, env) in [
        ("state-v2-env", Environment::Live),
        ("state-v2-env-sandbox", Environment::Test),
    ] {
        let (_tmp, dir, info) = support::fixture::copy(name);
        let path = dir.join("cloud.redb");
        // Twice: the second open finds the current format and migrates nothing.
        for _ in 0..2 {
            let store = Store::open(&path).unwrap();
            store.read(|m| {
                assert_eq!(m.environment(), env, "{name}");
                assert_eq!(m.devices.len(), 3, "{name}");
                assert!(m.devices.values().all(|d| d.environment == env), "{name}");
                assert_eq!(m.bootstrap.len(), 2, "{name}");
                assert!(m.bootstrap.values().all(|b| b.environment == env), "{name}");
                // A model, its version and a device group.
                assert_eq!(m.resources.len(), 3, "{name}");
                assert!(m.resources.values().all(|r| r.environment == env), "{name}");
                let d = &m.devices["fixture-device-3"];
                assert_eq!(
                    d.bootstrap_token_id.as_deref(),
                    info["second_bootstrap_token_id"].as_str()
                );
                assert_eq!(m.api_keys.len(), 2, "{name}");
                assert_eq!(m.members.len(), 1, "{name}");
            });
            let (records, more, cp) = store.audit_page(0, 1000, |_| true).unwrap();
            assert!(!more);
            assert_eq!(
                records.len() as u64,
                info["audit_records"].as_u64().unwrap(),
                "{name}"
            );
            assert!(
                records
                    .iter()
                    .all(|r| r.environment == env && r.version == 1)
            );
            assert_eq!(audit::verify(cp, &records), Ok(()), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_on_format_2_state_serves_it_in_its_environment_and_the_chain_verifies() {
    for (name, prefix) in [
        ("state-v2-env", "edg_live_"),
        ("state-v2-env-sandbox", "edg_test_"),
    ] {
        let (env, info) = support::fixture::start(name).await;
        assert!(env.owner_key.starts_with(prefix));

        // The first-start key (of the org's environment) sees every device and resource.
        let a = env.owner(Method::GET, "/devices", None).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {:?}", a.body);
        let devices = a.body["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 3, "{name}");
        let want = &info["environment"];
        assert!(devices.iter().all(|d| &d["environment"] == want), "{name}");
        let a = env.owner(Method::GET, "/models", None).await;
        assert_eq!(a.body["items"].as_array().unwrap().len(), 1, "{name}");
        let a = env.owner(Method::GET, "/bootstrap-tokens", None).await;
        assert_eq!(
            a.body["bootstrap_tokens"].as_array().unwrap().len(),
            2,
            "{name}"
        );

        // The device refreshes with its old refresh token and gets a key of its environment.
        let a = support::fixture::refresh_device(&env, &info).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {:?}", a.body);
        assert!(a.body["api_key"].as_str().unwrap().starts_with(prefix));

        // New records (hash version 2) chain onto the migrated ones (hash version 1).
        assert_eq!(env.revoke("fixture-device-3").await.status, StatusCode::OK);
        let a = env.owner(Method::GET, "/audit", None).await;
        let records = a.body["records"].as_array().unwrap();
        let last = records.last().unwrap();
        assert_eq!(
            (last["action"].as_str(), last["version"].as_u64()),
            (Some("device.revoke"), Some(2))
        );
        assert_eq!(records[0]["version"], 1);
        assert!(records.iter().all(|r| &r["environment"] == want));
        let (r, out, note) = env.octomil(&env.owner_key, &["audit", "verify"]).await;
        assert!(r.is_ok(), "{name}: {r:?}: {out}{note}");
        // And the store agrees.
        let dir = env.handle.state_dir.clone();
        env.handle.shutdown().await;
        let store = Store::open(&dir.join("cloud.redb")).unwrap();
        let (records, _, cp) = store.audit_page(0, 1000, |_| true).unwrap();
        assert_eq!(cp, Checkpoint::default());
        assert_eq!(audit::verify(cp, &records), Ok(()), "{name}");
    }
}
