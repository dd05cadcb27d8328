//! `GET /api/v1/metrics`: the cloud's counters and gauges in Prometheus text format (0.0.4),
//! behind the `metrics:read` scope so a scraper holds a key that can read nothing else.
//! Counters are plain atomics bumped by the authorization layer and a few handlers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::app::AppState;
use crate::extract::Auth;
use crate::store::DeviceState;

/// Counters since the cloud started.
#[derive(Debug, Default)]
pub struct Metrics {
    pub registrations: AtomicU64,
    pub refreshes: AtomicU64,
    pub revocations: AtomicU64,
    pub login_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    limited_registration: AtomicU64,
    limited_control_plane: AtomicU64,
    limited_inference: AtomicU64,
    limited_login: AtomicU64,
    pub requests: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one answered request to `route` (`METHOD /path`) with `status`.
    pub fn answered(&self, route: &str, status: u16) {
        Self::add(&self.requests, 1);
        match (route, status) {
            ("POST /devices/register", 200) => Self::add(&self.registrations, 1),
            ("POST /devices/refresh", 200) => Self::add(&self.refreshes, 1),
            ("POST /devices/register", 429) => Self::add(&self.limited_registration, 1),
            ("POST /inference", 429) => Self::add(&self.limited_inference, 1),
            ("POST /auth/login", 429 | 503) => Self::add(&self.limited_login, 1),
            ("POST /auth/login", 401) => Self::add(&self.login_failures, 1),
            (_, 429) => Self::add(&self.limited_control_plane, 1),
            _ => {}
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// The metrics as Prometheus text.
pub fn render(state: &AppState) -> String {
    let m = &state.metrics;
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (active, revoked, online, outbox, sessions) = state.store.read(|s| {
        let active = s
            .devices
            .values()
            .filter(|d| d.state == DeviceState::Active)
            .count() as u64;
        let online = s
            .devices
            .keys()
            .filter(|id| state.presence.get(id).is_some_and(|p| p.online))
            .count() as u64;
        (
            active,
            s.devices.len() as u64 - active,
            online,
            s.outbox.len() as u64,
            s.sessions.len() as u64,
        )
    });
    let mut out = String::new();
    counter(
        &mut out,
        "octomil_cloud_requests_total",
        "API requests answered.",
        &[("", g(&m.requests))],
    );
    counter(
        &mut out,
        "octomil_cloud_registrations_total",
        "Device registrations accepted.",
        &[("", g(&m.registrations))],
    );
    counter(
        &mut out,
        "octomil_cloud_refreshes_total",
        "Device refreshes accepted.",
        &[("", g(&m.refreshes))],
    );
    counter(
        &mut out,
        "octomil_cloud_revocations_total",
        "Devices revoked.",
        &[("", g(&m.revocations))],
    );
    counter(
        &mut out,
        "octomil_cloud_login_failures_total",
        "Logins refused for a wrong email, password or code.",
        &[("", g(&m.login_failures))],
    );
    counter(
        &mut out,
        "octomil_cloud_auth_failures_total",
        "Bearer credentials and refresh tokens that did not verify.",
        &[("", g(&m.auth_failures))],
    );
    counter(
        &mut out,
        "octomil_cloud_rate_limited_total",
        "Requests answered 429 (or 503 for logins waiting on a hash), by surface.",
        &[
            ("{surface=\"registration\"}", g(&m.limited_registration)),
            ("{surface=\"control_plane\"}", g(&m.limited_control_plane)),
            ("{surface=\"inference\"}", g(&m.limited_inference)),
            ("{surface=\"login\"}", g(&m.limited_login)),
        ],
    );
    gauge(
        &mut out,
        "octomil_cloud_devices",
        "Devices known to the cloud, by state.",
        &[
            ("{state=\"active\"}", active),
            ("{state=\"revoked\"}", revoked),
        ],
    );
    gauge(
        &mut out,
        "octomil_cloud_mqtt_sessions",
        "Devices whose status topic says online.",
        &[("", online)],
    );
    gauge(
        &mut out,
        "octomil_cloud_outbox_depth",
        "Revocation messages not yet acknowledged by the broker.",
        &[("", outbox)],
    );
    gauge(
        &mut out,
        "octomil_cloud_sessions",
        "Live dashboard sessions.",
        &[("", sessions)],
    );
    out
}

pub async fn show(State(state): State<AppState>, _auth: Auth) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state),
    )
}
