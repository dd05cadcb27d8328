//! State made by the previous release (format version 1, today's main before versions) opens
//! in this one: `tests/fixtures/state-v1/` is a state directory written by `octomil-cloud` at
//! commit 192c067 (the program that made it is `generate.rs.txt` beside it). Everything in it
//! is found after the migration, and the first-start Owner key gained `org:admin`.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_cloud::store::{FORMAT_VERSION, Store, StoreError};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[test]
fn the_store_migrates_every_record_once() {
    let (_tmp, dir, _) = support::fixture::copy("state-v1");
    let path = dir.join("cloud.redb");
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        store.read(|m| {
            let org = m.org.as_ref().unwrap();
            assert_eq!(org.settings.device_token_expiry_secs, 48 * 3600);
            // A limit the old release did not have takes its default.
            assert_eq!(org.settings.rate_limits.auth_failures.limit, 60);
            assert_eq!(m.members.len(), 2);
            assert_eq!(m.api_keys.len(), 2);
            assert_eq!(m.devices.len(), 2);
            assert_eq!(m.bootstrap.len(), 2);
            // Every token now expires and has a use limit; the one made with limits keeps them.
            assert!(
                m.bootstrap
                    .values()
                    .all(|b| b.expires_at.is_some() && b.max_uses.is_some())
            );
            assert!(m.bootstrap.values().any(|b| b.max_uses == Some(5)));
            assert!(m.devices.values().all(|d| d.bootstrap_token_id.is_none()));
            assert_eq!(m.resources.len(), 1);
            let owner_key = m
                .api_keys
                .values()
                .find(|k| k.created_by == "provisioning")
                .unwrap();
            assert!(owner_key.scopes.names().contains(&"org:admin"));
            assert_eq!(owner_key.owner_email, "owner@octomil.local");
            let reader = m
                .api_keys
                .values()
                .find(|k| k.created_by != "provisioning")
                .unwrap();
            assert_eq!(reader.scopes.names(), ["models:read"]);
            // It was made with the owner key, so the Owner stands behind it.
            assert_eq!(reader.owner_email, "owner@octomil.local");
        });
    }
}

#[test]
fn a_state_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.redb");
    drop(Store::open(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        tx.open_table(meta)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(Store::open(&path), Err(StoreError::TooNew(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_started_on_old_state_serves_everything_in_it() {
    let (env, info) = support::fixture::start("state-v1").await;

    // The Owner key of the first start still works, and now administers the org by scope.
    let a = env.owner(Method::GET, "/devices", None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let ids: Vec<&str> = a.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fixture-device-1", "fixture-revoked"]);
    let a = env.owner(Method::GET, "/org/settings", None).await;
    assert_eq!(
        (
            a.body["device_token_expiry"].as_str(),
            a.body["compliance_preset"].as_str()
        ),
        (Some("2d"), Some("soc2"))
    );
    let a = env.owner(Method::GET, "/org/members", None).await;
    assert_eq!(a.body["members"].as_array().unwrap().len(), 2);

    // The models:read key made on the old release reads models and nothing else.
    let reader = info["models_read_key"].as_str().unwrap();
    let a = env.call(Method::GET, "/models", Some(reader), None).await;
    assert_eq!(a.body["items"][0]["name"], "resnet");
    let a = env
        .call(
            Method::POST,
            "/org/members",
            Some(reader),
            Some(json!({"email": "evil@example.com", "role": "owner"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );

    // The member added on the old release logs in with the password and TOTP it was given.
    let a = support::fixture::admin_login(&env, &info).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);

    // The device refreshes with the refresh token the old release gave it.
    let a = support::fixture::refresh_device(&env, &info).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    env.handle.shutdown().await;
}

/// `tests/fixtures/state-v2/` is a state directory written by `octomil-cloud` at commit
/// 11ee2c3 (format version 2; the program that made it is `generate.rs.txt` beside it):
/// an Owner and an Admin, each with a live session, under the GDPR preset. After the
/// migration to version 3 (members and sessions only) both members and both sessions are
/// there, the sessions still work, and the Admin logs in with the TOTP secret of version 2.
#[test]
fn format_2_members_and_sessions_survive_the_migration() {
    let (_tmp, dir, _) = support::fixture::copy("state-v2");
    let path = dir.join("cloud.redb");
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        store.read(|m| {
            assert_eq!(m.members.len(), 2);
            assert!(
                m.members
                    .values()
                    .all(|r| r.has_mfa() && r.recovery_codes.is_empty())
            );
            let admin = &m.members["admin@example.com"];
            assert_eq!(admin.role, octomil_cloud::scope::Role::Admin);
            assert!(admin.last_totp_step.is_some());
            assert_eq!(m.sessions.len(), 2);
            assert!(
                m.sessions.values().all(|s| s.mfa
                    && !s.enrolment_only
                    && s.second_factor_at == Some(s.created_at))
            );
            assert!(m.invitations.is_empty());
            // Tables this step does not own are as version 2 left them.
            assert_eq!(m.api_keys.len(), 1);
            assert_eq!(
                m.org.as_ref().unwrap().settings.compliance_preset,
                octomil_cloud::store::CompliancePreset::Gdpr
            );
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_started_on_format_2_state_keeps_its_sessions() {
    let (env, info) = support::fixture::start("state-v2").await;
    for s in ["owner_session", "admin_session"] {
        let token = info[s].as_str().unwrap();
        let a = env
            .call(Method::GET, "/org/members", Some(token), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{s}: {:?}", a.body);
        assert_eq!(a.body["members"].as_array().unwrap().len(), 2);
    }
    // The login was an hour ago: a destructive call asks for a step-up first.
    let admin = info["admin_session"].as_str().unwrap();
    let a = env
        .call(
            Method::PATCH,
            "/org/settings",
            Some(admin),
            Some(json!({"compliance_preset": "hipaa"})),
        )
        .await;
    assert_eq!(a.code(), "step_up_required", "{:?}", a.body);
    let a = support::fixture::admin_login(&env, &info).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["enrolment_required"], false);
    env.handle.shutdown().await;
}
