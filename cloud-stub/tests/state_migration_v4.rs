//! State made by the previous release (format version 4) opens in this one (format 5, which
//! gave API keys their listed prefix): `tests/fixtures/state-v4/` was written by that release
//! running `state-v4/generate.rs.txt` as a test. Every record survives, keys made before
//! have no prefix (`prefix: null`) and still authenticate as they did, and the audit chain
//! verifies across the migration.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_cloud::scope::Role;
use octomil_cloud::store::{DeviceState, Environment, FORMAT_VERSION, Store, audit};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FIXTURE: &str = "state-v4";

fn id<'a>(info: &'a Value, name: &str) -> &'a str {
    info[name].as_str().unwrap()
}

#[test]
fn every_format_4_record_survives_and_old_keys_have_no_prefix() {
    assert_eq!(FORMAT_VERSION, 5);
    let (_tmp, dir, info) = support::fixture::copy(FIXTURE);
    let path = dir.join("cloud.redb");
    // Twice: the second open finds format 5 and migrates nothing.
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        store.read(|m| {
            assert_eq!(m.api_keys.len() as u64, info["api_keys"].as_u64().unwrap());
            assert!(m.api_keys.values().all(|k| k.prefix.is_none()));
            let owner = m
                .api_keys
                .values()
                .find(|k| k.created_by == "provisioning")
                .unwrap();
            assert!(owner.scopes.names().contains(&"org:admin"));
            let reader = &m.api_keys[id(&info, "reader_key_id")];
            assert_eq!(reader.scopes.names(), ["models:read", "devices:read"]);
            assert_eq!(reader.owner_email, owner.owner_email);
            assert_eq!(reader.role, Role::Owner);
            assert!(reader.last_used_at.is_some());
            assert_eq!(
                m.api_keys[id(&info, "sandbox_key_id")].environment,
                Environment::Test
            );
            assert!(
                m.api_keys[id(&info, "expiring_key_id")]
                    .expires_at
                    .is_some()
            );
            assert!(m.api_keys[id(&info, "revoked_key_id")].revoked_at.is_some());
            // Tables this step does not own are as format 4 left them.
            assert_eq!(m.members.len(), 2);
            assert!(m.members.values().all(|r| r.has_mfa()));
            assert_eq!(m.invitations.len(), 1);
            assert!(m.sessions.values().any(|s| s.email == owner.owner_email));
            assert_eq!(m.devices.len(), 2);
            assert_eq!(m.devices["fixture-revoked"].state, DeviceState::Revoked);
            assert_eq!(m.devices["fixture-device-1"].state, DeviceState::Active);
            assert_eq!(m.bootstrap.len(), 2);
            assert_eq!(m.resources.len(), 1);
        });
        let (records, more, cp) = store.audit_page(0, 1000, |_| true).unwrap();
        assert!(!more);
        assert_eq!(
            records.len() as u64,
            info["audit_records"].as_u64().unwrap()
        );
        assert_eq!(audit::verify(cp, &records), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_on_format_4_state_accepts_its_keys_and_lists_them_without_prefix() {
    let (env, info) = support::fixture::start(FIXTURE).await;

    // Every key made before authenticates as it did: the first-start Owner key, a reader
    // (its scopes only), a sandbox key (sandbox data only), a key with an expiry; the
    // revoked one stays refused.
    let a = env.owner(Method::GET, "/api-keys", None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let keys = a.body["api_keys"].as_array().unwrap();
    assert_eq!(keys.len() as u64, info["api_keys"].as_u64().unwrap());
    assert!(keys.iter().all(|k| k["prefix"].is_null()), "{keys:?}");
    let reader = id(&info, "reader_key");
    let a = env.call(Method::GET, "/devices", Some(reader), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["devices"].as_array().unwrap().len(), 2);
    let a = env
        .call(Method::GET, "/org/members", Some(reader), None)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let sandbox = id(&info, "sandbox_key");
    let a = env.call(Method::GET, "/devices", Some(sandbox), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["devices"], json!([]));
    let a = env
        .call(
            Method::GET,
            "/models",
            Some(id(&info, "expiring_key")),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = env
        .call(Method::GET, "/models", Some(id(&info, "revoked_key")), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);

    // A key made now has a prefix; the list shows it beside the old ones' null.
    let a = env
        .owner(
            Method::POST,
            "/api-keys",
            Some(json!({"name": "after", "scopes": ["models:read"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let prefix = a.body["prefix"].as_str().unwrap().to_owned();
    assert!(a.body["key"].as_str().unwrap().starts_with(&prefix));
    let (r, out, _) = env.octomil(&env.owner_key, &["api-keys", "list"]).await;
    r.unwrap();
    assert!(out.contains(&format!("{prefix}…")), "{out}");
    // Old keys: their environment's prefix alone.
    assert!(
        out.contains("edg_live_…") && out.contains("edg_test_…"),
        "{out}"
    );

    // Members and sessions: the Owner's session still works, the Admin logs in.
    let a = env
        .call(
            Method::GET,
            "/org/members",
            Some(id(&info, "owner_session")),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = support::fixture::admin_login(&env, &info).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);

    // The device refreshes with the refresh token the old release gave it.
    let a = support::fixture::refresh_device(&env, &info).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);

    // The chain written before the upgrade verifies with the records written after it.
    let (r, out, note) = env.octomil(&env.owner_key, &["audit", "verify"]).await;
    assert!(r.is_ok(), "{r:?}: {out}{note}");
    env.handle.shutdown().await;
}
