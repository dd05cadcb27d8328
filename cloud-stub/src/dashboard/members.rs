//! The members page: the API's `GET /org/members`, and for Owners a role change and a removal
//! (`PATCH`/`DELETE /org/members/{email}`), each with a fresh authenticator code. The last
//! Owner is protected by the API handler itself.

use askama::Template;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::format::time;
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::members::UpdateMember;
use crate::error::ApiError;
use crate::extract::Body;
use crate::scope::Role;

#[derive(Debug)]
pub struct MemberRow {
    pub email: String,
    pub role: &'static str,
    pub since: String,
    pub is_me: bool,
}

#[derive(Template)]
#[template(path = "dashboard/members.html")]
struct MembersPage {
    nav: Option<Nav>,
    csrf: String,
    members: Vec<MemberRow>,
    can_manage: bool,
    error: Option<String>,
}

async fn members_page(
    state: &DashState,
    viewer: &Viewer,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let auth = viewer.check(state, "GET", "/org/members")?;
    let axum::Json(list) = crate::api::members::list(
        State(state.cloud.clone()),
        auth,
        Ok(axum::extract::Query(Default::default())),
    )
    .await?;
    let members = list
        .members
        .into_iter()
        .map(|m| MemberRow {
            is_me: m.email == viewer.email,
            role: m.role.as_str(),
            since: time(m.created_at),
            email: m.email,
        })
        .collect();
    Ok(render(&MembersPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        members,
        can_manage: viewer.may(state, "PATCH", "/org/members/{email}"),
        error,
    }))
}

/// `GET /dashboard/members`.
pub async fn list(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    members_page(&state, &viewer, None).await
}

/// `POST /dashboard/members`: fields `email`, `action` (`role` or `remove`), `role` (for
/// `role`), `totp` (a fresh authenticator code).
pub async fn change(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    let email = form.get("email").unwrap_or("").to_owned();
    let action = form.get("action").unwrap_or("");
    let route = match action {
        "role" => ("PATCH", "/org/members/{email}"),
        "remove" => ("DELETE", "/org/members/{email}"),
        _ => {
            return Err(Refusal::Api(ApiError::bad_request(
                octomil_common::wire::codes::INVALID_ARGUMENT,
                "unknown action",
            )));
        }
    };
    let auth = viewer.check(&state, route.0, route.1)?;
    if let Err(e) = super::require_fresh_totp(&state, &viewer, form.get("totp").unwrap_or("")).await
    {
        let mut r = members_page(&state, &viewer, Some(e.message)).await?;
        *r.status_mut() = e.status;
        return Ok(r);
    }
    let answer = if action == "role" {
        let Some(role) = form.get("role").and_then(Role::parse) else {
            let mut r = members_page(&state, &viewer, Some("choose a role".into())).await?;
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        };
        crate::api::members::update(
            State(state.cloud.clone()),
            auth,
            axum::extract::Path(email),
            Body(UpdateMember { role }),
        )
        .await
        .map(|_| ())
    } else {
        crate::api::members::remove(State(state.cloud.clone()), auth, axum::extract::Path(email))
            .await
            .map(|_| ())
    };
    match answer {
        Ok(()) => Ok(Redirect::to("/dashboard/members").into_response()),
        Err(e) => {
            let mut r = members_page(&state, &viewer, Some(e.message)).await?;
            *r.status_mut() = e.status;
            Ok(r)
        }
    }
}
