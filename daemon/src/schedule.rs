//! When to refresh: at 70-80 % of the key's lifetime (jittered so a fleet that registered
//! together does not refresh together), clamped so there is always time left to retry.

use std::time::Duration;

/// Earliest and latest fraction of the lifetime at which to refresh.
pub const FRACTION: (f64, f64) = (0.70, 0.80);
/// Never refresh sooner than this after receiving a key...
pub const MIN_WAIT: Duration = Duration::from_secs(1);
/// ...and always leave at least this much (or a fifth of the lifetime, if less) before
/// expiry for retries.
pub const MIN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long after receiving a key of `lifetime` to refresh it. `unit` is a uniform draw in
/// `[0, 1)` picking the point within [`FRACTION`].
pub fn refresh_in(lifetime: Duration, unit: f64) -> Duration {
    let frac = FRACTION.0 + (FRACTION.1 - FRACTION.0) * unit.clamp(0.0, 1.0);
    let target = lifetime.mul_f64(frac);
    let margin = MIN_MARGIN.min(lifetime / 5);
    let latest = lifetime.saturating_sub(margin).max(MIN_WAIT);
    target.clamp(MIN_WAIT.min(latest), latest)
}

/// A key loaded past its refresh point is refreshed within this much (jittered, and within a
/// quarter of what is left of it), so a fleet that boots together (a site's power returns)
/// does not refresh in the same second.
pub const OVERDUE_SPREAD: Duration = Duration::from_secs(60);

/// The refresh delay of a key that was loaded from disk: `remaining` of its `lifetime` is
/// left. Past the refresh point: soon, spread by `unit` over [`OVERDUE_SPREAD`] or a quarter
/// of `remaining`, whichever is less (an expired key: now).
pub fn refresh_in_remaining(lifetime: Duration, remaining: Duration, unit: f64) -> Duration {
    let elapsed = lifetime.saturating_sub(remaining);
    match refresh_in(lifetime, unit).checked_sub(elapsed) {
        Some(d) if !d.is_zero() => d,
        _ => OVERDUE_SPREAD
            .min(remaining / 4)
            .mul_f64(unit.clamp(0.0, 1.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn table() {
        // (lifetime s, unit, expected s)
        let cases: &[(u64, f64, u64)] = &[
            (24 * H, 0.0, 60_480),  // 70 % of a day
            (24 * H, 0.5, 64_800),  // 75 %
            (24 * H, 1.0, 69_120),  // 80 %
            (48 * H, 0.5, 129_600), // follows the lifetime the cloud sets
            (H, 1.0, 2_880),        // 80 % of an hour, 12 min of margin left
            (10 * 60, 1.0, 480),    // margin min(5 min, lifetime/5) = 2 min
            (10, 0.5, 8),           // 7.5 s, clamped to lifetime - 2 s
            (5, 0.0, 4),            // 3.5 s -> 4 s (margin 1 s)
            (1, 0.5, 1),            // never sooner than MIN_WAIT
            (0, 0.5, 1),
        ];
        for &(lifetime, unit, want) in cases {
            let got = refresh_in(Duration::from_secs(lifetime), unit);
            assert_eq!(
                got.as_secs_f64().round() as u64,
                want,
                "lifetime {lifetime} s, unit {unit}"
            );
        }
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let lifetime = Duration::from_secs(24 * H);
        let early = refresh_in(lifetime, 0.0);
        let late = refresh_in(lifetime, 0.999);
        assert!(
            late - early > Duration::from_secs(2 * H),
            "{early:?}..{late:?}"
        );
    }

    #[test]
    fn always_before_expiry() {
        for secs in [2u64, 5, 30, 61, 600, 86_400, 365 * 86_400] {
            for unit in [0.0, 0.3, 0.99] {
                let l = Duration::from_secs(secs);
                assert!(refresh_in(l, unit) < l, "{secs} {unit}");
            }
        }
    }

    #[test]
    fn loaded_keys_resume_their_schedule() {
        let l = Duration::from_secs(24 * H);
        // Restarted an hour after receiving the key: one hour less to wait.
        assert_eq!(
            refresh_in_remaining(l, Duration::from_secs(23 * H), 0.5),
            Duration::from_secs(64_800 - 3_600)
        );
        // Past the refresh point: soon, spread over a minute (a fleet booting together).
        assert_eq!(
            refresh_in_remaining(l, Duration::from_secs(H), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_in_remaining(l, Duration::from_secs(H), 0.0),
            Duration::ZERO
        );
        // Little left: within a quarter of it. Expired: now.
        assert_eq!(
            refresh_in_remaining(l, Duration::from_secs(40), 0.5),
            Duration::from_secs(5)
        );
        assert_eq!(refresh_in_remaining(l, Duration::ZERO, 0.9), Duration::ZERO);
    }
}
