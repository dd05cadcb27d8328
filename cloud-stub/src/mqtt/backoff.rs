//! Capped exponential backoff with jitter, for reconnecting to the broker and retrying the outbox.

use std::time::Duration;

/// Doubles from `base` up to `cap`; each delay is spread by up to ±25 % so that many clouds
/// (or a restarted one) do not retry in lock step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            next: base,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }

    /// The delay to wait now; the one after is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        jitter(d)
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        u16::from_le_bytes(b)
    } else {
        u16::MAX / 2
    };
    // Factor in [0.75, 1.25).
    let factor = 0.75 + f64::from(r) / f64::from(u16::MAX) / 2.0;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let bands = [100, 200, 400, 400];
        for ms in bands {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            let ms = f64::from(ms);
            assert!(d >= ms * 0.75 && d <= ms * 1.25, "{d} vs {ms}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
