//! `POST /inference`: the inference surface, limited per caller (1000/min by default, charged
//! by the authorization layer). The stub echoes its input: what matters here is who may call it and how often.

use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::ApiResult;
use crate::extract::{Auth, Body};

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
    _auth: Auth,
    Body(req): Body<InferenceRequest>,
) -> ApiResult<Json<InferenceResponse>> {
    Ok(Json(InferenceResponse {
        model: req.model.unwrap_or_else(|| "echo".into()),
        output: req.input,
    }))
}
