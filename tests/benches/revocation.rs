//! Revocation benchmark (issue 3/5): how long from `POST /devices/{id}/revoke` until a real
//! `octomild` refuses its key on the socket, with the embedded broker and with Mosquitto; and
//! how long until every one of 1,000 connected device sessions has been told.
//!
//! Run (release binaries first: the daemon and the cloud run as their own processes):
//!
//! ```text
//! cargo build --release -p octomild -p octomil-cloud
//! cargo bench -p octomil-e2e --bench revocation
//! ```
//!
//! Environment: `BENCH_ROUNDS` (200 revocations per broker), `BENCH_BATCH` (10 daemons started
//! together per batch), `BENCH_FLEET` (1000 sessions, one of them the real daemon),
//! `BENCH_REVOKE_CONCURRENCY` (32 revoke calls in flight), `BENCH_CONNECT_CONCURRENCY` (32
//! sessions connecting at once), `BENCH_SKIP` (comma list of `latency`, `mosquitto`,
//! `fanout`), `BENCH_POLL_US` (0: the latency runs poll the socket back to back; a pause
//! between polls shows how much the polling itself costs), `BENCH_SETTLE_MS` (250: pause
//! between a batch's MQTT connect and its first revoke). `TMPDIR` picks where the cloud's
//! state (and its fsyncs) live. Timings are printed, never asserted; BENCHMARKS.md has figures.

#![allow(clippy::unwrap_used)]

#[path = "revocation/cloud.rs"]
mod cloud;
#[path = "revocation/fanout.rs"]
mod fanout;

use std::time::{Duration, Instant};

use octomil_e2e::mosquitto;
use octomil_e2e::{DaemonOptions, DaemonProcess};
use octomil_testkit::bench::env_or;

use crate::cloud::{Broker, Cloud};

fn skipped(phase: &str) -> bool {
    std::env::var("BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim() == phase)
}

/// The release binaries sit next to this bench's directory (`target/release/`); a missing or
/// debug one would make every figure meaningless, so stop with the command to run.
fn check_binaries() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    for name in ["octomild", "octomil-cloud"] {
        if !dir.join(name).exists() {
            eprintln!(
                "{} is missing: run `cargo build --release -p octomild -p octomil-cloud` first \
                 (with the same CARGO_TARGET_DIR)",
                dir.join(name).display()
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    check_binaries();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let rounds = env_or::<usize>("BENCH_ROUNDS", 200);
    let batch = env_or::<usize>("BENCH_BATCH", 10).max(1);
    let fleet = env_or::<usize>("BENCH_FLEET", 1000).max(2);
    let revoke_conc = env_or::<usize>("BENCH_REVOKE_CONCURRENCY", 32).max(1);
    let connect_conc = env_or::<usize>("BENCH_CONNECT_CONCURRENCY", 32).max(1);
    let poll = Duration::from_micros(env_or::<usize>("BENCH_POLL_US", 0) as u64);
    let settle = Duration::from_millis(env_or::<usize>("BENCH_SETTLE_MS", 250) as u64);
    let have_mosquitto = mosquitto::available();
    if !have_mosquitto {
        octomil_testkit::skip::missing_dependency(
            "revocation bench, Mosquitto runs",
            "mosquitto is not installed (apt-get install -y mosquitto)",
        );
    }
    let mut brokers = vec![Broker::Embedded];
    if have_mosquitto && !skipped("mosquitto") {
        brokers.push(Broker::Mosquitto);
    }
    // The revoke path commits to redb (fsync) before it publishes: say how the disk under the
    // state dir behaves right now, since it sets the tail.
    let disk = fsync_probe(100);
    println!(
        "fsync probe (4 KiB write + fsync in {}, 100x): p50 {} ms, p99 {} ms",
        std::env::temp_dir().display(),
        ms(percentile(&disk, 0.50)),
        ms(percentile(&disk, 0.99))
    );
    let mut table = Vec::new();
    if !skipped("latency") {
        for &b in &brokers {
            let l = latency(b, rounds, batch, poll, settle).await;
            table.push(row("revoke -> 403 on the socket", b, &l.refused, ""));
            table.push(row("revoke -> HTTP answer", b, &l.http, ""));
            let note = "the cloud's figure, whole ms";
            table.push(row("cloud publish -> PUBACK", b, &l.ack, note));
        }
    }
    if !skipped("fanout") {
        for &b in &brokers {
            let f = fanout::run(b, fleet, revoke_conc, connect_conc).await;
            let note = "per device, under the fan-out";
            table.push(row("fan-out: revoke call -> told", b, &f.per_device, note));
            table.push(format!(
                "| fan-out: first revoke -> last told | {} | {} | | | | {} | {} |",
                b.name(),
                f.told,
                ms(f.last_told),
                f.note()
            ));
        }
    }
    println!(
        "\nSummary (ms; loopback, 2 shared cores; fsync p50 {} / p99 {} ms at the start)\n",
        ms(percentile(&disk, 0.50)),
        ms(percentile(&disk, 0.99))
    );
    println!("| measure | broker | n | p50 | p90 | p99 | max | notes |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in table {
        println!("{r}");
    }
}

/// Times `n` small durable writes in the temp dir (where the cloud's state lives), sorted.
fn fsync_probe(n: usize) -> Vec<Duration> {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let block = [7u8; 4096];
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).unwrap();
            f.sync_all().unwrap();
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn row(what: &str, b: Broker, samples: &[Duration], note: &str) -> String {
    let mut s = samples.to_vec();
    s.sort();
    format!(
        "| {what} | {} | {} | {} | {} | {} | {} | {note} |",
        b.name(),
        s.len(),
        ms(percentile(&s, 0.50)),
        ms(percentile(&s, 0.90)),
        ms(percentile(&s, 0.99)),
        ms(s.last().copied().unwrap_or_default()),
    )
}

pub fn print_stats(what: &str, samples: &[Duration]) {
    let mut s = samples.to_vec();
    s.sort();
    println!(
        "  {what:<34} n={:<4} p50 {:>7} ms  p90 {:>7} ms  p99 {:>7} ms  max {:>7} ms",
        s.len(),
        ms(percentile(&s, 0.50)),
        ms(percentile(&s, 0.90)),
        ms(percentile(&s, 0.99)),
        ms(s.last().copied().unwrap_or_default()),
    );
}

/// Samples of one latency run.
#[derive(Default)]
struct Latency {
    /// From just before the revoke call to the first 403 on the daemon's socket.
    refused: Vec<Duration>,
    /// From just before the revoke call to its HTTP answer (sent after the broker's PUBACK).
    http: Vec<Duration>,
    /// The cloud's own figure in that answer: its publish to the broker's PUBACK.
    ack: Vec<Duration>,
    /// (to 403, position in its batch, to HTTP answer), for the slowest rounds.
    slowest: Vec<(Duration, usize, Duration)>,
}

/// `rounds` revocations of a fresh, connected daemon each. Daemons start `batch` at a time
/// (registration and the MQTT connect are not measured) and are revoked one after another
/// while the rest of the batch sits idle on the broker.
async fn latency(
    broker: Broker,
    rounds: usize,
    batch: usize,
    poll: Duration,
    settle: Duration,
) -> Latency {
    println!(
        "\n== revoke-to-refusal, {} broker: {rounds} revocations of a release octomild",
        broker.name()
    );
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path(), broker).await;
    let mut out = Latency::default();
    let mut next = 0usize;
    let started = Instant::now();
    while next < rounds {
        let ids: Vec<String> = (next..(next + batch).min(rounds))
            .map(|i| format!("lat-{}-{i:04}", broker.name()))
            .collect();
        next += ids.len();
        let mut daemons = Vec::with_capacity(ids.len());
        for id in &ids {
            let d = DaemonProcess::start(&tmp.path().join(id), &daemon_options(&cloud, id));
            d.wait_state("active", Duration::from_secs(30)).await;
            daemons.push(d);
        }
        for (id, d) in ids.iter().zip(&daemons) {
            wait_connected(&cloud, id, d).await;
        }
        // `mqtt_connected` turns true at CONNACK, before the subscription and the presence
        // announcement: let those finish (and their ACKs go by) so each revoke finds a
        // device at rest on the broker, as a fleet's devices are.
        tokio::time::sleep(settle).await;
        for (k, (id, d)) in ids.iter().zip(&daemons).enumerate() {
            let (refused, http, ack) = revoke_once(&cloud, id, d, poll).await;
            out.slowest.push((refused, k, http));
            out.refused.push(refused);
            out.http.push(http);
            if let Some(a) = ack {
                out.ack.push(a);
            }
        }
        for (id, d) in ids.iter().zip(daemons) {
            d.kill9();
            cloud.delete(id).await;
            let _ = std::fs::remove_dir_all(tmp.path().join(id));
        }
    }
    println!(
        "  {} rounds in {:.1} s (wall, including daemon starts)",
        out.refused.len(),
        started.elapsed().as_secs_f64()
    );
    print_stats("revoke -> 403 on the socket", &out.refused);
    print_stats("revoke -> HTTP answer", &out.http);
    print_stats("cloud publish -> PUBACK", &out.ack);
    out.slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    out.slowest.truncate(5);
    let slow: Vec<String> = out
        .slowest
        .iter()
        .map(|(r, k, h)| format!("{} ms (#{k} of its batch, HTTP {} ms)", ms(*r), ms(*h)))
        .collect();
    println!("  slowest: {}", slow.join(", "));
    out
}

/// A daemon as shipped (default keep-alive), logging at info.
pub fn daemon_options(cloud: &Cloud, id: &str) -> DaemonOptions {
    let mut o = DaemonOptions::for_cloud(&cloud.info, Some(cloud.bootstrap.clone()), id);
    o.env.push(("RUST_LOG".into(), "info".into()));
    o
}

/// Waits for `mqtt_connected` in the daemon's status (it logs in with the certificate its
/// registration answer carried, on either broker).
pub async fn wait_connected(cloud: &Cloud, id: &str, d: &DaemonProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, s) = d.get("/v1/status").await;
        if s["mqtt_connected"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no MQTT session: {s}\n{}\nbroker log (tail):\n{}",
            d.log_text(),
            cloud.broker_log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One measured revocation: polls `/v1/token` on a kept-alive connection (back to back, or
/// `poll` apart) while the revoke call is in flight. Returns (to 403, to HTTP answer, publish
/// to PUBACK).
async fn revoke_once(
    cloud: &Cloud,
    id: &str,
    d: &DaemonProcess,
    poll: Duration,
) -> (Duration, Duration, Option<Duration>) {
    let client = d.client();
    let mut conn = client.connect().await.unwrap();
    let r = conn
        .request(http::Method::GET, "/v1/token", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{id} is not serving a key before the revoke");
    // A warm connection to the cloud, so the clock does not measure a TLS handshake.
    cloud.warm(id).await;
    let t0 = Instant::now();
    let revoke = {
        let (http, api, owner, id) = (
            cloud.http.clone(),
            cloud.api.clone(),
            cloud.owner.clone(),
            id.to_owned(),
        );
        tokio::spawn(async move { cloud::revoke(&http, &api, &owner, &id).await })
    };
    let refused = loop {
        match conn.request(http::Method::GET, "/v1/token", None).await {
            Ok(r) if r.status == 403 => break t0.elapsed(),
            Ok(r) => assert_eq!(r.status, 200, "{id}: unexpected answer"),
            // The daemon closed the kept-alive connection (idle or busy): open another.
            Err(_) => conn = client.connect().await.unwrap(),
        }
        if !poll.is_zero() {
            tokio::time::sleep(poll).await;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{id} still serves its key 30 s after the revoke\n{}",
            d.log_text()
        );
    };
    let answer = revoke.await.unwrap();
    assert!(
        answer.status == 200 && answer.published,
        "{id}: revoke answered {answer:?}"
    );
    (refused, answer.done - t0, answer.ack)
}
