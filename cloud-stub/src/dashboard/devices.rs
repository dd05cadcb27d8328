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
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// The filter fields (what narrows the list; not the cursor or the sort), as the URL
    /// names them, empty ones left out.
    pub fn filter_pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("q", self.q.as_str()),
            ("state", &self.state),
            ("online", &self.online),
            ("seen", &self.seen),
            ("version", &self.version),
            ("bootstrap_token", &self.bootstrap_token),
        ]
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect()
    }

    /// A link (relative to the list) to its first page with this filter and `sort`.
    fn link_sorted(&self, sort: &str) -> String {
        let mut pairs = self.filter_pairs();
        if !sort.is_empty() {
            pairs.push(("sort", sort));
        }
        let q = serde_urlencoded::to_string(pairs).unwrap_or_default();
        if q.is_empty() {
            "/dashboard/devices".to_owned()
        } else {
            format!("?{q}")
        }
    }

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
    pub fn api_query(&self, now: u64) -> DeviceQuery {
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
            sort: (self.sort == "last_seen").then(|| "last_seen".to_owned()),
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
    /// The live event hub's change count, read before the list (see `live.js`).
    live_since: u64,
    /// The "Last seen" column heading's link: sorts by it, or back to id order.
    sort_link: String,
    /// Whether the viewer may revoke in bulk (`POST /revocations`): checkboxes and buttons.
    can_bulk: bool,
    /// How many devices the filter matches, for "Revoke all N matching" (`None` without a
    /// filter or without the right).
    matching: Option<usize>,
    csrf: String,
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
    let live_since = state.cloud.events.changes();
    let can_bulk = viewer.may(&state, "POST", "/revocations");
    // The API sorts (`sort=last_seen`) and its cursor carries the sort key.
    let answer = crate::api::devices::list(
        State(state.cloud.clone()),
        auth.clone(),
        Ok(axum::extract::Query(f.api_query(now))),
    )
    .await;
    // "Revoke all N matching": the filter counted the way the list endpoint reads it (a
    // first page that is also the last one has counted it already).
    let matching = match &answer {
        Ok(page) if can_bulk && !f.filter_pairs().is_empty() => {
            if f.cursor.is_empty() && page.next_cursor.is_none() {
                Some(page.devices.len())
            } else {
                super::bulk::count_matching(&state, &auth, &f, now).ok()
            }
        }
        _ => None,
    }
    .filter(|n| *n > 0);
    let (status, rows, next, error) = match answer {
        Ok(axum::Json(page)) => {
            let rows = page.devices.iter().map(|v| Row::of(v, now)).collect();
            let next = page.next_cursor.map(|c| {
                let base = f.filter_string();
                let sep = if base.is_empty() { "" } else { "&" };
                let c = serde_urlencoded::to_string([("cursor", c)]).unwrap_or_default();
                format!("/dashboard/devices?{base}{sep}{c}")
            });
            (StatusCode::OK, rows, next, None)
        }
        Err(e) => (e.status, Vec::new(), None, Some(e.message)),
    };
    let first = (!f.cursor.is_empty()).then(|| format!("/dashboard/devices?{}", f.filter_string()));
    let sort_link = f.link_sorted(if f.sort == "last_seen" {
        ""
    } else {
        "last_seen"
    });
    let mut r = render(&ListPage {
        nav: Some(viewer.nav(&state)),
        f: &f,
        rows,
        next,
        first,
        error,
        live_since,
        sort_link,
        can_bulk,
        matching,
        csrf: viewer.csrf.clone(),
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
    /// A revoked device may be deleted (the API's rule), by those the table allows.
    can_delete: bool,
    csrf: String,
    error: Option<String>,
    /// The live event hub's change count, read before the device (see `live.js`).
    live_since: u64,
    limits: Vec<LimitRow>,
}

/// One of the device's rate-limit budgets as the device page shows it.
#[derive(Debug)]
pub struct LimitRow {
    pub name: &'static str,
    pub what: &'static str,
    pub limit: String,
    pub remaining: String,
    pub full_again: String,
}

/// The device's budgets as the cloud's limiter knows them now (read from memory, nothing
/// taken or written), under the organization's current limits: the ones every register and
/// refresh answer hands the device as `rate_limits`.
fn limit_rows(state: &DashState, device_id: &str) -> Vec<LimitRow> {
    use crate::limits::Surface;
    let cloud = &state.cloud;
    let limits = cloud.settings().rate_limits.device_view();
    let now_ms = cloud.clock.now_ms();
    let budgets = [
        (
            Surface::ControlPlane,
            device_id.to_owned(),
            "Control plane",
            "register, refresh and other calls with the device's key",
        ),
        (
            Surface::Inference,
            // The subject `POST /inference` charges for a device key.
            format!("device:{device_id}"),
            "Inference",
            "POST /inference with the device's key",
        ),
    ];
    budgets
        .into_iter()
        .map(|(surface, subject, name, what)| {
            let p = cloud.limiter.peek(surface, &subject, limits.get(surface));
            LimitRow {
                name,
                what,
                limit: format!("{} per {} s", p.limit.limit, p.limit.period_secs),
                remaining: match p.retry_after_secs {
                    Some(s) if p.remaining == 0 => format!("0 (next in {s} s)"),
                    _ => format!("{} of {}", p.remaining, p.limit.limit),
                },
                full_again: match p.full_at_ms {
                    Some(at) => format!("in {} s", at.saturating_sub(now_ms).div_ceil(1000)),
                    None => "now".into(),
                },
            }
        })
        .collect()
}

async fn device_page(
    state: &DashState,
    viewer: &Viewer,
    id: &str,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let auth = viewer.check(state, "GET", "/devices/{id}")?;
    let live_since = state.cloud.events.changes();
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
        can_delete: revoked && viewer.may(state, "DELETE", "/devices/{id}"),
        csrf: viewer.csrf.clone(),
        error,
        live_since,
        limits: limit_rows(state, &v.device_id),
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
    let checked = match super::confirmed(
        &form,
        Some("revocation"),
        "tick the confirmation: a revoked device cannot be restored",
    ) {
        Ok(reason) => super::fresh_code(&state, &viewer, &form)
            .await
            .map(|()| reason),
        Err(problem) => Err(problem),
    };
    let reason = match checked {
        Ok(reason) => reason,
        Err((status, message)) => {
            let mut r = device_page(&state, &viewer, &id, Some(message)).await?;
            *r.status_mut() = status;
            return Ok(r);
        }
    };
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

/// Delete (the API's `DELETE /devices/{id}`: only a revoked device; its record, presence and
/// retained revocation go, its audit history stays), with a confirmation and a fresh TOTP.
pub async fn delete(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    // The API's rule for the route first: a Member's forged POST ends here.
    let auth = viewer.check(&state, "DELETE", "/devices/{id}")?;
    let checked = match super::confirmed(
        &form,
        None,
        "tick the confirmation: a deleted device's record cannot be restored",
    ) {
        Ok(_) => super::fresh_code(&state, &viewer, &form).await,
        Err(problem) => Err(problem),
    };
    if let Err((status, message)) = checked {
        let mut r = device_page(&state, &viewer, &id, Some(message)).await?;
        *r.status_mut() = status;
        return Ok(r);
    }
    crate::api::devices::delete(State(state.cloud.clone()), auth, Path(id)).await?;
    Ok(Redirect::to("/dashboard/devices").into_response())
}
