//! `POST /v1/limits/{surface}/acquire[?n=N]`: take N permits of the device's local budget
//! before calling the cloud, so the call is never refused upstream for rate reasons.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use octomil_common::wire::{Surface, codes};
use octomil_common::{Clock, SystemClock};
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::limits::{Denied, Limiter};
use crate::metrics::Metrics;
use crate::socket::{FastAnswer, FastStatus, Peer};

/// The route's label in `/metrics`.
pub const ROUTE: &str = "/v1/limits/acquire";

/// Largest batch one call may ask for.
const MAX_N: u32 = 1_000_000;

/// The grant's answer. Fields spelled out rather than `#[serde(flatten)]`, which serializes
/// through a map and costs more than the rest of the call.
#[derive(Debug, Serialize)]
struct Grant {
    surface: &'static str,
    granted: u32,
    remaining: u32,
    limit: u32,
    period_secs: u32,
}

#[derive(Debug, Serialize)]
struct Refused {
    error: &'static str,
    message: String,
    /// The exact wait in milliseconds (`Retry-After` is rounded up to whole seconds).
    retry_after_ms: u64,
    /// `budget`, `per_uid` (this caller's share is spent) or `paused` (the cloud asked).
    reason: &'static str,
}

pub async fn acquire(
    peer: Peer,
    State(state): State<ApiState>,
    Path(surface): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let surface = Surface::parse(&surface).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!(
                "unknown surface {:?}: use control_plane or inference",
                surface.chars().take(40).collect::<String>()
            ),
        )
    })?;
    let n = match q.get("n") {
        None => 1,
        Some(v) => parse_n(v).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_ARGUMENT,
                format!("n must be an integer from 1 to {MAX_N}"),
            )
        })?,
    };
    if let Some(k) = q.keys().find(|k| k.as_str() != "n") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_ARGUMENT,
            format!(
                "unknown parameter {:?}",
                k.chars().take(40).collect::<String>()
            ),
        ));
    }
    match take(&state.limits, &state.metrics, surface, n, &peer) {
        Ok(answer) => {
            let mut resp = (answer.status, answer.body).into_response();
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(secs) = answer.retry_after {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok(resp)
        }
        Err(Refusal::TooLarge { limit }) => {
            state.metrics.limit_refusal(surface.as_str(), "too_large");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_ARGUMENT,
                format!("n = {n} exceeds the burst of {limit}: it can never be granted at once"),
            ))
        }
        Err(Refusal::NotRegistered) => {
            state
                .metrics
                .limit_refusal(surface.as_str(), "not_registered");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::NOT_REGISTERED,
                "no limits yet: the device has not registered",
            )
            .retry_after(5))
        }
    }
}

/// `n` as a batch size: an integer from 1 to `MAX_N`.
fn parse_n(v: &str) -> Option<u32> {
    v.parse::<u32>().ok().filter(|n| (1..=MAX_N).contains(n))
}

/// A grant (200) or a wait (429), counted in `/metrics`.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Bytes,
}

/// The refusals that are errors rather than answers.
enum Refusal {
    NotRegistered,
    TooLarge { limit: u32 },
}

/// Takes `n` permits for `peer`. Grants and waits are answers, counted here; the other
/// refusals are returned uncounted and change nothing, for the router to answer as errors.
fn take(
    limits: &Limiter,
    metrics: &Metrics,
    surface: Surface,
    n: u32,
    peer: &Peer,
) -> Result<Answer, Refusal> {
    // Root and the daemon's own uid are not held to a per-uid share.
    let uid = (peer.uid != 0).then_some(peer.uid);
    match limits.acquire(surface, n, uid, SystemClock.now_ms()) {
        Ok(granted) => {
            metrics.limit_grant(surface.as_str(), n);
            Ok(Answer {
                status: StatusCode::OK,
                retry_after: None,
                body: json(&Grant {
                    surface: surface.as_str(),
                    granted: granted.granted,
                    remaining: granted.remaining,
                    limit: granted.limit,
                    period_secs: granted.period_secs,
                }),
            })
        }
        Err(
            d @ Denied::Wait {
                wait_ms,
                paused,
                per_uid,
            },
        ) => {
            let reason = if paused {
                "paused"
            } else if per_uid {
                "per_uid"
            } else {
                "budget"
            };
            metrics.limit_refusal(surface.as_str(), reason);
            Ok(Answer {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: Some(d.retry_after_secs()),
                body: json(&Refused {
                    error: codes::RATE_LIMITED,
                    message: format!(
                        "{} budget spent ({reason}); retry in {wait_ms} ms",
                        surface.as_str()
                    ),
                    retry_after_ms: wait_ms,
                    reason,
                }),
            })
        }
        Err(Denied::Unknown) => Err(Refusal::NotRegistered),
        Err(Denied::TooLarge { limit }) => Err(Refusal::TooLarge { limit }),
    }
}

fn json(value: &impl Serialize) -> Bytes {
    // These plain structs always serialize.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// `POST /v1/limits/{surface}/acquire[?n=N]` on the socket's fast path: grants and waits for
/// a known surface and a plain `n`; anything else (an error answer, an unusual query or
/// encoding) is left to [`acquire`] through the router.
pub fn fast_answer(
    limits: &Limiter,
    metrics: &Metrics,
    target: &str,
    peer: &Peer,
) -> Option<FastAnswer> {
    let rest = target.strip_prefix("/v1/limits/")?;
    let (surface, query) = rest.split_once("/acquire")?;
    let surface = Surface::parse(surface)?;
    let n = match query {
        "" => 1,
        q => parse_n(q.strip_prefix("?n=")?)?,
    };
    let answer = take(limits, metrics, surface, n, peer).ok()?;
    let status = if answer.status == StatusCode::OK {
        FastStatus::Ok
    } else {
        FastStatus::TooManyRequests
    };
    metrics.request(ROUTE, answer.status.as_u16());
    Some(FastAnswer {
        status,
        retry_after: answer.retry_after,
        body: answer.body,
    })
}

#[cfg(test)]
mod tests {
    use octomil_common::wire::{RateLimit, RateLimits};

    use super::*;
    use crate::socket::Access;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: None,
            access: Access::Read,
        }
    }

    #[test]
    fn fast_answer_takes_plain_targets_and_leaves_the_rest_untouched() {
        let limits = Limiter::open(None, None);
        let metrics = Metrics::default();
        // Not registered yet: an error answer, so the router's.
        assert!(fast_answer(&limits, &metrics, "/v1/limits/inference/acquire", &peer(7)).is_none());

        limits.set_limits(RateLimits {
            inference: RateLimit::per_minute(10),
            ..RateLimits::default()
        });
        for target in [
            "/v1/limits/bogus/acquire",
            "/v1/limits/inference/acquire?n=0",
            "/v1/limits/inference/acquire?n=-1",
            "/v1/limits/inference/acquire?n=1&n=2",
            "/v1/limits/inference/acquire?x=1",
            "/v1/limits/inference/acquire?n=11",
            "/v1/limits/inference/acquire/",
            "/v1/limits/inference/acquirex",
            "/v1/limits/inf%65rence/acquire",
            "/v1/limits//acquire",
            "/v1/limits/inference",
        ] {
            assert!(
                fast_answer(&limits, &metrics, target, &peer(7)).is_none(),
                "{target}"
            );
        }
        // None of those took a permit or counted anything.
        let a = fast_answer(
            &limits,
            &metrics,
            "/v1/limits/inference/acquire?n=9",
            &peer(7),
        )
        .unwrap();
        assert_eq!(a.status, FastStatus::Ok);
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["granted"], 9);
        assert_eq!(body["remaining"], 1);

        let a = fast_answer(
            &limits,
            &metrics,
            "/v1/limits/inference/acquire?n=2",
            &peer(7),
        )
        .unwrap();
        assert_eq!(a.status, FastStatus::TooManyRequests);
        assert_eq!(a.retry_after, Some(6), "one permit back every 6 s");
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["reason"], "budget");

        let a = fast_answer(&limits, &metrics, "/v1/limits/inference/acquire", &peer(7)).unwrap();
        assert_eq!(a.status, FastStatus::Ok);
    }
}
