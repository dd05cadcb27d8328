//! The operator dashboard: server-rendered HTML under `/dashboard`, on the cloud's own HTTPS
//! listener. It owns no second implementation of anything: sign-in is `POST /auth/login`'s
//! handler (throttle included), every page and action is authorized by the API's table
//! ([`crate::api::authz`]) for the route it stands for, and every change is made by calling
//! the API handler, whose audit record carries origin `dashboard`.
//!
//! Security: the session JWT rides in a `__Host-` cookie (`HttpOnly; Secure;
//! SameSite=Strict`); every non-GET carries a CSRF token derived from that session; every
//! answer has a strict Content-Security-Policy (scripts and styles from `/dashboard/assets`
//! only, no inline code, no eval, `frame-ancestors 'none'`); templates escape every string.

mod api_keys;
mod assets;
mod audit;
mod bootstrap_tokens;
mod bulk;
mod devices;
mod enrol;
mod format;
mod live;
mod login;
mod members;
mod overview;
mod settings;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::api::authz::{self, Denial};
use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::{Auth, Ctx, Principal};
use crate::scope::Role;

/// The session cookie. `__Host-` makes the browser insist on `Secure`, `Path=/` and no
/// `Domain`, so no sibling host can plant or read it.
pub const SESSION_COOKIE: &str = "__Host-octomil_session";
/// A random value set on the sign-in page and echoed by its form (double submit): the login
/// form is CSRF-protected before any session exists.
pub const LOGIN_COOKIE: &str = "__Host-octomil_login";
/// The form field (and `X-CSRF-Token` header for htmx) every non-GET must carry.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session idle this long is signed out (kept in memory: no disk write per request).
pub const IDLE_TIMEOUT_SECS: u64 = 30 * 60;
/// The most a form body may hold.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The Content-Security-Policy of every dashboard answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
base-uri 'none'";

/// What the dashboard keeps besides the cloud: last activity per session (by `jti`).
#[derive(Debug)]
pub struct Dashboard {
    pub cloud: AppState,
    last_seen: Mutex<HashMap<String, u64>>,
    /// A just-created secret (API key, bootstrap token) per page and session (`page:jti`),
    /// shown by the next load of that page and then forgotten: the form redirects (so a
    /// reload cannot post it twice) and the secret is still shown exactly once.
    flash: Mutex<HashMap<String, api_keys::Created>>,
    /// Bulk revocations started from the device list, with their progress.
    bulk: bulk::Jobs,
}

impl Dashboard {
    fn put_flash(&self, page: &str, viewer: &Viewer, created: api_keys::Created) {
        self.flash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(format!("{page}:{}", viewer.session_id()), created);
    }

    fn take_flash(&self, page: &str, viewer: &Viewer) -> Option<api_keys::Created> {
        self.flash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&format!("{page}:{}", viewer.session_id()))
    }
}

pub type DashState = Arc<Dashboard>;

/// The routes under `/dashboard` (and `/` redirecting there), to merge into the API router.
pub fn router(cloud: AppState) -> Router {
    let state = Arc::new(Dashboard {
        cloud,
        last_seen: Mutex::new(HashMap::new()),
        flash: Mutex::new(HashMap::new()),
        bulk: bulk::Jobs::default(),
    });
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(overview::overview))
        .route("/dashboard/login", get(login::page).post(login::submit))
        .route("/dashboard/logout", post(login::logout))
        .route("/dashboard/devices", get(devices::list))
        .route("/dashboard/devices/{id}", get(devices::show))
        .route("/dashboard/devices/{id}/revoke", post(devices::revoke))
        .route("/dashboard/devices/{id}/delete", post(devices::delete))
        .route("/dashboard/bulk-revoke", post(bulk::confirm))
        .route("/dashboard/bulk-revoke/start", post(bulk::start))
        .route("/dashboard/bulk-revoke/{job}", get(bulk::progress))
        .route(
            "/dashboard/api-keys",
            get(api_keys::list).post(api_keys::create),
        )
        .route("/dashboard/api-keys/{id}/revoke", post(api_keys::revoke))
        .route(
            "/dashboard/bootstrap-tokens",
            get(bootstrap_tokens::list).post(bootstrap_tokens::create),
        )
        .route(
            "/dashboard/bootstrap-tokens/{id}/revoke",
            post(bootstrap_tokens::revoke),
        )
        .route("/dashboard/audit", get(audit::list))
        .route(
            "/dashboard/members",
            get(members::list).post(members::change),
        )
        .route("/dashboard/audit.csv", get(audit::csv))
        .route("/dashboard/members/invite", post(members::invite))
        .route("/invite", get(enrol::page))
        .route("/dashboard/enrol", post(enrol::start))
        .route("/dashboard/enrol/accept", post(enrol::accept))
        .route(
            enrol::MFA_ENROL_PAGE,
            get(enrol::mfa_page).post(enrol::mfa_confirm),
        )
        .route("/dashboard/events", get(live::events))
        .route(
            "/dashboard/settings",
            get(settings::page).post(settings::save),
        )
        .route("/dashboard/settings/review", post(settings::review))
        .route(
            "/dashboard/bootstrap-tokens/{id}",
            get(bootstrap_tokens::show),
        )
        .route(
            "/dashboard/bootstrap-tokens/{id}/extend",
            post(bootstrap_tokens::extend),
        )
        .route(
            "/dashboard/bootstrap-tokens/{id}/revoke-devices",
            post(bootstrap_tokens::revoke_devices),
        )
        .route("/dashboard/assets/{name}", get(assets::serve))
        // Unknown dashboard paths get a page; everything else is the API's 404 (its fallback).
        .route(
            "/dashboard/{*rest}",
            get(|| async { page_error(StatusCode::NOT_FOUND, "no such page") }),
        )
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers on every dashboard answer: CSP, no framing, no sniffing, no referrer, and no
/// caching of pages (assets set their own cache policy).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A signed-in member, as the API authenticated their session cookie.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub email: String,
    pub role: Role,
    /// The CSRF token of this session, for forms.
    pub csrf: String,
    auth: Auth,
}

impl Viewer {
    /// Whether the API's table lets this member call `method path` (`path` as the table names
    /// it, e.g. `/devices/{id}/revoke`): the dashboard shows an action only then.
    pub fn may(&self, state: &DashState, method: &str, path: &str) -> bool {
        self.check(state, method, path).is_ok()
    }

    /// The API's decision for `method path`, and the [`Auth`] to call its handler with.
    pub fn check(&self, state: &DashState, method: &str, path: &str) -> Result<Auth, ApiError> {
        let method: Method = method.parse().map_err(ApiError::internal)?;
        let row = authz::lookup(&method, path)
            .ok_or_else(|| ApiError::internal(format!("route {path} has no authorization rule")))?;
        let org_env = state.cloud.store.read(|m| m.environment());
        authz::decide(self.auth.0.facts(org_env), row, org_env)
            .map_err(|d: Denial| ApiError::from(d))?;
        Ok(self.auth.clone())
    }

    /// The session's id (its `jti`).
    pub fn session_id(&self) -> &str {
        match &self.auth.0 {
            Principal::Session { jti, .. } => jti,
            _ => "",
        }
    }

    /// What the page header shows.
    pub fn nav(&self, state: &DashState) -> Nav {
        Nav {
            email: self.email.clone(),
            role: self.role.as_str(),
            csrf: self.csrf.clone(),
            api_keys: self.may(state, "GET", "/api-keys"),
            audit: self.may(state, "GET", "/audit"),
            members: self.may(state, "GET", "/org/members"),
            bootstrap: self.may(state, "GET", "/bootstrap-tokens"),
        }
    }
}

/// The layout's header: who is signed in and which sections they may open.
#[derive(Debug, Clone)]
pub struct Nav {
    pub email: String,
    pub role: &'static str,
    pub csrf: String,
    pub api_keys: bool,
    pub audit: bool,
    pub members: bool,
    pub bootstrap: bool,
}

/// The CSRF token of a session: a hash of its (secret, HttpOnly) token under a label. It
/// needs no storage, survives restarts, and a page of another origin cannot compute it.
pub fn csrf_token(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"octomil-dashboard-csrf\0");
    h.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Constant-time equality of two tokens.
fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Why a dashboard request is refused before its page runs.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("sign in first")]
    SignedOut,
    #[error("the form's CSRF token is missing or wrong; reload the page and try again")]
    Csrf,
    #[error("{}", .0.message)]
    Api(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::SignedOut => Redirect::to("/dashboard/login").into_response(),
            Self::Csrf => page_error(StatusCode::FORBIDDEN, &self.to_string()),
            Self::Api(e) => {
                let mut r = page_error(e.status, &e.message);
                if let Some(secs) = e.retry_after
                    && let Ok(v) = HeaderValue::from_str(&secs.to_string())
                {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
        }
    }
}

/// The signed-in member of a request: the session cookie authenticated by the API's own
/// [`crate::extract::authenticate`] (JWT, then its server-side record), then the in-memory
/// idle timeout.
pub async fn viewer(
    state: &DashState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Viewer, Refusal> {
    let token = cookie(headers, SESSION_COOKIE).ok_or(Refusal::SignedOut)?;
    let principal = crate::extract::authenticate(&state.cloud, token)
        .await
        .map_err(|_| Refusal::SignedOut)?;
    // An enrolment-only session (TOTP now required, none enrolled) cannot use the dashboard:
    // the member enrols first (`octomil auth login`, which leads through it).
    let Principal::Session {
        email,
        role,
        jti,
        enrolment_only: false,
    } = &principal
    else {
        return Err(Refusal::SignedOut);
    };
    let now = state.cloud.clock.now_secs();
    let idle = {
        let mut seen = state
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = *seen.entry(jti.clone()).or_insert(now);
        if now.saturating_sub(last) >= IDLE_TIMEOUT_SECS {
            seen.remove(jti);
            true
        } else {
            seen.insert(jti.clone(), now);
            // Forget sessions idle past the timeout, so the table stays as small as the live
            // set.
            if seen.len() > 1024 {
                seen.retain(|_, t| now.saturating_sub(*t) < IDLE_TIMEOUT_SECS);
            }
            false
        }
    };
    if idle {
        end_session(state, jti).await;
        return Err(Refusal::SignedOut);
    }
    let ctx = Ctx {
        source: Some(peer.ip().to_string()),
        request_id: Some(octomil_common::token::random_base62(16).expose().clone()),
        environment: state.cloud.store.read(|m| m.environment()),
        origin: Some("dashboard"),
    };
    Ok(Viewer {
        email: email.clone(),
        role: *role,
        csrf: csrf_token(token),
        auth: Auth(principal.clone(), ctx),
    })
}

/// Deletes a session record (idle timeout): its JWT is refused from now on.
async fn end_session(state: &DashState, jti: &str) {
    let jti = jti.to_owned();
    let r = state
        .cloud
        .store
        .write(move |_| Ok::<_, ApiError>(((), vec![crate::store::Change::DeleteSession(jti)])))
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e.message, "could not end an idle dashboard session");
    }
}

/// A parsed form body: fields in order, repeated keys kept (scope checkboxes).
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Reads a form body (at most 64 KiB).
pub async fn read_form(body: axum::body::Body) -> Result<Form, Refusal> {
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            ApiError::bad_request(
                octomil_common::wire::codes::BODY_TOO_LARGE,
                "the form is too large",
            )
        })?;
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .map(Form)
        .map_err(|_| {
            Refusal::Api(ApiError::bad_request(
                octomil_common::wire::codes::INVALID_ARGUMENT,
                "the form is malformed",
            ))
        })
}

/// A signed-in member posting a form: the session, then the CSRF token (field or header),
/// checked before anything else is read from the form.
pub async fn posted(state: &DashState, req: Request) -> Result<(Viewer, Form), Refusal> {
    let peer = peer_of(&req);
    let (parts, body) = req.into_parts();
    let viewer = viewer(state, &parts.headers, peer).await?;
    let form = read_form(body).await?;
    let given = form
        .get(CSRF_FIELD)
        .or_else(|| parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if !same(given, &viewer.csrf) {
        tracing::info!(member = %viewer.email, "dashboard form refused: bad CSRF token");
        return Err(Refusal::Csrf);
    }
    Ok((viewer, form))
}

/// The TCP peer of a request (the address login throttling and the audit log see).
pub fn peer_of(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0)
}

/// The fresh second factor a destructive action asks for: the API's own step-up rule (a
/// TOTP login or step-up within the last 10 minutes counts; a TOTP step is accepted once),
/// with `code`, when one is needed, checked and recorded by the API's step-up handler.
pub async fn require_fresh_totp(
    state: &DashState,
    viewer: &Viewer,
    code: &str,
) -> Result<(), ApiError> {
    if crate::session::require_recent_second_factor(&state.cloud, &viewer.auth).is_ok() {
        return Ok(());
    }
    let code = code.trim();
    if code.is_empty() {
        return Err(ApiError::forbidden(
            "enter your authenticator code to confirm this action",
        ));
    }
    crate::api::login::step_up(
        axum::extract::State(state.cloud.clone()),
        viewer.auth.clone(),
        crate::extract::Body(crate::api::login::CodeRequest {
            code: code.to_owned(),
        }),
    )
    .await
    .map(|_| ())
}

/// The checks of a destructive form before its fresh code: a reason when `reason` names what
/// it is for (`Some("revocation")`), and the confirmation tick (`confirm=yes`), whose absence
/// is answered with `unticked`. The trimmed reason ("" when none is asked), or the status and
/// message for the form's page.
pub fn confirmed(
    form: &Form,
    reason: Option<&str>,
    unticked: &str,
) -> Result<String, (StatusCode, String)> {
    let given = form.get("reason").unwrap_or("").trim().to_owned();
    if let Some(what) = reason
        && given.is_empty()
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("give a reason for the {what}"),
        ));
    }
    if form.get("confirm") != Some("yes") {
        return Err((StatusCode::BAD_REQUEST, unticked.to_owned()));
    }
    Ok(if reason.is_some() {
        given
    } else {
        String::new()
    })
}

/// [`require_fresh_totp`] with the form's `totp` field, as a status and message for the page.
pub async fn fresh_code(
    state: &DashState,
    viewer: &Viewer,
    form: &Form,
) -> Result<(), (StatusCode, String)> {
    require_fresh_totp(state, viewer, form.get("totp").unwrap_or(""))
        .await
        .map_err(|e| (e.status, e.message))
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage<'a> {
    nav: Option<Nav>,
    status: u16,
    message: &'a str,
}

/// An error page with `status`.
pub fn page_error(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        nav: None,
        status: status.as_u16(),
        message,
    };
    (status, render(&page)).into_response()
}

/// Renders a template, or a plain 500 if rendering fails (it cannot for our templates).
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}
