//! `kill -9` of the cloud under write load: the real `octomil-cloud` binary takes concurrent
//! registrations, refreshes, bootstrap-token creations and revocations (single and bulk), is
//! killed with SIGKILL at random instants, and restarted on the same state dir. Every change
//! answered 2xx before a kill must be in the state afterwards, and the audit chain must verify:
//! the cloud answers only once its batch is durable.
//!
//! Needs the debug `octomil-cloud` binary: `cargo build -p octomil-cloud --bins` first.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use octomil_cloud::store::{DeviceState, Store, audit};
use octomil_common::token;
use octomil_e2e::{CloudProcess, register_request};
use serde_json::{Value, json};

const ROUNDS: u64 = 10;
const WORKERS: usize = 6;

/// A small deterministic generator, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the cloud answered 2xx, so what must survive.
#[derive(Debug, Default)]
struct Acked {
    /// Device id -> hash of the newest device key it was given (register or refresh).
    keys: BTreeMap<String, [u8; 32]>,
    revoked: Vec<String>,
    /// Devices whose revocation was sent: unanswered at a kill, it may or may not have
    /// happened, so their keys are not checked.
    revoking: Vec<String>,
    bootstrap_tokens: Vec<String>,
    answers: usize,
}

type Shared = Arc<Mutex<Acked>>;

struct Api {
    http: reqwest::Client,
    url: String,
    owner: String,
    bootstrap: String,
}

impl Api {
    fn new(cloud: &CloudProcess) -> Self {
        let ca = std::fs::read(&cloud.info.ca_file).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            http,
            url: format!("{}/api/v1", cloud.info.http_url),
            owner: cloud.owner_api_key(),
            bootstrap: cloud.bootstrap_token(),
        }
    }

    /// POST `path`; the JSON answer if it was 2xx, `None` on any failure (the kill).
    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Option<Value> {
        let mut r = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let resp = r.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }
}

/// One worker: its own devices, one request at a time, until the cloud goes away.
async fn worker(api: Arc<Api>, acked: Shared, round: u64, w: usize, seed: u64) {
    let mut rng = Rng(seed);
    // Device id -> its current refresh token (only devices of this round's worker).
    let mut mine: Vec<(String, String)> = Vec::new();
    for n in 0.. {
        let op = if mine.len() < 2 { 0 } else { rng.below(10) };
        match op {
            // Register a new device.
            0..=3 => {
                let id = format!("crash-{round}-{w}-{n}");
                let challenge = {
                    let r = api
                        .http
                        .post(format!("{}/devices/register/challenge", api.url))
                        .json(&json!({"device_id": id}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                            Ok(v) => v["challenge"].as_str().unwrap().to_owned(),
                            Err(_) => return,
                        },
                        _ => return,
                    }
                };
                let body = register_request(&api.bootstrap, &id, &challenge);
                let Some(a) = api.post("/devices/register", None, body).await else {
                    return;
                };
                let key = a["api_key"].as_str().unwrap();
                let mut g = acked.lock().unwrap();
                g.keys.insert(id.clone(), token::hash(key));
                g.answers += 1;
                drop(g);
                mine.push((id, a["refresh_token"].as_str().unwrap().to_owned()));
            }
            // Refresh one of ours.
            4..=6 => {
                let i = rng.below(mine.len() as u64) as usize;
                let (id, refresh) = mine[i].clone();
                let Some(a) = api
                    .post(
                        "/devices/refresh",
                        None,
                        json!({"device_id": id, "refresh_token": refresh}),
                    )
                    .await
                else {
                    return;
                };
                let mut g = acked.lock().unwrap();
                g.keys
                    .insert(id.clone(), token::hash(a["api_key"].as_str().unwrap()));
                g.answers += 1;
                drop(g);
                mine[i].1 = a["refresh_token"].as_str().unwrap().to_owned();
            }
            // Create a bootstrap token.
            7 => {
                let Some(a) = api
                    .post("/bootstrap-tokens", Some(&api.owner), json!({}))
                    .await
                else {
                    return;
                };
                let mut g = acked.lock().unwrap();
                g.bootstrap_tokens
                    .push(a["id"].as_str().unwrap().to_owned());
                g.answers += 1;
            }
            // Revoke one of ours (single call).
            8 => {
                let (id, _) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                acked.lock().unwrap().revoking.push(id.clone());
                let path = format!("/devices/{id}/revoke");
                if api
                    .post(&path, Some(&api.owner), json!({"reason": "crash test"}))
                    .await
                    .is_none()
                {
                    return;
                }
                let mut g = acked.lock().unwrap();
                g.revoked.push(id);
                g.answers += 1;
            }
            // Revoke two of ours in one bulk call.
            _ => {
                let a = mine.swap_remove(rng.below(mine.len() as u64) as usize).0;
                let b = mine.swap_remove(rng.below(mine.len() as u64) as usize).0;
                acked
                    .lock()
                    .unwrap()
                    .revoking
                    .extend([a.clone(), b.clone()]);
                let Some(answer) = api
                    .post(
                        "/revocations",
                        Some(&api.owner),
                        json!({"device_ids": [a, b], "reason": "crash test"}),
                    )
                    .await
                else {
                    return;
                };
                assert_eq!(answer["revoked"].as_array().unwrap().len(), 2, "{answer}");
                let mut g = acked.lock().unwrap();
                g.revoked.extend([a, b]);
                g.answers += 1;
            }
        }
    }
}

/// Opens the state of the killed cloud and checks every acknowledged change is there and the
/// audit chain verifies.
fn check(state_dir: &std::path::Path, acked: &Acked, round: u64) {
    let store = Store::open(&state_dir.join("cloud.redb")).unwrap();
    store.read(|m| {
        for (id, key) in &acked.keys {
            let d = m
                .devices
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: registered device {id} lost"));
            if !acked.revoking.contains(id) {
                assert!(
                    d.keys.iter().any(|k| k.hash == *key),
                    "round {round}: the newest acknowledged key of {id} is lost"
                );
            }
        }
        for id in &acked.revoked {
            assert_eq!(
                m.devices[id].state,
                DeviceState::Revoked,
                "round {round}: acknowledged revocation of {id} lost"
            );
        }
        for id in &acked.bootstrap_tokens {
            assert!(
                m.bootstrap.contains_key(id),
                "round {round}: bootstrap token {id} lost"
            );
        }
    });
    let (records, more, checkpoint) = store.audit_page(0, usize::MAX, |_| true).unwrap();
    assert!(!more);
    audit::verify(checkpoint, &records)
        .unwrap_or_else(|e| panic!("round {round}: audit chain: {e}"));
    // Each acknowledged revocation and registration left its audit record.
    for id in &acked.revoked {
        assert!(
            records
                .iter()
                .any(|r| r.action == "device.revoke" && &r.target == id),
            "round {round}: audit record of the revocation of {id} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_write_load_loses_no_answered_change() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("cloud");
    let acked: Shared = Arc::default();
    let mut rng = Rng(0x5eed_c10d);
    for round in 0..ROUNDS {
        let cloud = CloudProcess::start(&state_dir);
        let api = Arc::new(Api::new(&cloud));
        if round == 0 {
            // One source address registers everything: lift the per-address limits.
            let big = json!({"limit": 1_000_000, "period_secs": 60});
            let r = api
                .http
                .patch(format!("{}/org/settings", api.url))
                .bearer_auth(&api.owner)
                .json(&json!({"rate_limits": {"registration": big, "control_plane": big, "auth_failures": big}}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
        let before = acked.lock().unwrap().answers;
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            tasks.push(tokio::spawn(worker(
                api.clone(),
                acked.clone(),
                round,
                w,
                0x1234_5678 + round * 100 + w as u64,
            )));
        }
        // Let load build (wait for some answers), then kill at a random instant.
        octomil_testkit::poll::eventually(
            Duration::from_secs(30),
            "answers before the kill",
            || {
                let n = acked.lock().unwrap().answers;
                async move { (n >= before + 10).then_some(()) }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        let mut cloud = cloud;
        cloud.child.kill().unwrap(); // SIGKILL
        cloud.child.wait().unwrap();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("a worker did not notice the kill")
                .unwrap();
        }
        drop(cloud);
        let g = acked.lock().unwrap();
        println!(
            "round {round}: {} answers so far ({} devices, {} revoked, {} bootstrap tokens)",
            g.answers,
            g.keys.len(),
            g.revoked.len(),
            g.bootstrap_tokens.len()
        );
        check(&state_dir, &g, round);
    }
    // The restarted binary serves the surviving state.
    let cloud = CloudProcess::start(&state_dir);
    let api = Api::new(&cloud);
    let id = {
        let g = acked.lock().unwrap();
        g.keys
            .keys()
            .find(|id| !g.revoking.contains(id))
            .cloned()
            .unwrap()
    };
    let r = api
        .http
        .get(format!("{}/devices/{id}", api.url))
        .bearer_auth(&api.owner)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let device: Value = r.json().await.unwrap();
    assert_eq!(device["state"], "active", "{device}");
    assert!(cloud.terminate().success());
}
