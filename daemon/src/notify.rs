//! systemd integration: `READY=1` once the socket serves, `STATUS=` lines, and `WATCHDOG=1`
//! pings that stop when the refresh loop stops making progress (not a bare timer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The refresh loop's pulse: it beats while it waits and between steps, never while blocked in
/// a call, so a wedged loop (a cloud call hanging past the watchdog window) goes quiet.
#[derive(Debug)]
pub struct Heartbeat {
    base: Instant,
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn beat(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// How often the loop must beat to count as healthy under a watchdog of `usec`.
pub fn beat_interval(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 4).max(Duration::from_millis(50))
    })
}

/// `WATCHDOG_USEC` for this process, if systemd (or a test) asked for pings.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pings the watchdog every `interval / 2` while the heartbeat is younger than `interval / 2`.
pub async fn watchdog(interval: Duration, heartbeat: Arc<Heartbeat>, shutdown: CancellationToken) {
    let period = interval / 2;
    let mut tick = tokio::time::interval(period);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if heartbeat.age() < period {
            send(&[NotifyState::Watchdog]);
            if !healthy {
                tracing::info!("refresh loop is making progress again; watchdog pings resumed");
                healthy = true;
            }
        } else if healthy {
            tracing::warn!(stalled_for = ?heartbeat.age(), "refresh loop is stalled; withholding watchdog pings");
            healthy = false;
        }
    }
}
