//! Owner-only organization calls: `GET /org/billing` and `DELETE /org`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::store::{Change, DeviceState};

#[derive(Debug, Serialize)]
pub struct Billing {
    pub plan: &'static str,
    pub devices: usize,
    pub active_devices: usize,
    pub seats: usize,
}

pub async fn billing(State(state): State<AppState>, _auth: Auth) -> ApiResult<Json<Billing>> {
    Ok(Json(state.store.read(|m| {
        Billing {
            plan: "self-hosted",
            devices: m.devices.len(),
            active_devices: m
                .devices
                .values()
                .filter(|d| d.state == DeviceState::Active)
                .count(),
            seats: m.members.len(),
        }
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteOrg {
    /// Must repeat the organization id, so a stray call cannot delete it.
    pub confirm: String,
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Body(req): Body<DeleteOrg>,
) -> ApiResult<StatusCode> {
    // A destructive call: a session needs a second factor from the last 10 minutes.
    crate::session::require_recent_second_factor(&state, &auth)?;
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone());
    let pending = state.store.write(move |m| {
        let (state, auth) = owned;
        let mut o = m
            .org
            .clone()
            .ok_or_else(|| ApiError::not_found("organization"))?;
        if req.confirm != o.id {
            return Err(ApiError::bad_request(
                codes::INVALID_ARGUMENT,
                "confirm must be the organization id",
            ));
        }
        o.deleted = true;
        let audit = super::audit::change(
            &auth,
            state.clock.now_ms(),
            "org.delete",
            o.id.clone(),
            None,
        );
        Ok(((), vec![Change::Org(o), audit]))
    });
    pending.await?;
    tracing::warn!(auth = %auth.subject(), "organization deleted; every credential is now refused");
    Ok(StatusCode::NO_CONTENT)
}
