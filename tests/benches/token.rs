//! `GET /v1/token` over the daemon's Unix socket: latency and throughput with 1 and N kept-alive
//! clients, the same client loop against nginx (and a bare hyper server) answering a body of the
//! same size on a Unix socket, then the daemon's idle RSS and its release binary size.
//!
//! Run:
//!
//!     cargo build --release -p octomild && cargo bench -p octomil-e2e --bench token
//!
//! The benchmark runs `cargo build --release -p octomild` itself as well (a no-op when fresh; a
//! stale binary would measure old code). Built alone, as it ships, not with `--workspace`:
//! feature unification with the cloud would give a different binary.
//!
//! Env: `BENCH_N` requests per run (default 20000), `BENCH_WARMUP` per run (default 2000),
//! `BENCH_CLIENTS` for the concurrent runs (default 8), `BENCH_OCTOMILD` an explicit daemon
//! binary (skips the build), `BENCH_HYPER_WORKERS` the bare hyper server's tokio workers
//! (default 0: a current_thread runtime, like the daemon). Prints figures only; nothing
//! here asserts a timing.

#![allow(clippy::unwrap_used)]

#[path = "token/servers.rs"]
mod servers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use octomil_cloud::CloudStub;
use octomil_e2e::{DaemonOptions, DaemonProcess};
use octomil_testkit::bench::env_or;
use octomild::client::{Connection, SocketClient};
use servers::{HyperRef, Nginx, nginx_binary};

const PATH: &str = "/v1/token";
const ACQUIRE: &str = "/v1/limits/inference/acquire";

fn main() {
    if servers::run_hyper_ref_if_child() {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One client thread: on 2 cores it leaves the other core to the server under test (the
    // daemon and nginx each serve from one thread). The in-process cloud shares this thread; it is
    // idle while the clock runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// One measured run: `clients` connections, `n` requests in all.
#[derive(Debug, Clone)]
struct Run {
    clients: usize,
    wall: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    /// CPU time the server process used while the clock ran (all its threads).
    server_cpu: Duration,
}

impl Run {
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_request(&self) -> Duration {
        self.server_cpu / u32::try_from(self.latencies.len()).unwrap()
    }

    fn pct(&self, p: f64) -> Duration {
        let l = &self.latencies;
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:<9} {} client(s): {:>8.0} req/s  p50 {}  p99 {}  p999 {}  server CPU {}/req",
            self.clients,
            self.rps(),
            us(self.pct(0.50)),
            us(self.pct(0.99)),
            us(self.pct(0.999)),
            us(self.cpu_per_request()),
        )
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

async fn run() {
    let n = env_or::<usize>("BENCH_N", 20_000);
    let warmup = env_or::<usize>("BENCH_WARMUP", 2_000);
    let many = env_or::<usize>("BENCH_CLIENTS", 8).max(1);
    let octomild = release_octomild();

    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudStub::builder(tmp.path().join("cloud"))
        .spawn()
        .await
        .unwrap();
    let mut opts = DaemonOptions::for_cloud(
        &cloud.info,
        Some(cloud.bootstrap_token().unwrap().expose().clone()),
        "bench-device",
    );
    // The production default level, not the harness's debug.
    opts.env.push(("RUST_LOG".into(), "info".into()));
    let dir = tmp.path().join("daemon");
    // The harness waits with blocking sleeps; keep them off the thread the cloud runs on.
    let daemon = tokio::task::spawn_blocking({
        let (program, dir) = (octomild.clone(), dir.clone());
        move || {
            let config = opts.write(&dir);
            DaemonProcess::start_program(&program, &dir, &config, &opts.env)
        }
    })
    .await
    .unwrap();
    daemon.wait_state("active", Duration::from_secs(30)).await;
    let pid = daemon.child.id();
    let (rss_start, _) = settled_rss(pid).await;

    // The answer whose size the references copy; its key is replaced, never printed.
    let answer = daemon
        .client()
        .request(Method::GET, PATH, None)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let body = same_size_body(&answer.body);

    println!(
        "octomild GET {PATH} benchmark: {n} requests per run after {warmup} warm-up, 1 and {many} \
         kept-alive clients; client on a tokio current_thread runtime (1 thread); answer {} bytes",
        body.len()
    );
    println!("octomild: {}", octomild.display());
    println!("machine: {} cores, load average {}", cores(), loadavg());

    let nginx = match nginx_binary() {
        Ok(bin) => match Nginx::start(&bin, &tmp.path().join("nginx"), &body) {
            Ok(nginx) => Some(nginx),
            Err(why) => {
                println!("nginx comparison skipped: {why}");
                None
            }
        },
        Err(why) => {
            println!("nginx comparison skipped: {why}");
            None
        }
    };
    let hyper_workers = env_or::<usize>("BENCH_HYPER_WORKERS", 0);
    let hyper = HyperRef::start(&tmp.path().join("hyper.sock"), &body, hyper_workers);
    println!(
        "bare hyper: {}",
        match hyper_workers {
            0 => "tokio current_thread runtime".to_owned(),
            w => format!("tokio multi_thread runtime, {w} workers"),
        }
    );

    // Servers take turns in short slices, so load from elsewhere on the machine lands on all of
    // them alike instead of on whichever ran when it peaked.
    let mut servers: Vec<(&str, &Path, u32)> = vec![("octomild", &daemon.socket, pid)];
    if let Some(ng) = &nginx {
        servers.push(("nginx", &ng.socket, ng.child.id()));
    }
    servers.push(("hyper", &hyper.socket, hyper.child.id()));
    let mut results: Vec<(&str, Run)> = Vec::new();
    for clients in [1, many] {
        let runs = interleaved(&servers, clients, n, warmup, answer.body.len()).await;
        for ((name, _, _), r) in servers.iter().zip(runs) {
            println!("{}", r.line(name));
            results.push((name, r));
        }
    }
    drop(hyper);
    drop(nginx);

    // Issue 4/5: POST /v1/limits/inference/acquire, same client, same connections model. The
    // cloud's inference limit is lifted first (and a forced refresh brings it to the daemon)
    // so every call is a grant: the figure is the limiter's cost, not its refusals.
    let big =
        serde_json::json!({"rate_limits": {"inference": {"limit": 1_000_000, "period_secs": 60}}});
    let ca = reqwest::Certificate::from_pem(cloud.ca_pem.as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let r = http
        .patch(format!("{}/api/v1/org/settings", cloud.http_url))
        .bearer_auth(cloud.owner_api_key().unwrap().expose())
        .json(&big)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let refreshed = daemon
        .client()
        .request(Method::POST, "/v1/admin/refresh", None)
        .await
        .unwrap();
    assert_eq!(refreshed.status, StatusCode::OK);
    // Each acquire run is followed by a token run of the same shape (alone, not in slices), so
    // the two compare under the same conditions.
    for clients in [1, many] {
        let acquire = solo(
            &daemon.socket,
            pid,
            clients,
            n,
            warmup,
            Method::POST,
            ACQUIRE,
        )
        .await;
        println!("{}", acquire.line("octomild acquire"));
        let token = solo(&daemon.socket, pid, clients, n, warmup, Method::GET, PATH).await;
        println!("{}", token.line("octomild token, same shape"));
        println!(
            "acquire/token p50, {clients} client(s): {:.2}x",
            acquire.pct(0.50).as_secs_f64() / token.pct(0.50).as_secs_f64()
        );
    }

    // Every client connection is closed by now; wait for the daemon's RSS to stop moving.
    let (rss_idle, settle) = settled_rss(pid).await;
    let hwm = vm_kib(pid, "VmHWM:").unwrap_or(0);
    // Anonymous memory is the daemon's own; file pages are its binary and libc, mostly shared.
    let anon = vm_kib(pid, "RssAnon:").unwrap_or(0);
    let file = vm_kib(pid, "RssFile:").unwrap_or(0);
    let size = std::fs::metadata(&octomild).unwrap().len();

    print_summary(
        &results,
        [1, many],
        n,
        &[
            ("daemon RSS idle, after start", mib(rss_start), ""),
            (
                &format!("daemon RSS idle, after load ({:.1}s)", settle.as_secs_f64()),
                mib(rss_idle),
                "< 10 MiB",
            ),
            (
                "  of which anonymous / file-backed",
                format!(
                    "{:.1}/{:.1} MiB",
                    anon as f64 / 1024.0,
                    file as f64 / 1024.0
                ),
                "",
            ),
            ("daemon RSS peak (VmHWM)", mib(hwm), ""),
            (
                "octomild binary (stripped)",
                format!("{:.2} MiB", size as f64 / (1024.0 * 1024.0)),
                "< 8 MiB",
            ),
        ],
    );
    println!("machine: {} cores, load average {}", cores(), loadavg());

    drop(daemon);
    cloud.shutdown().await;
}

/// The one table: each latency figure for every server, then the daemon's own figures.
fn print_summary(
    results: &[(&str, Run)],
    client_counts: [usize; 2],
    n: usize,
    daemon_rows: &[(&str, String, &str)],
) {
    type Metric = (&'static str, fn(&Run) -> f64, fn(f64) -> String);
    let metrics: [Metric; 5] = [
        ("p50", |r| r.pct(0.50).as_secs_f64(), fmt_secs),
        ("p99", |r| r.pct(0.99).as_secs_f64(), fmt_secs),
        ("p999", |r| r.pct(0.999).as_secs_f64(), fmt_secs),
        ("throughput", Run::rps, |v| format!("{v:.0} req/s")),
        (
            "server CPU/req",
            |r| r.cpu_per_request().as_secs_f64(),
            fmt_secs,
        ),
    ];
    let get = |name: &str, clients: usize| {
        results
            .iter()
            .find(|(s, r)| *s == name && r.clients == clients)
            .map(|(_, r)| r)
    };
    let line = |cells: [&str; 6]| {
        let [a, b, c, d, e, f] = cells;
        println!("| {a:<36} | {b:>12} | {c:>12} | {d:>12} | {e:>14} | {f:<14} |");
    };
    println!();
    println!(
        "summary: GET {PATH}, {n} requests per run; client: tokio current_thread runtime (1 thread)"
    );
    line([
        "figure",
        "octomild",
        "nginx",
        "bare hyper",
        "octomild/nginx",
        "target",
    ]);
    println!(
        "|{:-<38}|{:->14}|{:->14}|{:->14}|{:->16}|{:-<16}|",
        "", "", "", "", "", ""
    );
    for clients in client_counts {
        let who = if clients == 1 { "client" } else { "clients" };
        for (label, value, fmt) in metrics {
            let [d, ng, hy] = ["octomild", "nginx", "hyper"].map(|s| get(s, clients).map(value));
            let cell = |v: Option<f64>| v.map_or_else(|| "skipped".to_owned(), fmt);
            let ratio = match (d, ng) {
                (Some(d), Some(ng)) => format!("{:.2}x", d / ng),
                _ => "-".to_owned(),
            };
            let target = if label == "p50" { "<= 1.2x nginx" } else { "" };
            line([
                &format!("{label}, {clients} {who}"),
                &cell(d),
                &cell(ng),
                &cell(hy),
                &ratio,
                target,
            ]);
        }
    }
    for (figure, value, target) in daemon_rows {
        line([figure, value, "", "", "", target]);
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

/// The 1, 5 and 15 minute load averages: the benchmark's figures mean little on a busy machine.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn fmt_secs(s: f64) -> String {
    format!("{:.1} µs", s * 1e6)
}

/// Requests per server per turn, at most: a turn takes well under a second, so connections
/// waiting for their next turn stay far from the daemon's 5 s keep-alive limit.
const MAX_SLICE: usize = 2_000;

/// For each server, `clients` kept-alive connections and `warmup` requests spread over them,
/// then `n` timed requests in turns of at most `MAX_SLICE` (10 turns at least). Every answer must
/// be a 200 of `body_len` bytes, or the figures mean nothing.
async fn interleaved(
    servers: &[(&str, &Path, u32)],
    clients: usize,
    n: usize,
    warmup: usize,
    body_len: usize,
) -> Vec<Run> {
    let mut pools = Vec::with_capacity(servers.len());
    for (_, socket, _) in servers {
        let client = SocketClient::new(*socket, Duration::from_secs(10));
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(client.connect().await.unwrap());
        }
        pools.push(round(conns, warmup, body_len).await.0);
    }
    let mut runs: Vec<Run> = servers
        .iter()
        .map(|_| Run {
            clients,
            wall: Duration::ZERO,
            latencies: Vec::with_capacity(n),
            server_cpu: Duration::ZERO,
        })
        .collect();
    let slices = n.div_ceil(MAX_SLICE).max(10);
    for slice in 0..slices {
        let count = n / slices + usize::from(slice < n % slices);
        for ((pool, run), (_, _, pid)) in pools.iter_mut().zip(&mut runs).zip(servers) {
            let cpu = cpu_time(*pid);
            let start = Instant::now();
            let (conns, lat) = round(std::mem::take(pool), count, body_len).await;
            run.wall += start.elapsed();
            run.server_cpu += cpu_time(*pid).saturating_sub(cpu);
            run.latencies.extend(lat);
            *pool = conns;
        }
    }
    for run in &mut runs {
        run.latencies.sort_unstable();
    }
    runs
}

/// `n` requests split over `conns`, each connection driven by its own task, all at once.
async fn round(
    conns: Vec<Connection>,
    n: usize,
    body_len: usize,
) -> (Vec<Connection>, Vec<Duration>) {
    round_of(conns, n, Method::GET, PATH, Some(body_len)).await
}

/// `n` requests of `method path` split over `conns`, each connection driven by its own task.
/// One server alone: `clients` fresh connections, `warmup` then `n` timed requests.
async fn solo(
    socket: &Path,
    pid: u32,
    clients: usize,
    n: usize,
    warmup: usize,
    method: Method,
    path: &'static str,
) -> Run {
    let client = SocketClient::new(socket, Duration::from_secs(10));
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(client.connect().await.unwrap());
    }
    let (conns, _) = round_of(conns, warmup, method.clone(), path, None).await;
    let cpu = cpu_time(pid);
    let start = Instant::now();
    let (_, mut latencies) = round_of(conns, n, method, path, None).await;
    let wall = start.elapsed();
    latencies.sort_unstable();
    Run {
        clients,
        wall,
        latencies,
        server_cpu: cpu_time(pid).saturating_sub(cpu),
    }
}

async fn round_of(
    conns: Vec<Connection>,
    n: usize,
    method: Method,
    path: &'static str,
    body_len: Option<usize>,
) -> (Vec<Connection>, Vec<Duration>) {
    let k = conns.len();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let count = n / k + usize::from(i < n % k);
            let method = method.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(count);
                for _ in 0..count {
                    let t = Instant::now();
                    let r = c.request(method.clone(), path, None).await.unwrap();
                    lat.push(t.elapsed());
                    assert_eq!(r.status, StatusCode::OK);
                    if let Some(len) = body_len {
                        assert_eq!(r.body.len(), len, "answers differ in size");
                    }
                }
                (c, lat)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(k);
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        let (c, lat) = t.await.unwrap();
        conns.push(c);
        all.extend(lat);
    }
    (conns, all)
}

/// The daemon's answer with the key's characters replaced: same bytes otherwise, same length,
/// and safe inside an nginx single-quoted string.
fn same_size_body(answer: &[u8]) -> String {
    let text = std::str::from_utf8(answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let key = v["token"].as_str().unwrap();
    let body = text.replace(key, &"x".repeat(key.len()));
    assert_eq!(body.len(), answer.len());
    assert!(
        !body.contains(['\'', '$', '\\']),
        "body needs nginx escaping"
    );
    body
}

/// `target/release/octomild`, built by cargo first (a no-op when fresh, and a stale binary would
/// measure old code), unless `BENCH_OCTOMILD` names one.
fn release_octomild() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_OCTOMILD") {
        return PathBuf::from(p);
    }
    // This benchmark runs from <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    // Cargo sets these for the benchmark it runs; build scripts that track them (ring's does)
    // would see a changed environment and rebuild on every run, and again on the next plain
    // `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    let status = cmd
        .args(["build", "--release", "-p", "octomild", "--bin", "octomild"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --release -p octomild failed");
    target.join("release/octomild")
}

/// CPU time used so far by the live threads of `pid` (first field of each thread's schedstat).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// A field such as `VmRSS:` of `/proc/<pid>/status`, in KiB.
fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// VmRSS once it has not changed for 1 s of 100 ms polls (at most 20 s), and how long that took.
async fn settled_rss(pid: u32) -> (u64, Duration) {
    let start = Instant::now();
    let mut last = vm_kib(pid, "VmRSS:").unwrap();
    let mut stable = 0;
    while stable < 10 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = vm_kib(pid, "VmRSS:").unwrap();
        if now == last {
            stable += 1;
        } else {
            (last, stable) = (now, 0);
        }
    }
    (last, start.elapsed())
}
