//! The members page: the API's `GET /org/members` (members with their role and MFA status,
//! and pending invitations), `POST /org/members` (an invitation whose link is shown once),
//! and, each with a fresh authenticator code, a role change, a removal or the withdrawal of
//! an invitation (`PATCH`/`DELETE /org/members/{email}`) and an MFA reset
//! (`POST /org/members/{email}/mfa-reset`). Every action is offered only when the API's table
//! allows its route, and checked again on arrival. The last Owner is protected by the API
//! handler itself.

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use octomil_common::Secret;

use super::api_keys::Created;
use super::format::time;
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::members::{AddMember, UpdateMember};
use crate::error::ApiError;
use crate::extract::Body;
use crate::scope::Role;

/// The flash slot of this page (see [`super::Dashboard`]): an invitation link just made.
const FLASH: &str = "members";

#[derive(Debug)]
pub struct MemberRow {
    pub email: String,
    pub role: &'static str,
    pub since: String,
    pub is_me: bool,
    /// Whether the member has TOTP enrolled.
    pub mfa: bool,
    /// Recovery codes not yet used.
    pub recovery_left: usize,
    /// Whether the viewer may reset this member's MFA (the table, and only an Owner resets an
    /// Owner's).
    pub can_reset: bool,
}

#[derive(Debug)]
pub struct InvitationRow {
    pub email: String,
    pub role: &'static str,
    pub expires: String,
}

/// An invitation just made: its link is shown on the next load of the page, never again.
#[derive(Debug)]
pub struct Invited {
    pub email: String,
    pub role: &'static str,
    pub link: Secret<String>,
    pub expires: String,
}

#[derive(Template)]
#[template(path = "dashboard/members.html")]
struct MembersPage {
    nav: Option<Nav>,
    csrf: String,
    members: Vec<MemberRow>,
    invitations: Vec<InvitationRow>,
    can_manage: bool,
    /// Whether the table has a column of actions (role, removal or MFA reset in some row).
    actions_column: bool,
    can_invite: bool,
    invited: Option<Invited>,
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
    let may_reset = viewer.may(state, "POST", "/org/members/{email}/mfa-reset");
    let members: Vec<MemberRow> = list
        .members
        .into_iter()
        .map(|m| MemberRow {
            is_me: m.email == viewer.email,
            role: m.role.as_str(),
            since: time(m.created_at),
            mfa: m.mfa_enrolled,
            recovery_left: m.recovery_codes_left,
            can_reset: may_reset
                && m.mfa_enrolled
                && (m.role != Role::Owner || viewer.role == Role::Owner),
            email: m.email,
        })
        .collect();
    let invitations: Vec<InvitationRow> = list
        .invitations
        .into_iter()
        .map(|i| InvitationRow {
            role: i.role.as_str(),
            expires: time(i.expires_at),
            email: i.email,
        })
        .collect();
    // The link just made, with what the list says of its invitation (if it is still pending).
    let invited = state.take_flash(FLASH, viewer).and_then(|c| {
        let row = invitations.iter().find(|i| i.email == c.name)?;
        Some(Invited {
            email: c.name,
            role: row.role,
            link: c.key,
            expires: row.expires.clone(),
        })
    });
    let can_manage = viewer.may(state, "PATCH", "/org/members/{email}");
    Ok(render(&MembersPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        actions_column: can_manage || members.iter().any(|m: &MemberRow| m.can_reset),
        members,
        invitations,
        can_manage,
        can_invite: viewer.may(state, "POST", "/org/members"),
        invited,
        error,
    }))
}

/// The page again with `error`, answered with `status`.
async fn page_with_error(
    state: &DashState,
    viewer: &Viewer,
    status: StatusCode,
    error: String,
) -> Result<Response, Refusal> {
    let mut r = members_page(state, viewer, Some(error)).await?;
    *r.status_mut() = status;
    Ok(r)
}

/// `GET /dashboard/members`.
pub async fn list(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    members_page(&state, &viewer, None).await
}

/// `POST /dashboard/members/invite`: fields `email`, `role`, `expires_in` (a duration such as
/// `72h`; empty for the API's default). The API's `POST /org/members` handler makes the
/// invitation; the page then shows its link once.
pub async fn invite(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    // The link names the host the browser used: `Host` over HTTP/1.1, the URI's authority
    // over HTTP/2.
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let (viewer, form) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "POST", "/org/members")?;
    let Some(role) = form.get("role").and_then(Role::parse) else {
        return page_with_error(
            &state,
            &viewer,
            StatusCode::BAD_REQUEST,
            "choose a role".into(),
        )
        .await;
    };
    let mut headers = HeaderMap::new();
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
    let req = AddMember {
        email: form.get("email").unwrap_or("").to_owned(),
        role,
        expires_in: form
            .get("expires_in")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    };
    match crate::api::members::add(State(state.cloud.clone()), auth, headers, Body(req)).await {
        Ok((_, axum::Json(added))) => {
            state.put_flash(
                FLASH,
                &viewer,
                Created {
                    name: added.email,
                    key: added.invitation_link,
                },
            );
            Ok(Redirect::to("/dashboard/members").into_response())
        }
        Err(e) => page_with_error(&state, &viewer, e.status, e.message).await,
    }
}

/// `POST /dashboard/members`: fields `email`, `action` (`role`, `remove` (a member, or a
/// pending invitation) or `mfa_reset`), `role` (for `role`), `totp` (a fresh authenticator
/// code).
pub async fn change(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    let email = form.get("email").unwrap_or("").to_owned();
    let action = form.get("action").unwrap_or("");
    let route = match action {
        "role" => ("PATCH", "/org/members/{email}"),
        "remove" => ("DELETE", "/org/members/{email}"),
        "mfa_reset" => ("POST", "/org/members/{email}/mfa-reset"),
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
        return page_with_error(&state, &viewer, e.status, e.message).await;
    }
    let cloud = State(state.cloud.clone());
    let path = axum::extract::Path(email);
    let answer = match action {
        "role" => {
            let Some(role) = form.get("role").and_then(Role::parse) else {
                return page_with_error(
                    &state,
                    &viewer,
                    StatusCode::BAD_REQUEST,
                    "choose a role".into(),
                )
                .await;
            };
            crate::api::members::update(cloud, auth, path, Body(UpdateMember { role }))
                .await
                .map(|_| ())
        }
        "mfa_reset" => crate::api::members::mfa_reset(cloud, auth, path)
            .await
            .map(|_| ()),
        _ => crate::api::members::remove(cloud, auth, path)
            .await
            .map(|_| ()),
    };
    match answer {
        Ok(()) => Ok(Redirect::to("/dashboard/members").into_response()),
        Err(e) => page_with_error(&state, &viewer, e.status, e.message).await,
    }
}
