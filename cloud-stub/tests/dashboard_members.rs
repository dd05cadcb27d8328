//! The dashboard's members features over real HTTPS: inviting (Owners only, as the API's
//! table says; the link shown once), MFA status and reset (with a fresh code), withdrawing an
//! invitation, first-time enrolment from an invitation (token -> QR code and secret -> password
//! and a computed code -> recovery codes once -> sign in), a used token refused with a clear
//! message, CSRF refusal of the no-session forms, escaping, sign-in with a recovery code, and
//! a member whom the preset newly requires MFA of led through enrolment at sign-in.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use octomil_cloud::dashboard::{CSP, SESSION_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Env;
use support::dashboard::{Browser, Page, member_browser, owner_browser};

async fn invitations(env: &Env) -> Vec<serde_json::Value> {
    let a = env.owner(Method::GET, "/org/members", None).await;
    a.body["invitations"].as_array().unwrap().clone()
}

async fn member(env: &Env, email: &str) -> Option<serde_json::Value> {
    let a = env.owner(Method::GET, "/org/members", None).await;
    a.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == email)
        .cloned()
}

fn escaped(body: &str, raw: &str) -> bool {
    let a = raw.replace('<', "&#60;").replace('>', "&#62;");
    let b = raw.replace('<', "&lt;").replace('>', "&gt;");
    body.contains(&a) || body.contains(&b)
}

#[tokio::test]
async fn an_owner_invites_and_sees_the_link_once() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/members").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"invite-form\""));
    assert!(page.body.contains("No pending invitations"));
    let csrf = page.csrf();

    let done = b
        .post(
            "/dashboard/members/invite",
            &[
                ("csrf", &csrf),
                ("email", "Nia@Example.com"),
                ("role", "admin"),
                ("expires_in", "24h"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/dashboard/members");
    let page = b.get("/dashboard/members").await;
    let link = page.text_of("invite-link");
    let host = env.handle.http_url.trim_start_matches("https://");
    assert!(
        link.starts_with(&format!("https://{host}/invite#edg_invite_")),
        "{link}"
    );
    assert!(page.body.contains("data-copy=\"invite-link\""));
    assert!(page.body.contains("works <strong>once</strong>"));
    // Until when: the invitation's expiry, 24 h from now.
    let pending = invitations(&env).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["email"], "nia@example.com");
    assert_eq!(pending[0]["role"], "admin");
    assert_eq!(
        pending[0]["expires_at"].as_u64().unwrap(),
        env.clock_secs() + 86_400
    );
    assert!(!page.text_of("invited-expires").is_empty());
    assert!(page.body.contains("id=\"invitations\""));
    // The token in the link is a live invitation.
    let token = link.rsplit_once('#').unwrap().1;
    let a = env
        .call(
            Method::POST,
            "/auth/invitations/totp",
            None,
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // Shown once: the next load lists the invitation but not its link.
    let again = b.get("/dashboard/members").await;
    assert!(!again.body.contains(token));
    assert!(!again.body.contains("id=\"invite-link\""));
    assert!(again.body.contains("nia@example.com"));
    // Audited as the dashboard's.
    let a = env
        .owner(Method::GET, "/audit?action=member.invite", None)
        .await;
    let r = a.body["records"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(r["origin"], "dashboard");

    // Without its CSRF token the form is refused, and nothing is made.
    let forged = b
        .post(
            "/dashboard/members/invite",
            &[("email", "x@example.com"), ("role", "owner")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(invitations(&env).await.len(), 1);

    // An email holding markup is text on the page.
    let evil = "eve<script>@example.com";
    let done = b
        .post(
            "/dashboard/members/invite",
            &[("csrf", &csrf), ("email", evil), ("role", "member")],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let page = b.get("/dashboard/members").await;
    assert!(!page.body.contains("eve<script>"), "{}", page.body);
    assert!(escaped(&page.body, evil), "{}", page.body);
}

#[tokio::test]
async fn admins_and_members_may_not_invite_even_by_a_forged_post() {
    let env = support::start().await;
    let mut admin = member_browser(&env, "ada@example.com", "admin").await;
    let page = admin.get("/dashboard/members").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("id=\"invite-form\""),
        "the table lets only Owners invite"
    );
    let csrf = page.csrf();
    let forged = admin
        .post(
            "/dashboard/members/invite",
            &[
                ("csrf", &csrf),
                ("email", "x@example.com"),
                ("role", "owner"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let mut m = member_browser(&env, "mo@example.com", "member").await;
    assert_eq!(
        m.get("/dashboard/members").await.status,
        StatusCode::FORBIDDEN
    );
    let csrf = m.get("/dashboard/devices").await.csrf();
    let forged = m
        .post(
            "/dashboard/members/invite",
            &[
                ("csrf", &csrf),
                ("email", "y@example.com"),
                ("role", "owner"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(invitations(&env).await.is_empty());
}

#[tokio::test]
async fn mfa_status_is_listed_and_a_reset_needs_a_fresh_code() {
    let env = support::start().await;
    env.add_member("rex@example.com", "member").await;
    env.clock.advance(Duration::from_secs(30));
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/members").await;
    assert!(
        page.body.contains("10 recovery codes left"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Reset MFA of rex@example.com"));
    let csrf = page.csrf();

    // Past the 10-minute grace of the TOTP sign-in: the reset asks for a fresh code.
    env.clock.advance(Duration::from_secs(11 * 60));
    let reset = |code: Option<String>| {
        let mut form = vec![
            ("csrf".to_owned(), csrf.clone()),
            ("email".to_owned(), "rex@example.com".to_owned()),
            ("action".to_owned(), "mfa_reset".to_owned()),
        ];
        if let Some(c) = code {
            form.push(("totp".to_owned(), c));
        }
        form
    };
    let no_code = b.post_owned("/dashboard/members", &reset(None)).await;
    assert_eq!(no_code.status, StatusCode::FORBIDDEN, "{}", no_code.body);
    assert!(no_code.body.contains("authenticator code"));
    assert_eq!(
        member(&env, "rex@example.com").await.unwrap()["mfa_enrolled"],
        true
    );
    let secret = env.handle.owner_totp_secret().unwrap();
    let done = b
        .post_owned("/dashboard/members", &reset(Some(env.totp_code(&secret))))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let rex = member(&env, "rex@example.com").await.unwrap();
    assert_eq!(rex["mfa_enrolled"], false);
    assert_eq!(rex["recovery_codes_left"], 0);
    let page = b.get("/dashboard/members").await;
    assert!(page.body.contains("not enrolled"));
    assert!(!page.body.contains("Reset MFA of rex@example.com"));
    let a = env
        .owner(Method::GET, "/audit?action=member.mfa_reset", None)
        .await;
    let r = a.body["records"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(r["origin"], "dashboard");

    // An Admin may reset a Member's MFA but is offered no reset of an Owner's.
    let mut admin = member_browser(&env, "ada@example.com", "admin").await;
    let page = admin.get("/dashboard/members").await;
    let owner = env.handle.info.owner_email.clone();
    assert!(!page.body.contains(&format!("Reset MFA of {owner}")));
    assert!(page.body.contains("Reset MFA of ada@example.com"));

    // A pending invitation is withdrawn from the list (a fresh code is needed there too).
    env.invite("gone@example.com", "member").await;
    env.clock.advance(Duration::from_secs(30));
    let page = b.get("/dashboard/members").await;
    assert!(
        page.body
            .contains("Withdraw the invitation of gone@example.com")
    );
    let code = env.totp_code(&secret);
    let done = b
        .post(
            "/dashboard/members",
            &[
                ("csrf", &csrf),
                ("email", "gone@example.com"),
                ("action", "remove"),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(invitations(&env).await.is_empty());
}

/// The secret of the QR step, checked to be a real QR image.
fn secret_of(page: &Page) -> Vec<u8> {
    let src = page.attr_after("id=\"totp-qr\" src=\"");
    let b64 = src
        .strip_prefix("data:image/svg+xml;base64,")
        .expect("an SVG data: URI");
    let svg = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    octomil_cloud::session::totp_from_base32(&page.text_of("totp-secret")).unwrap()
}

#[tokio::test]
async fn an_invitee_enrols_from_the_link_and_signs_in() {
    let env = support::start().await;
    let token = env.invite("ivy@example.com", "member").await;
    let mut b = Browser::new(&env);
    let start = b.get("/invite").await;
    assert_eq!(start.status, StatusCode::OK);
    assert_eq!(start.headers["content-security-policy"], CSP);
    assert!(start.body.contains("src=\"/dashboard/assets/enrol.js\""));
    assert!(!start.body.contains("<script>") && !start.body.contains("style="));
    let js = b.get("/dashboard/assets/enrol.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.contains("location.hash"));
    let csrf = start.csrf();

    // The no-session form refuses a post without its CSRF token (or with another).
    let forged = b
        .post("/dashboard/enrol", &[("token", &token), ("csrf", "nope")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let mut other = Browser::new(&env);
    let forged = other
        .post("/dashboard/enrol", &[("token", &token), ("csrf", &csrf)])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    // The token (pasted as the whole link) -> the QR code and the secret as text.
    let link = format!("https://example.com/invite#{token}");
    let qr = b
        .post("/dashboard/enrol", &[("csrf", &csrf), ("token", &link)])
        .await;
    assert_eq!(qr.status, StatusCode::OK, "{}", qr.body);
    assert!(qr.body.contains("ivy@example.com"));
    let secret = secret_of(&qr);
    let csrf = qr.csrf();

    let accept = |password2: &str, code: &str| {
        vec![
            ("csrf".to_owned(), csrf.clone()),
            ("token".to_owned(), token.clone()),
            ("password".to_owned(), "correct horse battery".to_owned()),
            ("password2".to_owned(), password2.to_owned()),
            ("code".to_owned(), code.to_owned()),
        ]
    };
    let code = env.totp_code(&secret);
    // Mismatched passwords: the same secret shown again, nothing made.
    let p = b
        .post_owned(
            "/dashboard/enrol/accept",
            &accept("another password!", &code),
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("the two passwords differ"));
    assert_eq!(secret_of(&p), secret);
    // A wrong code: refused clearly.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let p = b
        .post_owned(
            "/dashboard/enrol/accept",
            &accept("correct horse battery", wrong),
        )
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("the code does not match"));
    assert!(member(&env, "ivy@example.com").await.is_none());
    // The right code: recovery codes, shown once, and a way to sign in.
    let done = b
        .post_owned(
            "/dashboard/enrol/accept",
            &accept("correct horse battery", &code),
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    assert!(done.body.contains("shown only this once"));
    assert!(done.body.contains("href=\"/dashboard/login\""));
    let list = done.body.split("id=\"recovery-codes\">").nth(1).unwrap();
    let list = &list[..list.find("</ol>").unwrap()];
    let codes: Vec<String> = list
        .split("<li>")
        .skip(1)
        .map(|c| c[..c.find('<').unwrap()].to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{list}");
    let ivy = member(&env, "ivy@example.com").await.unwrap();
    assert_eq!(ivy["mfa_enrolled"], true);
    assert_eq!(ivy["recovery_codes_left"], 10);

    // The used link is refused, with a clear message.
    let again = b
        .post("/dashboard/enrol", &[("csrf", &csrf), ("token", &token)])
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(again.body.contains("unknown, already used or expired"));
    assert!(!again.body.contains("totp-secret"));

    // Signing in with the new password and the next code.
    env.clock.advance(Duration::from_secs(30));
    let mut s = Browser::new(&env);
    let p = s
        .sign_in(
            "ivy@example.com",
            "correct horse battery",
            &env.totp_code(&secret),
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/dashboard/devices");
    assert_eq!(s.get("/dashboard/devices").await.status, StatusCode::OK);

    // A recovery code in place of the authenticator's, once.
    let mut r = Browser::new(&env);
    let p = r
        .sign_in_with(&[
            ("email", "ivy@example.com"),
            ("password", "correct horse battery"),
            ("mfa_code", ""),
            ("recovery_code", &codes[3]),
        ])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert!(r.cookies.contains_key(SESSION_COOKIE));
    let mut r2 = Browser::new(&env);
    let p = r2
        .sign_in_with(&[
            ("email", "ivy@example.com"),
            ("password", "correct horse battery"),
            ("recovery_code", &codes[3]),
        ])
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        member(&env, "ivy@example.com").await.unwrap()["recovery_codes_left"],
        9
    );
    // Acceptance through the dashboard is audited with its origin.
    let a = env
        .owner(Method::GET, "/audit?action=invitation.accept", None)
        .await;
    let rec = a.body["records"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(rec["origin"], "dashboard");
}

#[tokio::test]
async fn a_member_newly_required_to_use_mfa_enrols_at_sign_in() {
    let env = support::start().await;
    let token = env.invite("pat@example.com", "member").await;
    let a = env
        .call(
            Method::POST,
            "/auth/invitations/accept",
            None,
            Some(json!({"token": token, "password": "a long enough password"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"compliance_preset": "hipaa"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);

    let mut b = Browser::new(&env);
    let p = b
        .sign_in_with(&[
            ("email", "pat@example.com"),
            ("password", "a long enough password"),
        ])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/dashboard/mfa-enrol");
    // Not a full session yet: the rest of the dashboard sends back, and the sign-in page sends
    // on to enrolment.
    assert_eq!(
        b.get("/dashboard/devices").await.location(),
        "/dashboard/login"
    );
    assert_eq!(
        b.get("/dashboard/login").await.location(),
        "/dashboard/mfa-enrol"
    );

    let qr = b.get("/dashboard/mfa-enrol").await;
    assert_eq!(qr.status, StatusCode::OK, "{}", qr.body);
    let secret = secret_of(&qr);
    let csrf = qr.csrf();
    // Without the CSRF token: refused.
    let forged = b
        .post("/dashboard/mfa-enrol", &[("code", &env.totp_code(&secret))])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // A wrong code: the same secret again, with the error.
    let code = env.totp_code(&secret);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let p = b
        .post("/dashboard/mfa-enrol", &[("csrf", &csrf), ("code", wrong)])
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("the code does not match"));
    assert_eq!(secret_of(&p), secret);
    let done = b
        .post("/dashboard/mfa-enrol", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("shown only this once"));
    assert!(done.body.contains("href=\"/dashboard/devices\""));
    // The same session is now a full one.
    let devices = b.get("/dashboard/devices").await;
    assert_eq!(devices.status, StatusCode::OK, "{}", devices.body);
    assert!(devices.body.contains("pat@example.com"));
    assert_eq!(
        member(&env, "pat@example.com").await.unwrap()["mfa_enrolled"],
        true
    );
}

#[tokio::test]
async fn bad_tokens_at_the_enrolment_form_spend_the_addresss_failure_budget() {
    let env = support::start().await;
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"rate_limits": {"auth_failures": {"limit": 3, "period_secs": 600}}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let mut b = Browser::new(&env);
    let csrf = b.get("/invite").await.csrf();
    let mut limited = None;
    for i in 0..6 {
        let token = format!("edg_invite_guess{i:028}");
        let p = b
            .post("/dashboard/enrol", &[("csrf", &csrf), ("token", &token)])
            .await;
        if p.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(p);
            break;
        }
        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{}", p.body);
        assert!(p.body.contains("unknown, already used or expired"));
    }
    let limited = limited.expect("the API's failure budget applies to the form");
    assert!(limited.headers.contains_key("retry-after"));
    assert!(limited.body.contains("role=\"alert\""));
    // The same budget as the API's: a call from this address is refused too.
    let a = env
        .call(
            Method::POST,
            "/auth/invitations/totp",
            None,
            Some(json!({"token": "edg_invite_another"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", a.body);
}

/// The form's own checks (two passwords that differ) run on a token only after it is found,
/// and a token not found there is charged like the API's refusal: the form is no free oracle of
/// live tokens.
#[tokio::test]
async fn the_accept_forms_own_checks_are_no_free_oracle_of_live_tokens() {
    let env = support::start().await;
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"rate_limits": {"auth_failures": {"limit": 3, "period_secs": 600}}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let mut b = Browser::new(&env);
    let csrf = b.get("/invite").await.csrf();
    let mut limited = None;
    for i in 0..6 {
        let token = format!("edg_invite_guess{i:028}");
        let p = b
            .post(
                "/dashboard/enrol/accept",
                &[
                    ("csrf", &csrf),
                    ("token", &token),
                    ("password", "one password here"),
                    ("password2", "another password"),
                    ("code", ""),
                ],
            )
            .await;
        if p.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(p);
            break;
        }
        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{}", p.body);
        assert!(p.body.contains("unknown, already used or expired"));
    }
    let limited = limited.expect("each unknown token spends the address's budget");
    assert!(limited.headers.contains_key("retry-after"));
}
