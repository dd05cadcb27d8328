//! `GET /audit`: the audit log, filtered and paged; and the helpers handlers use to append
//! a record to the same commit as their change.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use super::env_scope;
use super::page::{self, Cursors};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Ctx};
use crate::store::{AuditRecord, Change, Checkpoint, Environment};

/// A record of a change made by `auth` (an API key or a session, over the API or the
/// dashboard), in the environment `auth` acts in (see [`Ctx::environment`]).
pub fn by(auth: &Auth, now_ms: u64, action: &str, target: impl Into<String>) -> AuditRecord {
    let mut r = AuditRecord::new(
        now_ms,
        auth.subject(),
        auth.1.origin.unwrap_or("api"),
        action,
        target,
    );
    r.source = auth.1.source.clone();
    r.request_id = auth.1.request_id.clone();
    r.environment = auth.1.environment;
    r
}

/// [`change`] for a change to a record of `environment` (a device, bootstrap token or
/// resource): the audit record takes the environment of what changed.
pub fn change_in(
    auth: &Auth,
    environment: Environment,
    now_ms: u64,
    action: &str,
    target: impl Into<String>,
    reason: Option<String>,
) -> Change {
    let mut r = by(auth, now_ms, action, target);
    r.environment = environment;
    r.reason = reason;
    Change::Audit(r)
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
    r.environment = ctx.environment;
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
    /// The `next_cursor` of the previous page (with the same filters).
    pub cursor: Option<String>,
    /// `live` or `test`: a session's narrowing (a key sees only its own environment).
    pub environment: Option<String>,
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
    /// `live` or `test`. Absent from clouds before format 3 (then live, hash version 1).
    #[serde(default)]
    pub environment: Environment,
    /// What `hash` covers (see `AuditRecord::compute_hash`).
    #[serde(default = "hash_version_1")]
    pub version: u8,
    pub prev_hash: String,
    pub hash: String,
}

fn hash_version_1() -> u8 {
    1
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
            environment: r.environment,
            version: r.version,
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
            environment: self.environment,
            version: self.version,
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
    /// For a caller that sees one environment and asked for no other filter: the links of
    /// the other environment's records around this page (sequence and hashes only), so
    /// `octomil audit verify` can follow the whole chain. A link may repeat on the next page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<LinkView>,
}

/// The link of a record the caller may not read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkView {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
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

/// The list name cursors of `GET /audit` are bound to.
pub const LIST: &str = "audit";

/// Records oldest first, a page at a time. A key reads only its own environment's records
/// (a sandbox key, the sandbox's); a session reads both, or one with `environment`.
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    let Query(q) = query.map_err(|e| bad(&format!("is not valid: {}", e.body_text())))?;
    let limit = page::limit(q.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let scope = env_scope::scope(&auth, env_scope::parse(q.environment.as_deref())?)?;
    let since = num("since", &q.since)?.map(|s| s.saturating_mul(1000));
    let until = num("until", &q.until)?.map(|s| s.saturating_mul(1000));
    let filter = format!(
        "{scope:?} {:?} {:?} {:?} {since:?} {until:?}",
        q.actor, q.action, q.target
    );
    let cursors = Cursors::of(&state);
    let after = match cursors.open_opt(LIST, &filter, q.cursor.as_deref())? {
        None => 0,
        Some(pos) => pos.parse().map_err(|_| page::invalid_cursor())?,
    };
    // A full read by a one-environment caller also gets the other environment's links.
    let unfiltered = q.actor.is_none()
        && q.action.is_none()
        && q.target.is_none()
        && since.is_none()
        && until.is_none();
    let hidden = std::cell::RefCell::new(Vec::new());
    let keep = |r: &AuditRecord| {
        if !scope.sees(r.environment) {
            if unfiltered {
                hidden.borrow_mut().push(LinkView {
                    seq: r.seq,
                    prev_hash: hex(&r.prev_hash),
                    hash: hex(&r.hash),
                });
            }
            return false;
        }
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
        .then(|| {
            records
                .last()
                .map(|r| cursors.seal(LIST, &filter, &r.seq.to_string()))
        })
        .flatten();
    Ok(Json(AuditPage {
        records: records.iter().map(AuditView::of).collect(),
        next_cursor,
        checkpoint: CheckpointView::of(checkpoint),
        hidden: hidden.into_inner(),
    }))
}
