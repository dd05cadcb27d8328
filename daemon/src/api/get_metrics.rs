//! `GET /metrics`: Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use tokio::time::Instant;

use super::ApiState;
use crate::metrics::counter;

pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let snap = state.snapshot.borrow().clone();
    let s = &state.socket_stats;
    let mut extra = String::new();
    counter(
        &mut extra,
        "octomild_socket_connections_total",
        "Socket connections by outcome.",
        [
            ("outcome=\"accepted\"", s.accepted.load(Ordering::Relaxed)),
            (
                "outcome=\"rejected_busy\"",
                s.rejected_busy.load(Ordering::Relaxed),
            ),
            ("outcome=\"denied\"", s.denied.load(Ordering::Relaxed)),
        ],
    );
    let _ = writeln!(
        extra,
        "# HELP octomild_socket_connections_active Open socket connections.\n# TYPE octomild_socket_connections_active gauge\noctomild_socket_connections_active {}",
        s.active.load(Ordering::Relaxed)
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&snap, Instant::now(), &extra),
    )
}
