//! GCRA (generic cell rate algorithm): the rate-limit arithmetic the cloud enforces and the
//! daemon mirrors. Pure functions over a "theoretical arrival time" (TAT) in milliseconds, so
//! both sides compute the same answer from the same inputs and the state is one `u64`.
//!
//! A limit of `limit` requests per `period` allows a burst of `limit` back to back, then one
//! every `period / limit`. The TAT is the instant at which the bucket would be empty again.

use serde::{Deserialize, Serialize};

/// `limit` requests per `period_ms`, burst `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gcra {
    /// Cost of one request in time units (nanoseconds of the period), `period / limit`.
    emission_ns: u64,
    /// Burst tolerance: `limit * emission`.
    tau_ns: u64,
    limit: u32,
}

/// A grant: how many more requests would be granted right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub remaining: u32,
}

/// A refusal: how long until the request would be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wait this long and try again.
    Wait { wait_ms: u64 },
    /// More permits than the burst: never grantable as one batch.
    TooLarge { limit: u32 },
}

impl Refusal {
    /// `Retry-After` in whole seconds, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        match *self {
            Self::Wait { wait_ms } => wait_ms.div_ceil(1000).max(1),
            Self::TooLarge { .. } => 0,
        }
    }
}

impl Gcra {
    /// `limit` requests per `period_ms`. `limit` and `period_ms` must be non-zero.
    pub fn new(limit: u32, period_ms: u64) -> Self {
        let limit = limit.max(1);
        // At least 1 ns: a limit larger than the period in nanoseconds (a cloud may send
        // anything) must not make the cost of a request zero and `remaining` divide by it.
        let emission_ns = (period_ms.max(1).saturating_mul(1_000_000) / u64::from(limit)).max(1);
        Self {
            emission_ns,
            tau_ns: emission_ns.saturating_mul(u64::from(limit)),
            limit,
        }
    }

    pub fn per_minute(limit: u32) -> Self {
        Self::new(limit, 60_000)
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Tries to take `n` permits at `now_ms`. On success `tat` is advanced; on refusal it is
    /// left unchanged, so refused requests cost nothing.
    pub fn acquire(&self, tat_ns: &mut u64, now_ms: u64, n: u32) -> Result<Grant, Refusal> {
        if n > self.limit {
            return Err(Refusal::TooLarge { limit: self.limit });
        }
        let now = now_ms.saturating_mul(1_000_000);
        let start = (*tat_ns).max(now);
        let new_tat = start.saturating_add(self.emission_ns * u64::from(n));
        let used = new_tat - now;
        if used > self.tau_ns {
            let wait_ns = used - self.tau_ns;
            return Err(Refusal::Wait {
                wait_ms: wait_ns.div_ceil(1_000_000),
            });
        }
        *tat_ns = new_tat;
        Ok(Grant {
            remaining: self.remaining_at(new_tat, now),
        })
    }

    /// Permits available at `now_ms` without taking any.
    pub fn remaining(&self, tat_ns: u64, now_ms: u64) -> u32 {
        let now = now_ms.saturating_mul(1_000_000);
        self.remaining_at(tat_ns.max(now), now)
    }

    fn remaining_at(&self, tat: u64, now: u64) -> u32 {
        let used = tat - now;
        ((self.tau_ns - used.min(self.tau_ns)) / self.emission_ns) as u32
    }

    /// Caps a TAT at one full burst ahead of `now_ms`. A wall clock that jumped back leaves
    /// the TAT far in the future; this bounds the debt to one period.
    pub fn clamp(&self, tat_ns: &mut u64, now_ms: u64) {
        let max = now_ms.saturating_mul(1_000_000).saturating_add(self.tau_ns);
        if *tat_ns > max {
            *tat_ns = max;
        }
    }

    /// True once `tat` is in the past: the bucket is full and the state can be forgotten.
    pub fn is_idle(&self, tat_ns: u64, now_ms: u64) -> bool {
        tat_ns <= now_ms.saturating_mul(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_above_the_period_in_nanoseconds_does_not_divide_by_zero() {
        // 4 billion per millisecond: emission would round to 0 ns.
        let g = Gcra::new(u32::MAX, 1);
        let mut tat = 0;
        assert!(g.acquire(&mut tat, 1_000, 1).is_ok());
        let _ = g.remaining(tat, 1_000);
        let g = Gcra::new(u32::MAX, u64::MAX);
        let _ = g.remaining(0, u64::MAX);
    }

    #[test]
    fn burst_then_one_per_emission_interval() {
        let g = Gcra::per_minute(1000);
        let mut tat = 0;
        let t0 = 1_700_000_000_000;
        for i in 0..1000 {
            let grant = g.acquire(&mut tat, t0, 1).unwrap();
            assert_eq!(grant.remaining, 999 - i);
        }
        let refusal = g.acquire(&mut tat, t0, 1).unwrap_err();
        assert_eq!(refusal, Refusal::Wait { wait_ms: 60 });
        assert_eq!(refusal.retry_after_secs(), 1);
        // After the advertised wait exactly one more is granted.
        let later = t0 + refusal.retry_after_secs() * 1000;
        assert!(g.acquire(&mut tat, later, 1).is_ok());
        // 1 s buys 1000/60 = 16.6 permits: 16 more, having spent one.
        let mut granted = 1;
        while g.acquire(&mut tat, later, 1).is_ok() {
            granted += 1;
        }
        assert_eq!(granted, 16);
    }

    #[test]
    fn registration_limit_retry_after_is_at_least_one_second() {
        let g = Gcra::per_minute(10);
        let mut tat = 0;
        for _ in 0..10 {
            g.acquire(&mut tat, 5_000, 1).unwrap();
        }
        let r = g.acquire(&mut tat, 5_000, 1).unwrap_err();
        assert_eq!(r, Refusal::Wait { wait_ms: 6_000 });
        assert_eq!(r.retry_after_secs(), 6);
    }

    #[test]
    fn refusals_cost_nothing_and_batches_are_atomic() {
        let g = Gcra::per_minute(100);
        let mut tat = 0;
        g.acquire(&mut tat, 0, 95).unwrap();
        let before = tat;
        assert!(g.acquire(&mut tat, 0, 10).is_err());
        assert_eq!(tat, before);
        assert_eq!(g.acquire(&mut tat, 0, 5).unwrap().remaining, 0);
        assert_eq!(
            g.acquire(&mut tat, 0, 101),
            Err(Refusal::TooLarge { limit: 100 })
        );
    }

    #[test]
    fn bucket_refills_fully_after_a_period() {
        let g = Gcra::per_minute(100);
        let mut tat = 0;
        g.acquire(&mut tat, 0, 100).unwrap();
        assert_eq!(g.remaining(tat, 0), 0);
        assert_eq!(g.remaining(tat, 30_000), 50);
        assert_eq!(g.remaining(tat, 60_000), 100);
        assert!(g.is_idle(tat, 60_000));
        // Idle time does not bank more than one burst.
        assert_eq!(g.remaining(tat, 600_000), 100);
    }

    #[test]
    fn clamp_bounds_debt_to_one_burst() {
        let g = Gcra::per_minute(100);
        let mut tat = u64::MAX / 2;
        g.clamp(&mut tat, 1_000);
        assert_eq!(g.remaining(tat, 1_000), 0);
        assert_eq!(g.remaining(tat, 61_000), 100);
        let mut small = 5;
        g.clamp(&mut small, 1_000);
        assert_eq!(small, 5, "a TAT in the past is left alone");
    }

    proptest::proptest! {
        /// Over any window of one period, no sequence of requests gets more than
        /// `limit` + what the elapsed time refills.
        #[test]
        fn never_over_grants(steps in proptest::collection::vec((0u64..2_000, 1u32..20), 1..400)) {
            let g = Gcra::per_minute(100);
            let mut tat = 0;
            let mut now = 0;
            let mut granted: u64 = 0;
            for (dt, n) in steps {
                now += dt;
                if g.acquire(&mut tat, now, n).is_ok() {
                    granted += u64::from(n);
                }
            }
            // 100 burst plus one per 600 ms elapsed.
            proptest::prop_assert!(granted <= 100 + now / 600);
        }
    }
}
