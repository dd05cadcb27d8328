//! `{"error": "<code>", "message": "<text>"}`: the one error shape of every API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable snake_case code from [`codes`]; scripts match on this.
    pub error: String,
    /// Human text; may change between versions.
    pub message: String,
}

/// The client-facing error vocabulary. Small and stable: add, never rename.
pub mod codes {
    // 400
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const INVALID_BODY: &str = "invalid_body";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const INVALID_DEVICE_ID: &str = "invalid_device_id";
    pub const INVALID_TOKEN_FORMAT: &str = "invalid_token_format";
    pub const UNKNOWN_SCOPE: &str = "unknown_scope";
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    pub const INVALID_PROOF: &str = "invalid_proof";
    /// A protocol-1 registration (no challenge) reached a protocol-2 cloud.
    pub const CHALLENGE_REQUIRED: &str = "challenge_required";
    pub const INVALID_CHALLENGE: &str = "invalid_challenge";
    pub const CHALLENGE_EXPIRED: &str = "challenge_expired";
    pub const CHALLENGE_USED: &str = "challenge_used";
    // 401
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
    pub const MFA_REQUIRED: &str = "mfa_required";
    pub const INVALID_BOOTSTRAP_TOKEN: &str = "invalid_bootstrap_token";
    pub const INVALID_REFRESH_TOKEN: &str = "invalid_refresh_token";
    pub const REFRESH_TOKEN_REUSED: &str = "refresh_token_reused";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    // 403
    pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";
    pub const FORBIDDEN: &str = "forbidden";
    pub const DEVICE_REVOKED: &str = "device_revoked";
    // 404, 405, 409
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const DEVICE_ID_TAKEN: &str = "device_id_taken";
    pub const CONFLICT: &str = "conflict";
    pub const LAST_OWNER: &str = "last_owner";
    // 429, 5xx
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const NOT_REGISTERED: &str = "not_registered";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
}

impl ErrorBody {
    pub fn new(error: &str, message: impl Into<String>) -> Self {
        Self {
            error: error.to_owned(),
            message: message.into(),
        }
    }
}
