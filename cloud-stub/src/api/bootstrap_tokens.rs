//! `POST /bootstrap-tokens`: a new multi-use enrolment token for device images.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use octomil_common::Secret;
use octomil_common::duration;
use octomil_common::token::{self, TokenKind};
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, MaybeBody};
use crate::store::{BootstrapRecord, Change};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBootstrapToken {
    pub max_uses: Option<u32>,
    /// Duration such as `30d`; no expiry when absent.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedBootstrapToken {
    pub id: String,
    pub token: Secret<String>,
    pub max_uses: Option<u32>,
    pub expires_at: Option<u64>,
}

pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    MaybeBody(body): MaybeBody<CreateBootstrapToken>,
) -> ApiResult<(StatusCode, Json<CreatedBootstrapToken>)> {
    let body = body.unwrap_or_default();
    if body.max_uses == Some(0) {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            "max_uses must be at least 1",
        ));
    }
    let now = state.clock.now_secs();
    let expires_at = match &body.expires_in {
        None => None,
        Some(s) => {
            let secs = duration::parse_secs(s).map_err(|e| {
                ApiError::bad_request(codes::INVALID_ARGUMENT, format!("expires_in: {e}"))
            })?;
            if secs == 0 {
                return Err(ApiError::bad_request(
                    codes::INVALID_ARGUMENT,
                    "expires_in must be positive",
                ));
            }
            Some(now.saturating_add(secs))
        }
    };
    let (rec, secret) = new_bootstrap_token(now, body.max_uses, expires_at);
    let id = rec.id.clone();
    state
        .store
        .write(|_| Ok::<_, ApiError>(((), vec![Change::Bootstrap(rec)])))?;
    tracing::info!(bootstrap_token_id = %id, auth = %auth.subject(), "bootstrap token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedBootstrapToken {
            id,
            token: secret,
            max_uses: body.max_uses,
            expires_at,
        }),
    ))
}

/// A fresh bootstrap token and the record that stores only its hash.
pub fn new_bootstrap_token(
    now: u64,
    max_uses: Option<u32>,
    expires_at: Option<u64>,
) -> (BootstrapRecord, Secret<String>) {
    let secret = token::generate(TokenKind::Bootstrap);
    let rec = BootstrapRecord {
        id: format!("bt_{}", token::random_base62(16).expose()),
        hash: token::hash(secret.expose()),
        max_uses,
        uses: 0,
        expires_at,
        created_at: now,
    };
    (rec, secret)
}
