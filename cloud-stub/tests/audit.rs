//! The audit log (issue 11, point 8): every change appended in the same commit as the change,
//! hash-chained, readable with filters, exportable as CSV, verifiable with `octomil audit
//! verify`, and still verifiable after retention pruning. Before, there was none.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use octomil_cloud::CloudStub;
use octomil_cloud::cli::CliError;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Device, Env};

fn actions(a: &Value) -> Vec<String> {
    a["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_and_the_chain_verifies() {
    let env = support::start().await;
    env.create_key(&["models:read"]).await;
    env.session("m@example.com", "admin").await;
    let d = Device::new("audited-1");
    d.register(&env).await;
    env.revoke("audited-1").await;
    let a = env.owner(Method::GET, "/audit", None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(
        actions(&a.body),
        [
            "api_key.create",
            "member.invite",
            "invitation.totp",
            "invitation.accept",
            "session.login",
            "device.register",
            "device.revoke"
        ]
    );
    let revoke = &a.body["records"][6];
    assert_eq!(revoke["target"], "audited-1");
    assert_eq!(revoke["reason"], "stolen");
    assert_eq!(revoke["source"], "127.0.0.1");
    assert!(revoke["actor"].as_str().unwrap().starts_with("key:"));
    assert!(!revoke["request_id"].as_str().unwrap().is_empty());
    assert_eq!(a.body["records"][5]["actor"], "device:audited-1");

    let a = env.owner(Method::GET, "/audit?action=device.", None).await;
    assert_eq!(actions(&a.body), ["device.register", "device.revoke"]);
    let a = env
        .owner(Method::GET, "/audit?actor=session:m@example.com", None)
        .await;
    assert_eq!(actions(&a.body), ["session.login"]);
    let a = env.owner(Method::GET, "/audit?limit=2", None).await;
    let cursor = a.body["next_cursor"].as_str().unwrap().to_owned();
    let a = env
        .owner(
            Method::GET,
            &format!("/audit?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(actions(&a.body), ["invitation.totp", "invitation.accept"]);
    // The cursor is bound to its filters: under others it is refused, not misread.
    let a = env
        .owner(
            Method::GET,
            &format!("/audit?action=device.&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );

    let (r, _, note) = env.octomil(&env.owner_key, &["audit", "verify"]).await;
    r.unwrap();
    assert!(note.contains("verified: 7 records"), "{note}");
    let (r, csv, _) = env
        .octomil(&env.owner_key, &["audit", "export", "--format", "csv"])
        .await;
    r.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("seq,time,actor,origin,action,target"));
    assert_eq!(lines.len(), 8);
    assert!(lines[7].contains(",device.revoke,audited-1,stolen,"));

    // A narrow key cannot read the log.
    let reader = env.create_key(&["models:read", "devices:read"]).await;
    let a = env.call(Method::GET, "/audit", Some(&reader), None).await;
    assert_eq!(a.code(), "insufficient_scope");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_record_fails_verification() {
    let env = support::start().await;
    env.create_key(&["models:read"]).await;
    env.create_key(&["devices:read"]).await;
    let Env {
        handle, clock, dir, ..
    } = env;
    handle.shutdown().await;
    {
        // Someone with the database file rewrites who did it.
        let db = redb::Database::open(dir.path().join("state/cloud.redb")).unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(table).unwrap();
            use redb::ReadableTable;
            let mut r: octomil_cloud::store::AuditRecord =
                postcard::from_bytes(t.get(1).unwrap().unwrap().value()).unwrap();
            r.actor = "key:somebody_else".into();
            t.insert(1, postcard::to_stdvec(&r).unwrap().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let handle = CloudStub::builder(dir.path().join("state"))
        .clock(Arc::new(clock.clone()))
        .spawn()
        .await
        .unwrap();
    let env = support::env_for(handle, clock, dir);
    let (r, _, _) = env.octomil(&env.owner_key, &["audit", "verify"]).await;
    let e = r.unwrap_err();
    assert!(matches!(e, CliError::AuditChain(_)), "{e}");
    assert!(e.to_string().contains("record 1"), "{e}");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_a_checkpoint_that_verifies() {
    let env = support::start().await;
    for _ in 0..3 {
        env.create_key(&["models:read"]).await;
    }
    // Past the 90 days of the `none` preset (and its one-day slack), the next change prunes.
    env.clock.advance(Duration::from_secs(92 * 86_400));
    env.owner(
        Method::POST,
        "/models",
        Some(json!({"name": "after the retention"})),
    )
    .await;
    let a = env.owner(Method::GET, "/audit", None).await;
    assert_eq!(actions(&a.body), ["model.create"]);
    assert_eq!(a.body["checkpoint"]["seq"], 3);
    assert_eq!(a.body["records"][0]["seq"], 4);
    let (r, _, note) = env.octomil(&env.owner_key, &["audit", "verify"]).await;
    r.unwrap();
    assert!(note.contains("from checkpoint 3"), "{note}");
    env.handle.shutdown().await;
}
