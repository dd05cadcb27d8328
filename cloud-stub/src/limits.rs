//! The cloud's rate limiter: one GCRA state (a TAT) per (surface, subject), driven by the
//! injectable clock so tests can move time without sleeping; and the login guards (backoff
//! per account and address, a ceiling per account, a bound on concurrent password hashes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use octomil_common::Clock;
use octomil_common::gcra::Refusal;
use octomil_common::wire::RateLimit;

/// The device-facing surfaces: the ones the daemon mirrors, named on the wire in every
/// register and refresh answer. One definition, in `octomil_common`.
pub use octomil_common::wire::Surface;

/// What the cloud budgets: the device-facing [`Surface`]s, and the cloud's own per-address
/// budgets that no device is told about (so they stay off the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Per device (control plane: register, refresh and device-key calls other than
    /// inference) or per key (`POST /inference`).
    Device(Surface),
    /// Per source IP, on `POST /devices/register`.
    Registration,
    /// Per source IP, on `POST /devices/register/challenge`: a budget of its own, so only
    /// register calls count toward the registration limit.
    Challenge,
    /// Per source address: failed authentications only (unknown bearer, refresh token
    /// that does not verify).
    AuthFailure,
}

impl From<Surface> for Budget {
    fn from(surface: Surface) -> Self {
        Self::Device(surface)
    }
}

/// The challenge endpoint's generous per-address floor (60/min, burst 60).
pub const CHALLENGE_LIMIT: RateLimit = RateLimit::per_minute(60);

/// The challenge endpoint's per-address limit: at least [`CHALLENGE_LIMIT`], and six
/// challenges per registration the address may make (an operator who raises the registration
/// limit for a mass enrolment raises this with it).
pub fn challenge_limit(registration: RateLimit) -> RateLimit {
    let per_min = |l: RateLimit| u64::from(l.limit) * 60 / u64::from(l.period_secs.max(1));
    if per_min(registration).saturating_mul(6) <= per_min(CHALLENGE_LIMIT) {
        return CHALLENGE_LIMIT;
    }
    RateLimit {
        limit: registration.limit.saturating_mul(6),
        period_secs: registration.period_secs,
    }
}

/// Past this many tracked subjects the limiter drops the idle ones.
const PRUNE_AT: usize = 100_000;

#[derive(Debug)]
pub struct Limiter {
    clock: Arc<dyn Clock>,
    tats: Mutex<HashMap<(Budget, String), u64>>,
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            tats: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one permit for `subject` from `budget`; on refusal, the whole seconds to wait.
    pub fn check(
        &self,
        budget: impl Into<Budget>,
        subject: &str,
        limit: RateLimit,
    ) -> Result<(), u64> {
        let budget = budget.into();
        let gcra = limit.gcra();
        let now = self.clock.now_ms();
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if tats.len() >= PRUNE_AT {
            tats.retain(|_, tat| !gcra.is_idle(*tat, now));
        }
        let tat = tats.entry((budget, subject.to_owned())).or_insert(0);
        match gcra.acquire(tat, now, 1) {
            Ok(_) => Ok(()),
            Err(r @ Refusal::Wait { .. }) => Err(r.retry_after_secs()),
            Err(Refusal::TooLarge { .. }) => Err(u64::from(limit.period_secs).max(1)),
        }
    }

    /// What the limiter knows of `subject`'s `budget` under `limit` now, taking nothing and
    /// writing nothing (the dashboard's device page shows it).
    pub fn peek(&self, budget: impl Into<Budget>, subject: &str, limit: RateLimit) -> Peek {
        let budget = budget.into();
        let gcra = limit.gcra();
        let now = self.clock.now_ms();
        let tat = self
            .tats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(budget, subject.to_owned()))
            .copied()
            .unwrap_or(0);
        let mut probe = tat;
        let retry_after_secs = match gcra.acquire(&mut probe, now, 1) {
            Ok(_) => None,
            Err(r @ Refusal::Wait { .. }) => Some(r.retry_after_secs()),
            Err(Refusal::TooLarge { .. }) => Some(u64::from(limit.period_secs).max(1)),
        };
        Peek {
            limit,
            remaining: gcra.remaining(tat, now),
            retry_after_secs,
            full_at_ms: (!gcra.is_idle(tat, now)).then(|| tat.div_ceil(1_000_000)),
        }
    }
}

/// One budget of one subject as the limiter sees it at a moment ([`Limiter::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    pub limit: RateLimit,
    /// Calls that would be granted right now, back to back.
    pub remaining: u32,
    /// When none remain: whole seconds until the next call is granted.
    pub retry_after_secs: Option<u64>,
    /// Unix milliseconds at which the full burst is available again; `None` if it is now.
    pub full_at_ms: Option<u64>,
}

/// Failed logins an (account, source address) pair may make before backoff starts.
pub const FREE_LOGIN_FAILURES: u32 = 5;
/// The longest a pair waits between attempts.
pub const MAX_LOGIN_BACKOFF_SECS: u64 = 15 * 60;
/// Failed logins per account across all addresses: 100 an hour.
pub const ACCOUNT_LOGIN_CEILING: RateLimit = RateLimit {
    limit: 100,
    period_secs: 3600,
};
/// A pair idle this long is forgotten.
const PAIR_IDLE_MS: u64 = 3600 * 1000;

#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    /// Attempts since the last success, counted when they start (so a burst of concurrent
    /// attempts cannot all slip through before the first one failed).
    attempts: u32,
    locked_until_ms: u64,
    last_ms: u64,
}

/// Login throttling: exponential backoff per (account, source address) and a ceiling per
/// account. Unknown emails are throttled exactly like known ones. Checked before any
/// password hash runs, so a throttled attempt costs next to nothing.
#[derive(Debug)]
pub struct LoginThrottle {
    clock: Arc<dyn Clock>,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    pairs: HashMap<(String, String), Backoff>,
    /// GCRA TATs of failed logins per account.
    accounts: HashMap<String, u64>,
}

impl LoginThrottle {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::new(ThrottleState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attempt; on refusal, the whole seconds to wait (`Retry-After`).
    pub fn begin(&self, account: &str, ip: &str) -> Result<(), u64> {
        let now = self.clock.now_ms();
        let gcra = ACCOUNT_LOGIN_CEILING.gcra();
        let mut st = self.lock();
        if st.pairs.len() >= PRUNE_AT {
            st.pairs
                .retain(|_, b| b.locked_until_ms > now || now - b.last_ms < PAIR_IDLE_MS);
        }
        if st.accounts.len() >= PRUNE_AT {
            st.accounts.retain(|_, tat| !gcra.is_idle(*tat, now));
        }
        if let Some(tat) = st.accounts.get(account) {
            let mut peek = *tat;
            if let Err(r) = gcra.acquire(&mut peek, now, 1) {
                return Err(r.retry_after_secs());
            }
        }
        let b = st
            .pairs
            .entry((account.to_owned(), ip.to_owned()))
            .or_default();
        if now < b.locked_until_ms {
            return Err((b.locked_until_ms - now).div_ceil(1000).max(1));
        }
        b.attempts = b.attempts.saturating_add(1);
        b.last_ms = now;
        if b.attempts > FREE_LOGIN_FAILURES {
            let exp = (b.attempts - FREE_LOGIN_FAILURES - 1).min(20);
            let secs = (1u64 << exp).min(MAX_LOGIN_BACKOFF_SECS);
            b.locked_until_ms = now + secs * 1000;
        }
        Ok(())
    }

    /// The attempt failed: it also counts against the account's ceiling.
    pub fn failed(&self, account: &str) {
        let now = self.clock.now_ms();
        let gcra = ACCOUNT_LOGIN_CEILING.gcra();
        let mut st = self.lock();
        let tat = st.accounts.entry(account.to_owned()).or_insert(0);
        let _ = gcra.acquire(tat, now, 1);
    }

    /// The attempt succeeded: the pair starts afresh.
    pub fn succeeded(&self, account: &str, ip: &str) {
        self.lock()
            .pairs
            .remove(&(account.to_owned(), ip.to_owned()));
    }
}

/// Bounds the password hashes (Argon2id, about 19 MiB each) running at once, and the
/// requests waiting for one: past both, a login is answered 503 with `Retry-After` instead
/// of queueing without bound. Each slot owns its Argon2 working memory, reused from hash to
/// hash, so the memory logins use is fixed: slots x 19 MiB.
#[derive(Debug)]
pub struct HashGate {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    memories: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
}

/// A hash slot: the right to run one hash, and the memory to run it in. Returned to the gate
/// when dropped.
#[derive(Debug)]
pub struct HashSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    memory: Vec<argon2::Block>,
    memories: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
}

impl HashSlot {
    /// The slot's Argon2 working memory.
    pub fn memory(&mut self) -> &mut Vec<argon2::Block> {
        &mut self.memory
    }
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.memories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(memory);
    }
}

/// How long a login waits for a hash slot before 503.
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl HashGate {
    /// `running` hashes at once (at least 1), `max_waiting` more queued.
    pub fn new(running: usize, max_waiting: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(running.max(1))),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting,
            memories: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// One hash slot per CPU: hashing is CPU-bound, more at once only costs memory.
    pub fn per_cpu() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cpus, 8 * cpus)
    }

    /// A slot, or the seconds to wait before trying again.
    pub async fn acquire(&self) -> Result<HashSlot, u64> {
        let permit = self.permit().await?;
        let memory = self
            .memories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        Ok(HashSlot {
            _permit: permit,
            memory,
            memories: self.memories.clone(),
        })
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, u64> {
        use std::sync::atomic::Ordering;
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(1);
        }
        let got = tokio::time::timeout(HASH_WAIT, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use octomil_common::ManualClock;
    use std::time::Duration;

    #[test]
    fn peek_reports_the_budget_and_takes_nothing() {
        use octomil_common::Clock as _;
        let clock = ManualClock::new();
        let l = Limiter::new(Arc::new(clock.clone()));
        let limit = RateLimit {
            limit: 2,
            period_secs: 60,
        };
        let s = Surface::ControlPlane;
        let fresh = l.peek(s, "d1", limit);
        assert_eq!(
            (fresh.remaining, fresh.retry_after_secs, fresh.full_at_ms),
            (2, None, None)
        );
        let now = clock.now_ms();
        assert_eq!(l.check(s, "d1", limit), Ok(()));
        assert_eq!(l.peek(s, "d1", limit).remaining, 1);
        assert_eq!(l.peek(s, "d1", limit).full_at_ms, Some(now + 30_000));
        assert_eq!(l.check(s, "d1", limit), Ok(()));
        let spent = l.peek(s, "d1", limit);
        assert_eq!(spent.remaining, 0);
        assert_eq!(spent.retry_after_secs, Some(30));
        assert_eq!(spent.full_at_ms, Some(now + 60_000));
        // Peeking took nothing; another subject and budget are untouched.
        assert_eq!(l.peek(s, "d1", limit), spent);
        assert_eq!(l.peek(Surface::Inference, "d1", limit).remaining, 2);
        clock.advance(Duration::from_secs(30));
        assert_eq!(l.peek(s, "d1", limit).remaining, 1);
    }

    #[test]
    fn login_backoff_grows_per_pair_and_success_resets_it() {
        let clock = ManualClock::new();
        let t = LoginThrottle::new(Arc::new(clock.clone()));
        for _ in 0..FREE_LOGIN_FAILURES {
            assert_eq!(t.begin("a@x", "1.1.1.1"), Ok(()));
            t.failed("a@x");
        }
        // The sixth attempt runs and locks the pair for 1 s, the seventh for 2 s.
        assert_eq!(t.begin("a@x", "1.1.1.1"), Ok(()));
        assert_eq!(t.begin("a@x", "1.1.1.1"), Err(1));
        // Another address, and another account, are not affected.
        assert_eq!(t.begin("a@x", "2.2.2.2"), Ok(()));
        assert_eq!(t.begin("b@x", "1.1.1.1"), Ok(()));
        clock.advance(Duration::from_secs(1));
        assert_eq!(t.begin("a@x", "1.1.1.1"), Ok(()));
        assert_eq!(t.begin("a@x", "1.1.1.1"), Err(2));
        clock.advance(Duration::from_secs(2));
        t.succeeded("a@x", "1.1.1.1");
        assert_eq!(t.begin("a@x", "1.1.1.1"), Ok(()));
    }

    #[test]
    fn the_account_ceiling_holds_across_addresses() {
        let clock = ManualClock::new();
        let t = LoginThrottle::new(Arc::new(clock.clone()));
        for i in 0..ACCOUNT_LOGIN_CEILING.limit {
            assert_eq!(
                t.begin("a@x", &format!("10.0.{}.{}", i / 250, i % 250)),
                Ok(())
            );
            t.failed("a@x");
        }
        assert!(t.begin("a@x", "192.0.2.1").is_err());
        assert_eq!(t.begin("b@x", "192.0.2.1"), Ok(()));
    }

    #[tokio::test]
    async fn the_hash_gate_bounds_running_and_waiting() {
        let g = HashGate::new(1, 1);
        let held = g.acquire().await.unwrap();
        let g = Arc::new(g);
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.acquire().await.is_ok() }
        });
        // Let the waiter queue, then a third caller finds the queue full at once.
        while g.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(g.acquire().await.err(), Some(1));
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn subjects_and_surfaces_are_independent() {
        let clock = ManualClock::new();
        let l = Limiter::new(Arc::new(clock.clone()));
        let lim = RateLimit::per_minute(2);
        assert!(l.check(Budget::Registration, "1.2.3.4", lim).is_ok());
        assert!(l.check(Budget::Registration, "1.2.3.4", lim).is_ok());
        assert_eq!(l.check(Budget::Registration, "1.2.3.4", lim), Err(30));
        assert!(l.check(Budget::Registration, "5.6.7.8", lim).is_ok());
        assert!(l.check(Surface::ControlPlane, "1.2.3.4", lim).is_ok());
        clock.advance(Duration::from_secs(30));
        assert!(l.check(Budget::Registration, "1.2.3.4", lim).is_ok());
    }
}
