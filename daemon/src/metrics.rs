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
            [
                ("result=\"success\"", get(&self.refresh_success)),
                ("result=\"failure\"", get(&self.refresh_failure)),
            ],
        );
        counter(
            &mut out,
            "octomild_registration_total",
            "Registration attempts by result.",
            [
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
        counter(
            &mut out,
            "octomild_requests_total",
            "Socket API requests by route and status.",
            rows(&self.requests, |(route, status)| {
                format!("route=\"{route}\",status=\"{status}\"")
            }),
        );
        counter(
            &mut out,
            "octomild_mqtt_revocations_total",
            "Verified revocations received over MQTT.",
            [("", get(&self.mqtt_revocations))],
        );
        counter(
            &mut out,
            "octomild_mqtt_disconnects_total",
            "Revocation-session connection failures.",
            [("", get(&self.mqtt_disconnects))],
        );
        counter(
            &mut out,
            "octomild_mqtt_rejected_total",
            "Messages on the revocation topic ignored, by reason.",
            rows(&self.rejected_envelopes, |reason| {
                format!("reason=\"{reason}\"")
            }),
        );
        counter(
            &mut out,
            "octomild_limit_permits_granted_total",
            "Local rate-limit permits granted, by surface.",
            rows(&self.limit_grants, |surface| {
                format!("surface=\"{surface}\"")
            }),
        );
        counter(
            &mut out,
            "octomild_limit_refusals_total",
            "Local rate-limit refusals, by surface and reason.",
            rows(&self.limit_refusals, |(surface, reason)| {
                format!("surface=\"{surface}\",reason=\"{reason}\"")
            }),
        );
        out.push_str(extra);
        out
    }
}

/// One Prometheus counter: its HELP and TYPE lines, then a line per series. A series' labels
/// are written as given (`route="/v1/token",status="200"`); empty labels give `name value`.
pub fn counter<L: AsRef<str>>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in series {
        let labels = labels.as_ref();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The rows of a labelled counter map, as `counter` series.
fn rows<K, V: Copy + Into<u64>>(
    map: &Mutex<BTreeMap<K, V>>,
    labels: impl Fn(&K) -> String,
) -> Vec<(String, u64)> {
    let m = map.lock().unwrap_or_else(|p| p.into_inner());
    m.iter().map(|(k, v)| (labels(k), (*v).into())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_render_one_line_per_series() {
        let m = Metrics::default();
        m.request("/v1/token", 200);
        m.request("/v1/token", 200);
        m.request("/v1/token", 503);
        m.envelope_rejected("bad_signature");
        m.limit_grant("inference", 5);
        m.limit_refusal("inference", "budget");
        Metrics::inc(&m.refresh_success);
        let out = m.render(&Snapshot::new("d-1".into()), Instant::now(), "extra 1\n");
        for line in [
            "# HELP octomild_requests_total Socket API requests by route and status.",
            "# TYPE octomild_requests_total counter",
            "octomild_requests_total{route=\"/v1/token\",status=\"200\"} 2",
            "octomild_requests_total{route=\"/v1/token\",status=\"503\"} 1",
            "octomild_mqtt_rejected_total{reason=\"bad_signature\"} 1",
            "octomild_limit_permits_granted_total{surface=\"inference\"} 5",
            "octomild_limit_refusals_total{surface=\"inference\",reason=\"budget\"} 1",
            "octomild_refresh_total{result=\"success\"} 1",
            "octomild_mqtt_revocations_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert!(out.ends_with("extra 1\n"));
    }
}
