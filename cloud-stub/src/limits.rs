//! The cloud's rate limiter: one GCRA state (a TAT) per (surface, subject), driven by the
//! injectable clock so tests can move time without sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use octomil_common::Clock;
use octomil_common::gcra::Refusal;
use octomil_common::wire::RateLimit;

/// The surfaces the cloud limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Surface {
    /// Per source IP, on `POST /devices/register`.
    Registration,
    /// Per device: register, refresh and device-key calls other than inference.
    ControlPlane,
    /// Per key, on `POST /inference`.
    Inference,
    /// Per source address: failed authentications only (unknown bearer, refresh token
    /// that does not verify).
    AuthFailure,
}

/// Past this many tracked subjects the limiter drops the idle ones.
const PRUNE_AT: usize = 100_000;

#[derive(Debug)]
pub struct Limiter {
    clock: Arc<dyn Clock>,
    tats: Mutex<HashMap<(Surface, String), u64>>,
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            tats: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one permit for `subject` on `surface`; on refusal, the whole seconds to wait.
    pub fn check(&self, surface: Surface, subject: &str, limit: RateLimit) -> Result<(), u64> {
        let gcra = limit.gcra();
        let now = self.clock.now_ms();
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if tats.len() >= PRUNE_AT {
            tats.retain(|_, tat| !gcra.is_idle(*tat, now));
        }
        let tat = tats.entry((surface, subject.to_owned())).or_insert(0);
        match gcra.acquire(tat, now, 1) {
            Ok(_) => Ok(()),
            Err(r @ Refusal::Wait { .. }) => Err(r.retry_after_secs()),
            Err(Refusal::TooLarge { .. }) => Err(u64::from(limit.period_secs).max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use octomil_common::ManualClock;
    use std::time::Duration;

    #[test]
    fn subjects_and_surfaces_are_independent() {
        let clock = ManualClock::new();
        let l = Limiter::new(Arc::new(clock.clone()));
        let lim = RateLimit::per_minute(2);
        assert!(l.check(Surface::Registration, "1.2.3.4", lim).is_ok());
        assert!(l.check(Surface::Registration, "1.2.3.4", lim).is_ok());
        assert_eq!(l.check(Surface::Registration, "1.2.3.4", lim), Err(30));
        assert!(l.check(Surface::Registration, "5.6.7.8", lim).is_ok());
        assert!(l.check(Surface::ControlPlane, "1.2.3.4", lim).is_ok());
        clock.advance(Duration::from_secs(30));
        assert!(l.check(Surface::Registration, "1.2.3.4", lim).is_ok());
    }
}
