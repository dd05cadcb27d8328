//! Sign in and sign out. Signing in is the API's `POST /auth/login` handler itself (its
//! throttling, MFA rule per compliance preset and audit record), its token put in an
//! `HttpOnly; Secure; SameSite=Strict` cookie. A recovery code may stand in for the
//! authenticator code (the API accepts either in `mfa_code`). When the login answers an
//! enrolment-only session (the preset now requires MFA the member has not set up), the member
//! is led through setting it up ([`super::enrol`]) instead of being refused.

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use octomil_common::Secret;

use super::{CSRF_FIELD, DashState, Form, LOGIN_COOKIE, Refusal, SESSION_COOKIE, cookie, render};
use crate::api::login::LoginRequest;
use crate::extract::{Body, Ctx};

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    nav: Option<super::Nav>,
    csrf: String,
    email: String,
    error: Option<String>,
}

/// A fresh or existing pre-session token, and the `Set-Cookie` to send if it is fresh. The
/// sign-in form and the invitation forms ([`super::enrol`]) carry it (double submit).
pub(super) fn login_token(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(t) = cookie(headers, LOGIN_COOKIE).filter(|t| t.len() >= 22) {
        return (t.to_owned(), None);
    }
    let t = octomil_common::token::random_base62(24).expose().clone();
    let c = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={t}; Path=/; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok();
    (t, c)
}

fn login_page(
    status: StatusCode,
    headers: &HeaderMap,
    email: String,
    error: Option<String>,
) -> Response {
    let (csrf, set) = login_token(headers);
    let mut r = render(&LoginPage {
        nav: None,
        csrf,
        email,
        error,
    });
    *r.status_mut() = status;
    if let Some(set) = set {
        r.headers_mut().append(header::SET_COOKIE, set);
    }
    r
}

/// The CSRF check of a form posted without a session: its token must equal the
/// pre-session cookie's (double submit).
pub(super) fn check_pre_session(headers: &HeaderMap, form: &Form) -> Result<(), Refusal> {
    let expected = cookie(headers, LOGIN_COOKIE).unwrap_or("");
    let given = form.get(CSRF_FIELD).unwrap_or("");
    if expected.is_empty() || !super::same(given, expected) {
        return Err(Refusal::Csrf);
    }
    Ok(())
}

/// The request context of a caller without a session (the address the API's throttles and
/// failure budgets charge), audited with origin `dashboard`.
pub(super) fn anonymous_ctx(state: &DashState, peer: std::net::SocketAddr) -> Ctx {
    Ctx {
        source: Some(peer.ip().to_string()),
        request_id: Some(octomil_common::token::random_base62(16).expose().clone()),
        environment: state.cloud.store.read(|m| m.environment()),
        origin: Some("dashboard"),
    }
}

/// `GET /dashboard/login`. A member holding an enrolment-only session is sent on to set up
/// their authenticator.
pub async fn page(State(state): State<DashState>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE)
        && let Ok(crate::extract::Principal::Session {
            enrolment_only: true,
            ..
        }) = crate::extract::authenticate(&state.cloud, token).await
    {
        return Redirect::to(super::enrol::MFA_ENROL_PAGE).into_response();
    }
    login_page(StatusCode::OK, &headers, String::new(), None)
}

/// `POST /dashboard/login`: the login form (email, password, optional TOTP code).
pub async fn submit(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let peer = super::peer_of(&req);
    let (parts, body) = req.into_parts();
    let form = super::read_form(body).await?;
    check_pre_session(&parts.headers, &form)?;
    let email = form.get("email").unwrap_or("").to_owned();
    // A recovery code, when given, stands in for the authenticator code.
    let second = |field: &str| {
        form.get(field)
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
    };
    let login = LoginRequest {
        email: email.clone(),
        password: Secret::new(form.get("password").unwrap_or("").to_owned()),
        mfa_code: second("recovery_code").or_else(|| second("mfa_code")),
    };
    let ctx = anonymous_ctx(&state, peer);
    let answer = crate::api::login::login(State(state.cloud.clone()), ctx, Body(login)).await;
    match answer {
        Ok(axum::Json(ok)) => {
            let max_age = ok.expires_at.saturating_sub(state.cloud.clock.now_secs());
            let set = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}",
                ok.token.expose()
            );
            // An enrolment-only session goes on to set up the authenticator.
            let next = if ok.enrolment_required {
                super::enrol::MFA_ENROL_PAGE
            } else {
                "/dashboard/devices"
            };
            let mut r = Redirect::to(next).into_response();
            if let Ok(v) = HeaderValue::from_str(&set) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(r)
        }
        Err(e) => {
            let mut r = login_page(e.status, &parts.headers, email, Some(e.message.clone()));
            if let Some(secs) = e.retry_after
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(r)
        }
    }
}

/// `POST /dashboard/logout`: ends the session server-side (the API's logout) and clears the
/// cookie.
pub async fn logout(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, _) = super::posted(&state, req).await?;
    let auth = viewer.check(&state, "POST", "/auth/logout")?;
    crate::api::login::logout(State(state.cloud.clone()), auth).await?;
    let mut r = Redirect::to("/dashboard/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-octomil_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(r)
}
