//! Percentiles, per-bucket counts, and the daemon's retry timing played out for a whole fleet
//! (pure arithmetic over the daemon's own functions: no sockets, no clock).

use std::time::Duration;

use octomil_common::backoff::unit_random;
use serde_json::{Value, json};

/// p50 / p99 / max of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        let mut s = samples.to_vec();
        s.sort();
        Self {
            n: s.len(),
            p50: percentile(&s, 0.50),
            p99: percentile(&s, 0.99),
            max: s.last().copied().unwrap_or_default(),
        }
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "max_ms": ms(self.max)})
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.n,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with a fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How many of `times` fall in each `bucket`-wide slot from zero; trailing empty slots dropped.
pub fn histogram(times: &[Duration], bucket: Duration) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for t in times {
        let i = (t.as_nanos() / bucket.as_nanos().max(1)) as usize;
        if out.len() <= i {
            out.resize(i + 1, 0);
        }
        out[i] += 1;
    }
    out
}

/// One line per slot, with a bar scaled to the fullest slot.
pub fn render(hist: &[usize], bucket: Duration, max_lines: usize) -> String {
    let top = hist.iter().copied().max().unwrap_or(0).max(1);
    let mut s = String::new();
    for (i, n) in hist.iter().enumerate().take(max_lines) {
        let from = bucket * i as u32;
        let bar = "#".repeat((n * 40).div_ceil(top));
        s.push_str(&format!(
            "    {:>7.1}-{:<7.1} s {:>6} {bar}\n",
            from.as_secs_f64(),
            (from + bucket).as_secs_f64(),
            n
        ));
    }
    if hist.len() > max_lines {
        let rest: usize = hist[max_lines..].iter().sum();
        s.push_str(&format!("    (later: {rest})\n"));
    }
    s
}

/// Where a fleet lands after an outage of `outage`, each device retrying on its own with
/// `delay(failures, unit)` from the moment it lost the service (attempts fail instantly, as a
/// refused connection does): the offset after the service returned of each device's first
/// attempt that finds it up.
pub fn arrivals_after(
    devices: usize,
    outage: Duration,
    delay: impl Fn(u32, f64) -> Duration,
) -> Vec<Duration> {
    (0..devices)
        .map(|_| {
            let mut t = Duration::ZERO;
            let mut failures = 0u32;
            loop {
                t += delay(failures, unit_random());
                if t >= outage {
                    return t - outage;
                }
                failures = failures.saturating_add(1);
            }
        })
        .collect()
}

/// The fullest `window`-wide slot of a set of offsets.
pub fn peak(times: &[Duration], window: Duration) -> usize {
    histogram(times, window).into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_histograms() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let sum = Summary::of(&s);
        assert_eq!(sum.p50, Duration::from_millis(50));
        assert_eq!(sum.p99, Duration::from_millis(99));
        assert_eq!(sum.max, Duration::from_millis(100));
        let h = histogram(&s, Duration::from_millis(50));
        assert_eq!(h, vec![49, 50, 1]);
        assert_eq!(peak(&s, Duration::from_millis(50)), 50);
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn arrivals_land_after_the_outage_and_within_the_backoff_cap() {
        let cap = Duration::from_secs(60);
        let a = arrivals_after(500, Duration::from_secs(30), |f, u| {
            octomil_common::backoff::Backoff {
                base: Duration::from_secs(1),
                cap,
                jitter: octomil_common::backoff::Jitter::FULL,
            }
            .delay(f, u, None)
        });
        assert_eq!(a.len(), 500);
        assert!(a.iter().all(|d| *d <= cap));
    }
}
