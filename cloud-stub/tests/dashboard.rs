//! The operator dashboard over real HTTPS: sign-in, cookie and header policy, CSRF refusal,
//! escaping, authorization per role (the API's table), revoke with reason, confirmation and
//! fresh TOTP, API keys shown once, audit origin `dashboard`, idle timeout.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use octomil_cloud::dashboard::{CSP, SESSION_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Device;
use support::dashboard::{
    Browser, Page, audit_of, device_state, member_browser, owner_browser, register_with,
};

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_and_every_page_has_the_strict_csp() {
    let env = support::start().await;
    let mut anon = Browser::new(&env);
    // Signed out: every page sends to the sign-in form.
    for path in ["/dashboard/", "/dashboard/devices", "/dashboard/api-keys"] {
        let p = anon.get(path).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(p.location(), "/dashboard/login");
    }
    let login = anon.get("/dashboard/login").await;
    let csp = login.headers["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, CSP);
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe"), "no unsafe-inline, no unsafe-eval");
    assert_eq!(login.headers["x-frame-options"], "DENY");
    assert_eq!(login.headers["x-content-type-options"], "nosniff");
    // No inline script or style anywhere in the page.
    assert!(!login.body.contains("<script>") && !login.body.contains("style="));
    assert!(!login.body.contains("<style"));

    let mut b = Browser::new(&env);
    let secret = env.handle.owner_totp_secret().unwrap();
    let password = env.handle.owner_password().unwrap();
    let p = b
        .sign_in(
            &env.handle.info.owner_email,
            password.expose(),
            &env.totp_code(&secret),
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let set = p
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(SESSION_COOKIE))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let devices = b.get("/dashboard/devices").await;
    assert_eq!(devices.status, StatusCode::OK);
    assert!(devices.body.contains(&env.handle.info.owner_email));
    assert_eq!(devices.headers["content-security-policy"], CSP);
    assert_eq!(devices.headers["cache-control"], "no-store");
    // The login is in the audit log, made through the dashboard.
    let logins = audit_of(&env, "session.login").await;
    assert_eq!(logins.last().unwrap()["origin"], "dashboard");
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_throttled_like_the_api() {
    let env = support::start().await;
    let mut b = Browser::new(&env);
    let email = env.handle.info.owner_email.clone();
    let first = b.sign_in(&email, "wrong password", "000000").await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert!(first.body.contains("role=\"alert\""));
    assert!(!b.cookies.contains_key(SESSION_COOKIE));
    // The API's backoff applies: past its free failures the form answers 429 with
    // Retry-After, and no hash runs.
    let free = octomil_cloud::limits::FREE_LOGIN_FAILURES;
    let mut limited = None;
    for _ in 0..free + 2 {
        let p = b.sign_in(&email, "wrong password", "000000").await;
        if p.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(p);
            break;
        }
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("the form is throttled like the API");
    assert!(limited.headers.contains_key("retry-after"));
    // Even the right password waits out the backoff.
    let password = env.handle.owner_password().unwrap();
    let right = b.sign_in(&email, password.expose(), "000000").await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!b.cookies.contains_key(SESSION_COOKIE));
}

#[tokio::test]
async fn a_login_form_without_its_csrf_token_is_refused() {
    let env = support::start().await;
    let mut b = Browser::new(&env);
    b.get("/dashboard/login").await;
    let password = env.handle.owner_password().unwrap();
    let secret = env.handle.owner_totp_secret().unwrap();
    let code = env.totp_code(&secret);
    let p = b
        .post(
            "/dashboard/login",
            &[
                ("email", env.handle.info.owner_email.as_str()),
                ("password", password.expose()),
                ("mfa_code", &code),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(!b.cookies.contains_key(SESSION_COOKIE));
}

#[tokio::test]
async fn metadata_is_shown_as_text_never_as_html() {
    let env = support::start().await;
    env.relax_limits().await;
    register_with(
        &env,
        "evil-1",
        json!({"note": "<script>alert(1)</script>", "label": "<b>bold</b>", "q": "\"'&"}),
    )
    .await;
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/devices/evil-1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("<b>bold"));
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    // The free-text search reaches metadata, and the list escapes too.
    let list = b.get("/dashboard/devices?q=%3Cb%3E").await;
    assert!(list.body.contains("evil-1"));
    assert!(
        !list.body.contains("value=\"<b>"),
        "the search box value is escaped"
    );
}

#[tokio::test]
async fn device_list_pages_filters_and_keeps_the_filter_in_links() {
    let env = support::start().await;
    env.relax_limits().await;
    for i in 0..55 {
        register_with(
            &env,
            &format!("dev-{i:03}"),
            json!({"site": format!("plant-{}", i % 2)}),
        )
        .await;
    }
    let mut b = owner_browser(&env).await;
    let p1 = b.get("/dashboard/devices").await;
    assert_eq!(p1.status, StatusCode::OK);
    assert!(p1.body.contains("dev-000") && p1.body.contains("dev-049"));
    assert!(!p1.body.contains("dev-050"));
    assert!(p1.body.contains("rel=\"next\""));
    let i = p1
        .body
        .find("href=\"/dashboard/devices?")
        .expect("a next-page link");
    let rest = &p1.body[i + 6..];
    let next = rest[..rest.find('"').unwrap()].replace("&amp;", "&");
    let p2 = b.get(&next).await;
    assert!(p2.body.contains("dev-050") && p2.body.contains("dev-054"));
    assert!(!p2.body.contains("dev-049"));
    // Filters: search and state; a bad state is the API's 400.
    let f = b.get("/dashboard/devices?q=plant-1&state=active").await;
    assert!(f.body.contains("dev-001") && !f.body.contains("dev-002"));
    assert!(f.body.contains("value=\"plant-1\""));
    let bad = b.get("/dashboard/devices?state=sideways").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let sorted = b.get("/dashboard/devices?sort=last_seen").await;
    assert_eq!(sorted.status, StatusCode::OK);
}

#[tokio::test]
async fn revoke_needs_csrf_reason_confirmation_and_a_fresh_code_and_is_audited_as_dashboard() {
    let env = support::start().await;
    register_with(&env, "dev-r", json!({})).await;
    let mut b = owner_browser(&env).await;
    // Past the 10-minute grace of the TOTP sign-in: the revoke asks for a fresh code.
    env.clock.advance(Duration::from_secs(11 * 60));
    let page = b.get("/dashboard/devices/dev-r").await;
    assert!(page.body.contains("id=\"revoke-button\""));
    let csrf = page.csrf();
    let secret = env.handle.owner_totp_secret().unwrap();
    let code = env.totp_code(&secret);
    let path = "/dashboard/devices/dev-r/revoke";
    let full = |csrf: &str| {
        vec![
            ("csrf".to_owned(), csrf.to_owned()),
            ("reason".to_owned(), "stolen <laptop>".to_owned()),
            ("confirm".to_owned(), "yes".to_owned()),
            ("totp".to_owned(), code.clone()),
        ]
    };
    let without = |skip: &str| -> Vec<(String, String)> {
        full(&csrf).into_iter().filter(|(k, _)| k != skip).collect()
    };
    async fn post(b: &mut Browser, path: &str, f: Vec<(String, String)>) -> Page {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        b.post(path, &f).await
    }
    assert_eq!(
        post(&mut b, path, without("csrf")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&mut b, path, full("forged")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&mut b, path, without("reason")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&mut b, path, without("confirm")).await.status,
        StatusCode::BAD_REQUEST
    );
    let no_code = post(&mut b, path, without("totp")).await;
    assert_eq!(no_code.status, StatusCode::FORBIDDEN);
    assert!(no_code.body.contains("authenticator code"));
    assert_eq!(device_state(&env, "dev-r").await, "active");

    let done = post(&mut b, path, full(&csrf)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/dashboard/devices/dev-r");
    assert_eq!(device_state(&env, "dev-r").await, "revoked");
    let after = b.get("/dashboard/devices/dev-r").await;
    assert!(
        after.body.contains("stolen &#60;laptop&#62;")
            || after.body.contains("stolen &lt;laptop&gt;")
    );
    assert!(
        !after.body.contains("id=\"revoke-button\""),
        "no revoke for a revoked device"
    );
    let records = audit_of(&env, "device.revoke").await;
    let r = records.last().unwrap();
    assert_eq!(r["origin"], "dashboard");
    assert_eq!(r["reason"], "stolen <laptop>");
    assert_eq!(r["target"], "dev-r");
    assert!(r["actor"].as_str().unwrap().starts_with("session:"));
}

#[tokio::test]
async fn delete_is_offered_for_a_revoked_device_and_needs_confirmation_and_a_fresh_code() {
    let env = support::start().await;
    register_with(&env, "dev-d", json!({})).await;
    let mut b = owner_browser(&env).await;
    env.clock.advance(Duration::from_secs(11 * 60));
    let page = b.get("/dashboard/devices/dev-d").await;
    assert!(
        !page.body.contains("id=\"delete-button\""),
        "an active device is revoked first, not deleted"
    );
    let csrf = page.csrf();
    let secret = env.handle.owner_totp_secret().unwrap();
    let code = env.totp_code(&secret);
    let revoked = b
        .post(
            "/dashboard/devices/dev-d/revoke",
            &[
                ("csrf", &csrf),
                ("reason", "retired"),
                ("confirm", "yes"),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.body);
    // A Member sees no delete and a forged delete is refused by the API's table.
    let mut m = member_browser(&env, "mia@example.com", "member").await;
    let mp = m.get("/dashboard/devices/dev-d").await;
    assert!(!mp.body.contains("delete-button"));
    let forged = m
        .post(
            "/dashboard/devices/dev-d/delete",
            &[("csrf", &mp.csrf()), ("confirm", "yes"), ("totp", "000000")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);

    let page = b.get("/dashboard/devices/dev-d").await;
    assert!(page.body.contains("id=\"delete-button\""));
    let path = "/dashboard/devices/dev-d/delete";
    assert_eq!(
        b.post(path, &[("confirm", "yes"), ("totp", "000000")])
            .await
            .status,
        StatusCode::FORBIDDEN,
        "no CSRF token"
    );
    assert_eq!(
        b.post(path, &[("csrf", &csrf), ("totp", "000000")])
            .await
            .status,
        StatusCode::BAD_REQUEST,
        "no confirmation"
    );
    // The revoke's code counts for 10 minutes (the step-up rule); past them a delete
    // without a fresh code is refused and nothing is deleted.
    env.clock.advance(Duration::from_secs(11 * 60));
    let stale = b
        .post(path, &[("csrf", &csrf), ("confirm", "yes"), ("totp", "")])
        .await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN, "{}", stale.body);
    assert!(stale.body.contains("authenticator code"));
    assert_eq!(device_state(&env, "dev-d").await, "revoked");

    let fresh = env.totp_code(&secret);
    let done = b
        .post(
            path,
            &[("csrf", &csrf), ("confirm", "yes"), ("totp", &fresh)],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/dashboard/devices");
    let gone = env.owner(Method::GET, "/devices/dev-d", None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let r = audit_of(&env, "device.delete").await;
    assert_eq!(r.last().unwrap()["origin"], "dashboard");
}

#[tokio::test]
async fn a_member_sees_no_revoke_button_and_a_forged_revoke_is_refused() {
    let env = support::start().await;
    register_with(&env, "dev-m", json!({})).await;
    let mut m = member_browser(&env, "mia@example.com", "member").await;
    let page = m.get("/dashboard/devices/dev-m").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("revoke-button") && !page.body.contains("/revoke\""));
    assert!(
        page.body.contains("needs the Admin role"),
        "no audit history for a Member"
    );
    // No API-keys section for a Member (org:admin, Admin).
    assert!(!page.body.contains("/dashboard/api-keys"));
    assert_eq!(
        m.get("/dashboard/api-keys").await.status,
        StatusCode::FORBIDDEN
    );
    // A forged POST with the Member's own valid CSRF token: the API's table refuses it.
    let csrf = page.csrf();
    let f = m
        .post(
            "/dashboard/devices/dev-m/revoke",
            &[
                ("csrf", &csrf),
                ("reason", "x"),
                ("confirm", "yes"),
                ("totp", "000000"),
            ],
        )
        .await;
    assert_eq!(f.status, StatusCode::FORBIDDEN, "{}", f.body);
    assert_eq!(device_state(&env, "dev-m").await, "active");
    // An Admin sees the button.
    let mut a = member_browser(&env, "ada@example.com", "admin").await;
    let page = a.get("/dashboard/devices/dev-m").await;
    assert!(page.body.contains("id=\"revoke-button\""));
}

#[tokio::test]
async fn an_api_key_is_shown_once_then_only_its_prefix() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/api-keys").await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.csrf();
    let created = b
        .post(
            "/dashboard/api-keys",
            &[
                ("csrf", &csrf),
                ("name", "ci <deploy>"),
                ("scope", "devices:read"),
                ("scope", "models:read"),
                ("environment", ""),
                ("expires_in", "30d"),
            ],
        )
        .await;
    // Post, redirect, get: a reload cannot post the form twice.
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    assert_eq!(created.location(), "/dashboard/api-keys");
    let created = b.get("/dashboard/api-keys").await;
    let marker = "id=\"new-key\">";
    let at = created.body.find(marker).unwrap();
    let key: String = created.body[at + marker.len()..]
        .chars()
        .take_while(|c| *c != '<')
        .collect();
    assert!(key.starts_with("edg_live_"), "{key}");
    assert!(created.body.contains("data-copy=\"new-key\""));
    // The key works against the API.
    let a = env.call(Method::GET, "/devices", Some(&key), None).await;
    assert_eq!(a.status, StatusCode::OK);
    // Reloaded: only the prefix, never the key.
    let again = b.get("/dashboard/api-keys").await;
    assert!(!again.body.contains(&key));
    // Only its listed prefix (`edg_live_` and its first random characters).
    let prefix = &key[.."edg_live_".len() + octomil_cloud::store::KEY_PREFIX_CHARS];
    assert!(again.body.contains(&format!("{prefix}…")));
    assert!(again.body.contains("ci &#60;deploy&#62;") || again.body.contains("ci &lt;deploy&gt;"));
    assert_eq!(
        audit_of(&env, "api_key.create").await.last().unwrap()["origin"],
        "dashboard"
    );
    // Unknown scope: the API's 400, shown on the page.
    let bad = b
        .post(
            "/dashboard/api-keys",
            &[("csrf", &csrf), ("name", "x"), ("scope", "root")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Revoke it (CSRF first).
    let row = again
        .body
        .find("ci &#60;deploy")
        .or_else(|| again.body.find("ci &lt;deploy"))
        .unwrap();
    let id_at = row + again.body[row..].find("/dashboard/api-keys/key_").unwrap();
    let rest = &again.body[id_at..];
    let action = rest[..rest.find('"').unwrap()].to_owned();
    assert_eq!(b.post(&action, &[]).await.status, StatusCode::FORBIDDEN);
    let r = b.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let a = env.call(Method::GET, "/devices", Some(&key), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_out_ends_the_session_and_idle_sessions_end() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/devices").await;
    let csrf = page.csrf();
    let token = b.cookies[SESSION_COOKIE].clone();
    assert_eq!(
        b.post("/dashboard/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let out = b.post("/dashboard/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(!b.cookies.contains_key(SESSION_COOKIE));
    // The old cookie replayed is refused: the session is gone server-side.
    b.cookies.insert(SESSION_COOKIE.into(), token.clone());
    assert_eq!(
        b.get("/dashboard/devices").await.location(),
        "/dashboard/login"
    );
    let api = env.call(Method::GET, "/devices", Some(&token), None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);

    // Idle: a session unused past the timeout is signed out; one in use is not.
    env.clock.advance(Duration::from_secs(30));
    let mut c = owner_browser(&env).await;
    env.clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(c.get("/dashboard/devices").await.status, StatusCode::OK);
    env.clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(c.get("/dashboard/devices").await.status, StatusCode::OK);
    env.clock.advance(Duration::from_secs(
        octomil_cloud::dashboard::IDLE_TIMEOUT_SECS + 1,
    ));
    assert_eq!(
        c.get("/dashboard/devices").await.location(),
        "/dashboard/login"
    );
}

#[tokio::test]
async fn htmx_and_its_licence_are_served_from_the_binary() {
    let env = support::start().await;
    let mut b = Browser::new(&env);
    let js = b.get("/dashboard/assets/htmx-2.0.11.min.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.body.len(), 52_182);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let lic = b.get("/dashboard/assets/htmx-LICENSE.txt").await;
    assert!(lic.body.starts_with("Zero-Clause BSD"));
    assert_eq!(
        b.get("/dashboard/assets/../Cargo.toml").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(b.get("/dashboard/nope").await.status, StatusCode::NOT_FOUND);
    // The API's answers are unchanged by the dashboard's routes.
    let api = env.call(Method::GET, "/nope", None, None).await;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_audit_page_filters_and_exports_csv_for_admins_only() {
    let env = support::start().await;
    register_with(&env, "dev-a", json!({})).await;
    let revoked = env
        .owner(
            Method::POST,
            "/devices/dev-a/revoke",
            Some(json!({"reason": "=HYPERLINK(\"http://x\") <i>"})),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/audit?action=device.").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("device.revoke") && page.body.contains("dev-a"));
    assert!(
        !page.body.contains("session.login"),
        "the action filter applies"
    );
    assert!(!page.body.contains("<i>"), "reasons are text");
    assert!(
        page.body
            .contains("href=\"/dashboard/audit.csv?action=device.\"")
    );
    let bad = b.get("/dashboard/audit?from=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let today = b
        .get("/dashboard/audit?from=1970-01-01&to=2999-12-31&target=dev-a")
        .await;
    assert!(today.body.contains("device.revoke"));

    let csv = b.get("/dashboard/audit.csv?action=device.revoke").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(lines[0].starts_with("seq,time_utc,actor,origin,action,target,reason"));
    assert_eq!(lines.len(), 2, "{}", csv.body);
    // A formula in a reason is defused for spreadsheets, quotes doubled.
    assert!(
        lines[1].contains("\"'=HYPERLINK(\"\"http://x\"\") <i>\""),
        "{}",
        lines[1]
    );

    let mut m = member_browser(&env, "mo@example.com", "member").await;
    assert_eq!(
        m.get("/dashboard/audit").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        m.get("/dashboard/audit.csv").await.status,
        StatusCode::FORBIDDEN
    );
    let nav = m.get("/dashboard/devices").await;
    assert!(!nav.body.contains("/dashboard/audit"));
}

#[tokio::test]
async fn members_page_changes_roles_with_a_fresh_code_and_protects_the_last_owner() {
    let env = support::start().await;
    let mut admin = member_browser(&env, "ada@example.com", "admin").await;
    let page = admin.get("/dashboard/members").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("ada@example.com") && page.body.contains("(you)"));
    assert!(
        !page.body.contains("Change role"),
        "an Admin may not change roles"
    );
    let csrf = page.csrf();
    let forged = admin
        .post(
            "/dashboard/members",
            &[
                ("csrf", &csrf),
                ("email", "ada@example.com"),
                ("action", "role"),
                ("role", "owner"),
                ("totp", "000000"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    env.clock.advance(Duration::from_secs(30));
    let mut b = owner_browser(&env).await;
    // Past the 10-minute grace of the TOTP sign-in: a role change asks for a fresh code.
    env.clock.advance(Duration::from_secs(11 * 60));
    let page = b.get("/dashboard/members").await;
    assert!(page.body.contains("Change role"));
    let csrf = page.csrf();
    let secret = env.handle.owner_totp_secret().unwrap();
    let code = env.totp_code(&secret);
    let no_code = b
        .post(
            "/dashboard/members",
            &[
                ("csrf", &csrf),
                ("email", "ada@example.com"),
                ("action", "role"),
                ("role", "member"),
            ],
        )
        .await;
    assert_eq!(no_code.status, StatusCode::FORBIDDEN);
    let done = b
        .post(
            "/dashboard/members",
            &[
                ("csrf", &csrf),
                ("email", "ada@example.com"),
                ("action", "role"),
                ("role", "member"),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let after = b.get("/dashboard/members").await;
    assert!(after.body.contains("ada@example.com"));
    // The demoted admin's session ended with the role change.
    assert_eq!(
        admin.get("/dashboard/members").await.location(),
        "/dashboard/login"
    );
    // The last Owner cannot remove themself: the API's refusal is shown.
    let owner = env.handle.info.owner_email.clone();
    let last = b
        .post(
            "/dashboard/members",
            &[
                ("csrf", &csrf),
                ("email", &owner),
                ("action", "remove"),
                ("totp", &code),
            ],
        )
        .await;
    assert!(last.status.is_client_error(), "{}", last.status);
    assert!(last.body.contains("role=\"alert\""));
    let records = env
        .owner(Method::GET, "/audit?target=ada@example.com", None)
        .await;
    let r = records.body["records"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(r["origin"], "dashboard");
}

#[tokio::test]
async fn bootstrap_tokens_are_created_shown_once_listed_and_revoked() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/bootstrap-tokens").await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.csrf();
    let bad = b
        .post(
            "/dashboard/bootstrap-tokens",
            &[("csrf", &csrf), ("max_uses", "lots")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let made = b
        .post(
            "/dashboard/bootstrap-tokens",
            &[("csrf", &csrf), ("max_uses", "3"), ("expires_in", "1d")],
        )
        .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let shown = b.get("/dashboard/bootstrap-tokens").await;
    let marker = "id=\"new-token\">";
    let at = shown.body.find(marker).expect("the token, once");
    let token: String = shown.body[at + marker.len()..]
        .chars()
        .take_while(|c| *c != '<')
        .collect();
    assert!(token.len() > 20);
    let title = "id=\"created-title\">Token ";
    let at = shown.body.find(title).unwrap() + title.len();
    let id: String = shown.body[at..].chars().take_while(|c| *c != ' ').collect();
    assert!(shown.body.contains("0 of 3"));
    let again = b.get("/dashboard/bootstrap-tokens").await;
    assert!(!again.body.contains(&token));
    // It enrols a device; the list links to the devices it enrolled.
    let d = Device::new("boot-1");
    let body = d.register_body(&env, &token).await;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let listed = b.get("/dashboard/bootstrap-tokens").await;
    assert!(listed.body.contains("1 of 3"));
    // Its row links to the devices it enrolled (the list is in id order: the first-start
    // token may come first).
    let link = format!("/dashboard/devices?bootstrap_token={id}");
    assert!(listed.body.contains(&link), "{}", listed.body);
    let enrolled = b.get(&link).await;
    assert!(
        enrolled.body.contains("boot-1"),
        "{link}: {}",
        enrolled.body
    );
    // Revoke: CSRF first, then no registration with it.
    let action = format!("/dashboard/bootstrap-tokens/{id}/revoke");
    assert!(listed.body.contains(&action));
    assert_eq!(b.post(&action, &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        b.post(&action, &[("csrf", &csrf)]).await.status,
        StatusCode::SEE_OTHER
    );
    let d2 = Device::new("boot-2");
    let body = d2.register_body(&env, &token).await;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert!(a.status.is_client_error());
    // A Member has no access.
    let mut m = member_browser(&env, "mo@example.com", "member").await;
    assert_eq!(
        m.get("/dashboard/bootstrap-tokens").await.status,
        StatusCode::FORBIDDEN
    );
}
