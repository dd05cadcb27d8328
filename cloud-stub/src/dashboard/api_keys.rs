//! The API keys page: the API's `GET /api-keys` list, `POST /api-keys` (the key shown once,
//! with a copy button) and `DELETE /api-keys/{id}`.

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::format::opt_time;
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::api_keys::CreateApiKey;
use crate::extract::Body;
use crate::scope::Scope;
use crate::store::Environment;

/// The flash slot of this page (see [`super::Dashboard`]).
const FLASH: &str = "api-keys";

#[derive(Debug)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    /// The key's listed prefix (`edg_live_a1B2c3`), or its environment's alone for a key
    /// made before state format 5; the page adds an ellipsis.
    pub prefix: String,
    pub scopes: String,
    pub environment: &'static str,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub status: &'static str,
    pub can_revoke: bool,
}

/// A key just created: shown on the next page load, never again.
#[derive(Debug)]
pub struct Created {
    pub name: String,
    pub key: octomil_common::Secret<String>,
}

#[derive(Template)]
#[template(path = "dashboard/api_keys.html")]
struct KeysPage {
    nav: Option<Nav>,
    csrf: String,
    keys: Vec<KeyRow>,
    scopes: Vec<&'static str>,
    can_create: bool,
    created: Option<Created>,
    error: Option<String>,
}

fn env_name(e: Environment) -> &'static str {
    match e {
        Environment::Live => "live",
        Environment::Test => "test",
    }
}

async fn keys_page(
    state: &DashState,
    viewer: &Viewer,
    created: Option<Created>,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let auth = viewer.check(state, "GET", "/api-keys")?;
    let axum::Json(list) = crate::api::api_keys::list(
        State(state.cloud.clone()),
        auth,
        Ok(axum::extract::Query(Default::default())),
    )
    .await?;
    let can_revoke = viewer.may(state, "DELETE", "/api-keys/{id}");
    let keys = list
        .api_keys
        .into_iter()
        .map(|k| KeyRow {
            prefix: k
                .prefix
                .unwrap_or_else(|| k.environment.token_kind().prefix().to_owned()),
            environment: env_name(k.environment),
            can_revoke: can_revoke && k.status == "active",
            scopes: k.scopes.join(", "),
            created: opt_time(Some(k.created_at)),
            last_used: opt_time(k.last_used_at),
            expires: k
                .expires_at
                .map_or_else(|| "never".into(), super::format::time),
            status: k.status,
            id: k.id,
            name: k.name,
        })
        .collect();
    Ok(render(&KeysPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        keys,
        scopes: Scope::ALL.iter().map(|s| s.as_str()).collect(),
        can_create: viewer.may(state, "POST", "/api-keys"),
        created,
        error,
    }))
}

/// `GET /dashboard/api-keys`.
pub async fn list(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let created = state.take_flash(FLASH, &viewer);
    keys_page(&state, &viewer, created, None).await
}

/// `POST /dashboard/api-keys`: fields `name`, `scope` (repeated), `environment` (`live`,
/// `test` or empty for the org's), `expires_in` (`30d`... or empty for never).
pub async fn create(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "POST", "/api-keys")?;
    let environment = match form.get("environment").unwrap_or("") {
        "live" => Some(Environment::Live),
        "test" => Some(Environment::Test),
        _ => None,
    };
    let name = form.get("name").unwrap_or("").to_owned();
    let req = CreateApiKey {
        name: name.clone(),
        scopes: form.all("scope"),
        environment,
        expires_in: form
            .get("expires_in")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    };
    let answer = crate::api::api_keys::create(State(state.cloud.clone()), auth, Body(req)).await;
    match answer {
        Ok((_, axum::Json(k))) => {
            let created = Created {
                name: k.name.clone(),
                key: k.key,
            };
            state.put_flash(FLASH, &viewer, created);
            Ok(Redirect::to("/dashboard/api-keys").into_response())
        }
        Err(e) => {
            let mut r = keys_page(&state, &viewer, None, Some(e.message)).await?;
            *r.status_mut() = e.status;
            Ok(r)
        }
    }
}

/// `POST /dashboard/api-keys/{id}/revoke`.
pub async fn revoke(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let (viewer, _) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "DELETE", "/api-keys/{id}")?;
    crate::api::api_keys::delete(State(state.cloud.clone()), auth, Path(id)).await?;
    Ok(Redirect::to("/dashboard/api-keys").into_response())
}
