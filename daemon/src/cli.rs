//! `octomild status|token|refresh`: thin clients of the socket API, with output for people
//! (or `--json`) and exit codes a shell script can test.

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, StatusCode};
use octomil_common::clock::rfc3339;
use serde_json::Value;

use crate::client::{ClientError, SocketClient};

/// Exit codes of the client commands.
pub mod exit {
    pub const OK: i32 = 0;
    /// The daemon answered with an unexpected error.
    pub const FAILED: i32 = 1;
    /// `status`: reachable but not `active` (registering, offline, unregistered).
    pub const NOT_ACTIVE: i32 = 3;
    /// The device is revoked.
    pub const REVOKED: i32 = 4;
    /// `token`: no valid key right now (not registered yet, or expired while offline); retry.
    pub const NO_KEY: i32 = 5;
    /// The daemon is not running (no socket, or nobody listening). EX_UNAVAILABLE.
    pub const NOT_RUNNING: i32 = 69;
    /// `acquire`: the budget is spent; the wait is printed. EX_TEMPFAIL.
    pub const RATE_LIMITED: i32 = 75;
    /// The socket or the call is not allowed for this user. EX_NOPERM.
    pub const DENIED: i32 = 77;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Status,
    Token,
    Refresh,
    /// Take `n` permits of a surface's local budget.
    Acquire {
        surface: String,
        n: u32,
    },
}

/// Runs one client call; prints to stdout/stderr and returns the exit code.
pub async fn run(call: Call, socket: PathBuf, json: bool) -> i32 {
    let client = SocketClient::new(socket, Duration::from_secs(60));
    let (method, path) = match &call {
        Call::Status => (Method::GET, "/v1/status".to_owned()),
        Call::Token => (Method::GET, "/v1/token".to_owned()),
        Call::Refresh => (Method::POST, "/v1/admin/refresh".to_owned()),
        Call::Acquire { surface, n } => {
            (Method::POST, format!("/v1/limits/{surface}/acquire?n={n}"))
        }
    };
    let resp = match client.request(method, &path, None).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("octomild: {e}");
            return match e {
                ClientError::NotRunning { .. } => exit::NOT_RUNNING,
                ClientError::PermissionDenied { .. } => exit::DENIED,
                _ => exit::FAILED,
            };
        }
    };
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    if !resp.status.is_success() {
        let code = body["error"].as_str().unwrap_or("");
        let message = body["message"].as_str().unwrap_or("");
        if json {
            println!("{body}");
        } else {
            eprintln!("octomild: {message} ({code})");
        }
        return match (resp.status, code) {
            (_, "device_revoked") => exit::REVOKED,
            (StatusCode::TOO_MANY_REQUESTS, _) => exit::RATE_LIMITED,
            (StatusCode::FORBIDDEN, _) => exit::DENIED,
            (StatusCode::SERVICE_UNAVAILABLE, "not_registered" | "token_expired") => exit::NO_KEY,
            _ => exit::FAILED,
        };
    }
    if json {
        println!("{body}");
    } else {
        print_human(&call, &body);
    }
    match (call, body["state"].as_str()) {
        (Call::Status, Some("active")) => exit::OK,
        (Call::Status, Some("revoked")) => exit::REVOKED,
        (Call::Status, _) => exit::NOT_ACTIVE,
        _ => exit::OK,
    }
}

fn print_human(call: &Call, body: &Value) {
    match call {
        Call::Acquire { surface, .. } => println!(
            "granted {} {surface} permit(s); {} left of {} per {}s",
            body["granted"], body["remaining"], body["limit"], body["period_secs"]
        ),
        // The token alone, so `KEY=$(octomild token)` works.
        Call::Token => println!("{}", body["token"].as_str().unwrap_or("")),
        Call::Refresh => println!(
            "refreshed; the new key expires {}",
            when(&body["expires_at"])
        ),
        Call::Status => {
            let rows = [
                ("state", text(&body["state"])),
                ("device", text(&body["device_id"])),
                ("detail", text(&body["detail"])),
                ("key expires", when(&body["expires_at"])),
                ("last refresh", when(&body["last_refresh"])),
                (
                    "next refresh",
                    body["next_refresh_in"]
                        .as_u64()
                        .map_or("-".into(), |s| format!("in {s}s")),
                ),
                (
                    "mqtt",
                    if body["mqtt_connected"] == true {
                        "connected"
                    } else {
                        "not connected"
                    }
                    .into(),
                ),
                ("version", text(&body["version"])),
            ];
            for (k, v) in rows {
                println!("{:<13} {v}", format!("{k}:"));
            }
            if let Some(r) = body["revoked"].as_object() {
                println!(
                    "{:<13} {} ({})",
                    "revoked:",
                    text(&r["reason"]),
                    when(&r["at"])
                );
            }
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| "-".to_owned(), str::to_owned)
}

/// Unix seconds as UTC RFC 3339 plus a relative hint.
fn when(v: &Value) -> String {
    let Some(t) = v.as_u64() else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} ({})", rfc3339(t), relative(t, now))
}

/// `in 5s`, `now`, `5s ago`.
fn relative(t: u64, now: u64) -> String {
    match t.cmp(&now) {
        std::cmp::Ordering::Greater => format!("in {}s", t - now),
        std::cmp::Ordering::Equal => "now".into(),
        std::cmp::Ordering::Less => format!("{}s ago", now - t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(105, 100), "in 5s");
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(95, 100), "5s ago");
    }
}
