//! The bootstrap-tokens page: the API's `GET /bootstrap-tokens` (uses, expiry, status, devices
//! enrolled, linked to the device list filtered by the token), `POST /bootstrap-tokens` (the
//! token shown once) and `DELETE /bootstrap-tokens/{id}`.

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::api_keys::Created;
use super::format::opt_time;
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::bootstrap_tokens::CreateBootstrapToken;
use crate::extract::MaybeBody;

/// The flash slot of this page (see [`super::Dashboard`]).
const FLASH: &str = "bootstrap";

#[derive(Debug)]
pub struct TokenRow {
    pub id: String,
    pub uses: String,
    pub created: String,
    pub expires: String,
    pub status: &'static str,
    pub devices: usize,
    pub can_revoke: bool,
}

#[derive(Template)]
#[template(path = "dashboard/bootstrap_tokens.html")]
struct TokensPage {
    nav: Option<Nav>,
    csrf: String,
    tokens: Vec<TokenRow>,
    can_create: bool,
    created: Option<Created>,
    error: Option<String>,
}

async fn tokens_page(
    state: &DashState,
    viewer: &Viewer,
    created: Option<Created>,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let auth = viewer.check(state, "GET", "/bootstrap-tokens")?;
    let axum::Json(list) = crate::api::bootstrap_tokens::list(
        State(state.cloud.clone()),
        auth,
        Ok(axum::extract::Query(Default::default())),
    )
    .await?;
    let can_revoke = viewer.may(state, "DELETE", "/bootstrap-tokens/{id}");
    let tokens = list
        .bootstrap_tokens
        .into_iter()
        .map(|t| TokenRow {
            uses: match t.max_uses {
                Some(max) => format!("{} of {max}", t.uses),
                None => format!("{} (no limit)", t.uses),
            },
            created: opt_time(Some(t.created_at)),
            expires: t
                .expires_at
                .map_or_else(|| "never".into(), super::format::time),
            can_revoke: can_revoke && t.revoked_at.is_none(),
            status: t.status,
            devices: t.devices,
            id: t.id,
        })
        .collect();
    Ok(render(&TokensPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        tokens,
        can_create: viewer.may(state, "POST", "/bootstrap-tokens"),
        created,
        error,
    }))
}

/// `GET /dashboard/bootstrap-tokens`.
pub async fn list(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let created = state.take_flash(FLASH, &viewer);
    tokens_page(&state, &viewer, created, None).await
}

/// `POST /dashboard/bootstrap-tokens`: fields `max_uses` (empty: no limit), `expires_in`.
pub async fn create(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "POST", "/bootstrap-tokens")?;
    let max_uses = match form
        .get("max_uses")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => match s.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                return tokens_page(&state, &viewer, None, Some("uses must be a number".into()))
                    .await
                    .map(|mut r| {
                        *r.status_mut() = axum::http::StatusCode::BAD_REQUEST;
                        r
                    });
            }
        },
    };
    #[allow(clippy::needless_update)]
    let body = CreateBootstrapToken {
        max_uses,
        expires_in: form
            .get("expires_in")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        ..CreateBootstrapToken::default()
    };
    let answer = crate::api::bootstrap_tokens::create(
        State(state.cloud.clone()),
        auth,
        MaybeBody(Some(body)),
    )
    .await;
    match answer {
        Ok((_, axum::Json(t))) => {
            state.put_flash(
                FLASH,
                &viewer,
                Created {
                    name: t.id,
                    key: t.token,
                },
            );
            Ok(Redirect::to("/dashboard/bootstrap-tokens").into_response())
        }
        Err(e) => {
            let mut r = tokens_page(&state, &viewer, None, Some(e.message)).await?;
            *r.status_mut() = e.status;
            Ok(r)
        }
    }
}

/// `POST /dashboard/bootstrap-tokens/{id}/revoke`.
pub async fn revoke(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let (viewer, _) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "DELETE", "/bootstrap-tokens/{id}")?;
    crate::api::bootstrap_tokens::revoke(State(state.cloud.clone()), auth, Path(id)).await?;
    Ok(Redirect::to("/dashboard/bootstrap-tokens").into_response())
}
