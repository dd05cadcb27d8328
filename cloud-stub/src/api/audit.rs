//! `GET /audit`: the audit log, filtered and paged; and the helpers handlers use to append
//! a record to the same commit as their change.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Ctx};
use crate::store::{AuditRecord, Change, Checkpoint};

tokio::task_local! {
    /// The surface a change came through when it is not the API: the dashboard runs the API's
    /// handlers inside `ORIGIN.scope("dashboard", ..)`, so their records say so.
    pub static ORIGIN: &'static str;
}

/// `api`, or the surface set by [`ORIGIN`].
pub fn origin() -> &'static str {
    ORIGIN.try_with(|o| *o).unwrap_or("api")
}

/// A record of a change made by `auth` (an API key or a session, over the API or the
/// dashboard).
pub fn by(auth: &Auth, now_ms: u64, action: &str, target: impl Into<String>) -> AuditRecord {
    let mut r = AuditRecord::new(now_ms, auth.subject(), origin(), action, target);
    r.source = auth.1.source.clone();
    r.request_id = auth.1.request_id.clone();
    r
}

/// [`by`] as a change, with a reason.
pub fn change(
    auth: &Auth,
    now_ms: u64,
    action: &str,
    target: impl Into<String>,
    reason: Option<String>,
) -> Change {
    let mut r = by(auth, now_ms, action, target);
    r.reason = reason;
    Change::Audit(r)
}

/// A record of something a device did (registration), or a login (`actor` given).
pub fn from(
    ctx: &Ctx,
    now_ms: u64,
    actor: String,
    origin: &str,
    action: &str,
    target: &str,
) -> Change {
    let mut r = AuditRecord::new(now_ms, actor, origin, action, target);
    r.source = ctx.source.clone();
    r.request_id = ctx.request_id.clone();
    Change::Audit(r)
}

pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 5000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    /// An action, or a prefix of one ending in `.` (`device.`).
    pub action: Option<String>,
    pub target: Option<String>,
    /// Unix seconds, inclusive / exclusive.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A record as the API shows it (hashes in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    pub seq: u64,
    pub at_ms: u64,
    pub actor: String,
    pub origin: String,
    pub action: String,
    pub target: String,
    pub reason: Option<String>,
    pub result: String,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditView {
    pub fn of(r: &AuditRecord) -> Self {
        Self {
            seq: r.seq,
            at_ms: r.at_ms,
            actor: r.actor.clone(),
            origin: r.origin.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            reason: r.reason.clone(),
            result: r.result.clone(),
            source: r.source.clone(),
            request_id: r.request_id.clone(),
            prev_hash: hex(&r.prev_hash),
            hash: hex(&r.hash),
        }
    }

    /// Back to a record, for verification by a client.
    pub fn record(&self) -> Option<AuditRecord> {
        Some(AuditRecord {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: self.actor.clone(),
            origin: self.origin.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            reason: self.reason.clone(),
            result: self.result.clone(),
            source: self.source.clone(),
            request_id: self.request_id.clone(),
            prev_hash: unhex(&self.prev_hash)?,
            hash: unhex(&self.hash)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointView {
    pub seq: u64,
    pub hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditView>,
    pub next_cursor: Option<String>,
    /// Where the chain starts after retention pruning (`seq` 0 and zero hash if never pruned).
    pub checkpoint: CheckpointView,
}

pub fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl CheckpointView {
    pub fn of(c: Checkpoint) -> Self {
        Self {
            seq: c.seq,
            hash: hex(&c.hash),
        }
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            seq: self.seq,
            hash: unhex(&self.hash)?,
        })
    }
}

fn bad(what: &str) -> ApiError {
    ApiError::bad_request(codes::INVALID_ARGUMENT, format!("query parameter {what}"))
}

fn num(name: &str, v: &Option<String>) -> ApiResult<Option<u64>> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| bad(&format!("{name} is not a number")))
        })
        .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    _auth: Auth,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    let Query(q) = query.map_err(|e| bad(&format!("is not valid: {}", e.body_text())))?;
    let limit = num("limit", &q.limit)?.map_or(DEFAULT_PAGE, |n| n as usize);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(&format!("limit must be 1-{MAX_PAGE}")));
    }
    let after = num("cursor", &q.cursor)?.unwrap_or(0);
    let since = num("since", &q.since)?.map(|s| s.saturating_mul(1000));
    let until = num("until", &q.until)?.map(|s| s.saturating_mul(1000));
    let keep = |r: &AuditRecord| {
        q.actor.as_ref().is_none_or(|a| &r.actor == a)
            && q.action.as_ref().is_none_or(|a| {
                &r.action == a || (a.ends_with('.') && r.action.starts_with(a.as_str()))
            })
            && q.target.as_ref().is_none_or(|t| &r.target == t)
            && since.is_none_or(|s| r.at_ms >= s)
            && until.is_none_or(|u| r.at_ms < u)
    };
    let (records, more, checkpoint) = state.store.audit_page(after, limit, keep)?;
    let next_cursor = more
        .then(|| records.last().map(|r| r.seq.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        records: records.iter().map(AuditView::of).collect(),
        next_cursor,
        checkpoint: CheckpointView::of(checkpoint),
    }))
}
