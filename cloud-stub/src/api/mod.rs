//! The control-plane HTTP API under `/api/v1`, one file per endpoint group. Who may call
//! what is the table in [`authz`], enforced by one layer; `docs/control-plane-api.md` holds
//! the same table.

pub(crate) mod api_keys;
pub mod audit;
pub mod authz;
pub(crate) mod bootstrap_tokens;
pub mod devices;
pub mod env_scope;
pub(crate) mod inference;
pub(crate) mod invitations;
pub(crate) mod login;
pub(crate) mod members;
pub mod metrics;
pub mod mqtt_auth;
pub(crate) mod org;
pub(crate) mod org_settings;
pub mod page;
pub(crate) mod refresh_device;
pub(crate) mod register_device;
pub(crate) mod resources;
pub(crate) mod revocations;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use octomil_common::wire::codes;

use crate::app::AppState;
use crate::error::ApiError;

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/devices/register", post(register_device::register))
        .route(
            "/devices/register/challenge",
            post(register_device::challenge),
        )
        .route("/devices/refresh", post(refresh_device::refresh))
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::show).delete(devices::delete))
        .route("/devices/{id}/revoke", post(devices::revoke))
        .route(
            "/bootstrap-tokens",
            post(bootstrap_tokens::create).get(bootstrap_tokens::list),
        )
        .route(
            "/bootstrap-tokens/{id}",
            axum::routing::patch(bootstrap_tokens::update).delete(bootstrap_tokens::revoke),
        )
        .route("/revocations", post(revocations::revoke))
        .route("/audit", get(audit::list))
        .route("/metrics", get(metrics::show))
        .route("/api-keys", post(api_keys::create).get(api_keys::list))
        .route("/api-keys/{id}", delete(api_keys::delete))
        .route(
            "/org/settings",
            get(org_settings::show).patch(org_settings::update),
        )
        .route("/org/members", get(members::list).post(members::add))
        .route(
            "/org/members/{email}",
            axum::routing::patch(members::update).delete(members::remove),
        )
        .route("/org/billing", get(org::billing))
        .route("/org", delete(org::delete))
        .route("/auth/login", post(login::login))
        .route("/auth/logout", post(login::logout))
        .route("/auth/password", post(login::change_password))
        .route("/auth/step-up", post(login::step_up))
        .route("/auth/mfa/totp", post(login::mfa_totp))
        .route("/auth/mfa/confirm", post(login::mfa_confirm))
        .route("/auth/invitations/totp", post(invitations::totp))
        .route("/auth/invitations/accept", post(invitations::accept))
        .route("/org/members/{email}/mfa-reset", post(members::mfa_reset))
        .route("/inference", post(inference::infer))
        .route("/mqtt/auth", post(mqtt_auth::authenticate))
        .route("/mqtt/acl", post(mqtt_auth::authorize))
        .merge(resources::routes())
        // After routing, before any handler: the one place where authorization happens.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authz::authorize,
        ))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                "method not allowed",
            )
        });
    let app = Router::new()
        .nest("/api/v1", v1)
        .fallback(|| async { ApiError::not_found("route") });
    // Failure switches exist only in builds for tests (feature `faults`), never in a release.
    #[cfg(feature = "faults")]
    let app = app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::faults::apply,
    ));
    app.with_state(state)
}
