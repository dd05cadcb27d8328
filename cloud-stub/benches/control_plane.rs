//! Registrations/s and refreshes/s that one `octomil-cloud` sustains: a real HTTPS server on
//! loopback, state in redb with a durable commit per call, driven by concurrent clients.
//!
//! Run: `cargo bench -p octomil-cloud --bench control_plane` (env: BENCH_N, BENCH_CONCURRENCY).
//!
//! During each phase a reader thread times `Store::read` (what every authenticated request
//! does) every 200 µs, so a read that waits behind a commit shows in its p99 and max; after
//! each phase the store's write counters give the commits and steps per commit (group commit).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use octomil_cloud::CloudStub;
use octomil_cloud::store::WriteStats;
use octomil_common::proof;
use octomil_common::wire::{RefreshResponse, RegisterResponse};
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

async fn run() {
    let n = env_or::<usize>("BENCH_N", 2000);
    let conc = env_or::<usize>("BENCH_CONCURRENCY", 8);
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudStub::builder(dir.path().join("state"))
        .spawn()
        .await
        .unwrap();
    let ca = reqwest::Certificate::from_pem(cloud.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let base = format!("{}/api/v1", cloud.http_url);
    let owner = cloud.owner_api_key().unwrap().expose().clone();
    let boot = cloud.bootstrap_token().unwrap().expose().clone();
    // The benchmark measures throughput, not the limiter: lift the per-IP and per-device limits.
    let big = json!({"limit": 1_000_000, "period_secs": 60});
    let r = client
        .patch(format!("{base}/org/settings"))
        .bearer_auth(&owner)
        .json(&json!({"rate_limits": {"registration": big, "control_plane": big}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // Device keys, challenges and proofs are made up front so the clock measures the server.
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("bench-{i}");
        let key = proof::generate_signing_key();
        let r = client
            .post(format!("{base}/devices/register/challenge"))
            .json(&json!({"device_id": id}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
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
        bodies.push(json!({
            "bootstrap_token": boot,
            "device_id": id,
            "device_public_key": pk,
            "challenge": challenge,
            "proof": sig,
        }));
    }

    println!(
        "octomil-cloud control-plane benchmark: {n} calls per phase, {conc} concurrent clients, HTTPS on loopback"
    );
    let reg_url = format!("{base}/devices/register");
    let reads = Reads::start(cloud.cloud.clone());
    let w0 = cloud.cloud.store.write_stats();
    let regs: Vec<RegisterResponse> = phase("register", &client, conc, bodies, move |c, b| {
        let url = reg_url.clone();
        async move {
            let r = c.post(url).json(&b).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<RegisterResponse>().await.unwrap()
        }
    })
    .await;
    reads.report("register");
    let w1 = cloud.cloud.store.write_stats();
    print_batching(w0, w1);
    let reads = Reads::start(cloud.cloud.clone());
    let bodies: Vec<_> = regs
        .iter()
        .map(|r| json!({"device_id": r.device_id, "refresh_token": r.refresh_token.expose()}))
        .collect();
    let refresh_url = format!("{base}/devices/refresh");
    let _: Vec<RefreshResponse> = phase("refresh", &client, conc, bodies, move |c, b| {
        let url = refresh_url.clone();
        async move {
            let r = c.post(url).json(&b).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<RefreshResponse>().await.unwrap()
        }
    })
    .await;
    reads.report("refresh");
    let w2 = cloud.cloud.store.write_stats();
    print_batching(w1, w2);
    cloud.shutdown().await;
}

/// Commits and writes (steps) between two snapshots of the store's counters.
fn print_batching(a: WriteStats, b: WriteStats) {
    let (commits, steps) = (b.commits - a.commits, b.steps - a.steps);
    println!(
        "{:>9}  {commits} commits for {steps} writes ({:.1} writes per commit, largest batch {})",
        "",
        steps as f64 / commits.max(1) as f64,
        b.max_batch
    );
}

/// A thread timing `Store::read` while a phase runs.
struct Reads {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Duration>>,
}

impl Reads {
    fn start(cloud: octomil_cloud::AppState) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                std::hint::black_box(cloud.store.read(|m| m.devices.len()));
                lat.push(t.elapsed());
                std::thread::sleep(Duration::from_micros(200));
            }
            lat
        });
        Self { stop, thread }
    }

    fn report(self, name: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut lat = self.thread.join().unwrap();
        lat.sort();
        println!(
            "{name:>9}  reads during it: p50 {:>6.3} ms   p99 {:>6.3} ms   max {:>6.2} ms   ({} reads)",
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
            lat.len()
        );
    }
}

async fn phase<T, F, Fut>(
    name: &str,
    client: &reqwest::Client,
    conc: usize,
    bodies: Vec<serde_json::Value>,
    f: F,
) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(reqwest::Client, serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let n = bodies.len();
    let queue = Arc::new(std::sync::Mutex::new(
        bodies.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (queue, f, client) = (queue.clone(), f.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some((i, body)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                let v = f(client.clone(), body).await;
                out.push((i, v, t.elapsed()));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    let mut lat: Vec<Duration> = all.iter().map(|(_, _, d)| *d).collect();
    lat.sort();
    println!(
        "{name:>9}: {:>7.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({n} in {:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        elapsed.as_secs_f64()
    );
    all.sort_by_key(|(i, _, _)| *i);
    all.into_iter().map(|(_, v, _)| v).collect()
}
