//! Local rate limits that mirror the cloud's, so local apps never earn a 429.
//!
//! The same GCRA arithmetic as the cloud (`octomil_common::gcra`) runs here per surface, with
//! the limits the cloud sent in its last register or refresh answer. The daemon's own
//! control-plane calls draw from the same budget; a 429 from the cloud pauses the surface for
//! everyone until its `Retry-After`. Optionally each caller uid is capped to a share of the
//! budget so one app cannot starve the others. State is kept on the wall clock (a restart loop
//! must not reset a spent budget) and saved at most once a second and at shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use octomil_common::gcra::Refusal;
use octomil_common::wire::{RateLimit, RateLimits, Surface};
use serde::{Deserialize, Serialize};

/// A grant: how many permits were taken and how many remain right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Granted {
    pub granted: u32,
    pub remaining: u32,
    pub limit: u32,
    pub period_secs: u32,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Wait this long (ms). `paused` when the cloud asked for it, `per_uid` when the caller's
    /// own share is spent while the device budget is not.
    Wait {
        wait_ms: u64,
        paused: bool,
        per_uid: bool,
    },
    /// More permits than the burst in one call: never grantable.
    TooLarge { limit: u32 },
    /// No limits known yet (not registered).
    Unknown,
}

impl Denied {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        match *self {
            Self::Wait { wait_ms, .. } => wait_ms.div_ceil(1000).max(1),
            Self::Unknown => 5,
            Self::TooLarge { .. } => 0,
        }
    }
}

/// What is persisted, per surface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SurfaceState {
    /// GCRA theoretical arrival time, ns since the Unix epoch.
    tat_ns: u64,
    /// Unix ms until which the cloud asked us to pause.
    paused_until_ms: u64,
    /// Per-uid TATs, kept only while a per-uid cap is configured.
    per_uid: BTreeMap<u32, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    version: u8,
    limits: Option<RateLimits>,
    control_plane: SurfaceState,
    inference: SurfaceState,
}

const FORMAT: u8 = 1;

#[derive(Debug)]
struct Inner {
    state: Persisted,
    dirty: bool,
}

impl Inner {
    fn surface(&mut self, s: Surface) -> &mut SurfaceState {
        match s {
            Surface::ControlPlane => &mut self.state.control_plane,
            Surface::Inference => &mut self.state.inference,
        }
    }
}

/// The local limiter. Cheap to share behind an `Arc`; one short lock per acquire.
#[derive(Debug)]
pub struct Limiter {
    inner: Mutex<Inner>,
    /// Each uid may hold at most this fraction of a surface's limit (None: no cap).
    per_uid_share: Option<f64>,
    path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("limiter state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Limiter {
    /// A limiter persisted at `path` (loaded if present; an unreadable file starts afresh
    /// with a warning: budgets are not secrets and the cloud still enforces its own).
    pub fn open(path: Option<PathBuf>, per_uid_share: Option<f64>) -> Self {
        let state = path
            .as_deref()
            .and_then(|p| match crate::store::read_private_bytes(p) {
                Ok(b) => b.map(|b| (p, b)),
                Err(e) => {
                    tracing::warn!(error = %e, "limiter state refused; starting with full budgets");
                    None
                }
            })
            .and_then(|(p, bytes)| match postcard::from_bytes::<Persisted>(&bytes) {
                Ok(s) if s.version == FORMAT => Some(s),
                _ => {
                    tracing::warn!(path = %p.display(), "limiter state unreadable; starting with full budgets");
                    None
                }
            })
            .unwrap_or(Persisted {
                version: FORMAT,
                ..Persisted::default()
            });
        Self {
            inner: Mutex::new(Inner {
                state,
                dirty: false,
            }),
            per_uid_share,
            path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cloud's limits from a register or refresh answer.
    pub fn set_limits(&self, limits: RateLimits) {
        let mut g = self.lock();
        if g.state.limits != Some(limits) {
            if let Some(old) = g.state.limits {
                tracing::info!(?old, new = ?limits, "rate limits changed by the cloud");
            }
            g.state.limits = Some(limits);
            g.dirty = true;
        }
    }

    pub fn limits(&self) -> Option<RateLimits> {
        self.lock().state.limits
    }

    /// A 429 from the cloud: nobody on this device uses `surface` until `until_ms`.
    pub fn pause(&self, surface: Surface, until_ms: u64) {
        let mut g = self.lock();
        let s = g.surface(surface);
        if until_ms > s.paused_until_ms {
            s.paused_until_ms = until_ms;
            g.dirty = true;
        }
    }

    /// Takes `n` permits at `now_ms` for `uid` (`None` for the daemon itself, which is not
    /// subject to the per-uid cap).
    pub fn acquire(
        &self,
        surface: Surface,
        n: u32,
        uid: Option<u32>,
        now_ms: u64,
    ) -> Result<Granted, Denied> {
        let mut g = self.lock();
        let Some(limits) = g.state.limits else {
            return Err(Denied::Unknown);
        };
        let limit = limits.get(surface);
        let gcra = limit.gcra();
        let share = self.per_uid_share;
        let s = g.surface(surface);
        if s.paused_until_ms > now_ms {
            return Err(Denied::Wait {
                wait_ms: s.paused_until_ms - now_ms,
                paused: true,
                per_uid: false,
            });
        }
        gcra.clamp(&mut s.tat_ns, now_ms);
        // Local apps draw on the control plane only down to the daemon's reserve: its own
        // refreshes and registrations can never be starved by an app that keeps acquiring.
        let app_gcra = match (surface, uid) {
            (Surface::ControlPlane, Some(_)) => reserved_for_apps(limit).gcra(),
            _ => gcra,
        };
        // Try on copies; commit only if both the device budget and the caller's share allow.
        let mut tat = s.tat_ns;
        let granted = app_gcra
            .acquire(&mut tat, now_ms, n)
            .map_err(|r| refusal(r, false))?;
        let mut uid_tat = None;
        if let (Some(uid), Some(share)) = (uid, share) {
            let cap = per_uid_limit(limit, share);
            let ugcra = cap.gcra();
            let mut t = s.per_uid.get(&uid).copied().unwrap_or(0);
            ugcra.clamp(&mut t, now_ms);
            ugcra
                .acquire(&mut t, now_ms, n)
                .map_err(|r| refusal(r, true))?;
            uid_tat = Some((uid, t, ugcra));
        }
        s.tat_ns = tat;
        if let Some((uid, t, ugcra)) = uid_tat {
            s.per_uid.insert(uid, t);
            // Forget callers whose share is full again, so the map stays small.
            s.per_uid.retain(|_, t| !ugcra.is_idle(*t, now_ms));
        }
        g.dirty = true;
        Ok(Granted {
            granted: n,
            remaining: granted.remaining,
            limit: limit.limit,
            period_secs: limit.period_secs,
        })
    }

    /// Saves the state if it changed since the last save. Atomic (temp file + rename) and
    /// 0600; errors are returned for the caller to log.
    pub fn save_if_dirty(&self) -> Result<(), LimitsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = {
            let mut g = self.lock();
            if !g.dirty {
                return Ok(());
            }
            g.dirty = false;
            postcard::to_stdvec(&g.state).unwrap_or_default()
        };
        crate::store::replace_private_file(path, &bytes).map_err(|source| {
            self.lock().dirty = true;
            LimitsError::Io {
                path: path.clone(),
                source,
            }
        })
    }
}

/// Control-plane permits no local app can take: a tenth of the limit, at least one (none
/// when the limit is a single call).
pub fn daemon_reserve(limit: RateLimit) -> u32 {
    if limit.limit < 2 {
        0
    } else {
        (limit.limit / 10).max(1)
    }
}

/// The control-plane limit apps see: the same rate, a burst smaller by the daemon's reserve.
fn reserved_for_apps(limit: RateLimit) -> RateLimit {
    let reserve = daemon_reserve(limit);
    if reserve == 0 {
        return limit;
    }
    let apps = limit.limit - reserve;
    // Same emission interval: the period shrinks with the burst.
    let period_ms = u64::from(limit.period_secs) * 1000 * u64::from(apps) / u64::from(limit.limit);
    RateLimit {
        limit: apps,
        period_secs: u32::try_from(period_ms.div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1),
    }
}

fn per_uid_limit(limit: RateLimit, share: f64) -> RateLimit {
    RateLimit {
        limit: ((f64::from(limit.limit) * share).floor() as u32).max(1),
        period_secs: limit.period_secs,
    }
}

fn refusal(r: Refusal, per_uid: bool) -> Denied {
    match r {
        Refusal::Wait { wait_ms } => Denied::Wait {
            wait_ms,
            paused: false,
            per_uid,
        },
        Refusal::TooLarge { limit } => Denied::TooLarge { limit },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn limiter(share: Option<f64>) -> Limiter {
        let l = Limiter::open(None, share);
        l.set_limits(RateLimits::default());
        l
    }

    #[test]
    fn apps_cannot_take_the_daemons_control_plane_reserve() {
        let l = limiter(None);
        // An app acquires control_plane until refused.
        let mut app = 0;
        while l.acquire(Surface::ControlPlane, 1, Some(1000), T0).is_ok() {
            app += 1;
            assert!(app <= 100);
        }
        let reserve = daemon_reserve(RateLimits::default().control_plane);
        assert_eq!(reserve, 10);
        assert_eq!(app, 100 - reserve);
        // The daemon's own refreshes still get their reserve at that same instant.
        for _ in 0..reserve {
            l.acquire(Surface::ControlPlane, 1, None, T0).unwrap();
        }
        assert!(l.acquire(Surface::ControlPlane, 1, None, T0).is_err());
        // Inference has no reserve: apps get the whole budget.
        let mut inf = 0;
        while l.acquire(Surface::Inference, 1, Some(1000), T0).is_ok() {
            inf += 1;
        }
        assert_eq!(inf, 1000);
    }

    #[test]
    fn a_thousand_back_to_back_then_exactly_one_after_the_advertised_wait() {
        let l = limiter(None);
        for i in 0..1000 {
            let g = l.acquire(Surface::Inference, 1, Some(1000), T0).unwrap();
            assert_eq!(g.remaining, 999 - i);
        }
        let d = l
            .acquire(Surface::Inference, 1, Some(1000), T0)
            .unwrap_err();
        assert_eq!(
            d,
            Denied::Wait {
                wait_ms: 60,
                paused: false,
                per_uid: false
            }
        );
        assert_eq!(d.retry_after_secs(), 1, "rounded up to the whole second");
        // After the exact wait, exactly one more.
        let later = T0 + 60;
        assert!(l.acquire(Surface::Inference, 1, Some(1000), later).is_ok());
        assert!(l.acquire(Surface::Inference, 1, Some(1000), later).is_err());
    }

    #[test]
    fn batches_are_all_or_nothing() {
        let l = limiter(None);
        assert_eq!(
            l.acquire(Surface::ControlPlane, 95, None, T0)
                .unwrap()
                .remaining,
            5
        );
        assert!(l.acquire(Surface::ControlPlane, 6, None, T0).is_err());
        assert_eq!(
            l.acquire(Surface::ControlPlane, 5, None, T0)
                .unwrap()
                .remaining,
            0
        );
        assert_eq!(
            l.acquire(Surface::ControlPlane, 101, None, T0),
            Err(Denied::TooLarge { limit: 100 })
        );
    }

    #[test]
    fn a_cloud_429_pauses_the_surface_for_everyone() {
        let l = limiter(None);
        l.pause(Surface::ControlPlane, T0 + 7_000);
        let d = l
            .acquire(Surface::ControlPlane, 1, Some(5), T0)
            .unwrap_err();
        assert_eq!(d.retry_after_secs(), 7);
        assert!(matches!(d, Denied::Wait { paused: true, .. }));
        assert!(
            l.acquire(Surface::ControlPlane, 1, None, T0 + 6_999)
                .is_err()
        );
        assert!(
            l.acquire(Surface::ControlPlane, 1, None, T0 + 7_000)
                .is_ok()
        );
        assert!(
            l.acquire(Surface::Inference, 1, None, T0).is_ok(),
            "other surface unaffected"
        );
    }

    #[test]
    fn per_uid_share_keeps_budget_for_others() {
        let l = limiter(Some(0.5));
        for _ in 0..500 {
            l.acquire(Surface::Inference, 1, Some(1000), T0).unwrap();
        }
        let d = l
            .acquire(Surface::Inference, 1, Some(1000), T0)
            .unwrap_err();
        assert!(matches!(d, Denied::Wait { per_uid: true, .. }), "{d:?}");
        // Another app still gets the rest; the daemon itself is not capped.
        for _ in 0..499 {
            l.acquire(Surface::Inference, 1, Some(1001), T0).unwrap();
        }
        l.acquire(Surface::Inference, 1, None, T0).unwrap();
        assert!(
            l.acquire(Surface::Inference, 1, None, T0).is_err(),
            "device budget spent"
        );
    }

    #[test]
    fn unknown_until_the_cloud_sends_limits_and_changes_apply() {
        let l = Limiter::open(None, None);
        assert_eq!(
            l.acquire(Surface::Inference, 1, None, T0),
            Err(Denied::Unknown)
        );
        l.set_limits(RateLimits {
            inference: RateLimit::per_minute(2),
            ..RateLimits::default()
        });
        l.acquire(Surface::Inference, 2, None, T0).unwrap();
        assert!(l.acquire(Surface::Inference, 1, None, T0).is_err());
    }

    #[test]
    fn state_survives_a_restart_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.bin");
        let l = Limiter::open(Some(path.clone()), None);
        l.set_limits(RateLimits::default());
        l.acquire(Surface::Inference, 1000, None, T0).unwrap();
        l.pause(Surface::ControlPlane, T0 + 5_000);
        l.save_if_dirty().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(l);
        let l = Limiter::open(Some(path.clone()), None);
        assert!(
            l.acquire(Surface::Inference, 1, None, T0).is_err(),
            "spent budget survived"
        );
        assert!(
            l.acquire(Surface::ControlPlane, 1, None, T0).is_err(),
            "pause survived"
        );
        // A garbage file starts afresh rather than failing the daemon.
        std::fs::write(&path, b"garbage").unwrap();
        let l = Limiter::open(Some(path.clone()), None);
        assert_eq!(
            l.acquire(Surface::Inference, 1, None, T0),
            Err(Denied::Unknown)
        );
        // A symlink at the path is not followed: its target's budgets are not loaded.
        l.set_limits(RateLimits::default());
        l.acquire(Surface::Inference, 1000, None, T0).unwrap();
        l.save_if_dirty().unwrap();
        let real = dir.path().join("elsewhere.bin");
        std::fs::rename(&path, &real).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let l = Limiter::open(Some(path), None);
        assert_eq!(
            l.acquire(Surface::Inference, 1, None, T0),
            Err(Denied::Unknown),
            "state read through a symlink"
        );
    }

    #[test]
    fn a_backward_clock_jump_costs_at_most_one_bucket() {
        let l = limiter(None);
        l.acquire(Surface::ControlPlane, 100, None, T0).unwrap();
        // The wall clock goes back an hour: wait at most one period, not an hour.
        let d = l
            .acquire(Surface::ControlPlane, 1, None, T0 - 3_600_000)
            .unwrap_err();
        assert!(d.retry_after_secs() <= 61, "{d:?}");
    }

    proptest::proptest! {
        #[test]
        fn never_over_grants_with_any_mix_of_callers(steps in proptest::collection::vec((0u64..3_000, 1u32..10, 0u32..4), 1..300)) {
            let l = limiter(Some(0.5));
            l.set_limits(RateLimits { inference: RateLimit::per_minute(60), ..RateLimits::default() });
            let mut now = T0;
            let mut granted: u64 = 0;
            for (dt, n, uid) in steps {
                now += dt;
                if l.acquire(Surface::Inference, n, Some(uid), now).is_ok() {
                    granted += u64::from(n);
                }
            }
            proptest::prop_assert!(granted <= 60 + (now - T0) / 1000);
        }
    }
}
