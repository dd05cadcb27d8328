//! `GET /devices`, `GET /devices/{id}`, `POST /devices/{id}/revoke`, `DELETE /devices/{id}`.
//! A key sees and changes only devices of its own environment; another's answers 404.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ed25519_dalek::SigningKey;
use octomil_common::DeviceId;
use octomil_common::envelope::{self, Revocation};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::env_scope;
use super::page::{self, Cursors, Page};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, MaybeBody};
use crate::mqtt::outbox;
use crate::mqtt::presence::{PresenceTable, Seen};
use crate::revocation_push::PublishError;
use crate::store::{Change, DeviceRecord, DeviceState, Environment, Model, REVOCATION_SEQ};

/// A device as operators see it. Presence fields stay `null` until a daemon reports.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub device_id: String,
    pub state: DeviceState,
    pub registered_at: u64,
    pub last_refresh_at: Option<u64>,
    pub key_expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    pub revoke_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The bootstrap token of the latest registration (`null` if before format 2).
    pub bootstrap_token_id: Option<String>,
    /// `live` or `test` (sandbox): that of the bootstrap token it registered with.
    pub environment: Environment,
    pub online: bool,
    pub last_seen: Option<u64>,
    pub daemon_version: Option<String>,
    pub reported_state: Option<String>,
    /// For a revoke answer: whether the broker acknowledged the envelope (PUBACK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_published: Option<bool>,
    /// For a revoke answer: milliseconds from publishing to the broker's PUBACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_ack_ms: Option<u64>,
}

impl DeviceView {
    /// The record plus what the device last reported on its status topic.
    pub fn with_presence(d: &DeviceRecord, seen: Option<Seen>) -> Self {
        let seen = seen.unwrap_or_default();
        Self {
            online: seen.online,
            last_seen: seen.last_seen,
            daemon_version: seen.daemon_version,
            reported_state: seen.state,
            ..Self::of(d)
        }
    }

    pub fn of(d: &DeviceRecord) -> Self {
        Self {
            device_id: d.device_id.clone(),
            state: d.state,
            registered_at: d.registered_at_ms / 1000,
            last_refresh_at: d.last_refresh_at,
            key_expires_at: d.key_expires_at(),
            revoked_at: d.revoked_at,
            revoke_reason: d.revoke_reason.clone(),
            metadata: d.metadata.clone(),
            bootstrap_token_id: d.bootstrap_token_id.clone(),
            environment: d.environment,
            online: false,
            last_seen: None,
            daemon_version: None,
            reported_state: None,
            revocation_published: None,
            revocation_ack_ms: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Devices per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 5000;

/// `GET /devices` query: a page (`limit`, `cursor`) and filters, all optional and combined.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page (with the same filters).
    pub cursor: Option<String>,
    /// `active` or `revoked`.
    pub state: Option<String>,
    /// `true` or `false`.
    pub online: Option<String>,
    /// Unix seconds: devices last seen at or after / before.
    pub last_seen_after: Option<String>,
    pub last_seen_before: Option<String>,
    /// The daemon version the device reported, exactly.
    pub version: Option<String>,
    /// The bootstrap token the device registered with.
    pub bootstrap_token: Option<String>,
    /// Free text: a case-insensitive substring of the device id or a metadata value.
    pub q: Option<String>,
    /// `live` or `test`: a session's narrowing (a key sees only its own environment).
    pub environment: Option<String>,
    /// `id` (the default) or `last_seen`: newest first, devices never seen last, ties by id.
    pub sort: Option<String>,
}

fn query_err(what: &str) -> ApiError {
    ApiError::bad_request(codes::INVALID_ARGUMENT, format!("query parameter {what}"))
}

fn parse_q<T: std::str::FromStr>(name: &str, v: &Option<String>) -> ApiResult<Option<T>> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| query_err(&format!("{name} is not valid")))
        })
        .transpose()
}

/// Which devices a list shows: every field optional, all combined. The API handler parses
/// it from [`DeviceQuery`]; the dashboard builds it directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// The environments the caller sees (a key: its own only).
    pub scope: env_scope::Scope,
    pub state: Option<DeviceState>,
    pub online: Option<bool>,
    /// Last seen at or after (Unix seconds).
    pub last_seen_after: Option<u64>,
    /// Last seen before (Unix seconds); a device never seen does not match.
    pub last_seen_before: Option<u64>,
    /// The reported daemon version, exactly.
    pub version: Option<String>,
    pub bootstrap_token: Option<String>,
    /// Lowercase free text: a substring of the id or of a metadata value.
    pub q: Option<String>,
}

impl DeviceFilter {
    fn matches(&self, v: &DeviceView, d: &DeviceRecord) -> bool {
        self.matches_parts(d, v.online, v.last_seen, v.daemon_version.as_deref())
    }

    /// [`Self::matches`] from the record and its presence, without building the view (the
    /// count and the last-seen order test every device).
    fn matches_seen(&self, d: &DeviceRecord, seen: Option<&Seen>) -> bool {
        match seen {
            Some(s) => self.matches_parts(d, s.online, s.last_seen, s.daemon_version.as_deref()),
            None => self.matches_parts(d, false, None, None),
        }
    }

    fn matches_parts(
        &self,
        d: &DeviceRecord,
        online: bool,
        last_seen: Option<u64>,
        version: Option<&str>,
    ) -> bool {
        self.scope.sees(d.environment)
            && self.state.is_none_or(|s| s == d.state)
            && self.online.is_none_or(|o| o == online)
            && self
                .last_seen_after
                .is_none_or(|t| last_seen.is_some_and(|s| s >= t))
            && self
                .last_seen_before
                .is_none_or(|t| last_seen.is_some_and(|s| s < t))
            && self
                .version
                .as_ref()
                .is_none_or(|x| version == Some(x.as_str()))
            && self
                .bootstrap_token
                .as_ref()
                .is_none_or(|x| d.bootstrap_token_id.as_ref() == Some(x))
            && self.q.as_ref().is_none_or(|q| {
                d.device_id.to_ascii_lowercase().contains(q)
                    || d.metadata
                        .values()
                        .any(|m| m.to_ascii_lowercase().contains(q))
            })
    }

    /// What a cursor is bound to: a cursor made under other filters does not open.
    pub fn canonical(&self) -> String {
        format!("{self:?}")
    }

    /// The filter of `q` for `auth`, exactly as `GET /devices` reads it (the dashboard counts
    /// a filter's devices with it).
    pub fn parse(q: &DeviceQuery, auth: &Auth) -> ApiResult<Self> {
        let state = match q.state.as_deref() {
            None => None,
            Some("active") => Some(DeviceState::Active),
            Some("revoked") => Some(DeviceState::Revoked),
            Some(_) => return Err(query_err("state must be active or revoked")),
        };
        Ok(Self {
            scope: env_scope::scope(auth, env_scope::parse(q.environment.as_deref())?)?,
            state,
            online: parse_q("online", &q.online)?,
            last_seen_after: parse_q("last_seen_after", &q.last_seen_after)?,
            last_seen_before: parse_q("last_seen_before", &q.last_seen_before)?,
            version: q.version.clone(),
            bootstrap_token: q.bootstrap_token.clone(),
            q: q.q.as_ref().map(|s| s.to_ascii_lowercase()),
        })
    }
}

pub(super) fn parse_id(id: &str) -> ApiResult<DeviceId> {
    DeviceId::parse(id).map_err(|e| ApiError::bad_request(codes::INVALID_DEVICE_ID, e.to_string()))
}

/// One page of devices matching `filter`, in id order, after the device id `after`: the
/// list logic the API and the dashboard share.
pub fn list_page(
    m: &Model,
    presence: &PresenceTable,
    filter: &DeviceFilter,
    after: Option<&str>,
    limit: usize,
) -> Page<DeviceView> {
    Page::collect(Page::<DeviceView>::after(&m.devices, after), limit, |d| {
        let v = DeviceView::with_presence(d, presence.get(&d.device_id));
        filter.matches(&v, d).then_some(v)
    })
}

/// How many devices match `filter` (the dashboard's "all N matching").
pub fn count(m: &Model, presence: &PresenceTable, filter: &DeviceFilter) -> usize {
    m.devices
        .values()
        .filter(|d| filter.matches_seen(d, presence.get(&d.device_id).as_ref()))
        .count()
}

/// The order of `GET /devices`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// Device id (the key of the store).
    #[default]
    Id,
    /// Last seen, newest first; devices never seen last; ties by device id.
    LastSeen,
}

impl Sort {
    /// The `sort` query parameter.
    pub fn parse(v: Option<&str>) -> ApiResult<Self> {
        match v {
            None | Some("id") => Ok(Self::Id),
            Some("last_seen") => Ok(Self::LastSeen),
            Some(_) => Err(query_err("sort must be id or last_seen")),
        }
    }

    /// The list name cursors of this order are bound to: a cursor of one order does not open
    /// in the other (its position means something else).
    pub fn list(self) -> &'static str {
        match self {
            Self::Id => LIST,
            Self::LastSeen => LIST_BY_LAST_SEEN,
        }
    }
}

/// Where a device stands in last-seen order: seen devices first, newest first, then by id.
/// `Ord` of the tuple is the list order.
type SeenKey<'a> = (bool, std::cmp::Reverse<u64>, &'a str);

fn seen_key(last_seen: Option<u64>, id: &str) -> SeenKey<'_> {
    (
        last_seen.is_none(),
        std::cmp::Reverse(last_seen.unwrap_or(0)),
        id,
    )
}

/// The cursor position of a key: `SECS/ID`, or `-/ID` for a device never seen.
fn seen_position((never, newest, id): SeenKey<'_>) -> String {
    if never {
        format!("-/{id}")
    } else {
        format!("{}/{id}", newest.0)
    }
}

fn parse_seen_position(p: &str) -> ApiResult<SeenKey<'_>> {
    let (secs, id) = p.split_once('/').ok_or_else(page::invalid_cursor)?;
    let last_seen = match secs {
        "-" => None,
        s => Some(s.parse().map_err(|_| page::invalid_cursor())?),
    };
    Ok(seen_key(last_seen, id))
}

/// One page of devices matching `filter` in last-seen order (newest first, never seen last,
/// ties by id), after the position `after` (a `SECS/ID` made by this function). Last seen is
/// the presence table's, the same value the `last_seen_*` filters and the answer use. Every
/// matching device is ranked, then the page is cut: a position names a place in a total
/// order, so while nothing changes no device is skipped or repeated across pages.
pub fn list_page_by_last_seen(
    m: &Model,
    presence: &PresenceTable,
    filter: &DeviceFilter,
    after: Option<&str>,
    limit: usize,
) -> ApiResult<Page<DeviceView>> {
    let after = after.map(parse_seen_position).transpose()?;
    // Rank first, build the views of the page only.
    let mut hits: Vec<(SeenKey<'_>, &DeviceRecord, Option<Seen>)> = m
        .devices
        .values()
        .filter_map(|d| {
            let seen = presence.get(&d.device_id);
            let key = seen_key(seen.as_ref().and_then(|s| s.last_seen), &d.device_id);
            (after.is_none_or(|a| key > a) && filter.matches_seen(d, seen.as_ref()))
                .then_some((key, d, seen))
        })
        .collect();
    let more = hits.len() > limit;
    if more {
        hits.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
        hits.truncate(limit);
    }
    hits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let next = if more {
        hits.last().map(|(k, _, _)| seen_position(*k))
    } else {
        None
    };
    Ok(Page {
        items: hits
            .into_iter()
            .map(|(_, d, seen)| DeviceView::with_presence(d, seen))
            .collect(),
        next,
    })
}

/// One page of devices matching `filter` in `sort` order after the cursor position `after`.
pub fn list_sorted(
    m: &Model,
    presence: &PresenceTable,
    filter: &DeviceFilter,
    sort: Sort,
    after: Option<&str>,
    limit: usize,
) -> ApiResult<Page<DeviceView>> {
    match sort {
        Sort::Id => Ok(list_page(m, presence, filter, after, limit)),
        Sort::LastSeen => list_page_by_last_seen(m, presence, filter, after, limit),
    }
}

/// The list name cursors of `GET /devices` are bound to.
pub const LIST: &str = "devices";
/// The list name of `GET /devices?sort=last_seen`.
pub const LIST_BY_LAST_SEEN: &str = "devices/last_seen";

/// Devices in id order (or last-seen order), a page at a time (see [`super::page`]).
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<DeviceQuery>, QueryRejection>,
) -> ApiResult<Json<DeviceList>> {
    let Query(q) = query.map_err(|e| query_err(&format!("is not valid: {}", e.body_text())))?;
    let limit = page::limit(q.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let filter = DeviceFilter::parse(&q, &auth)?;
    let sort = Sort::parse(q.sort.as_deref())?;
    let cursors = Cursors::of(&state);
    let after = cursors.open_opt(sort.list(), &filter.canonical(), q.cursor.as_deref())?;
    let p = state
        .store
        .read(|m| list_sorted(m, &state.presence, &filter, sort, after.as_deref(), limit))?;
    Ok(Json(DeviceList {
        devices: p.items,
        next_cursor: p
            .next
            .map(|pos| cursors.seal(sort.list(), &filter.canonical(), &pos)),
    }))
}

/// The device `id` if `auth` sees its environment; 404 otherwise, exactly as if absent.
fn visible<'a>(m: &'a Model, auth: &Auth, id: &str) -> ApiResult<&'a DeviceRecord> {
    let scope = env_scope::scope(auth, None)?;
    m.devices
        .get(id)
        .filter(|d| scope.sees(d.environment))
        .ok_or_else(|| ApiError::not_found("device"))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let id = parse_id(&id)?;
    state
        .store
        .read(|m| {
            visible(m, &auth, id.as_str())
                .map(|d| DeviceView::with_presence(d, state.presence.get(id.as_str())))
        })
        .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Records the revocation and its outbox entry in one commit, then publishes the envelope and
/// waits (bounded) for the broker's PUBACK: 200 with `revocation_published: true` once the
/// broker has it, 202 with `false` if it did not answer in time (the outbox keeps retrying),
/// 200 with `false` when the cloud has no broker (the device learns at its next refresh).
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    MaybeBody(body): MaybeBody<RevokeRequest>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    // A destructive call: a session needs a second factor from the last 10 minutes.
    crate::session::require_recent_second_factor(&state, &auth)?;
    let id = parse_id(&id)?;
    let reason = body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "revoked by operator".into());
    if reason.len() > envelope::MAX_REASON_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("reason is longer than {} bytes", envelope::MAX_REASON_LEN),
        ));
    }
    let now_ms = state.clock.now_ms();
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone(), id.clone());
    let pending = state.store.write(move |m| {
        let (state, auth, id) = owned;
        let mut d = visible(m, &auth, id.as_str())?.clone();
        d.kill_credentials();
        d.state = DeviceState::Revoked;
        d.revoked_at = Some(now_ms / 1000);
        d.revoke_reason = Some(reason.clone());
        // A cloud-wide sequence (never per device, so a deleted and re-provisioned id cannot
        // repeat one), kept above any per-device sequence a protocol-1 cloud handed out.
        let seq = m
            .counter(REVOCATION_SEQ)
            .max(d.revocation_seq)
            .checked_add(1)
            .ok_or_else(|| ApiError::internal("the revocation sequence is exhausted"))?;
        d.revocation_seq = seq;
        let sealed = seal(&state.revocation_key, &d, m.epoch_of(id.as_str()))?;
        let view = DeviceView::with_presence(&d, state.presence.get(id.as_str()));
        let audit = super::audit::change_in(
            &auth,
            d.environment,
            now_ms,
            "device.revoke",
            id.as_str(),
            Some(reason.clone()),
        );
        let mut changes = vec![
            Change::Counter(REVOCATION_SEQ, seq),
            Change::Device(d),
            audit,
        ];
        if state.publisher.durable() {
            changes.push(outbox::entry(&id, sealed.clone(), now_ms));
        }
        Ok::<_, ApiError>(((view, sealed), changes))
    });
    let (view, sealed) = pending.await?;
    crate::api::metrics::Metrics::add(&state.metrics.revocations, 1);
    tracing::info!(device_id = %id, auth = %auth.subject(), "device revoked");
    let (status, published, ack_ms) = match state.publisher.publish(&id, sealed).await {
        Ok(took) => {
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(device_id = %id, ack_ms = ms, "revocation acknowledged by the broker");
            (StatusCode::OK, true, Some(ms))
        }
        Err(PublishError::NotConfigured) => (StatusCode::OK, false, None),
        Err(e) => {
            tracing::warn!(device_id = %id, error = %e, "revocation recorded, not yet acknowledged by the broker");
            (StatusCode::ACCEPTED, false, None)
        }
    };
    let view = DeviceView {
        revocation_published: Some(published),
        revocation_ack_ms: ack_ms,
        ..view
    };
    Ok((status, Json(view)))
}

/// The version-2 envelope revoking `d`'s registration number `epoch`.
pub(super) fn seal(key: &SigningKey, d: &DeviceRecord, epoch: u64) -> ApiResult<Vec<u8>> {
    let rev = Revocation {
        device_id: d.device_id.clone(),
        epoch,
        seq: d.revocation_seq,
        reason: d.revoke_reason.clone().unwrap_or_default(),
    };
    envelope::seal(&rev, key).map_err(ApiError::internal)
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // A destructive call: a session needs a second factor from the last 10 minutes.
    crate::session::require_recent_second_factor(&state, &auth)?;
    let id = parse_id(&id)?;
    let now_ms = state.clock.now_ms();
    let durable = state.publisher.durable();
    // The step runs on the writer thread: it owns what it uses.
    let owned = (id.clone(), auth.clone());
    let pending = state
        .store
        .write(move |m| match visible(m, &auth, id.as_str()) {
            Err(e) => Err(e),
            Ok(d) if d.state != DeviceState::Revoked => Err(ApiError::conflict(
                codes::CONFLICT,
                "only a revoked device can be deleted; revoke it first",
            )),
            Ok(d) => {
                let mut changes = vec![
                    Change::DeleteDevice(id.as_str().to_owned()),
                    super::audit::change_in(
                        &auth,
                        d.environment,
                        now_ms,
                        "device.delete",
                        id.as_str(),
                        None,
                    ),
                ];
                // Clear the retained revocation (replacing any undelivered one), so a
                // re-provisioned device with this id does not read its predecessor's.
                if durable {
                    changes.push(outbox::entry(&id, Vec::new(), now_ms));
                }
                Ok(((), changes))
            }
        });
    pending.await?;
    let (id, auth) = owned;
    state.presence.forget(id.as_str());
    tracing::info!(device_id = %id, auth = %auth.subject(), "device deleted");
    // Wait (bounded) for the clear, so a device registered right after starts clean; the
    // outbox delivers it later otherwise.
    match state.publisher.publish(&id, Vec::new()).await {
        Ok(_) | Err(PublishError::NotConfigured) => {}
        Err(e) => {
            tracing::warn!(device_id = %id, error = %e, "retained revocation not cleared yet")
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, env: Environment, token: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: id.into(),
            public_key: [0; 32],
            state: DeviceState::Active,
            registered_at_ms: 0,
            last_refresh_at: None,
            metadata: [("site".to_owned(), "Berlin-Lab".to_owned())].into(),
            keys: Vec::new(),
            refresh: Default::default(),
            revoked_at: None,
            revoke_reason: None,
            revocation_seq: 0,
            bootstrap_token_id: Some(token.into()),
            environment: env,
        }
    }

    fn seen(online: bool, last_seen: Option<u64>, version: &str) -> DeviceView {
        DeviceView {
            online,
            last_seen,
            daemon_version: Some(version.into()),
            ..DeviceView::of(&device("x", Environment::Live, "bt"))
        }
    }

    #[test]
    fn last_seen_order_and_its_cursor_positions() {
        // Newest first, never seen last, ties by id.
        assert!(seen_key(Some(9), "z") < seen_key(Some(3), "a"));
        assert!(seen_key(Some(3), "a") < seen_key(Some(3), "b"));
        assert!(seen_key(Some(0), "z") < seen_key(None, "a"));
        assert!(seen_key(None, "a") < seen_key(None, "b"));
        for (seen, id) in [(Some(5), "cam-1"), (Some(0), "x"), (None, "never.1")] {
            let k = seen_key(seen, id);
            assert_eq!(parse_seen_position(&seen_position(k)).unwrap(), k);
        }
        for bad in ["cam-1", "x/cam-1", "-1/cam-1", ""] {
            assert!(parse_seen_position(bad).is_err(), "{bad}");
        }
        assert_eq!(Sort::parse(None), Ok(Sort::Id));
        assert_eq!(Sort::parse(Some("last_seen")), Ok(Sort::LastSeen));
        assert!(Sort::parse(Some("last-seen")).is_err());
        assert_ne!(Sort::Id.list(), Sort::LastSeen.list());
    }

    #[test]
    fn every_filter_narrows_and_they_combine() {
        let d = device("cam-1", Environment::Live, "bt_a");
        let v = seen(true, Some(1_000), "0.2.0");
        let all = DeviceFilter::default();
        assert!(all.matches(&v, &d));
        let cases = [
            (
                DeviceFilter {
                    scope: env_scope::Scope::only(Environment::Test),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    scope: env_scope::Scope::only(Environment::Live),
                    ..all.clone()
                },
                true,
            ),
            (
                DeviceFilter {
                    state: Some(DeviceState::Revoked),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    online: Some(false),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    last_seen_after: Some(1_000),
                    ..all.clone()
                },
                true,
            ),
            (
                DeviceFilter {
                    last_seen_after: Some(1_001),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    last_seen_before: Some(1_001),
                    ..all.clone()
                },
                true,
            ),
            (
                DeviceFilter {
                    last_seen_before: Some(1_000),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    version: Some("0.2.0".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                DeviceFilter {
                    version: Some("0.2".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    bootstrap_token: Some("bt_b".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    q: Some("berlin".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                DeviceFilter {
                    q: Some("cam".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                DeviceFilter {
                    q: Some("paris".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                DeviceFilter {
                    online: Some(true),
                    version: Some("0.2.0".into()),
                    q: Some("lab".into()),
                    ..all.clone()
                },
                true,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(f.matches(&v, &d), want, "{f:?}");
        }
        // A device never seen matches neither side of a last-seen bound.
        let never = seen(false, None, "0.2.0");
        for f in [
            DeviceFilter {
                last_seen_after: Some(0),
                ..all.clone()
            },
            DeviceFilter {
                last_seen_before: Some(u64::MAX),
                ..all.clone()
            },
        ] {
            assert!(!f.matches(&never, &d), "{f:?}");
        }
        // Cursors are bound to the whole filter.
        let other = DeviceFilter {
            q: Some("cam".into()),
            ..all.clone()
        };
        assert_ne!(all.canonical(), other.canonical());
    }
}
