//! The local API on the Unix socket, one file per operation. Access (root, allowed uids and
//! gids, everyone else) is decided per connection by `crate::socket` before a request gets here.

mod get_metrics;
mod get_status;
mod get_token;
mod post_admin_refresh;
mod post_limits_acquire;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use octomil_common::wire::{ErrorBody, codes};
use tokio::sync::mpsc;

use crate::agent::Command;
use crate::metrics::Metrics;
use crate::socket::{FastAnswer, FastPath, FastRequest, SocketStats};
use crate::state::SnapshotRx;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub snapshot: SnapshotRx,
    pub commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<crate::limits::Limiter>,
    pub socket_stats: Arc<SocketStats>,
    /// How long `POST /v1/admin/refresh` waits for the cloud.
    pub refresh_timeout: Duration,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(get_status::status))
        .route(get_token::PATH, get(get_token::token))
        .route("/v1/admin/refresh", post(post_admin_refresh::refresh))
        .route(
            "/v1/limits/{surface}/acquire",
            post(post_limits_acquire::acquire),
        )
        .route("/metrics", get(get_metrics::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such endpoint")
        })
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// The requests the socket answers before routing (see `crate::socket::FastPath`): a valid
/// key for `GET /v1/token`, grants and waits for `POST /v1/limits/{surface}/acquire`. Every
/// other answer, errors included, comes from the router.
#[derive(Debug)]
pub struct FastApi {
    pub snapshot: SnapshotRx,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<crate::limits::Limiter>,
}

impl FastPath for FastApi {
    fn answer(&self, req: &FastRequest<'_>) -> Option<FastAnswer> {
        match req.method {
            "GET" if req.target == get_token::PATH => {
                get_token::fast_answer(&self.snapshot, &self.metrics)
            }
            "POST" => {
                post_limits_acquire::fast_answer(&self.limits, &self.metrics, req.target, req.peer)
            }
            _ => None,
        }
    }
}

/// Counts every answer by route and status for `/metrics`.
async fn count(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/v1/status") => "/v1/status",
        Some("/v1/token") => "/v1/token",
        Some("/v1/admin/refresh") => "/v1/admin/refresh",
        Some("/v1/limits/{surface}/acquire") => post_limits_acquire::ROUTE,
        Some("/metrics") => "/metrics",
        _ => "other",
    };
    let resp = next.run(req).await;
    state.metrics.request(route, resp.status().as_u16());
    resp
}

/// An error answer in the shared vocabulary, with an optional `Retry-After`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
