//! Counters for `GET /metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::state::{Phase, Snapshot};

#[derive(Debug, Default)]
pub struct Metrics {
    pub refresh_success: AtomicU64,
    pub refresh_failure: AtomicU64,
    pub register_success: AtomicU64,
    pub register_failure: AtomicU64,
    pub mqtt_revocations: AtomicU64,
    pub mqtt_disconnects: AtomicU64,
    /// (route, status) -> count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Messages on the revocation topic that changed nothing, by reason.
    rejected_envelopes: Mutex<BTreeMap<&'static str, u64>>,
    /// Local rate limits: permits granted, and refusals by (surface, reason).
    limit_grants: Mutex<BTreeMap<&'static str, u64>>,
    limit_refusals: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self, route: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((route, status)).or_default() += 1;
    }

    pub fn limit_grant(&self, surface: &'static str, n: u32) {
        let mut m = self.limit_grants.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(surface).or_default() += u64::from(n);
    }

    pub fn limit_refusal(&self, surface: &'static str, reason: &'static str) {
        let mut m = self
            .limit_refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry((surface, reason)).or_default() += 1;
    }

    pub fn envelope_rejected(&self, reason: &'static str) {
        let mut m = self
            .rejected_envelopes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// Renders every metric; `extra` is appended (socket counters and the like).
    pub fn render(&self, snap: &Snapshot, now: Instant, extra: &str) -> String {
        let mut out = String::with_capacity(2048);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "octomild_refresh_total",
            "Token refreshes by result.",
            &[
                ("result=\"success\"", get(&self.refresh_success)),
                ("result=\"failure\"", get(&self.refresh_failure)),
            ],
        );
        counter(
            &mut out,
            "octomild_registration_total",
            "Registration attempts by result.",
            &[
                ("result=\"success\"", get(&self.register_success)),
                ("result=\"failure\"", get(&self.register_failure)),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP octomild_state Current state (1 for the current one).\n# TYPE octomild_state gauge"
        );
        for p in Phase::ALL {
            let _ = writeln!(
                out,
                "octomild_state{{state=\"{}\"}} {}",
                p.as_str(),
                u8::from(p == snap.phase)
            );
        }
        let expiry = snap.token.as_ref().map_or(0.0, |t| {
            t.valid_until.saturating_duration_since(now).as_secs_f64()
        });
        let _ = writeln!(
            out,
            "# HELP octomild_token_expiry_seconds Seconds until the held key expires (0 without one).\n# TYPE octomild_token_expiry_seconds gauge\noctomild_token_expiry_seconds {expiry:.3}"
        );
        let _ = writeln!(
            out,
            "# HELP octomild_mqtt_connected 1 while the revocation session is up.\n# TYPE octomild_mqtt_connected gauge\noctomild_mqtt_connected {}",
            u8::from(snap.mqtt_connected)
        );
        let _ = writeln!(
            out,
            "# HELP octomild_requests_total Socket API requests by route and status.\n# TYPE octomild_requests_total counter"
        );
        let reqs = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, status), n) in reqs.iter() {
            let _ = writeln!(
                out,
                "octomild_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "octomild_mqtt_revocations_total",
            "Verified revocations received over MQTT.",
            &[("", get(&self.mqtt_revocations))],
        );
        counter(
            &mut out,
            "octomild_mqtt_disconnects_total",
            "Revocation-session connection failures.",
            &[("", get(&self.mqtt_disconnects))],
        );
        let _ = writeln!(
            out,
            "# HELP octomild_mqtt_rejected_total Messages on the revocation topic ignored, by reason.\n# TYPE octomild_mqtt_rejected_total counter"
        );
        let rejected = self
            .rejected_envelopes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (reason, n) in rejected.iter() {
            let _ = writeln!(
                out,
                "octomild_mqtt_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        drop(rejected);
        let _ = writeln!(
            out,
            "# HELP octomild_limit_permits_granted_total Local rate-limit permits granted, by surface.\n# TYPE octomild_limit_permits_granted_total counter"
        );
        for (surface, n) in self
            .limit_grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "octomild_limit_permits_granted_total{{surface=\"{surface}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP octomild_limit_refusals_total Local rate-limit refusals, by surface and reason.\n# TYPE octomild_limit_refusals_total counter"
        );
        for ((surface, reason), n) in self
            .limit_refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "octomild_limit_refusals_total{{surface=\"{surface}\",reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str(extra);
        out
    }
}

pub fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}
