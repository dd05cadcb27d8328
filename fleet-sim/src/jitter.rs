//! `octomil-fleet-sim jitter`: how the daemon's own retry and refresh timing spreads a fleet
//! after an outage, computed with its functions (`octomild::mqtt::reconnect_delay`,
//! `octomild::lifecycle::CLOUD_RETRY`, `octomild::schedule`), one uniform draw per device from
//! the OS as on a device. Answers "do N devices arrive in the same second?".

use std::time::Duration;

use octomil_common::backoff::unit_random;
use octomild::lifecycle::CLOUD_RETRY;
use octomild::mqtt::reconnect_delay;
use octomild::schedule;
use serde_json::{Value, json};

use crate::stats::{self, Summary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// The device-key lifetime the org sets, seconds (refresh scheduling).
    #[arg(long, default_value_t = 86_400)]
    lifetime_secs: u64,
    /// Print the figures as JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Outages after which arrivals are computed: a restart, a short and a long one.
const OUTAGES: [u64; 5] = [1, 3, 10, 60, 600];

pub fn run(a: &Args) {
    let v = compute(a.devices, Duration::from_secs(a.lifetime_secs));
    if a.json {
        println!("{v}");
    }
}

fn line(what: &str, times: &[Duration]) -> Value {
    let s = Summary::of(times);
    let per_s = stats::peak(times, Duration::from_secs(1));
    let per_100 = stats::peak(times, Duration::from_millis(100));
    println!(
        "  {what:<44} spread p50 {:>7.1} s, max {:>7.1} s; busiest second {per_s:>6}, busiest 100 ms {per_100:>5}",
        s.p50.as_secs_f64(),
        s.max.as_secs_f64()
    );
    json!({"what": what, "p50_s": s.p50.as_secs_f64(), "max_s": s.max.as_secs_f64(), "peak_per_s": per_s, "peak_per_100ms": per_100})
}

/// Prints the spread of a fleet of `n` and returns it as JSON.
pub fn compute(n: usize, lifetime: Duration) -> Value {
    println!("The daemon's timing for {n} devices (its own functions, one OS random draw each)\n");
    println!("MQTT reconnect (daemon/src/mqtt.rs: reconnect_delay):");
    let first: Vec<Duration> = (0..n).map(|_| reconnect_delay(0, unit_random())).collect();
    let mut mqtt = vec![line("first attempt after the session dropped", &first)];
    print!(
        "  first attempts per 100 ms after the drop:\n{}",
        stats::render(
            &stats::histogram(&first, Duration::from_millis(100)),
            Duration::from_millis(100),
            12
        )
    );
    for secs in OUTAGES {
        let a = stats::arrivals_after(n, Duration::from_secs(secs), reconnect_delay);
        mqtt.push(line(
            &format!("arrivals after a {secs} s broker outage"),
            &a,
        ));
    }
    println!("\nRefresh (daemon/src/schedule.rs, lifecycle::CLOUD_RETRY):");
    let together: Vec<Duration> = (0..n)
        .map(|_| schedule::refresh_in(lifetime, unit_random()))
        .collect();
    let earliest = together.iter().min().copied().unwrap_or_default();
    let shifted: Vec<Duration> = together.iter().map(|t| *t - earliest).collect();
    let mut refresh = vec![line(
        &format!(
            "registered together, {} s keys: refreshes",
            lifetime.as_secs()
        ),
        &shifted,
    )];
    let overdue: Vec<Duration> = (0..n)
        .map(|_| schedule::refresh_in_remaining(lifetime, lifetime / 10, unit_random()))
        .collect();
    refresh.push(line(
        "booted together with overdue keys: refreshes",
        &overdue,
    ));
    let retry = |f: u32, u: f64| CLOUD_RETRY.delay(f, u, None);
    for secs in OUTAGES {
        let a = stats::arrivals_after(n, Duration::from_secs(secs), retry);
        refresh.push(line(&format!("retries after a {secs} s cloud outage"), &a));
    }
    json!({"devices": n, "mqtt": mqtt, "refresh": refresh})
}
