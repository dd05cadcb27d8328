//! Live updates for the device pages: `GET /dashboard/events`, server-sent events of the
//! devices the session may see (the API's `GET /devices` rule, the session's environment
//! scope), fed by the cloud's event hub ([`crate::events`]). `assets/live.js` applies them.
//!
//! Events: `hello` first (the reconnect delay, and the hub's change count: a page rendered at
//! another count re-fetches), then `device` (one device's state, presence, last seen, last
//! refresh, key expiry, daemon version, as display text) and `resync` (the stream fell behind
//! or too much changed at once: re-fetch the page's live block). A keep-alive comment every
//! 15 s.
//!
//! The session: opening the stream is a request like any page (it counts as activity); the
//! open stream is not. Before each event and every 10 s the stream checks the session is
//! still there and not idle past [`super::IDLE_TIMEOUT_SECS`], without refreshing it, and
//! ends otherwise: the browser's reconnect then meets the sign-in redirect, which ends the
//! `EventSource`. So an open tab alone never keeps a session alive.
//!
//! Bounds: [`crate::events::MAX_STREAMS_PER_SESSION`] streams per session and
//! [`crate::events::MAX_STREAMS`] in all; past either, 429 `too_many_streams`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::format::{ago, opt_time, time};
use super::{DashState, Refusal};
use crate::api::env_scope::{self, Scope};
use crate::error::ApiError;
use crate::events::{DeviceEvent, Message, Subscription};
use crate::store::DeviceState;

/// The error code of a stream refused for the bounds.
pub const TOO_MANY_STREAMS: &str = "too_many_streams";
/// A comment line this often keeps proxies and the browser from timing the stream out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often an idle stream checks its session.
pub const RECHECK: Duration = Duration::from_secs(10);
/// How long the browser waits before reconnecting after a drop (the SSE `retry` field).
pub const RETRY: Duration = Duration::from_secs(1);
/// What a 429 asks the browser to wait.
const FULL_RETRY_SECS: u64 = 30;

/// `GET /dashboard/events?environment=live|test&device=ID`: both optional narrowings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    environment: String,
    #[serde(default)]
    device: String,
}

/// One `device` event's data: display text, as the pages render it.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    id: &'a str,
    /// `active`, `revoked` or `deleted`.
    state: &'static str,
    online: bool,
    last_seen: String,
    last_seen_at: String,
    /// The device page's form: `3 min ago (2026-11-30 06:08Z)`.
    last_seen_long: String,
    last_refresh: String,
    key_expires: String,
    version: String,
}

impl<'a> Payload<'a> {
    fn of(e: &'a DeviceEvent, now: u64) -> Self {
        Self {
            id: &e.device_id,
            state: match e.state {
                Some(DeviceState::Active) => "active",
                Some(DeviceState::Revoked) => "revoked",
                None => "deleted",
            },
            online: e.online,
            last_seen: ago(e.last_seen, now),
            last_seen_at: opt_time(e.last_seen),
            last_seen_long: match e.last_seen {
                Some(t) => format!("{} ({})", ago(Some(t), now), time(t)),
                None => "never".into(),
            },
            last_refresh: opt_time(e.last_refresh_at),
            key_expires: opt_time(e.key_expires_at),
            version: e.daemon_version.clone().unwrap_or_else(|| "-".into()),
        }
    }
}

/// `GET /dashboard/events`.
pub async fn events(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let auth = viewer.check(&state, "GET", "/devices")?;
    let q: EventsQuery = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|_| ApiError::bad_request(codes::INVALID_ARGUMENT, "the query is malformed"))?;
    let asked = env_scope::parse((!q.environment.is_empty()).then_some(q.environment.as_str()))?;
    let scope = env_scope::scope(&auth, asked)?;
    let device = if q.device.is_empty() {
        None
    } else {
        let id = octomil_common::DeviceId::parse(&q.device)
            .map_err(|e| ApiError::bad_request(codes::INVALID_DEVICE_ID, e.to_string()))?;
        Some(id.as_str().to_owned())
    };
    let sub = state
        .cloud
        .events
        .subscribe(viewer.session_id())
        .map_err(|e| ApiError {
            retry_after: Some(FULL_RETRY_SECS),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                TOO_MANY_STREAMS,
                e.to_string(),
            )
        })?;
    // Counted after subscribing: a change after this is in the stream, one before it is not.
    let since = state.cloud.events.changes();
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        state: state.clone(),
        jti: viewer.session_id().to_owned(),
        scope,
        device,
        sub,
        recheck,
        hello: true,
        since,
    };
    let events = stream::unfold(live, |mut live| async move {
        let event = live.next().await?;
        Some((Ok::<_, Infallible>(event), live))
    });
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // A buffering reverse proxy (nginx) would hold events back: ask it not to.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// One open stream.
struct Live {
    state: DashState,
    /// The session's id (not its secret token).
    jti: String,
    scope: Scope,
    /// Only this device's events (the device page).
    device: Option<String>,
    sub: Subscription,
    recheck: tokio::time::Interval,
    /// The first event (`hello`, with the reconnect delay) is still to send.
    hello: bool,
    /// The hub's change count when the stream subscribed.
    since: u64,
}

impl Live {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        if self.hello {
            self.hello = false;
            let changes = self.since;
            return Some(
                Event::default()
                    .event("hello")
                    .retry(RETRY)
                    .data(format!("{{\"changes\":{changes}}}")),
            );
        }
        loop {
            tokio::select! {
                biased;
                () = self.sub.closing.cancelled() => return None,
                _ = self.sub.ended.changed() => return None,
                _ = self.recheck.tick() => {
                    if !self.session_alive() {
                        return None;
                    }
                }
                m = self.sub.rx.recv() => match m {
                    Ok(Message::Device(e)) => {
                        if !self.wants(&e) {
                            continue;
                        }
                        if !self.session_alive() {
                            return None;
                        }
                        let now = self.state.cloud.clock.now_secs();
                        let data = serde_json::to_string(&Payload::of(&e, now)).ok()?;
                        return Some(
                            Event::default()
                                .event("device")
                                .id(e.seq.to_string())
                                .data(data),
                        );
                    }
                    Ok(Message::Resync) | Err(RecvError::Lagged(_)) => {
                        if !self.session_alive() {
                            return None;
                        }
                        return Some(Event::default().event("resync").data("{}"));
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    fn wants(&self, e: &DeviceEvent) -> bool {
        self.scope.sees(e.environment) && self.device.as_ref().is_none_or(|d| *d == e.device_id)
    }

    /// The session still exists, has not expired, and has not been idle past the timeout
    /// (read, never refreshed, here).
    fn session_alive(&self) -> bool {
        let cloud = &self.state.cloud;
        let now = cloud.clock.now_secs();
        let recorded = cloud.store.read(|m| {
            m.org.as_ref().is_some_and(|o| !o.deleted)
                && m.sessions
                    .get(&self.jti)
                    .is_some_and(|s| s.expires_at > now)
        });
        if !recorded {
            return false;
        }
        let seen = self
            .state
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&self.jti)
            .copied();
        seen.is_some_and(|t| now.saturating_sub(t) < super::IDLE_TIMEOUT_SECS)
    }
}
