//! `POST /inference`: the inference surface, limited per key (1000/min by default). The stub
//! echoes its input: what matters here is who may call it and how often.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::ApiResult;
use crate::extract::{Auth, Body};
use crate::limits::Surface;
use crate::scope::{Role, Rule, Scope};

const RULE: Rule = Rule::scoped(Scope::ModelsRead, Role::Member);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceRequest {
    pub model: Option<String>,
    pub input: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct InferenceResponse {
    pub model: String,
    pub output: serde_json::Value,
}

pub async fn infer(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<InferenceRequest>,
) -> ApiResult<Json<InferenceResponse>> {
    auth.require(RULE)?;
    state.take_permit(Surface::Inference, &auth.subject())?;
    Ok(Json(InferenceResponse {
        model: req.model.unwrap_or_else(|| "echo".into()),
        output: req.input,
    }))
}
