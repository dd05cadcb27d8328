//! `octomil-fleet-sim`: a fleet of simulated devices against a running octomil-cloud, to
//! measure what a fleet operator's worst day costs (docs/large-fleet.md).
//!
//! `run`: raises the org's registration limit for the run (and puts it back), creates a
//! bootstrap token, registers N devices with real proofs, holds N TLS MQTT sessions
//! subscribed to their revocation topics, then runs the scenarios in order. Lines starting
//! with `@` are for a script driving the run (`@ready`, `@outage`, `@revoked-while-down`).
//! `jitter`: the daemon's reconnect and refresh spread for N devices, computed with its own
//! functions (no cloud needed).

mod cloud;
mod fleet;
mod jitter;
mod scenario;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use octomil_common::Secret;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::cloud::{Cloud, Device, Limit};
use crate::fleet::Report;
use crate::scenario::Fleet;

#[derive(Debug, Parser)]
#[command(
    name = "octomil-fleet-sim",
    version,
    about = "Simulates a fleet of devices against a running octomil-cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register and connect a fleet, then run scenarios against it.
    Run(RunArgs),
    /// Print the daemon's reconnect and refresh spread for a fleet (no cloud needed).
    Jitter(jitter::Args),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One bulk revocation for all devices; time until each verified its envelope.
    BulkRevoke,
    /// The broker (or the cloud with its embedded broker) restarts; time until all are back.
    ReconnectStorm,
    /// Every device refreshes once within --refresh-window-ms.
    RefreshStorm,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The cloud's HTTPS URL (https://host:port).
    #[arg(long, env = "OCTOMIL_API_URL")]
    url: String,
    /// The cloud's CA certificate (PEM).
    #[arg(long, env = "OCTOMIL_CA_FILE")]
    ca: PathBuf,
    /// File holding an org:admin API key (or the key in OCTOMIL_API_KEY).
    #[arg(long, env = "OCTOMIL_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Devices to register and connect.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Scenarios to run, in order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bulk-revoke")]
    scenario: Vec<Scenario>,
    /// Device ids are PREFIX-00000...; default: sim-<random>.
    #[arg(long)]
    prefix: Option<String>,
    /// HTTP requests in flight at most: the connection pool's bound.
    #[arg(long, default_value_t = 64)]
    http_connections: usize,
    /// MQTT sessions connecting at once while the fleet comes up.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// refresh-storm: the window in which every device refreshes once (0: all at once).
    #[arg(long, default_value_t = 60_000)]
    refresh_window_ms: u64,
    /// reconnect-storm: revoke every device while the broker is away.
    #[arg(long)]
    revoke_while_down: bool,
    /// reconnect-storm: how long to wait for the broker to go away and for every device to
    /// be back.
    #[arg(long, default_value_t = 300)]
    outage_timeout_secs: u64,
    /// MQTT keep-alive of every session, seconds (the daemon's default is 60).
    #[arg(long, default_value_t = 60)]
    keep_alive_secs: u64,
    /// Write the measurements as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Jitter(a) => {
            jitter::run(&a);
            Ok(())
        }
        Command::Run(a) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(run(a))
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    check_open_files(a.devices + a.http_connections + 64)?;
    let ca_pem = std::fs::read(&a.ca).with_context(|| format!("reading {}", a.ca.display()))?;
    let key = match &a.api_key_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("OCTOMIL_API_KEY")
            .context("give --api-key-file or OCTOMIL_API_KEY (an org:admin key)")?,
    };
    let http = a.http_connections.max(1);
    let cloud = Arc::new(Cloud::new(&a.url, &ca_pem, Secret::new(key), http)?);
    let tls = octomil_common::tls::client_config(&ca_pem).context("the CA file")?;

    let before = cloud.registration_limit().await?;
    let raised = Limit {
        limit: 1_000_000,
        period_secs: 60,
    };
    cloud.set_registration_limit(raised).await?;
    println!(
        "raised the org's registration limit from {}/{} s to {}/{} s for this run (restored at the end)",
        before.limit, before.period_secs, raised.limit, raised.period_secs
    );
    let result = fleet_run(&a, &cloud, Arc::from(ca_pem), tls).await;
    match cloud.set_registration_limit(before).await {
        Ok(()) => println!(
            "restored the org's registration limit to {}/{} s",
            before.limit, before.period_secs
        ),
        Err(e) => println!("could not restore the registration limit: {e}"),
    }
    let report = result?;
    if let Some(path) = &a.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Registers and connects the fleet, runs the scenarios; the report.
async fn fleet_run(
    a: &RunArgs,
    cloud: &Arc<Cloud>,
    ca: Arc<[u8]>,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Value> {
    let n = a.devices;
    let prefix = a.prefix.clone().unwrap_or_else(|| {
        format!(
            "sim-{}",
            octomil_common::token::random_base62(6)
                .expose()
                .to_lowercase()
        )
    });
    let (boot_id, boot) = cloud.bootstrap_token(n.max(1)).await?;
    let t = Instant::now();
    let registered = register_fleet(cloud, &prefix, n, &boot, a.http_connections.max(1)).await;
    if let Err(e) = cloud.revoke_bootstrap_token(&boot_id).await {
        println!("could not revoke the run's bootstrap token {boot_id}: {e}");
    }
    let devices = registered?;
    let reg_s = t.elapsed().as_secs_f64();
    let reg_rate = n as f64 / reg_s.max(1e-9);
    println!(
        "registered {n} devices ({prefix}-00000...) with real proofs in {reg_s:.1} s: {reg_rate:.0} registrations/s, {} requests in flight",
        a.http_connections
    );
    let with_cert = devices
        .iter()
        .filter(|d| d.mqtt.client_cert.is_some())
        .count();
    println!(
        "MQTT login: {with_cert} devices with their client certificate, {} with their key as password",
        n - with_cert
    );

    let (tx, rx) = mpsc::unbounded_channel();
    let mut sessions = tokio::task::JoinSet::new();
    let gate = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let keep_alive = Duration::from_secs(a.keep_alive_secs);
    let t = Instant::now();
    for d in &devices {
        let permit = gate.clone().acquire_owned().await?;
        sessions.spawn(fleet::session(
            d.clone(),
            ca.clone(),
            tls.clone(),
            keep_alive,
            Some(permit),
            tx.clone(),
        ));
    }
    drop(tx);
    let mut fleet = Fleet {
        cloud: cloud.clone(),
        devices,
        up: vec![false; n],
        reports: rx,
        http: a.http_connections.max(1),
        bootstrap_token_id: boot_id,
    };
    let up = wait_up(
        &mut fleet,
        Duration::from_secs(60) + Duration::from_millis(20 * n as u64),
    )
    .await;
    let connect_s = t.elapsed().as_secs_f64();
    let rss = rss_mib();
    println!(
        "{up}/{n} sessions connected and subscribed (TLS, QoS 1) in {connect_s:.1} s, {} at a time; this process's RSS: {} MiB",
        a.connect_concurrency,
        rss.map_or("?".into(), |m| m.to_string())
    );
    if up < n {
        println!(
            "  {} sessions did not come up (a broker's connection cap? the cloud's own session \
             takes a place on its embedded broker); the scenarios use the {up} that did",
            n - up
        );
    }
    println!("@ready {up}");

    let mut results = Vec::new();
    for s in &a.scenario {
        let r = match s {
            Scenario::BulkRevoke => scenario::bulk_revoke(&mut fleet).await,
            Scenario::ReconnectStorm => {
                scenario::reconnect_storm(
                    &mut fleet,
                    a.revoke_while_down,
                    Duration::from_secs(a.outage_timeout_secs),
                )
                .await
            }
            Scenario::RefreshStorm => {
                scenario::refresh_storm(&mut fleet, Duration::from_millis(a.refresh_window_ms))
                    .await
            }
        };
        results.push(r);
    }
    let rss_end = rss_mib();
    sessions.abort_all();
    Ok(json!({
        "devices": n,
        "registrations_per_s": reg_rate,
        "connected": up,
        "connect_s": connect_s,
        "sim_rss_mib": rss,
        "sim_rss_mib_end": rss_end,
        "scenarios": results,
    }))
}

/// Registers `prefix-00000...`, `conc` at a time.
async fn register_fleet(
    cloud: &Arc<Cloud>,
    prefix: &str,
    n: usize,
    boot: &Secret<String>,
    conc: usize,
) -> anyhow::Result<Vec<Arc<Device>>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..conc.min(n.max(1)) {
        let (next, cloud, boot, prefix) =
            (next.clone(), cloud.clone(), boot.clone(), prefix.to_owned());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                if idx >= n {
                    return Ok(out);
                }
                let id = format!("{prefix}-{idx:05}");
                out.push(Arc::new(cloud.register(idx, &id, &boot).await?));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        let part: Result<Vec<Arc<Device>>, cloud::CloudError> = r?;
        all.extend(part.context("registering the fleet")?);
    }
    all.sort_by_key(|d| d.idx);
    Ok(all)
}

/// Waits until every session reported SUBACK, the deadline, or [`STALLED`] without one more
/// (a broker over its connection cap refuses the rest for as long as the fleet is up);
/// marks them up.
async fn wait_up(fleet: &mut Fleet, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let n = fleet.devices.len();
    let (mut up, mut problems) = (0usize, 0usize);
    let mut progress = Instant::now();
    while up < n {
        let until = deadline.min(progress + STALLED);
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Some(r)) = tokio::time::timeout(left, fleet.reports.recv()).await else {
            break;
        };
        match r {
            Report::Up(i, _) if !fleet.up[i] => {
                fleet.up[i] = true;
                up += 1;
                progress = Instant::now();
            }
            Report::Problem(i, why) => {
                problems += 1;
                if problems <= 3 {
                    println!("  device #{i} while connecting: {why}");
                }
            }
            _ => {}
        }
    }
    up
}

/// While the fleet comes up: give up on the rest after this long without one more session.
const STALLED: Duration = Duration::from_secs(20);

/// This process's resident memory, MiB.
fn rss_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Refuses to start a fleet the open-files limit cannot hold (one socket per session).
fn check_open_files(need: usize) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse::<usize>().ok());
    if let Some(soft) = soft
        && soft < need
    {
        bail!(
            "the open-files limit is {soft}, and this fleet needs about {need} (a socket per device \
             and per HTTP connection): raise it with `ulimit -n` (up to the hard limit), or run \
             fewer --devices"
        );
    }
    Ok(())
}
