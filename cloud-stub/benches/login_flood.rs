//! A login flood against a real `octomil-cloud` process: `BENCH_CONNECTIONS` (500)
//! connections send wrong passwords for the owner's account from one address for
//! `BENCH_SECS` (10) seconds. Reports the cloud's peak RSS (VmHWM), how every request was
//! answered, another member's correct login from another address (127.0.0.2) during the
//! flood, and the owner's own login once its Retry-After has passed.
//!
//! Run: `cargo bench -p octomil-cloud --bench login_flood` (the figures in BENCHMARKS.md).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use octomil_testkit::bench::env_or;
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    run().await;
}

/// Kills the cloud when the bench ends, however it ends.
struct Cloud(Child);

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn client(ca: &[u8], from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()])
        .local_address(IpAddr::from(from))
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn login(
    c: &reqwest::Client,
    url: &str,
    email: &str,
    pw: &str,
) -> Result<(u16, Option<u64>), String> {
    let r = c
        .post(url)
        .json(&json!({"email": email, "password": pw}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let status = r.status().as_u16();
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, retry))
}

async fn run() {
    let conns = env_or::<u64>("BENCH_CONNECTIONS", 500);
    let secs = env_or::<u64>("BENCH_SECS", 10);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let child = Command::new(env!("CARGO_BIN_EXE_octomil-cloud"))
        .args(["serve", "--state-dir", state.to_str().unwrap(), "--no-mqtt"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cloud = Cloud(child);
    let pid = cloud.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info: Value = loop {
        if let Ok(b) = std::fs::read(state.join("cloud.json")) {
            break serde_json::from_slice(&b).unwrap();
        }
        assert!(Instant::now() < deadline, "the cloud did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let base = format!("{}/api/v1", info["http_url"].as_str().unwrap());
    let url = format!("{base}/auth/login");
    let ca = std::fs::read(info["ca_file"].as_str().unwrap()).unwrap();
    let read = |k: &str| std::fs::read_to_string(info[k].as_str().unwrap()).unwrap();
    let owner_key = read("owner_api_key_file");
    let owner_pw = read("owner_password_file");
    let owner = info["owner_email"].as_str().unwrap().to_owned();
    let here = client(&ca, [127, 0, 0, 1]);
    let there = client(&ca, [127, 0, 0, 2]);
    let r: Value = here
        .post(format!("{base}/org/members"))
        .bearer_auth(owner_key.trim())
        .json(&json!({"email": "member@example.com", "role": "member"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The member joins by invitation with a password of their own (preset none: no TOTP).
    let member_pw = "the member's own password".to_owned();
    let accepted = here
        .post(format!("{base}/auth/invitations/accept"))
        .json(&json!({"token": r["invitation_token"], "password": member_pw}))
        .send()
        .await
        .unwrap();
    assert!(accepted.status().is_success(), "{}", accepted.status());
    let rss_idle = status_kib(pid, "VmRSS");

    println!(
        "login flood: {conns} connections of wrong passwords for {owner} from 127.0.0.1 for {secs} s"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        // One client per connection, so each keeps its own TLS connection.
        let c = client(&ca, [127, 0, 0, 1]);
        let (url, owner, stop) = (url.clone(), owner.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut last_retry = None;
            while !stop.load(Ordering::Relaxed) {
                match login(&c, &url, &owner, "wrong password").await {
                    Ok((s, retry)) => {
                        *seen.entry(s.to_string()).or_default() += 1;
                        if s == 429 && retry.is_none() {
                            *seen.entry("429 without Retry-After".into()).or_default() += 1;
                        }
                        last_retry = retry.or(last_retry);
                    }
                    Err(_) => *seen.entry("no answer".into()).or_default() += 1,
                }
            }
            (seen, last_retry)
        }));
    }
    let mut rss_max = 0;
    let started = Instant::now();
    let mut member = None;
    while started.elapsed() < Duration::from_secs(secs) {
        rss_max = rss_max.max(status_kib(pid, "VmRSS"));
        if member.is_none() && started.elapsed() > Duration::from_secs(secs / 2) {
            let t = Instant::now();
            let r = login(&there, &url, "member@example.com", &member_pw).await;
            member = Some((r, t.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    let mut retry_after = 0;
    for t in tasks {
        let (seen, retry) = t.await.unwrap();
        for (k, v) in seen {
            *total.entry(k).or_default() += v;
        }
        retry_after = retry_after.max(retry.unwrap_or(0));
    }
    let elapsed = started.elapsed();
    let hwm = status_kib(pid, "VmHWM");
    let threads = status_kib(pid, "Threads");
    let n: u64 = total.values().sum();
    println!(
        "  requests: {n} in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    for (k, v) in &total {
        println!("  answered {k}: {v}");
    }
    println!("  cloud threads after the flood: {threads}");
    println!(
        "  cloud RSS: idle {:.1} MiB, max sampled {:.1} MiB, peak (VmHWM) {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let (m, took) = member.unwrap();
    println!(
        "  member@example.com from 127.0.0.2 during the flood: {:?} in {} ms",
        m,
        took.as_millis()
    );
    // The owner's own login from the flooded address, once the last Retry-After has passed.
    let mut waited = 0;
    let owner_result = loop {
        let r = login(&here, &url, &owner, owner_pw.trim()).await;
        match r {
            Ok((429, Some(s))) if waited < 3600 => {
                waited += s;
                tokio::time::sleep(Duration::from_secs(s)).await;
            }
            other => break other,
        }
    };
    println!(
        "  owner from 127.0.0.1 after waiting Retry-After ({retry_after} s at the end of the flood, {waited} s waited): {owner_result:?}"
    );
    drop(cloud);
}
