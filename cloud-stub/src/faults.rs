//! Failure switches for tests, compiled only with the `faults` feature (never in a release
//! build): make the device endpoints fail, rate-limit or stall on purpose, and record when
//! devices called. Off unless a test flips them; every switch is a few atomics checked by one
//! middleware.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use octomil_common::wire::codes;
use octomil_common::{Clock, SystemClock};

use crate::app::AppState;
use crate::error::ApiError;

/// Which device call a switch applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCall {
    Register,
    Refresh,
}

#[derive(Debug, Default)]
struct Switch {
    fail: AtomicU32,
    rate_limit: AtomicU32,
    retry_after: AtomicU64,
    delay_ms: AtomicU64,
    /// Fields merged into the next successful answers' JSON (a scripted, misbehaving cloud).
    patches: Mutex<Vec<serde_json::Value>>,
}

/// The cloud's fault switches and call log.
#[derive(Debug, Default)]
pub struct Faults {
    register: Switch,
    refresh: Switch,
    /// (call, unix ms) of every device call that reached the cloud, newest last.
    log: Mutex<Vec<(DeviceCall, u64)>>,
}

impl Faults {
    fn switch(&self, call: DeviceCall) -> &Switch {
        match call {
            DeviceCall::Register => &self.register,
            DeviceCall::Refresh => &self.refresh,
        }
    }

    /// The next `n` calls answer 503 `unavailable`.
    pub fn fail_next(&self, call: DeviceCall, n: u32) {
        self.switch(call).fail.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls answer 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, call: DeviceCall, n: u32, retry_after_secs: u64) {
        let s = self.switch(call);
        s.retry_after.store(retry_after_secs, Ordering::SeqCst);
        s.rate_limit.store(n, Ordering::SeqCst);
    }

    /// Every call waits `d` before it is handled (zero turns it off).
    pub fn delay(&self, call: DeviceCall, d: Duration) {
        self.switch(call)
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next successful answers to `call` get each patch's top-level fields merged in,
    /// one patch per answer, in order: how tests play a cloud that sends absurd values.
    pub fn patch_next(&self, call: DeviceCall, patches: Vec<serde_json::Value>) {
        *self
            .switch(call)
            .patches
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = patches;
    }

    /// When each call of kind `call` arrived (unix ms).
    pub fn calls(&self, call: DeviceCall) -> Vec<u64> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .filter(|(c, _)| *c == call)
            .map(|(_, t)| *t)
            .collect()
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Middleware on the router: applies the switches to the two device calls.
pub async fn apply(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let call = match req.uri().path() {
        "/api/v1/devices/register" => DeviceCall::Register,
        "/api/v1/devices/refresh" => DeviceCall::Refresh,
        _ => return next.run(req).await,
    };
    let faults = &state.faults;
    {
        let mut log = faults.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push((call, SystemClock.now_ms()));
    }
    let s = faults.switch(call);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if take(&s.fail) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "injected failure",
        )
        .into_response();
    }
    if take(&s.rate_limit) {
        return ApiError::rate_limited(s.retry_after.load(Ordering::SeqCst)).into_response();
    }
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        return resp;
    }
    let patch = {
        let mut patches = s.patches.lock().unwrap_or_else(|p| p.into_inner());
        if patches.is_empty() {
            return resp;
        }
        patches.remove(0)
    };
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, octomil_common::wire::MAX_BODY_BYTES).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let (Some(obj), Some(fields)) = (json.as_object_mut(), patch.as_object()) {
        for (k, v) in fields {
            obj.insert(k.clone(), v.clone());
        }
    }
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        axum::body::Body::from(serde_json::to_vec(&json).unwrap_or_default()),
    )
}
