//! The three scenarios, each run against a fleet that is registered, connected and
//! subscribed: a bulk revocation of every device, a broker (or cloud) restart, and a refresh
//! storm. Each prints what it measured and returns it as JSON for the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use octomil_common::backoff::unit_random;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::cloud::{Cloud, Device};
use crate::fleet::Report;
use crate::stats::{self, Summary, ms};

/// The fleet under test, connected.
pub struct Fleet {
    pub cloud: Arc<Cloud>,
    pub devices: Vec<Arc<Device>>,
    /// Devices whose session was up when the fleet was ready; the others take no part.
    pub up: Vec<bool>,
    pub reports: mpsc::UnboundedReceiver<Report>,
    /// HTTP requests in flight at most (and the pool's size).
    pub http: usize,
    /// The bootstrap token the fleet enrolled with: a bulk revocation names it.
    pub bootstrap_token_id: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    fn n_up(&self) -> usize {
        self.up.iter().filter(|u| **u).count()
    }

    /// Forgets reports from before now (a scenario times only what it caused).
    fn drain(&mut self) {
        while self.reports.try_recv().is_ok() {}
    }

    /// The next report, or `None` at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Option<Report> {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, self.reports.recv())
            .await
            .ok()
            .flatten()
    }
}

fn note_problem(problems: &mut usize, idx: usize, why: &str) {
    *problems += 1;
    if *problems <= 3 {
        println!("  device #{idx}: {why}");
    }
}

/// One bulk revocation call for every connected device; how long until each verified its
/// envelope.
pub async fn bulk_revoke(fleet: &mut Fleet) -> Value {
    fleet.drain();
    let n = fleet.n_up();
    println!(
        "\n== bulk-revoke: one POST /revocations (the fleet's bootstrap token) with {n} devices connected"
    );
    let (cloud, token) = (fleet.cloud.clone(), fleet.bootstrap_token_id.clone());
    let t0 = Instant::now();
    let call = tokio::spawn(async move { cloud.bulk_revoke(&token).await });
    let deadline = t0 + Duration::from_secs(60) + Duration::from_millis(n as u64);
    let mut verified = vec![None; fleet.devices.len()];
    let (mut told, mut problems) = (0usize, 0usize);
    while told < n {
        let Some(r) = fleet.next(deadline).await else {
            break;
        };
        match r {
            Report::Verified(i, at) if verified[i].is_none() => {
                verified[i] = Some(at - t0);
                told += 1;
            }
            Report::Problem(i, why) => note_problem(&mut problems, i, &why),
            _ => {}
        }
    }
    let answer = call
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let times: Vec<Duration> = verified.iter().flatten().copied().collect();
    let s = Summary::of(&times);
    println!("  {told}/{n} devices verified their envelope; per device from the call: {s}");
    println!("  last verified {:.1} ms after the call started", ms(s.max));
    let http = match &answer {
        Ok((revoked, published, at)) => {
            println!(
                "  HTTP answer after {:.1} ms: {revoked} revoked, {published} acknowledged by the broker",
                ms(*at - t0)
            );
            json!({"answer_ms": ms(*at - t0), "revoked": revoked, "published": published})
        }
        Err(e) => {
            println!("  the call failed: {e}");
            json!({"error": e})
        }
    };
    json!({
        "scenario": "bulk-revoke",
        "devices": n,
        "verified": told,
        "problems": problems,
        "per_device": s.json(),
        "last_verified_ms": ms(s.max),
        "http": http,
    })
}

/// The broker goes away and comes back (someone restarts it: the benchmark, or an operator
/// when told `@outage`); the fleet reconnects with the daemon's backoff. With
/// `revoke_while_down`, every device is revoked while the broker is away, and must be told
/// after it returns.
pub async fn reconnect_storm(
    fleet: &mut Fleet,
    revoke_while_down: bool,
    timeout: Duration,
) -> Value {
    fleet.drain();
    let n = fleet.n_up();
    let size = fleet.devices.len();
    println!("\n== reconnect-storm: {n} connected devices; restart the broker now");
    println!("@outage");
    let deadline = Instant::now() + timeout;
    let mut down = vec![None::<Instant>; size];
    let mut first_attempt = vec![None::<Instant>; size];
    let mut back = vec![None::<Instant>; size];
    let mut verified = vec![None::<Instant>; size];
    let mut attempts = vec![0u32; size];
    let (mut n_down, mut n_back, mut n_verified, mut problems) = (0usize, 0usize, 0usize, 0usize);
    let mut revoke: Option<Value> = None;
    loop {
        let done_back = n_back >= n && (!revoke_while_down || n_verified >= n);
        if done_back {
            break;
        }
        if revoke_while_down && revoke.is_none() && n_down >= n {
            let t = Instant::now();
            let r = fleet.cloud.bulk_revoke(&fleet.bootstrap_token_id).await;
            let v = match r {
                Ok((revoked, published, at)) => {
                    println!(
                        "  revoked {revoked} devices while the broker was away (answer after {:.0} ms, {published} acknowledged)",
                        ms(at - t)
                    );
                    json!({"revoked": revoked, "published": published, "answer_ms": ms(at - t)})
                }
                Err(e) => {
                    println!("  the revocation while down failed: {e}");
                    json!({"error": e.to_string()})
                }
            };
            revoke = Some(v);
            println!("@revoked-while-down");
        }
        let Some(r) = fleet.next(deadline).await else {
            break;
        };
        match r {
            Report::Down(i, at) if fleet.up[i] && down[i].is_none() => {
                down[i] = Some(at);
                n_down += 1;
            }
            Report::Attempt(i, at) if down[i].is_some() => {
                attempts[i] += 1;
                first_attempt[i].get_or_insert(at);
            }
            Report::Up(i, at) if down[i].is_some() && back[i].is_none() => {
                back[i] = Some(at);
                n_back += 1;
            }
            Report::Verified(i, at) if verified[i].is_none() => {
                verified[i] = Some(at);
                n_verified += 1;
            }
            Report::Problem(i, why) => note_problem(&mut problems, i, &why),
            _ => {}
        }
    }
    let first_down = down.iter().flatten().min().copied();
    let last_down = down.iter().flatten().max().copied();
    let first_back = back.iter().flatten().min().copied();
    let last_back = back.iter().flatten().max().copied();
    let (Some(first_down), Some(last_down)) = (first_down, last_down) else {
        println!(
            "  the broker never went away within {} s",
            timeout.as_secs()
        );
        return json!({"scenario": "reconnect-storm", "devices": n, "error": "no outage"});
    };
    // Drop -> the device's first reconnect attempt: the daemon's first backoff, as drawn.
    let first_wait: Vec<Duration> = down
        .iter()
        .zip(&first_attempt)
        .filter_map(|(d, a)| Some((*a)? - (*d)?))
        .collect();
    let since_back: Vec<Duration> = match first_back {
        Some(b) => back.iter().flatten().map(|t| *t - b).collect(),
        None => Vec::new(),
    };
    let told_since_back: Vec<Duration> = match first_back {
        Some(b) => verified
            .iter()
            .flatten()
            .map(|t| t.saturating_duration_since(b))
            .collect(),
        None => Vec::new(),
    };
    let total_attempts: u64 = attempts.iter().map(|a| u64::from(*a)).sum();
    println!(
        "  {n_down}/{n} sessions dropped within {:.0} ms",
        ms(last_down - first_down)
    );
    let fw = Summary::of(&first_wait);
    println!("  drop -> first reconnect attempt (the daemon's backoff): {fw}");
    print!(
        "  first attempts per 100 ms after the drop:\n{}",
        stats::render(
            &stats::histogram(&first_wait, Duration::from_millis(100)),
            Duration::from_millis(100),
            15
        )
    );
    let sb = Summary::of(&since_back);
    let (outage_ms, all_back_ms) = match (first_back, last_back) {
        (Some(fb), Some(lb)) => (ms(fb - first_down), ms(lb - first_down)),
        _ => (f64::NAN, f64::NAN),
    };
    println!(
        "  {n_back}/{n} reconnected and subscribed; broker back (first device up) {outage_ms:.0} ms after the drop, all back {all_back_ms:.0} ms after it"
    );
    println!("  broker back -> device subscribed: {sb}");
    let per_sec = stats::histogram(&since_back, Duration::from_secs(1));
    print!(
        "  devices subscribed per second after the broker came back:\n{}",
        stats::render(&per_sec, Duration::from_secs(1), 20)
    );
    println!(
        "  reconnect attempts: {total_attempts} for {n_down} devices ({:.2} each)",
        total_attempts as f64 / n_down.max(1) as f64
    );
    let told = Summary::of(&told_since_back);
    if revoke_while_down {
        println!(
            "  {n_verified}/{n} verified the revocation made while down; from the broker's return: {told}"
        );
    }
    json!({
        "scenario": "reconnect-storm",
        "devices": n,
        "dropped": n_down,
        "reconnected": n_back,
        "problems": problems,
        "drop_spread_ms": ms(last_down - first_down),
        "first_attempt": fw.json(),
        "first_attempt_per_100ms": stats::histogram(&first_wait, Duration::from_millis(100)),
        "outage_ms": outage_ms,
        "all_back_ms": all_back_ms,
        "back_to_subscribed": sb.json(),
        "subscribed_per_second": per_sec,
        "peak_per_100ms": stats::peak(&since_back, Duration::from_millis(100)),
        "attempts": total_attempts,
        "revoked_while_down": revoke,
        "verified": n_verified,
        "back_to_verified": told.json(),
    })
}

/// Every device refreshes once at a uniformly drawn moment within `window` (zero: all at
/// once), at most `fleet.http` in flight.
pub async fn refresh_storm(fleet: &mut Fleet, window: Duration) -> Value {
    let devices: Vec<Arc<Device>> = fleet
        .devices
        .iter()
        .filter(|d| fleet.up[d.idx])
        .cloned()
        .collect();
    let n = devices.len();
    println!(
        "\n== refresh-storm: {n} devices refresh within {:.1} s, {} requests in flight at most",
        window.as_secs_f64(),
        fleet.http
    );
    let gate = Arc::new(Semaphore::new(fleet.http.max(1)));
    let t0 = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for d in devices {
        let (gate, cloud) = (gate.clone(), fleet.cloud.clone());
        let at = t0 + window.mul_f64(unit_random());
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let Ok(_permit) = gate.acquire().await else {
                return (None, Duration::ZERO, Duration::ZERO, Instant::now());
            };
            let sent = tokio::time::Instant::now();
            let r = cloud.refresh(&d).await;
            let done = tokio::time::Instant::now();
            let status = match r {
                Ok(()) => Some(200),
                Err(e) => e.status(),
            };
            (status, done - sent, done - at, done.into_std())
        });
    }
    let (mut ok, mut c4, mut c5, mut transport) = (0usize, 0usize, 0usize, 0usize);
    let mut latency = Vec::with_capacity(n);
    let mut queued = Vec::with_capacity(n);
    let mut last = t0.into_std();
    while let Some(r) = tasks.join_next().await {
        let Ok((status, lat, q, done)) = r else {
            transport += 1;
            continue;
        };
        match status {
            Some(s) if s < 300 => ok += 1,
            Some(s) if s < 500 => c4 += 1,
            Some(_) => c5 += 1,
            None => transport += 1,
        }
        latency.push(lat);
        queued.push(q);
        last = last.max(done);
    }
    let elapsed = last - t0.into_std();
    let rate = ok as f64 / elapsed.as_secs_f64().max(1e-9);
    let l = Summary::of(&latency);
    let q = Summary::of(&queued);
    println!(
        "  {ok} refreshed, {c4} 4xx, {c5} 5xx, {transport} failed in transport; {rate:.0} refreshes/s over {:.1} s",
        elapsed.as_secs_f64()
    );
    println!("  latency (request sent -> answer): {l}");
    println!("  latency with the wait for a free connection: {q}");
    json!({
        "scenario": "refresh-storm",
        "devices": n,
        "window_ms": ms(window),
        "ok": ok,
        "status_4xx": c4,
        "status_5xx": c5,
        "transport_errors": transport,
        "refreshes_per_s": rate,
        "latency": l.json(),
        "latency_with_queue": q.json(),
    })
}
