//! Bulk revocation at fleet scale (CI size): 200 registered devices, each holding a real TLS
//! MQTT session on the embedded broker subscribed to its revocation topic; one
//! `POST /revocations` revokes them all in one writer step (one durable commit), audits each,
//! and every device receives a signed envelope that verifies with the cloud's revocation key.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use octomil_cloud::MqttMode;
use octomil_cloud::store::{AuditRecord, DeviceState, audit};
use octomil_common::{envelope, proof};
use reqwest::{Method, StatusCode};
use serde_json::json;

use support::mqtt::{
    Login, TestClient, device_session, eventually, free_port, plain_broker, start_with, tls_of,
};
use support::{Device, Env};

const N: usize = 200;
/// Registrations and TLS handshakes in flight at once (below the broker's 64 unauthenticated
/// connections per address).
const PARALLEL: usize = 16;

async fn session(env: &Env, id: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> TestClient {
    let mut c = device_session(env, id, tls, None, false).await.unwrap();
    c.subscribe(&format!("octomil/v1/devices/{id}/revocation"))
        .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_revokes_200_connected_devices_in_one_commit_and_each_verifies_its_envelope() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        })
    })
    .await;
    env.relax_limits().await;
    let env = Arc::new(env);

    // Register every device (real proofs) and connect it, a few at a time.
    let ids: Vec<String> = (0..N).map(|i| format!("bulk-{i:04}")).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut joining = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let (env, gate) = (env.clone(), gate.clone());
        joining.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let d = Device::new(&id);
            let reg = d.register(&env).await;
            let c = session(&env, &id, tls_of(&env, &d, &reg)).await;
            (id, c)
        });
    }
    let sessions: Vec<(String, TestClient)> = joining.join_all().await;
    assert_eq!(sessions.len(), N);

    let head_before = env.handle.cloud.store.read(|m| m.audit_head.seq);
    let a = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"device_ids": ids, "reason": "stolen"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["revoked"].as_array().unwrap().len(), N, "{}", a.body);
    assert_eq!(a.body["already_revoked"], 0);
    println!(
        "bulk revoke of {N}: {} envelopes acknowledged by the broker in the call",
        a.body["published"]
    );

    // In the store, every device is revoked, with a distinct revocation sequence.
    let seqs: BTreeSet<u64> = env.handle.cloud.store.read(|m| {
        ids.iter()
            .map(|id| {
                let d = &m.devices[id];
                assert_eq!(d.state, DeviceState::Revoked, "{id}");
                assert!(d.keys.is_empty(), "{id} keeps a key");
                d.revocation_seq
            })
            .collect()
    });
    assert_eq!(seqs.len(), N);

    // In the audit log, one record per device, consecutive (one step: nothing in between),
    // and the whole chain verifies.
    let (records, more, checkpoint) = env
        .handle
        .cloud
        .store
        .audit_page(0, 100_000, |_| true)
        .unwrap();
    assert!(!more);
    audit::verify(checkpoint, &records).unwrap();
    let revokes: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.action == "device.revoke")
        .collect();
    assert_eq!(revokes.len(), N);
    let targets: BTreeSet<&str> = revokes.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ids.iter().map(String::as_str).collect());
    assert!(revokes.iter().all(|r| r.seq > head_before));
    assert!(
        revokes.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "the revocations of one call are one batch of the audit chain"
    );

    // Every device receives its own envelope and verifies it.
    let key = proof::decode_public_key(&env.handle.info.revocation_public_key).unwrap();
    let mut receiving = tokio::task::JoinSet::new();
    for (id, mut c) in sessions {
        receiving.spawn(async move {
            let topic = format!("octomil/v1/devices/{id}/revocation");
            let p = c.next_publish(&topic).await;
            let rev = envelope::open(&p.payload, &key).unwrap();
            assert_eq!(rev.device_id, id);
            assert_eq!(rev.reason, "stolen");
            id
        });
    }
    let verified: BTreeSet<String> = receiving.join_all().await.into_iter().collect();
    assert_eq!(verified.len(), N);
    let Ok(env) = Arc::try_unwrap(env) else {
        panic!("the cloud is still shared")
    };
    env.handle.shutdown().await;
}

/// With the external broker away, a bulk revoke answers once the revocations are durable (in
/// the outbox), not after one ack timeout per envelope: before the fix, 200 envelopes 32 at a
/// time with the default 5 s timeout took about 35 s. When the broker appears, the outbox
/// delivers every envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_revoke_with_the_broker_away_answers_promptly_and_the_outbox_delivers_all_200() {
    let port = free_port();
    // The default ack timeout (5 s): the call must not wait it out per envelope.
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::External(octomil_cloud::ExternalBroker {
            url: format!("mqtt://127.0.0.1:{port}"),
            username: None,
            password: None,
            ca_file: None,
        }))
    })
    .await;
    env.relax_limits().await;
    let env = Arc::new(env);
    let ids: Vec<String> = (0..N).map(|i| format!("away-{i:04}")).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut joining = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let (env, gate) = (env.clone(), gate.clone());
        joining.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            Device::new(&id).register(&env).await;
        });
    }
    joining.join_all().await;

    let started = std::time::Instant::now();
    let a = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"device_ids": ids, "reason": "stolen"})),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["revoked"].as_array().unwrap().len(), N, "{}", a.body);
    assert_eq!(a.body["published"], 0, "no broker, nothing acknowledged");
    assert!(
        took < std::time::Duration::from_secs(5),
        "the answer waited {took:?} for an absent broker"
    );
    let owed = env.handle.cloud.store.read(|m| m.outbox.len());
    assert_eq!(owed, N, "every revocation is durable in the outbox");

    // The broker appears: an observer sees every device's envelope, retained.
    plain_broker(port);
    let mut observer = eventually("the late broker to accept a client", || async {
        TestClient::connect(Login {
            url: &format!("mqtt://127.0.0.1:{port}"),
            ca_pem: None,
            client_id: "observer",
            username: "observer",
            password: "x",
            will: None,
            clean: true,
        })
        .await
        .ok()
    })
    .await;
    observer.subscribe("octomil/v1/devices/+/revocation").await;
    let key = proof::decode_public_key(&env.handle.info.revocation_public_key).unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < N {
        let p = observer.next_any_publish().await;
        let rev = envelope::open(&p.payload, &key).unwrap();
        assert_eq!(
            format!("octomil/v1/devices/{}/revocation", rev.device_id),
            p.topic
        );
        seen.insert(rev.device_id);
    }
    assert_eq!(seen, ids.iter().cloned().collect::<BTreeSet<_>>());
    eventually("the outbox to empty", || async {
        (env.handle.cloud.store.read(|m| m.outbox.len()) == 0).then_some(())
    })
    .await;
    let Ok(env) = Arc::try_unwrap(env) else {
        panic!("the cloud is still shared")
    };
    env.handle.shutdown().await;
}

/// `octomil devices revoke ID ID ...` as the operator runs it, in-process.
async fn octomil(env: &Env, args: &[&str]) -> (String, String) {
    let (r, out, note) = env.octomil(&env.owner_key, args).await;
    r.unwrap();
    (out, note)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_revokes_several_devices_in_one_call_and_shows_what_was_pushed() {
    let env = start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        })
    })
    .await;
    env.relax_limits().await;
    for id in ["cli-bulk-1", "cli-bulk-2", "cli-bulk-3"] {
        Device::new(id).register(&env).await;
    }
    let (out, _) = octomil(
        &env,
        &[
            "devices",
            "revoke",
            "cli-bulk-1",
            "cli-bulk-2",
            "cli-bulk-9",
            "--reason",
            "stolen",
        ],
    )
    .await;
    // The broker normally acknowledges both within the call; the outbox retries any it did not.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "revoked: 2 (already revoked: 0, not found: 1)",
        "{out}"
    );
    assert!(
        lines[1].starts_with("pushed: ") && lines[1].contains(" of 2 acknowledged by the broker"),
        "{out}"
    );
    assert_eq!(lines[2], "not found: cli-bulk-9", "{out}");
    // Again: nothing new to revoke, nothing pushed.
    let (out, _) = octomil(&env, &["devices", "revoke", "cli-bulk-1", "cli-bulk-2"]).await;
    assert_eq!(out, "revoked: 0 (already revoked: 2, not found: 0)\n");
    env.handle.cloud.store.read(|m| {
        assert_eq!(m.devices["cli-bulk-1"].state, DeviceState::Revoked);
        assert_eq!(m.devices["cli-bulk-2"].state, DeviceState::Revoked);
        assert_eq!(m.devices["cli-bulk-3"].state, DeviceState::Active);
    });
    env.handle.shutdown().await;
}

/// The id cap and the body cap agree: 10,000 ids of the longest length (128 characters) fit
/// the route's body limit (the default 64 KiB fitted about 3,000, answered `body_too_large`);
/// 10,001 ids are refused by the id cap, and a body past the route's limit is still
/// `body_too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_longest_ids_fit_the_body_limit_and_the_id_cap_still_holds() {
    let env = support::start().await;
    let ids = |n: usize| -> Vec<String> { (0..n).map(|i| format!("{i:0>128}")).collect() };
    let a = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"device_ids": ids(10_000), "reason": "leaked"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.code());
    assert_eq!(a.body["not_found"].as_array().unwrap().len(), 10_000);

    let over = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"device_ids": ids(10_001)})),
        )
        .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.code(), "invalid_argument");

    let mut huge = b"{\"device_ids\": [], \"reason\": \"".to_vec();
    huge.resize(2 * 1024 * 1024, b'x');
    huge.extend_from_slice(b"\"}");
    let big = env
        .call_raw(Method::POST, "/revocations", Some(&env.owner_key), huge)
        .await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST);
    assert_eq!(big.code(), "body_too_large");
    env.handle.shutdown().await;
}
