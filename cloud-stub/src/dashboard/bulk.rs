//! Bulk revoke from the device list: "Revoke selected" (the ticked rows) and "Revoke all N
//! matching this filter". Both lead to a confirmation page (how many devices, a required
//! reason, a confirmation tick and a fresh authenticator code, as the single revoke asks),
//! then to a job that revokes in chunks of [`CHUNK`] ids through the API's bulk revocation
//! handler (`POST /revocations`: one durable commit and one audit record per device each
//! call, origin `dashboard`), so a progress page can show how far it is.
//!
//! "All matching" sends the filter, never an id list: the server resolves it when the
//! operator confirms, through the list endpoint's own handler (`GET /devices`, every page).
//! An empty filter is refused (every device at once is the API's `all`, for Owners).
//!
//! Jobs live in memory and are bounded: one running job per session, [`MAX_RUNNING`] in the
//! organization, the last [`MAX_KEPT`] kept for their summary. A job is shown only to the
//! session that started it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use octomil_common::wire::codes;

use super::devices::ListQuery;
use super::{DashState, Form, Nav, Refusal, Viewer, render};
use crate::api::devices::{self as api_devices, DeviceFilter, MAX_PAGE};
use crate::api::revocations::BulkRevoke;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::store::DeviceState;

/// Device ids per call of the bulk revocation handler (the progress step).
pub const CHUNK: usize = 1000;
/// The most rows "Revoke selected" takes (a list page holds 50).
pub const MAX_SELECTED: usize = 500;
/// Bulk revocations running at once in the organization.
pub const MAX_RUNNING: usize = 3;
/// Jobs kept in memory (finished ones for their summary); the oldest finished go first.
pub const MAX_KEPT: usize = 32;

/// How far a job is.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Devices the job covers.
    pub total: usize,
    /// Devices handed to the API so far.
    pub processed: usize,
    pub revoked: usize,
    pub already_revoked: usize,
    /// Devices deleted between the confirmation and their chunk.
    pub not_found: usize,
    /// Revocations the broker acknowledged (the API's `published`).
    pub told: usize,
    pub done: bool,
    /// Why the job stopped early (the API's refusal).
    pub error: Option<String>,
    /// What was asked, for the page ("3 selected devices", the filter).
    pub what: String,
    pub reason: String,
    /// Wall time from the confirmation to the last chunk's answer.
    pub took_ms: Option<u64>,
}

#[derive(Debug)]
struct Job {
    session: String,
    /// Order of creation, to drop the oldest finished job first.
    seq: u64,
    started: Instant,
    progress: Progress,
}

/// The bulk jobs of the dashboard (one cloud, one organization).
#[derive(Debug, Default)]
pub struct Jobs {
    inner: Mutex<(u64, HashMap<String, Job>)>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Job>)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `session` may start a job now: none of its own running, and room in the org.
    fn admit(jobs: &HashMap<String, Job>, session: &str) -> ApiResult<()> {
        let running = jobs.values().filter(|j| !j.progress.done);
        let mut n = 0;
        for j in running {
            if j.session == session {
                return Err(ApiError::conflict(
                    codes::CONFLICT,
                    "a bulk revocation of yours is still running; wait for it to finish",
                ));
            }
            n += 1;
        }
        if n >= MAX_RUNNING {
            return Err(ApiError::conflict(
                codes::CONFLICT,
                format!("{MAX_RUNNING} bulk revocations are running already; try again soon"),
            ));
        }
        Ok(())
    }

    /// Checks, before the code is spent, that `session` could start a job.
    pub fn may_start(&self, session: &str) -> ApiResult<()> {
        Self::admit(&self.lock().1, session)
    }

    /// Records a new running job of `session`; its id.
    pub fn start(&self, session: &str, progress: Progress) -> ApiResult<String> {
        let mut g = self.lock();
        let (seq, jobs) = &mut *g;
        Self::admit(jobs, session)?;
        while jobs.len() >= MAX_KEPT {
            let Some(oldest) = jobs
                .iter()
                .filter(|(_, j)| j.progress.done)
                .min_by_key(|(_, j)| j.seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            jobs.remove(&oldest);
        }
        *seq += 1;
        let id = octomil_common::token::random_base62(22).expose().clone();
        jobs.insert(
            id.clone(),
            Job {
                session: session.to_owned(),
                seq: *seq,
                started: Instant::now(),
                progress,
            },
        );
        Ok(id)
    }

    /// The progress of job `id` if `session` started it.
    pub fn get(&self, id: &str, session: &str) -> Option<Progress> {
        self.lock()
            .1
            .get(id)
            .filter(|j| j.session == session)
            .map(|j| j.progress.clone())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Progress, Instant)) {
        if let Some(j) = self.lock().1.get_mut(id) {
            f(&mut j.progress, j.started);
        }
    }
}

/// What a bulk revoke covers.
#[derive(Debug, Clone)]
enum Target {
    /// The ticked rows.
    Selected(Vec<String>),
    /// Every device matching the filter, resolved when the operator confirms.
    Matching(ListQuery),
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(codes::INVALID_ARGUMENT, message)
}

impl Target {
    fn from_form(form: &Form) -> ApiResult<Self> {
        match form.get("mode") {
            Some("selected") => {
                let ids: BTreeSet<String> = form.all("id").into_iter().collect();
                if ids.is_empty() {
                    return Err(bad("select at least one device (tick its row)"));
                }
                if ids.len() > MAX_SELECTED {
                    return Err(bad(format!(
                        "at most {MAX_SELECTED} selected devices; use \"Revoke all matching\" \
                         with a filter"
                    )));
                }
                for id in &ids {
                    octomil_common::DeviceId::parse(id).map_err(|e| {
                        ApiError::bad_request(codes::INVALID_DEVICE_ID, e.to_string())
                    })?;
                }
                Ok(Self::Selected(ids.into_iter().collect()))
            }
            Some("matching") => {
                let field = |k: &str| form.get(k).unwrap_or("").trim().to_owned();
                let f = ListQuery {
                    q: field("q"),
                    state: field("state"),
                    online: field("online"),
                    seen: field("seen"),
                    version: field("version"),
                    bootstrap_token: field("bootstrap_token"),
                    ..ListQuery::default()
                };
                if f.filter_pairs().is_empty() {
                    return Err(bad(
                        "narrow the list with a filter first: revoking every device at once \
                         is for Owners, with `octomil devices revoke --all`",
                    ));
                }
                Ok(Self::Matching(f))
            }
            _ => Err(bad("mode must be selected or matching")),
        }
    }

    /// The form fields that carry this target to the next step.
    fn hidden(&self) -> Vec<(String, String)> {
        match self {
            Self::Selected(ids) => std::iter::once(("mode".to_owned(), "selected".to_owned()))
                .chain(ids.iter().map(|i| ("id".to_owned(), i.clone())))
                .collect(),
            Self::Matching(f) => std::iter::once(("mode".to_owned(), "matching".to_owned()))
                .chain(
                    f.filter_pairs()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned())),
                )
                .collect(),
        }
    }

    /// The filter in words, one item per field.
    fn described(&self) -> Vec<String> {
        let Self::Matching(f) = self else {
            return Vec::new();
        };
        f.filter_pairs()
            .into_iter()
            .map(|(k, v)| match (k, v) {
                ("q", v) => format!("search: {v}"),
                ("online", "true") => "online now".to_owned(),
                ("online", "false") => "offline now".to_owned(),
                ("seen", "1h") => "seen within 1 hour".to_owned(),
                ("seen", "24h") => "seen within 24 hours".to_owned(),
                ("seen", "7d") => "seen within 7 days".to_owned(),
                ("seen", "-24h") => "not seen for 24 hours".to_owned(),
                ("seen", "-7d") => "not seen for 7 days".to_owned(),
                ("version", v) => format!("daemon version: {v}"),
                ("bootstrap_token", v) => format!("bootstrap token: {v}"),
                (k, v) => format!("{k}: {v}"),
            })
            .collect()
    }

    /// The list filtered the same way, to go back to.
    fn back(&self) -> String {
        match self {
            Self::Selected(_) => "/dashboard/devices".to_owned(),
            Self::Matching(f) => {
                let q = serde_urlencoded::to_string(f.filter_pairs()).unwrap_or_default();
                format!("/dashboard/devices?{q}")
            }
        }
    }
}

/// How many devices `f` matches at `now`, for `auth`: the list endpoint's own filter.
pub fn count_matching(state: &DashState, auth: &Auth, f: &ListQuery, now: u64) -> ApiResult<usize> {
    let filter = DeviceFilter::parse(&f.api_query(now), auth)?;
    Ok(state
        .cloud
        .store
        .read(|m| api_devices::count(m, &state.cloud.presence, &filter)))
}

/// [`count_matching`] of the active devices only (the ones a revoke changes).
fn count_active(state: &DashState, auth: &Auth, f: &ListQuery, now: u64) -> ApiResult<usize> {
    let mut filter = DeviceFilter::parse(&f.api_query(now), auth)?;
    if filter.state == Some(DeviceState::Revoked) {
        return Ok(0);
    }
    filter.state = Some(DeviceState::Active);
    Ok(state
        .cloud
        .store
        .read(|m| api_devices::count(m, &state.cloud.presence, &filter)))
}

/// The ids `f` matches now, read through `GET /devices`'s handler a page at a time.
async fn resolve(state: &DashState, viewer: &Viewer, f: &ListQuery) -> ApiResult<Vec<String>> {
    let auth = viewer.check(state, "GET", "/devices")?;
    let now = state.cloud.clock.now_secs();
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let mut q = f.api_query(now);
        q.limit = Some(MAX_PAGE.to_string());
        q.sort = None;
        q.cursor = cursor.take();
        let Json(page) =
            api_devices::list(State(state.cloud.clone()), auth.clone(), Ok(Query(q))).await?;
        ids.extend(page.devices.into_iter().map(|d| d.device_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(ids),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/bulk_confirm.html")]
struct ConfirmPage {
    nav: Option<Nav>,
    csrf: String,
    count: usize,
    active: usize,
    /// The selected ids (empty for "all matching").
    ids: Vec<String>,
    filter: Vec<String>,
    hidden: Vec<(String, String)>,
    back: String,
    reason: String,
    error: Option<String>,
}

async fn confirm_page(
    state: &DashState,
    viewer: &Viewer,
    target: &Target,
    reason: &str,
    error: Option<(StatusCode, String)>,
) -> Result<Response, Refusal> {
    let (count, active, ids) = match target {
        Target::Selected(ids) => {
            let active = state.cloud.store.read(|m| {
                ids.iter()
                    .filter(|i| {
                        m.devices
                            .get(i.as_str())
                            .is_some_and(|d| d.state == DeviceState::Active)
                    })
                    .count()
            });
            (ids.len(), active, ids.clone())
        }
        Target::Matching(f) => {
            let auth = viewer.check(state, "GET", "/devices")?;
            let now = state.cloud.clock.now_secs();
            (
                count_matching(state, &auth, f, now)?,
                count_active(state, &auth, f, now)?,
                Vec::new(),
            )
        }
    };
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    let mut r = render(&ConfirmPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        count,
        active,
        ids,
        filter: target.described(),
        hidden: target.hidden(),
        back: target.back(),
        reason: reason.to_owned(),
        error,
    });
    *r.status_mut() = status;
    Ok(r)
}

/// `POST /dashboard/bulk-revoke`: from the list's buttons (`mode=selected` with the ticked
/// `id`s, or `mode=matching` with the list's filter): the confirmation page. Changes nothing.
pub async fn confirm(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    // The API's rule for bulk revocation, before anything else: a Member's POST ends here.
    viewer.check(&state, "POST", "/revocations")?;
    let target = Target::from_form(&form)?;
    confirm_page(&state, &viewer, &target, "", None).await
}

/// `POST /dashboard/bulk-revoke/start`: the confirmation form (the target again, `reason`,
/// `confirm=yes`, `totp`). Resolves the target, starts the job and shows its progress page.
pub async fn start(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "POST", "/revocations")?;
    let target = Target::from_form(&form)?;
    let reason = form.get("reason").unwrap_or("").trim().to_owned();
    let problem = if reason.len() > octomil_common::envelope::MAX_REASON_LEN {
        Some((
            StatusCode::BAD_REQUEST,
            format!(
                "the reason is longer than {} bytes",
                octomil_common::envelope::MAX_REASON_LEN
            ),
        ))
    } else if let Err(problem) = super::confirmed(
        &form,
        Some("revocation"),
        "tick the confirmation: revoked devices cannot be restored",
    ) {
        Some(problem)
    } else if let Err(e) = state.bulk.may_start(viewer.session_id()) {
        Some((e.status, e.message))
    } else {
        super::fresh_code(&state, &viewer, &form).await.err()
    };
    if let Some(problem) = problem {
        return confirm_page(&state, &viewer, &target, &reason, Some(problem)).await;
    }
    let (ids, what) = match &target {
        Target::Selected(ids) => (ids.clone(), format!("{} selected devices", ids.len())),
        Target::Matching(f) => {
            let ids = resolve(&state, &viewer, f).await?;
            let what = format!(
                "all {} devices matching {}",
                ids.len(),
                target.described().join(", ")
            );
            (ids, what)
        }
    };
    if ids.is_empty() {
        let problem = (
            StatusCode::CONFLICT,
            "no device matches this filter any more".to_owned(),
        );
        return confirm_page(&state, &viewer, &target, &reason, Some(problem)).await;
    }
    let job = state.bulk.start(
        viewer.session_id(),
        Progress {
            total: ids.len(),
            what,
            reason: reason.clone(),
            ..Progress::default()
        },
    )?;
    tracing::info!(member = %viewer.email, devices = ids.len(), %job, "dashboard bulk revocation started");
    tokio::spawn(run(state.clone(), job.clone(), auth, ids, reason));
    Ok(Redirect::to(&format!("/dashboard/bulk-revoke/{job}")).into_response())
}

/// Marks its job done (stopped) if the task ends without finishing it (a panic, a runtime
/// shutting down), so the session's slot is not held for ever.
struct Finish {
    state: DashState,
    job: String,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.state.bulk.update(&self.job, |p, started| {
            if !p.done {
                p.done = true;
                p.error = Some("the job stopped unexpectedly; see the cloud's log".into());
                p.took_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            }
        });
    }
}

/// The job: the API's bulk revocation handler, [`CHUNK`] ids a call, progress after each.
async fn run(state: DashState, job: String, auth: Auth, ids: Vec<String>, reason: String) {
    let _finish = Finish {
        state: state.clone(),
        job: job.clone(),
    };
    let mut error = None;
    for chunk in ids.chunks(CHUNK) {
        let answer = crate::api::revocations::revoke(
            State(state.cloud.clone()),
            auth.clone(),
            Body(BulkRevoke {
                device_ids: Some(chunk.to_vec()),
                bootstrap_token_id: None,
                all: false,
                confirm: None,
                reason: Some(reason.clone()),
                environment: None,
            }),
        )
        .await;
        match answer {
            Ok(Json(a)) => state.bulk.update(&job, |p, _| {
                p.processed += chunk.len();
                p.revoked += a.revoked.len();
                p.already_revoked += a.already_revoked;
                p.not_found += a.not_found.len();
                p.told += a.published;
            }),
            Err(e) => {
                tracing::warn!(%job, error = %e.message, "dashboard bulk revocation stopped");
                error = Some(e.message);
                break;
            }
        }
    }
    state.bulk.update(&job, |p, started| {
        p.done = true;
        p.error = error;
        p.took_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    });
}

#[derive(Template)]
#[template(path = "dashboard/bulk_progress.html")]
struct ProgressPage {
    nav: Option<Nav>,
    job: String,
    p: Progress,
}

#[derive(Template)]
#[template(path = "dashboard/bulk_progress_fragment.html")]
struct ProgressFragment {
    job: String,
    p: Progress,
}

/// `GET /dashboard/bulk-revoke/{job}`: the progress page; htmx polls it (`HX-Request`) for
/// the progress fragment alone until the job is done. Without JavaScript, a refresh link.
pub async fn progress(
    State(state): State<DashState>,
    Path(job): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    viewer.check(&state, "POST", "/revocations")?;
    let p = state
        .bulk
        .get(&job, viewer.session_id())
        .ok_or_else(|| ApiError::not_found("bulk revocation"))?;
    if req.headers().contains_key("hx-request") {
        return Ok(render(&ProgressFragment { job, p }));
    }
    Ok(render(&ProgressPage {
        nav: Some(viewer.nav(&state)),
        job,
        p,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_running_job_per_session_a_few_in_the_org_and_the_kept_ones_bounded() {
        let jobs = Jobs::default();
        let conflict = |r: ApiResult<String>| r.map_err(|e| e.status);
        let a = jobs.start("s1", Progress::default()).unwrap();
        assert_eq!(
            conflict(jobs.start("s1", Progress::default())),
            Err(StatusCode::CONFLICT)
        );
        assert!(jobs.may_start("s1").is_err());
        for s in ["s2", "s3"] {
            jobs.start(s, Progress::default()).unwrap();
        }
        assert_eq!(
            conflict(jobs.start("s4", Progress::default())),
            Err(StatusCode::CONFLICT)
        );
        // Only its session sees a job.
        assert!(jobs.get(&a, "s1").is_some());
        assert!(jobs.get(&a, "s2").is_none());
        jobs.update(&a, |p, _| p.done = true);
        jobs.start("s4", Progress::default()).unwrap();
        // Finished jobs beyond the bound go, oldest first; running ones stay.
        let jobs = Jobs::default();
        let first = jobs.start("x", Progress::default()).unwrap();
        jobs.update(&first, |p, _| p.done = true);
        for i in 0..MAX_KEPT * 2 {
            let id = jobs.start(&format!("s{i}"), Progress::default()).unwrap();
            jobs.update(&id, |p, _| p.done = true);
        }
        assert!(jobs.lock().1.len() <= MAX_KEPT);
        assert!(jobs.get(&first, "x").is_none());
    }
}
