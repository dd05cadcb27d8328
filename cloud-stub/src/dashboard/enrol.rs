//! First-time enrolment, for the two ways a member arrives without a usable session:
//!
//! - **An invitee** following `https://HOST/invite#TOKEN` (what `POST /org/members` answers).
//!   The token is in the fragment, which the browser never sends, so it reaches no server log;
//!   the page's script (`assets/enrol.js`) moves it into the form, and without JavaScript the
//!   invitee pastes it. Posting it calls the API's `POST /auth/invitations/totp` handler: the
//!   new TOTP secret is shown as a QR code (an SVG `data:` image made here) and as text. The
//!   invitee then chooses a password (twice) and confirms a code (`POST
//!   /auth/invitations/accept`), and sees their recovery codes once.
//! - **A member whose sign-in answered an enrolment-only session** (the compliance preset now
//!   requires MFA they have not set up): the same QR and confirm steps through `POST
//!   /auth/mfa/totp` and `POST /auth/mfa/confirm`, then into the dashboard.
//!
//! The invitation forms have no session: they are CSRF-checked with the sign-in page's
//! double-submit cookie. Failures are the API's answers (an unknown, used or expired token is
//! one message, charged to the source address's failure budget), worded for a person.

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use octomil_common::Secret;
use octomil_common::wire::codes;

use super::{CSRF_FIELD, DashState, Refusal, SESSION_COOKIE, Viewer, cookie, render};
use crate::api::invitations::{AcceptRequest, INVITATION_INVALID, TotpRequest};
use crate::api::login::{CodeRequest, MFA_ALREADY_ENROLLED};
use crate::error::ApiError;
use crate::extract::{Auth, Body, Principal};
use crate::session;

/// Where a member with an enrolment-only session sets up their authenticator.
pub const MFA_ENROL_PAGE: &str = "/dashboard/mfa-enrol";

/// The issuer name authenticator apps show.
const ISSUER: &str = "Octomil";

/// A TOTP secret to show: as a QR code of its `otpauth://` URI and as base32 text.
#[derive(Debug)]
pub struct Qr {
    /// `data:image/svg+xml;base64,...`, or empty if the URI did not fit a QR code.
    pub image: String,
    pub secret: Secret<String>,
}

impl Qr {
    fn new(otpauth_uri: &str, secret: Secret<String>) -> Self {
        Self {
            image: qr_data_uri(otpauth_uri).unwrap_or_default(),
            secret,
        }
    }

    /// The QR of a raw secret the store holds (a form shown again after an error).
    fn of_raw(email: &str, raw: &[u8]) -> Self {
        Self::new(
            &session::otpauth_uri(ISSUER, email, raw),
            Secret::new(session::totp_base32(raw)),
        )
    }
}

/// `text` as a QR code in an SVG image, as a `data:` URI (the CSP allows `img-src data:`).
pub fn qr_data_uri(text: &str) -> Option<String> {
    use qrcode::render::svg;
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(232, 232)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(image)
    ))
}

#[derive(Template)]
#[template(path = "dashboard/enrol_start.html")]
struct StartPage {
    nav: Option<super::Nav>,
    csrf: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/enrol_totp.html")]
struct TotpPage {
    nav: Option<super::Nav>,
    csrf: String,
    /// Where the form posts.
    action: &'static str,
    /// The invitation token, carried to the next step (`None` on the sign-in path, which
    /// sets no password).
    token: Option<Secret<String>>,
    email: String,
    role: &'static str,
    /// Until when the invitation works.
    expires: Option<String>,
    qr: Option<Qr>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/enrol_done.html")]
struct DonePage {
    nav: Option<super::Nav>,
    email: String,
    codes: Vec<Secret<String>>,
    next_href: &'static str,
    next_label: &'static str,
}

/// `page` answered with `status` (and the API's `Retry-After`, if any).
fn with_status(mut r: Response, status: StatusCode, retry_after: Option<u64>) -> Response {
    *r.status_mut() = status;
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The first step: the token form (and the pre-session cookie, if the browser has none).
fn start_page(headers: &HeaderMap, error: Option<&ApiError>) -> Response {
    let (csrf, set) = super::login::login_token(headers);
    let mut r = render(&StartPage {
        nav: None,
        csrf,
        error: error.map(|e| e.message.clone()),
    });
    if let Some(e) = error {
        r = with_status(r, e.status, e.retry_after);
    }
    if let Some(set) = set {
        r.headers_mut().append(header::SET_COOKIE, set);
    }
    r
}

/// `GET /invite`: the page an invitation link opens.
pub async fn page(headers: HeaderMap) -> Response {
    start_page(&headers, None)
}

/// The token a form carries: pasted alone or as the whole link.
fn token_of(form: &super::Form) -> String {
    let t = form.get("token").unwrap_or("").trim();
    t.rsplit_once('#').map_or(t, |(_, after)| after).to_owned()
}

/// `POST /dashboard/enrol`: field `token`. The API hands out a TOTP secret for the
/// invitation; the page shows it with the password and code form.
pub async fn start(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let peer = super::peer_of(&req);
    let (parts, body) = req.into_parts();
    let form = super::read_form(body).await?;
    super::login::check_pre_session(&parts.headers, &form)?;
    let token = token_of(&form);
    let answer = crate::api::invitations::totp(
        State(state.cloud.clone()),
        super::login::anonymous_ctx(&state, peer),
        Body(TotpRequest {
            token: Secret::new(token.clone()),
        }),
    )
    .await;
    let offer = match answer {
        Ok(axum::Json(offer)) => offer,
        Err(e) => return Ok(start_page(&parts.headers, Some(&e))),
    };
    let (csrf, _) = super::login::login_token(&parts.headers);
    Ok(render(&TotpPage {
        nav: None,
        csrf,
        action: "/dashboard/enrol/accept",
        token: Some(Secret::new(token)),
        email: offer.email,
        role: offer.role.as_str(),
        expires: Some(super::format::time(offer.expires_at)),
        qr: Some(Qr::new(offer.otpauth_uri.expose(), offer.totp_secret)),
        error: None,
    }))
}

/// `POST /dashboard/enrol/accept`: fields `token`, `password`, `password2`, `code`. The API's
/// accept handler makes the member; the answer shows their recovery codes, once.
pub async fn accept(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let peer = super::peer_of(&req);
    let (parts, body) = req.into_parts();
    let form = super::read_form(body).await?;
    super::login::check_pre_session(&parts.headers, &form)?;
    let token = token_of(&form);
    let password = form.get("password").unwrap_or("");
    let code = form.get("code").unwrap_or("").trim();
    // The same form again, with the secret already handed out (the authenticator holds it);
    // for a dead token, the first step again.
    let again = |status: StatusCode, message: String| -> Response {
        let now = state.cloud.clock.now_secs();
        let Some(inv) = state
            .cloud
            .store
            .read(|m| crate::api::invitations::find(m, &token, now))
        else {
            // Charged like the API's own refusal, so this form is no free oracle of which
            // tokens are live.
            let refused = state.cloud.charge_failure(
                Some(&peer.ip().to_string()),
                crate::api::invitations::invalid(),
            );
            return start_page(&parts.headers, Some(&refused));
        };
        let (csrf, _) = super::login::login_token(&parts.headers);
        let page = render(&TotpPage {
            nav: None,
            csrf,
            action: "/dashboard/enrol/accept",
            qr: inv
                .pending_totp
                .as_deref()
                .map(|s| Qr::of_raw(&inv.email, s)),
            token: Some(Secret::new(token.clone())),
            email: inv.email,
            role: inv.role.as_str(),
            expires: Some(super::format::time(inv.expires_at)),
            error: Some(message),
        });
        with_status(page, status, None)
    };
    if password != form.get("password2").unwrap_or("") {
        return Ok(again(
            StatusCode::BAD_REQUEST,
            "the two passwords differ; type the same password twice".into(),
        ));
    }
    if code.is_empty() {
        return Ok(again(
            StatusCode::BAD_REQUEST,
            "enter the 6-digit code your authenticator app shows".into(),
        ));
    }
    let answer = crate::api::invitations::accept(
        State(state.cloud.clone()),
        super::login::anonymous_ctx(&state, peer),
        Body(AcceptRequest {
            token: Secret::new(token.clone()),
            password: Secret::new(password.to_owned()),
            mfa_code: Some(code.to_owned()),
        }),
    )
    .await;
    match answer {
        Ok((status, axum::Json(done))) => {
            let page = render(&DonePage {
                nav: None,
                email: done.email,
                codes: done.recovery_codes,
                next_href: "/dashboard/login",
                next_label: "Sign in",
            });
            Ok(with_status(page, status, None))
        }
        // The token is dead (or the address's failure budget is spent): start again.
        Err(e) if e.code == INVITATION_INVALID || e.retry_after.is_some() => {
            Ok(start_page(&parts.headers, Some(&e)))
        }
        Err(e) if e.code == codes::INVALID_CREDENTIALS => Ok(again(
            e.status,
            "the code does not match: check that your authenticator holds the secret shown \
             here and that the device's clock is right, then enter its current code"
                .into(),
        )),
        Err(e) => Ok(again(e.status, e.message)),
    }
}

/// The session of a member setting up TOTP: an enrolment-only session (which the rest of the
/// dashboard refuses), or a full one through the usual checks.
async fn enrolling(
    state: &DashState,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
) -> Result<Viewer, Refusal> {
    let token = cookie(headers, SESSION_COOKIE).ok_or(Refusal::SignedOut)?;
    let principal = crate::extract::authenticate(&state.cloud, token)
        .await
        .map_err(|_| Refusal::SignedOut)?;
    let Principal::Session {
        email,
        role,
        enrolment_only: true,
        ..
    } = &principal
    else {
        return super::viewer(state, headers, peer).await;
    };
    let ctx = super::login::anonymous_ctx(state, peer);
    Ok(Viewer {
        email: email.clone(),
        role: *role,
        csrf: super::csrf_token(token),
        auth: Auth(principal.clone(), ctx),
    })
}

/// The confirm form of the sign-in path.
fn mfa_form(viewer: &Viewer, qr: Option<Qr>, error: Option<String>) -> Response {
    render(&TotpPage {
        nav: None,
        csrf: viewer.csrf.clone(),
        action: MFA_ENROL_PAGE,
        token: None,
        email: viewer.email.clone(),
        role: viewer.role.as_str(),
        expires: None,
        qr,
        error,
    })
}

/// `GET /dashboard/mfa-enrol`: a new TOTP secret (the API's `POST /auth/mfa/totp`) as a QR
/// code and text, and the form to confirm a code.
pub async fn mfa_page(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let peer = super::peer_of(&req);
    let viewer = enrolling(&state, req.headers(), peer).await?;
    let auth = viewer.check(&state, "POST", "/auth/mfa/totp")?;
    match crate::api::login::mfa_totp(State(state.cloud.clone()), auth).await {
        Ok(axum::Json(offer)) => Ok(mfa_form(
            &viewer,
            Some(Qr::new(offer.otpauth_uri.expose(), offer.totp_secret)),
            None,
        )),
        Err(e) if e.code == MFA_ALREADY_ENROLLED => Ok(Redirect::to("/dashboard/").into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `POST /dashboard/mfa-enrol`: fields `csrf`, `code`. The API's `POST /auth/mfa/confirm`
/// enrols the secret and turns the session into a full one; the answer shows the recovery
/// codes, once.
pub async fn mfa_confirm(
    State(state): State<DashState>,
    req: Request,
) -> Result<Response, Refusal> {
    let peer = super::peer_of(&req);
    let (parts, body) = req.into_parts();
    let viewer = enrolling(&state, &parts.headers, peer).await?;
    let form = super::read_form(body).await?;
    if !super::same(form.get(CSRF_FIELD).unwrap_or(""), &viewer.csrf) {
        return Err(Refusal::Csrf);
    }
    let auth = viewer.check(&state, "POST", "/auth/mfa/confirm")?;
    let code = form.get("code").unwrap_or("").trim().to_owned();
    match crate::api::login::mfa_confirm(
        State(state.cloud.clone()),
        auth,
        Body(CodeRequest { code }),
    )
    .await
    {
        Ok(axum::Json(done)) => Ok(render(&DonePage {
            nav: None,
            email: viewer.email.clone(),
            codes: done.recovery_codes,
            next_href: "/dashboard/devices",
            next_label: "Continue to the dashboard",
        })),
        Err(e) if e.code == MFA_ALREADY_ENROLLED => Ok(Redirect::to("/dashboard/").into_response()),
        Err(e) => {
            // The offered secret stays pending: show it again with the error.
            let pending = state.cloud.store.read(|m| {
                m.members
                    .get(&viewer.email)
                    .and_then(|r| r.pending_totp.clone())
            });
            let Some(raw) = pending else {
                return Ok(Redirect::to(MFA_ENROL_PAGE).into_response());
            };
            let message = if e.code == codes::INVALID_CREDENTIALS {
                "the code does not match: check that your authenticator holds the secret shown \
                 here and that the device's clock is right, then enter its current code"
                    .to_owned()
            } else {
                e.message
            };
            Ok(with_status(
                mfa_form(
                    &viewer,
                    Some(Qr::of_raw(&viewer.email, &raw)),
                    Some(message),
                ),
                e.status,
                None,
            ))
        }
    }
}
