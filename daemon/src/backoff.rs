//! Capped exponential backoff with full jitter, honouring a server's `Retry-After`.
//! Pure arithmetic: the caller supplies the randomness and does the waiting.

use std::time::Duration;

/// Retry policy: attempt `n` (0-based) waits a uniform draw from `[0, min(cap, base * 2^n)]`,
/// never less than a `Retry-After` the server gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const CLOUD: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };

    /// The ceiling of attempt `attempt`'s wait.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `attempt`, with `unit` a uniform draw in `[0, 1)`.
    /// A `retry_after` from the server is a floor: waiting less would only earn another 429.
    pub fn delay(&self, attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let jittered = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }
}

/// A uniform draw in `[0, 1)` from the OS random source (jitter must differ across a fleet,
/// so a seeded PRNG shared by identical images would defeat it).
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

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::CLOUD;
        let got: Vec<u64> = (0..12).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.ceiling(1000), Duration::from_secs(300));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = Backoff::CLOUD;
        assert_eq!(b.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(b.delay(3, 0.5, None), Duration::from_secs(4));
        assert!(b.delay(3, 0.999_999, None) < Duration::from_secs(8));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff::CLOUD;
        assert_eq!(
            b.delay(0, 0.1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.delay(8, 1.0, Some(Duration::from_secs(7))),
            Duration::from_secs(256)
        );
    }

    #[test]
    fn random_units_are_in_range() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
