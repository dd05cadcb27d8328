//! The dashboard's device list with many devices: server time of page one (over loopback
//! HTTPS with a kept-alive connection, so it bounds the server's time from above) and the
//! page's weight, plain and with a search that scans every device; and the overview (counts,
//! version spread, the last day hour by hour), which reads every device, with a daemon version
//! reported for each and one in 20 revoked.
//!
//! Run: `cargo bench -p octomil-cloud --bench dashboard` (env: BENCH_DEVICES, default 10000;
//! BENCH_N requests per case, default 200).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use octomil_cloud::CloudStub;
use octomil_common::proof;
use octomil_testkit::bench::env_or;
use serde_json::json;

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    run().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn register_all(client: &reqwest::Client, base: &str, boot: &str, n: usize) {
    let conc = 8;
    let mut tasks = Vec::new();
    for w in 0..conc {
        let client = client.clone();
        let base = base.to_owned();
        let boot = boot.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(conc) {
                let id = format!("dev-{i:05}");
                let key = proof::generate_signing_key();
                let r = client
                    .post(format!("{base}/devices/register/challenge"))
                    .json(&json!({"device_id": id}))
                    .send()
                    .await
                    .unwrap();
                let challenge = r.json::<serde_json::Value>().await.unwrap()["challenge"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let pk = proof::encode_public_key(&key.verifying_key());
                let hash = proof::bootstrap_hash(&boot);
                let sig = proof::sign(
                    &key,
                    &proof::Statement {
                        challenge: &challenge,
                        device_id: &id,
                        device_public_key: &pk,
                        bootstrap_hash: &hash,
                    },
                );
                let r = client
                    .post(format!("{base}/devices/register"))
                    .json(&json!({
                        "bootstrap_token": boot, "device_id": id, "device_public_key": pk,
                        "challenge": challenge, "proof": sig,
                        "metadata": {"site": format!("plant-{}", i % 40), "model": "rpi4"},
                    }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Signs the owner in through the dashboard's form; returns the cookie header.
async fn sign_in(client: &reqwest::Client, url: &str, cloud: &octomil_cloud::Handle) -> String {
    let mut jar: HashMap<String, String> = HashMap::new();
    let take = |jar: &mut HashMap<String, String>, r: &reqwest::Response| {
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let kv = c.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            jar.insert(k.to_owned(), v.to_owned());
        }
    };
    let r = client
        .get(format!("{url}/dashboard/login"))
        .send()
        .await
        .unwrap();
    take(&mut jar, &r);
    let html = r.text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = html[at..at + html[at..].find('"').unwrap()].to_owned();
    let secret = cloud.owner_totp_secret().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = octomil_cloud::session::totp_code(&secret, now).unwrap();
    let password = cloud.owner_password().unwrap();
    let cookie = jar
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let form = serde_urlencoded::to_string([
        ("csrf", csrf.as_str()),
        ("email", cloud.info.owner_email.as_str()),
        ("password", password.expose()),
        ("mfa_code", &code),
    ])
    .unwrap();
    let r = client
        .post(format!("{url}/dashboard/login"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in failed");
    take(&mut jar, &r);
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn run() {
    let devices = env_or::<usize>("BENCH_DEVICES", 10_000);
    let n = env_or::<usize>("BENCH_N", 200);
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudStub::builder(dir.path().join("state"))
        .spawn()
        .await
        .unwrap();
    let ca = reqwest::Certificate::from_pem(cloud.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("{}/api/v1", cloud.http_url);
    let owner = cloud.owner_api_key().unwrap().expose().clone();
    let boot = cloud.bootstrap_token().unwrap().expose().clone();
    let big = json!({"limit": 1_000_000, "period_secs": 60});
    let r = client
        .patch(format!("{base}/org/settings"))
        .bearer_auth(&owner)
        .json(&json!({"rate_limits": {"registration": big, "control_plane": big}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let t = Instant::now();
    register_all(&client, &base, &boot, devices).await;
    eprintln!("registered {devices} devices in {:?}", t.elapsed());
    // What the daemons would say on their status topics: a spread of versions, two in three
    // online.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 0..devices {
        let p = json!({
            "online": i % 3 != 0, "state": "active",
            "daemon_version": format!("0.{}.{}", i % 4, i % 13),
        });
        cloud
            .cloud
            .presence
            .ingest(
                &format!("octomil/v1/devices/dev-{i:05}/status"),
                &serde_json::to_vec(&p).unwrap(),
                now,
                |_| true,
            )
            .unwrap();
    }
    let ids: Vec<String> = (0..devices)
        .step_by(20)
        .map(|i| format!("dev-{i:05}"))
        .collect();
    let r = client
        .post(format!("{base}/revocations"))
        .bearer_auth(&owner)
        .json(&json!({"device_ids": ids, "reason": "bench"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let cookie = sign_in(&client, &cloud.http_url, &cloud).await;

    println!(
        "dashboard pages, {devices} devices, {n} requests per case (loopback HTTPS, kept-alive)"
    );
    println!("| case | p50 | p95 | max | page bytes (body) | rows |");
    println!("|---|---|---|---|---|---|");
    for (case, path) in [
        ("page one", "/dashboard/devices"),
        (
            "page one, sorted by last seen",
            "/dashboard/devices?sort=last_seen",
        ),
        (
            "search matching 1 in 40 (metadata)",
            "/dashboard/devices?q=plant-7",
        ),
        (
            "search matching nothing (scans all)",
            "/dashboard/devices?q=nomatch",
        ),
        ("overview (reads every device)", "/dashboard/"),
    ] {
        let url = format!("{}{path}", cloud.http_url);
        let mut times = Vec::with_capacity(n);
        let mut bytes = 0;
        let mut rows = 0;
        for _ in 0..n {
            let t = Instant::now();
            let r = client
                .get(&url)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body = r.bytes().await.unwrap();
            times.push(t.elapsed());
            bytes = body.len();
            rows = String::from_utf8_lossy(&body)
                // Rows carry attributes (live updates): count the tags, less the header's.
                .matches("<tr")
                .count()
                .saturating_sub(1);
        }
        times.sort();
        println!(
            "| {case} | {:.2} ms | {:.2} ms | {:.2} ms | {bytes} | {rows} |",
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.95).as_secs_f64() * 1000.0,
            times.last().unwrap().as_secs_f64() * 1000.0,
        );
    }
    cloud.shutdown().await;
}
