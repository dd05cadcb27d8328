//! The bootstrap-tokens page: the API's `GET /bootstrap-tokens` (uses, expiry, status, devices
//! enrolled, linked to the device list filtered by the token), `POST /bootstrap-tokens` (the
//! token shown once) and `DELETE /bootstrap-tokens/{id}`. One token's page: extend it
//! (`PATCH /bootstrap-tokens/{id}`) and revoke every device enrolled with it (`POST
//! /revocations` with `bootstrap_token_id`: reason, confirmation and a fresh code, the count
//! shown before and after).

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::api_keys::Created;
use super::format::opt_time;
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::bootstrap_tokens::{
    BootstrapTokenView, CreateBootstrapToken, UpdateBootstrapToken,
};
use crate::api::devices::DeviceQuery;
use crate::api::revocations::BulkRevoke;
use crate::extract::{Body, MaybeBody};

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

impl TokenRow {
    fn of(t: BootstrapTokenView, can_revoke: bool) -> Self {
        Self {
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
        }
    }
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
        .map(|t| TokenRow::of(t, can_revoke))
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

/// The token `id` through the API's list (a page at a time, as the API pages it).
async fn find_token(
    state: &DashState,
    viewer: &Viewer,
    id: &str,
) -> Result<BootstrapTokenView, Refusal> {
    let mut cursor = None;
    loop {
        let auth = viewer.check(state, "GET", "/bootstrap-tokens")?;
        let q = crate::api::bootstrap_tokens::BootstrapTokenQuery {
            limit: Some(crate::api::bootstrap_tokens::MAX_PAGE.to_string()),
            cursor: cursor.take(),
            ..Default::default()
        };
        let axum::Json(page) = crate::api::bootstrap_tokens::list(
            State(state.cloud.clone()),
            auth,
            Ok(axum::extract::Query(q)),
        )
        .await?;
        if let Some(t) = page.bootstrap_tokens.into_iter().find(|t| t.id == id) {
            return Ok(t);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Err(crate::error::ApiError::not_found("bootstrap token").into()),
        }
    }
}

/// Active (not revoked) devices enrolled with token `id`, counted through the API's device
/// list filtered by the token: what "revoke every device enrolled with it" would revoke.
async fn active_devices_of(state: &DashState, viewer: &Viewer, id: &str) -> Result<usize, Refusal> {
    let mut cursor = None;
    let mut n = 0;
    loop {
        let auth = viewer.check(state, "GET", "/devices")?;
        #[allow(clippy::needless_update)]
        let q = DeviceQuery {
            limit: Some(crate::api::devices::MAX_PAGE.to_string()),
            cursor: cursor.take(),
            state: Some("active".into()),
            bootstrap_token: Some(id.to_owned()),
            ..DeviceQuery::default()
        };
        let axum::Json(page) = crate::api::devices::list(
            State(state.cloud.clone()),
            auth,
            Ok(axum::extract::Query(q)),
        )
        .await?;
        n += page.devices.len();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(n),
        }
    }
}

/// What a token page shows after an action (from its redirect's query).
#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    pub revoked: Option<u64>,
    pub already: Option<u64>,
    pub extended: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/bootstrap_tokens_show.html")]
struct TokenPage {
    nav: Option<Nav>,
    csrf: String,
    t: TokenRow,
    revoked_token: bool,
    active_devices: usize,
    can_extend: bool,
    can_revoke_devices: bool,
    /// After a bulk revoke: how many it revoked.
    result: Option<String>,
    extended: bool,
    error: Option<String>,
}

async fn token_page(
    state: &DashState,
    viewer: &Viewer,
    id: &str,
    q: &ShowQuery,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let t = find_token(state, viewer, id).await?;
    let active_devices = active_devices_of(state, viewer, id).await?;
    let revoked_token = t.revoked_at.is_some();
    let page = TokenPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        revoked_token,
        active_devices,
        can_extend: !revoked_token && viewer.may(state, "PATCH", "/bootstrap-tokens/{id}"),
        can_revoke_devices: viewer.may(state, "POST", "/revocations"),
        result: q.revoked.map(|r| {
            let already = q.already.unwrap_or(0);
            format!(
                "Revoked {r} device{} enrolled with this token{}.",
                if r == 1 { "" } else { "s" },
                if already > 0 {
                    format!(" ({already} revoked already)")
                } else {
                    String::new()
                }
            )
        }),
        extended: q.extended.is_some(),
        error,
        t: TokenRow::of(t, viewer.may(state, "DELETE", "/bootstrap-tokens/{id}")),
    };
    Ok(render(&page))
}

/// `GET /dashboard/bootstrap-tokens/{id}`.
pub async fn show(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let q: ShowQuery =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    token_page(&state, &viewer, &id, &q, None).await
}

/// The token page again with `message` and `status`.
async fn refused(
    state: &DashState,
    viewer: &Viewer,
    id: &str,
    status: StatusCode,
    message: String,
) -> Result<Response, Refusal> {
    let mut r = token_page(state, viewer, id, &ShowQuery::default(), Some(message)).await?;
    *r.status_mut() = status;
    Ok(r)
}

/// `POST /dashboard/bootstrap-tokens/{id}/extend`: `expires_in` (a new expiry counted from
/// now; empty keeps it) and `max_uses` (a new use limit; empty keeps it).
pub async fn extend(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "PATCH", "/bootstrap-tokens/{id}")?;
    let field = |k: &str| form.get(k).map(str::trim).filter(|s| !s.is_empty());
    let max_uses = match field("max_uses").map(str::parse::<u32>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return refused(
                &state,
                &viewer,
                &id,
                StatusCode::BAD_REQUEST,
                "the use limit must be a whole number".into(),
            )
            .await;
        }
    };
    let expires_in = field("expires_in").map(str::to_owned);
    if max_uses.is_none() && expires_in.is_none() {
        return refused(
            &state,
            &viewer,
            &id,
            StatusCode::BAD_REQUEST,
            "choose a new expiry or a new use limit".into(),
        )
        .await;
    }
    let answer = crate::api::bootstrap_tokens::update(
        State(state.cloud.clone()),
        auth,
        Path(id.clone()),
        Body(UpdateBootstrapToken {
            max_uses,
            expires_in,
        }),
    )
    .await;
    match answer {
        // The API found the token: its id is safe in a path.
        Ok(axum::Json(t)) => Ok(Redirect::to(&format!(
            "/dashboard/bootstrap-tokens/{}?extended=1",
            t.id
        ))
        .into_response()),
        Err(e) => refused(&state, &viewer, &id, e.status, e.message).await,
    }
}

/// `POST /dashboard/bootstrap-tokens/{id}/revoke-devices`: every device enrolled with the
/// token, through the API's bulk revocation; fields `reason` (required), `confirm` (`yes`)
/// and `totp` (the current authenticator code, as for a single revoke).
pub async fn revoke_devices(
    State(state): State<DashState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    // The API's rule for the route, before anything else: a Member's forged POST ends here.
    let auth = viewer.check(&state, "POST", "/revocations")?;
    let checked = match super::confirmed(
        &form,
        Some("revocation"),
        "tick the confirmation: revoked devices cannot be restored",
    ) {
        Ok(reason) => super::fresh_code(&state, &viewer, &form)
            .await
            .map(|()| reason),
        Err(problem) => Err(problem),
    };
    let reason = match checked {
        Ok(reason) => reason,
        Err((status, message)) => return refused(&state, &viewer, &id, status, message).await,
    };
    let answer = crate::api::revocations::revoke(
        State(state.cloud.clone()),
        auth,
        Body(BulkRevoke {
            device_ids: None,
            bootstrap_token_id: Some(id.clone()),
            all: false,
            confirm: None,
            reason: Some(reason),
            environment: None,
        }),
    )
    .await;
    match answer {
        Ok(axum::Json(done)) => {
            // The API found the token: its id is safe in a path.
            Ok(Redirect::to(&format!(
                "/dashboard/bootstrap-tokens/{id}?revoked={}&already={}",
                done.revoked.len(),
                done.already_revoked
            ))
            .into_response())
        }
        Err(e) => refused(&state, &viewer, &id, e.status, e.message).await,
    }
}
