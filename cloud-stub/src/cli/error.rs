//! `CliError`: every way a command can fail, the exit code each maps to, and the reading of
//! an HTTP error answer into the text the operator sees.

use octomil_common::wire::{ErrorBody, codes};
use reqwest::StatusCode;

use super::output::clean;

/// Exit code of a failed request or any other runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (bad flag value, missing setting), as clap uses.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad flag value or a missing setting, caught before any request is sent.
    #[error("{0}")]
    Usage(String),
    /// The CA file could not be read or holds no usable certificate.
    #[error("CA certificate: {0}")]
    Ca(String),
    /// The server answered with an error status.
    #[error("{0}")]
    Api(ApiError),
    /// No HTTP exchange happened: DNS, TCP or TLS failed.
    #[error("cannot reach {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("no answer from {url} within {secs}s (raise --timeout?)")]
    Timeout { url: String, secs: u64 },
    /// The exchange broke after it started (reset connection, truncated body, ...).
    #[error("request to {url} failed: {detail}")]
    Request { url: String, detail: String },
    /// The server answered 2xx with a body this CLI cannot read.
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
    /// `octomil audit verify` found a broken or altered chain.
    #[error("audit log does not verify: {0}")]
    AuditChain(String),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { context, source }
    }

    /// 2 for what the operator typed wrong, 1 for everything that happened after.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Ca(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// An error answer of the control plane, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// The snake_case code of the body, or `http_<status>` when the body was not ours
    /// (a proxy's HTML page, an empty 502).
    pub code: String,
    pub message: String,
    /// Whole seconds from the `Retry-After` header, when the server sent one.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Reads an error answer: the status, the raw `Retry-After` value and the body bytes.
    pub fn from_parts(status: u16, retry_after: Option<&str>, body: &[u8]) -> Self {
        let retry_after = retry_after.and_then(|v| v.trim().parse::<u64>().ok());
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) if !b.error.is_empty() => Self {
                status,
                code: b.error,
                message: b.message,
                retry_after,
            },
            _ => {
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("unexpected status");
                Self {
                    status,
                    code: format!("http_{status}"),
                    message: format!("HTTP {status} {reason}"),
                    retry_after,
                }
            }
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        self.status == 429 || self.code == codes::RATE_LIMITED
    }
}

/// `<server message> (<code>)`, plus when to retry on a 429. Server text is stripped of
/// control characters so an answer cannot drive the operator's terminal.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = if self.message.trim().is_empty() {
            format!("HTTP {}", self.status)
        } else {
            clean(&self.message)
        };
        write!(f, "{message} ({})", clean(&self.code))?;
        match (self.retry_after, self.is_rate_limited()) {
            (Some(secs), _) => write!(f, "; retry after {secs}s"),
            (None, true) => write!(f, "; retry later"),
            (None, false) => Ok(()),
        }
    }
}

/// Joins an error and its sources into one line; reqwest's own top-level text says little
/// ("error sending request"), the cause (refused, unknown issuer) is further down.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        // Wrappers often repeat their cause verbatim; keep each text once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_server_message_and_code() {
        let body = br#"{"error":"insufficient_scope","message":"this key lacks devices:write"}"#;
        let e = ApiError::from_parts(403, None, body);
        assert_eq!(e.code, "insufficient_scope");
        assert_eq!(
            e.to_string(),
            "this key lacks devices:write (insufficient_scope)"
        );
        let cli = CliError::Api(e);
        assert_eq!(cli.exit_code(), EXIT_FAILURE);
        assert_eq!(
            format!("error: {cli}"),
            "error: this key lacks devices:write (insufficient_scope)"
        );
    }

    #[test]
    fn rate_limit_shows_retry_after() {
        let body = br#"{"error":"rate_limited","message":"too many requests"}"#;
        let e = ApiError::from_parts(429, Some("17"), body);
        assert_eq!(e.retry_after, Some(17));
        assert_eq!(
            e.to_string(),
            "too many requests (rate_limited); retry after 17s"
        );
        // A 429 without a usable header still says to wait.
        let e = ApiError::from_parts(429, Some("soon"), body);
        assert_eq!(
            e.to_string(),
            "too many requests (rate_limited); retry later"
        );
    }

    #[test]
    fn foreign_bodies_fall_back_to_the_status() {
        let e = ApiError::from_parts(502, None, b"<html>Bad Gateway</html>");
        assert_eq!(e.code, "http_502");
        assert_eq!(e.to_string(), "HTTP 502 Bad Gateway (http_502)");
        let e = ApiError::from_parts(599, None, b"");
        assert_eq!(e.to_string(), "HTTP 599 unexpected status (http_599)");
    }

    #[test]
    fn control_characters_are_not_passed_to_the_terminal() {
        let body = br#"{"error":"not_found","message":"no device \u001b[31mx\u001b[0m"}"#;
        let e = ApiError::from_parts(404, None, body);
        assert!(!e.to_string().contains('\u{1b}'));
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(CliError::usage("x").exit_code(), EXIT_USAGE);
        assert_eq!(CliError::Ca("x".into()).exit_code(), EXIT_USAGE);
        let e = CliError::Connect {
            url: "https://h/api/v1/devices".into(),
            detail: "refused".into(),
        };
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        assert_eq!(
            e.to_string(),
            "cannot reach https://h/api/v1/devices: refused"
        );
    }
}
