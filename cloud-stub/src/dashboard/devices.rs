//! The device pages: the list (the API's paged, filtered `GET /devices`, filters kept in the
//! URL), one device (`GET /devices/{id}` and its audit history), and Revoke (the API's
//! `POST /devices/{id}/revoke`, with a required reason, a confirmation and a fresh TOTP code).

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::format::{ago, opt_time, time};
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::audit::{AuditQuery, AuditView};
use crate::api::devices::{DeviceQuery, DeviceView, RevokeRequest};
use crate::extract::MaybeBody;

/// Devices per page of the list.
pub const PAGE: usize = 50;

/// The list's URL query: the API's filters in operator terms, the page cursor and the sort.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub online: String,
    /// `1h`, `24h`, `7d` (seen within) or `-24h`, `-7d` (not seen for).
    #[serde(default)]
    pub seen: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub bootstrap_token: String,
    #[serde(default)]
    pub cursor: String,
    /// `last_seen` (newest first) or empty (device id).
    #[serde(default)]
    pub sort: String,
}

impl ListQuery {
    /// The query string of this filter (without cursor), for links that keep it.
    fn filter_string(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("q", self.q.as_str()),
            ("state", &self.state),
            ("online", &self.online),
            ("seen", &self.seen),
            ("version", &self.version),
            ("bootstrap_token", &self.bootstrap_token),
            ("sort", &self.sort),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    /// The API query for this filter at `now`.
    fn api_query(&self, now: u64) -> DeviceQuery {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let (after, before) = match self.seen.as_str() {
            "1h" => (Some(now.saturating_sub(3600)), None),
            "24h" => (Some(now.saturating_sub(86_400)), None),
            "7d" => (Some(now.saturating_sub(7 * 86_400)), None),
            "-24h" => (None, Some(now.saturating_sub(86_400))),
            "-7d" => (None, Some(now.saturating_sub(7 * 86_400))),
            _ => (None, None),
        };
        // The list endpoint grows filters; what the dashboard does not set stays at its default.
        #[allow(clippy::needless_update)]
        DeviceQuery {
            limit: Some(PAGE.to_string()),
            cursor: some(&self.cursor),
            state: some(&self.state),
            online: some(&self.online),
            last_seen_after: after.map(|t| t.to_string()),
            last_seen_before: before.map(|t| t.to_string()),
            version: some(&self.version),
            bootstrap_token: some(&self.bootstrap_token),
            q: some(&self.q),
            ..DeviceQuery::default()
        }
    }
}

/// One row of the list.
#[derive(Debug)]
pub struct Row {
    pub id: String,
    pub state: String,
    pub online: bool,
    pub last_seen: String,
    pub last_seen_at: String,
    pub version: String,
    pub key_expires: String,
}

fn state_name(v: &DeviceView) -> String {
    serde_json::to_value(v.state)
        .ok()
        .and_then(|s| s.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Row {
    fn of(v: &DeviceView, now: u64) -> Self {
        Self {
            id: v.device_id.clone(),
            state: state_name(v),
            online: v.online,
            last_seen: ago(v.last_seen, now),
            last_seen_at: opt_time(v.last_seen),
            version: v.daemon_version.clone().unwrap_or_else(|| "-".into()),
            key_expires: opt_time(v.key_expires_at),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/devices.html")]
struct ListPage<'a> {
    nav: Option<Nav>,
    f: &'a ListQuery,
    rows: Vec<Row>,
    next: Option<String>,
    first: Option<String>,
    error: Option<String>,
}

/// `GET /dashboard/devices`.
pub async fn list(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let f: ListQuery =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).map_err(|_| {
            crate::error::ApiError::bad_request(
                octomil_common::wire::codes::INVALID_ARGUMENT,
                "the filter in the address is malformed",
            )
        })?;
    let auth = viewer.check(&state, "GET", "/devices")?;
    let now = state.cloud.clock.now_secs();
    let answer = crate::api::devices::list(
        State(state.cloud.clone()),
        auth,
        Ok(axum::extract::Query(f.api_query(now))),
    )
    .await;
    let (status, rows, next, error) = match answer {
        Ok(axum::Json(page)) => {
            let mut rows: Vec<(Option<u64>, Row)> = page
                .devices
                .iter()
                .map(|v| (v.last_seen, Row::of(v, now)))
                .collect();
            if f.sort == "last_seen" {
                rows.sort_by_key(|r| std::cmp::Reverse(r.0));
            }
            let next = page.next_cursor.map(|c| {
                let base = f.filter_string();
                let sep = if base.is_empty() { "" } else { "&" };
                let c = serde_urlencoded::to_string([("cursor", c)]).unwrap_or_default();
                format!("/dashboard/devices?{base}{sep}{c}")
            });
            (
                StatusCode::OK,
                rows.into_iter().map(|(_, r)| r).collect(),
                next,
                None,
            )
        }
        Err(e) => (e.status, Vec::new(), None, Some(e.message)),
    };
    let first = (!f.cursor.is_empty()).then(|| format!("/dashboard/devices?{}", f.filter_string()));
    let mut r = render(&ListPage {
        nav: Some(viewer.nav(&state)),
        f: &f,
        rows,
        next,
        first,
        error,
    });
    *r.status_mut() = status;
    Ok(r)
}

/// One audit record as the device page shows it.
#[derive(Debug)]
pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub origin: String,
    pub action: String,
    pub reason: String,
}

impl AuditRow {
    pub fn of(a: &AuditView) -> Self {
        Self {
            at: time(a.at_ms / 1000),
            actor: a.actor.clone(),
            origin: a.origin.clone(),
            action: a.action.clone(),
            reason: a.reason.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/device.html")]
struct DevicePage {
    nav: Option<Nav>,
    id: String,
    state: String,
    online: bool,
    registered_at: String,
    last_seen: String,
    last_refresh: String,
    key_expires: String,
    version: String,
    reported_state: String,
    bootstrap_token: String,
    revoked_at: String,
    revoke_reason: String,
    metadata: Vec<(String, String)>,
    /// `None` when the viewer may not read the audit log.
    history: Option<Vec<AuditRow>>,
    can_revoke: bool,
    csrf: String,
    error: Option<String>,
}

async fn device_page(
    state: &DashState,
    viewer: &Viewer,
    id: &str,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let auth = viewer.check(state, "GET", "/devices/{id}")?;
    let axum::Json(v) =
        crate::api::devices::show(State(state.cloud.clone()), auth, Path(id.to_owned())).await?;
    let history = match viewer.check(state, "GET", "/audit") {
        Ok(auth) => {
            let q = AuditQuery {
                target: Some(v.device_id.clone()),
                limit: Some("100".into()),
                ..AuditQuery::default()
            };
            let axum::Json(page) = crate::api::audit::list(
                State(state.cloud.clone()),
                auth,
                Ok(axum::extract::Query(q)),
            )
            .await?;
            Some(page.records.iter().rev().map(AuditRow::of).collect())
        }
        Err(_) => None,
    };
    let now = state.cloud.clock.now_secs();
    let state_s = state_name(&v);
    let revoked = v.revoked_at.is_some();
    let page = DevicePage {
        nav: Some(viewer.nav(state)),
        id: v.device_id.clone(),
        state: state_s,
        online: v.online,
        registered_at: time(v.registered_at),
        last_seen: match v.last_seen {
            Some(t) => format!("{} ({})", ago(Some(t), now), time(t)),
            None => "never".into(),
        },
        last_refresh: opt_time(v.last_refresh_at),
        key_expires: opt_time(v.key_expires_at),
        version: v.daemon_version.clone().unwrap_or_else(|| "-".into()),
        reported_state: v.reported_state.clone().unwrap_or_else(|| "-".into()),
        bootstrap_token: v.bootstrap_token_id.clone().unwrap_or_else(|| "-".into()),
        revoked_at: opt_time(v.revoked_at),
        revoke_reason: v.revoke_reason.clone().unwrap_or_default(),
        metadata: v.metadata.into_iter().collect(),
        history,
        can_revoke: !revoked && viewer.may(state, "POST", "/devices/{id}/revoke"),
        csrf: viewer.csrf.clone(),
        error,
    };
    Ok(render(&page))
}

/// `GET /dashboard/devices/{id}`.
pub async fn show(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    device_page(&state, &viewer, &id, None).await
}

/// `POST /dashboard/devices/{id}/revoke`: fields `reason` (required), `confirm` (must be
/// `yes`) and `totp` (the current authenticator code).
pub async fn revoke(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    // The API's rule for the route, before anything else: a Member's forged POST ends here.
    let auth = viewer.check(&state, "POST", "/devices/{id}/revoke")?;
    let reason = form.get("reason").unwrap_or("").trim().to_owned();
    let problem = if reason.is_empty() {
        Some((
            StatusCode::BAD_REQUEST,
            "give a reason for the revocation".to_owned(),
        ))
    } else if form.get("confirm") != Some("yes") {
        Some((
            StatusCode::BAD_REQUEST,
            "tick the confirmation: a revoked device cannot be restored".to_owned(),
        ))
    } else {
        super::require_fresh_totp(&state, &viewer, form.get("totp").unwrap_or(""))
            .await
            .err()
            .map(|e| (e.status, e.message))
    };
    if let Some((status, message)) = problem {
        let mut r = device_page(&state, &viewer, &id, Some(message)).await?;
        *r.status_mut() = status;
        return Ok(r);
    }
    let (_status, _view) = crate::api::devices::revoke(
        State(state.cloud.clone()),
        auth,
        Path(id.clone()),
        MaybeBody(Some(RevokeRequest {
            reason: Some(reason),
        })),
    )
    .await?;
    // The id passed the API's device-id check: safe in a path.
    Ok(Redirect::to(&format!("/dashboard/devices/{id}")).into_response())
}
