//! Capped exponential backoff with jitter: the one retry-delay rule of the daemon (cloud
//! calls, broker reconnects) and the cloud (broker reconnects, the revocation outbox).
//! [`Backoff::delay`] is pure arithmetic: the caller counts attempts, supplies the random
//! draw (usually [`unit_random`]) and does the waiting.

use std::time::Duration;

/// Where in `[low, high] x ceiling` a delay lands, as fractions of the attempt's ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    pub low: f64,
    pub high: f64,
}

impl Jitter {
    /// "Full jitter": anywhere from zero to the ceiling. Spreads a fleet the most.
    pub const FULL: Jitter = Jitter {
        low: 0.0,
        high: 1.0,
    };
    /// The ceiling ±25 %: never much sooner than planned, still out of lock step.
    pub const QUARTER: Jitter = Jitter {
        low: 0.75,
        high: 1.25,
    };
}

/// Retry policy: attempt `n` (0-based) has the ceiling `min(cap, base * 2^n)` and waits
/// `ceiling * (jitter.low + (jitter.high - jitter.low) * unit)`, never less than a
/// `Retry-After` the server gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    /// The ceiling of attempt `attempt`'s wait.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `attempt`, with `unit` a uniform draw in `[0, 1)`.
    /// A `retry_after` from the server is a floor: waiting less would only earn another 429.
    pub fn delay(&self, attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let Jitter { low, high } = self.jitter;
        let factor = low + (high - low) * unit.clamp(0.0, 1.0);
        let secs = self.ceiling(attempt).as_secs_f64() * factor;
        let jittered = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }
}

/// A uniform draw in `[0, 1)` from the OS random source (jitter must differ across a fleet,
/// so a seeded PRNG shared by identical images would defeat it). The one impure function
/// here; 0.5 if the OS source fails.
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
        jitter: Jitter::FULL,
    };

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let got: Vec<u64> = (0..12).map(|n| FULL.ceiling(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(FULL.ceiling(1000), Duration::from_secs(300));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        assert_eq!(FULL.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(FULL.delay(3, 0.5, None), Duration::from_secs(4));
        assert!(FULL.delay(3, 0.999_999, None) < Duration::from_secs(8));
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(
            FULL.delay(0, 0.1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            FULL.delay(8, 1.0, Some(Duration::from_secs(7))),
            Duration::from_secs(256)
        );
    }

    #[test]
    fn quarter_jitter_doubles_up_to_the_cap_within_the_band() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            jitter: Jitter::QUARTER,
        };
        for (attempt, ms) in [(0, 100.0), (1, 200.0), (2, 400.0), (3, 400.0), (30, 400.0)] {
            for unit in [0.0, 0.25, 0.5, 0.999_999, 1.0, unit_random()] {
                let d = b.delay(attempt, unit, None).as_secs_f64() * 1000.0;
                assert!(
                    d >= ms * 0.75 - 1e-6 && d <= ms * 1.25 + 1e-6,
                    "{d} vs {ms}"
                );
            }
        }
        assert_eq!(b.delay(0, 0.0, None), Duration::from_millis(75));
        assert_eq!(b.delay(2, 0.5, None), Duration::from_millis(400));
    }

    #[test]
    fn huge_ceilings_saturate_instead_of_panicking() {
        let b = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
            jitter: Jitter::QUARTER,
        };
        assert_eq!(b.delay(5, 1.0, None), Duration::MAX);
    }

    #[test]
    fn random_units_are_in_range() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
