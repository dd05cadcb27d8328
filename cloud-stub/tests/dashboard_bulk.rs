//! Bulk revoke in the dashboard over real HTTPS (a selection, and every device matching a
//! filter, resolved on the server when the operator confirms; CSRF, role and fresh-code
//! refusals change nothing; the progress page reaches done; each device is audited with
//! origin `dashboard`), and `GET /devices?sort=last_seen` (order, stable paging across equal
//! last-seen times, cursors of the other order refused).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::dashboard::{Browser, Page, device_state, member_browser, owner_browser};
use support::{Device, Env};

/// The owner's authenticator code of the next TOTP step (a step is accepted once).
fn next_owner_code(env: &Env) -> String {
    env.clock.advance(Duration::from_secs(30));
    env.totp_code(&env.handle.owner_totp_secret().unwrap())
}

async fn register(env: &Env, ids: &[&str]) {
    for id in ids {
        Device::new(id).register(env).await;
    }
}

async fn states(env: &Env, ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(device_state(env, id).await);
    }
    out
}

/// Follows a start answer to its job's progress page until the job is done; the done page.
async fn wait_done(b: &mut Browser, start: &Page) -> Page {
    assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
    let job = start.location().to_owned();
    assert!(job.starts_with("/dashboard/bulk-revoke/"), "{job}");
    let (client, url, cookie) = (
        b.client.clone(),
        format!("{}{job}", b.base),
        b.cookie_header(),
    );
    let body = octomil_testkit::poll::eventually_or(
        Duration::from_secs(30),
        "the bulk revocation to finish",
        || {
            let (client, url, cookie) = (client.clone(), url.clone(), cookie.clone());
            async move {
                let r = client
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                if status == StatusCode::OK && body.contains("id=\"bulk-done\"") {
                    Ok(body)
                } else {
                    Err(format!("{status}: {body}"))
                }
            }
        },
    )
    .await;
    Page {
        status: StatusCode::OK,
        headers: Default::default(),
        body,
    }
}

fn form<'a>(pairs: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_selected_revokes_the_ticked_devices_only_and_audits_each_as_dashboard() {
    let env = support::start().await;
    env.relax_limits().await;
    register(&env, &["sel-a", "sel-b", "sel-c", "sel-d"]).await;
    let mut b = owner_browser(&env).await;
    let list = b.get("/dashboard/devices").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.body.contains("aria-label=\"Select sel-a\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("id=\"bulk-selected\""));
    // Without a filter there is no "all matching" (every device at once is the API's `all`).
    assert!(!list.body.contains("id=\"bulk-matching\""));
    let csrf = list.csrf();

    let confirm = b
        .post(
            "/dashboard/bulk-revoke",
            &form(&[
                ("csrf", csrf.clone()),
                ("mode", "selected".into()),
                ("id", "sel-a".into()),
                ("id", "sel-c".into()),
            ]),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(confirm.body.contains("Revoke 2 devices"));
    assert!(confirm.body.contains("name=\"id\" value=\"sel-c\""));
    assert!(!confirm.body.contains("sel-b"));
    // Past the 10-minute grace of the TOTP sign-in: a fresh code is needed.
    env.clock.advance(Duration::from_secs(11 * 60));
    let code = next_owner_code(&env);
    let start = b
        .post(
            "/dashboard/bulk-revoke/start",
            &form(&[
                ("csrf", csrf.clone()),
                ("mode", "selected".into()),
                ("id", "sel-a".into()),
                ("id", "sel-c".into()),
                ("reason", "lost <crate>".into()),
                ("confirm", "yes".into()),
                ("totp", code),
            ]),
        )
        .await;
    let done = wait_done(&mut b, &start).await;
    assert!(done.body.contains("2 of 2"), "{}", done.body);
    assert!(done.body.contains("lost &#60;crate&#62;") || done.body.contains("lost &lt;crate&gt;"));
    assert_eq!(
        states(&env, &["sel-a", "sel-b", "sel-c", "sel-d"]).await,
        ["revoked", "active", "revoked", "active"]
    );
    let a = env
        .owner(Method::GET, "/audit?action=device.revoke", None)
        .await;
    let records = a.body["records"].as_array().unwrap();
    let mut targets: Vec<&str> = records
        .iter()
        .map(|r| {
            assert_eq!(r["origin"], "dashboard", "{r}");
            assert_eq!(r["reason"], "lost <crate>");
            r["target"].as_str().unwrap()
        })
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["sel-a", "sel-c"]);
    // The list now shows them revoked, without a checkbox.
    let list = b.get("/dashboard/devices").await;
    assert!(!list.body.contains("aria-label=\"Select sel-a\""));
    assert!(list.body.contains("aria-label=\"Select sel-b\""));
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_matching_resolves_the_filter_when_confirmed_and_spares_the_rest() {
    let env = support::start().await;
    env.relax_limits().await;
    register(&env, &["cam-1", "cam-2", "cam-3", "gate-1", "gate-2"]).await;
    assert_eq!(env.revoke("cam-3").await.status, StatusCode::OK);
    let mut b = owner_browser(&env).await;
    // Search and state: the active cameras.
    let list = b.get("/dashboard/devices?q=cam&state=active").await;
    assert!(
        list.body.contains("Revoke all 2 matching this filter"),
        "{}",
        list.body
    );
    assert!(list.body.contains("name=\"q\" value=\"cam\""));
    let csrf = list.csrf();
    let filter = |extra: &[(&'static str, String)]| {
        let mut f = vec![
            ("csrf", csrf.clone()),
            ("mode", "matching".to_owned()),
            ("q", "cam".to_owned()),
            ("state", "active".to_owned()),
        ];
        f.extend_from_slice(extra);
        f
    };
    let confirm = b.post("/dashboard/bulk-revoke", &form(&filter(&[]))).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(
        confirm.body.contains("Revoke 2 devices"),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("search: cam"));
    // An empty filter is refused: no "every device" through this door.
    let empty = b
        .post(
            "/dashboard/bulk-revoke",
            &form(&[("csrf", csrf.clone()), ("mode", "matching".into())]),
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);

    // A camera enrolled after the confirmation page still matches when the operator
    // confirms: the server reads the filter then, not a list the page sent.
    register(&env, &["cam-4"]).await;
    let code = next_owner_code(&env);
    let start = b
        .post(
            "/dashboard/bulk-revoke/start",
            &form(&filter(&[
                ("reason", "camera recall".into()),
                ("confirm", "yes".into()),
                ("totp", code),
            ])),
        )
        .await;
    let done = wait_done(&mut b, &start).await;
    assert!(done.body.contains("3 of 3"), "{}", done.body);
    assert_eq!(
        states(
            &env,
            &["cam-1", "cam-2", "cam-3", "cam-4", "gate-1", "gate-2"]
        )
        .await,
        [
            "revoked", "revoked", "revoked", "revoked", "active", "active"
        ]
    );
    // cam-3 keeps its first reason: it was not revoked again.
    let cam3 = env.owner(Method::GET, "/devices/cam-3", None).await;
    assert_eq!(cam3.body["revoke_reason"], "stolen");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_member_and_missing_code_refusals_revoke_nothing() {
    let env = support::start().await;
    env.relax_limits().await;
    register(&env, &["ref-a", "ref-b"]).await;
    let mut b = owner_browser(&env).await;
    let csrf = b.get("/dashboard/devices").await.csrf();
    env.clock.advance(Duration::from_secs(11 * 60));
    let full = |csrf: &str, code: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("mode", "selected".to_owned()),
            ("id", "ref-a".to_owned()),
            ("reason", "test".to_owned()),
            ("confirm", "yes".to_owned()),
            ("totp", code.to_owned()),
        ]
    };
    let without = |skip: &str, code: &str| -> Vec<(&'static str, String)> {
        full(&csrf, code)
            .into_iter()
            .filter(|(k, _)| *k != skip)
            .collect()
    };
    let start = "/dashboard/bulk-revoke/start";
    // CSRF: missing or forged, on both steps.
    for path in ["/dashboard/bulk-revoke", start] {
        let p = b.post(path, &form(&without("csrf", "000000"))).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        let p = b.post(path, &form(&full("forged", "000000"))).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
    }
    // No reason, no confirmation: 400.
    let p = b.post(start, &form(&without("reason", "000000"))).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let p = b.post(start, &form(&without("confirm", "000000"))).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    // Past the sign-in's grace: no code, or a wrong one, is refused.
    let p = b.post(start, &form(&without("totp", ""))).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(p.body.contains("authenticator code"));
    let wrong = b.post(start, &form(&full(&csrf, "000000"))).await;
    assert!(wrong.status.is_client_error(), "{}", wrong.status);
    assert_eq!(
        states(&env, &["ref-a", "ref-b"]).await,
        ["active", "active"]
    );

    // A Member sees no checkbox or button, and a forged POST with their own valid token is
    // the API's 403 on both steps.
    let mut m = member_browser(&env, "mia@example.com", "member").await;
    let list = m.get("/dashboard/devices?q=ref").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.body.contains("bulk-pick") && !list.body.contains("bulk-selected"));
    assert!(!list.body.contains("bulk-matching"));
    let member_csrf = list.csrf();
    let member_code = "123456";
    for path in ["/dashboard/bulk-revoke", start] {
        let p = m.post(path, &form(&full(&member_csrf, member_code))).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}: {}", p.body);
        let matching = [
            ("csrf", member_csrf.clone()),
            ("mode", "matching".to_owned()),
            ("q", "ref".to_owned()),
        ];
        let p = m.post(path, &form(&matching)).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        states(&env, &["ref-a", "ref-b"]).await,
        ["active", "active"]
    );
    let audit = env
        .owner(Method::GET, "/audit?action=device.revoke", None)
        .await;
    assert_eq!(audit.body["records"].as_array().unwrap().len(), 0);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_page_is_a_fragment_for_htmx_and_only_its_session_sees_it() {
    let env = support::start().await;
    env.relax_limits().await;
    register(&env, &["pro-a"]).await;
    let mut b = owner_browser(&env).await;
    let csrf = b.get("/dashboard/devices").await.csrf();
    // Within the sign-in's 10-minute grace the code field may stay empty (the API's rule).
    let start = b
        .post(
            "/dashboard/bulk-revoke/start",
            &form(&[
                ("csrf", csrf),
                ("mode", "selected".into()),
                ("id", "pro-a".into()),
                ("reason", "decommissioned".into()),
                ("confirm", "yes".into()),
                ("totp", String::new()),
            ]),
        )
        .await;
    let done = wait_done(&mut b, &start).await;
    assert!(done.body.contains("<html"), "the full page without htmx");
    assert!(
        !done.body.contains("hx-trigger=\"every"),
        "a done job is not polled"
    );
    let job = start.location().to_owned();
    let frag = b.get_htmx(&job).await;
    assert_eq!(frag.status, StatusCode::OK);
    assert!(!frag.body.contains("<html") && frag.body.contains("id=\"bulk-progress\""));
    assert!(frag.body.contains("id=\"bulk-done\""));
    // Another session (even the same owner's) does not see the job; nor an unknown id.
    let mut other = Browser::new(&env);
    let code = next_owner_code(&env);
    let password = env.handle.owner_password().unwrap();
    let a = other
        .sign_in(&env.handle.info.owner_email, password.expose(), &code)
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(other.get(&job).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        b.get("/dashboard/bulk-revoke/nosuchjob").await.status,
        StatusCode::NOT_FOUND
    );
    env.handle.shutdown().await;
}

fn ids(a: &Value) -> Vec<String> {
    a["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Follows `next_cursor` from `query` with `limit`, collecting every id.
async fn walk(env: &Env, query: &str, limit: usize) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("/devices?{query}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let a = env.owner(Method::GET, &q, None).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        pages += 1;
        all.extend(ids(&a.body));
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (all, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_sort_by_last_seen_newest_first_pages_stably_and_binds_cursors_to_the_sort() {
    let env = support::start().await;
    env.relax_limits().await;
    let all = ["d-a", "d-b", "d-c", "d-d", "d-e", "d-f", "d-g"];
    register(&env, &all).await;
    // Last seen as the presence table knows it (a broker login records it).
    let presence = &env.handle.cloud.presence;
    for (id, t) in [
        ("d-a", 100),
        ("d-b", 300),
        ("d-c", 300),
        ("d-d", 200),
        ("d-g", 300),
    ] {
        presence.note_login(id, t);
    }
    let want = ["d-b", "d-c", "d-g", "d-d", "d-a", "d-e", "d-f"];
    let a = env
        .owner(Method::GET, "/devices?sort=last_seen", None)
        .await;
    assert_eq!(ids(&a.body), want);
    assert!(a.body["next_cursor"].is_null());
    // Every page size, through the ties at 300 and the never-seen tail: no device skipped
    // or repeated.
    for limit in 1..=4 {
        let (got, pages) = walk(&env, "sort=last_seen", limit).await;
        assert_eq!(got, want, "limit {limit}");
        assert_eq!(pages, want.len().div_ceil(limit), "limit {limit}");
    }
    // Filters combine with the sort.
    let (got, _) = walk(&env, "sort=last_seen&last_seen_after=200", 1).await;
    assert_eq!(got, ["d-b", "d-c", "d-g", "d-d"]);
    // `sort=id` is the default order.
    let (got, _) = walk(&env, "sort=id", 3).await;
    assert_eq!(got, all);

    // A cursor of one order does not open in the other; a bad sort is invalid_argument.
    let by_seen = env
        .owner(Method::GET, "/devices?sort=last_seen&limit=2", None)
        .await;
    let seen_cursor = by_seen.body["next_cursor"].as_str().unwrap().to_owned();
    let by_id = env.owner(Method::GET, "/devices?limit=2", None).await;
    let id_cursor = by_id.body["next_cursor"].as_str().unwrap().to_owned();
    for bad in [
        format!("/devices?limit=2&cursor={seen_cursor}"),
        format!("/devices?sort=id&limit=2&cursor={seen_cursor}"),
        format!("/devices?sort=last_seen&limit=2&cursor={id_cursor}"),
        format!("/devices?sort=last_seen&q=d-&limit=2&cursor={seen_cursor}"),
    ] {
        let a = env.owner(Method::GET, &bad, None).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_cursor"),
            "{bad}"
        );
    }
    let a = env.owner(Method::GET, "/devices?sort=name", None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // The dashboard's sort uses it: its pages follow the same order.
    let mut b = owner_browser(&env).await;
    let page = b.get("/dashboard/devices?sort=last_seen").await;
    let order: Vec<usize> = want
        .iter()
        .map(|id| page.body.find(&format!(">{id}</a>")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(page.body.contains("aria-sort=\"descending\""));
    env.handle.shutdown().await;
}

/// The figure for BENCHMARKS.md: "all matching" over 2,000 devices, from the confirmation to
/// the last chunk's answer (the job's own clock), in a debug build with the embedded broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_matching_over_2000_devices() {
    let n = 2000;
    let env = support::start().await;
    env.relax_limits().await;
    let boot = env.bootstrap_token();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = env.client.clone();
        let url = format!("{}/api/v1", env.handle.http_url);
        let boot = boot.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(4) {
                let d = Device::new(&format!("fleet-{i:04}"));
                let challenge = client
                    .post(format!("{url}/devices/register/challenge"))
                    .json(&serde_json::json!({"device_id": d.id}))
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()["challenge"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let r = client
                    .post(format!("{url}/devices/register"))
                    .json(&d.register_body_with(&boot, &challenge))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    register(&env, &["spare-1"]).await;
    eprintln!("registered {n} devices in {:?}", t.elapsed());
    let mut b = owner_browser(&env).await;
    let list = b.get("/dashboard/devices?q=fleet-").await;
    assert!(list.body.contains(&format!("Revoke all {n} matching")));
    let csrf = list.csrf();
    let t = Instant::now();
    let start = b
        .post(
            "/dashboard/bulk-revoke/start",
            &form(&[
                ("csrf", csrf),
                ("mode", "matching".into()),
                ("q", "fleet-".into()),
                ("reason", "fleet recall".into()),
                ("confirm", "yes".into()),
                ("totp", String::new()),
            ]),
        )
        .await;
    let done = wait_done(&mut b, &start).await;
    let wall = t.elapsed();
    assert!(done.body.contains(&format!("{n} of {n}")), "{}", done.body);
    let at = done.body.find("id=\"bulk-took-ms\">").unwrap() + 18;
    let took: u64 = done.body[at..at + done.body[at..].find('<').unwrap()]
        .parse()
        .unwrap();
    println!(
        "dashboard bulk revoke, all {n} matching, chunks of 1000: job {took} ms, \
         confirmation to done page {wall:?} (debug build)"
    );
    assert!(wall < Duration::from_secs(60), "{wall:?}");
    assert_eq!(device_state(&env, "spare-1").await, "active");
    assert_eq!(device_state(&env, "fleet-1999").await, "revoked");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_selection_too_large_empty_or_naming_a_bad_id_is_refused_and_revokes_nothing() {
    let env = support::start().await;
    register(&env, &["sel-x", "sel-y"]).await;
    let mut b = owner_browser(&env).await;
    let csrf = b.get("/dashboard/devices").await.csrf();
    let code = next_owner_code(&env);
    let mut many: Vec<(&str, String)> = vec![
        ("csrf", csrf.clone()),
        ("mode", "selected".into()),
        ("reason", "stolen".into()),
        ("confirm", "yes".into()),
        ("totp", code.clone()),
        ("id", "sel-x".into()),
        ("id", "sel-y".into()),
    ];
    many.extend((0..500).map(|i| ("id", format!("other-{i:04}"))));
    for (what, fields) in [
        ("501 ids", many),
        (
            "no id",
            vec![
                ("csrf", csrf.clone()),
                ("mode", "selected".into()),
                ("reason", "stolen".into()),
                ("confirm", "yes".into()),
                ("totp", code.clone()),
            ],
        ),
        (
            "a bad id",
            vec![
                ("csrf", csrf.clone()),
                ("mode", "selected".into()),
                ("reason", "stolen".into()),
                ("confirm", "yes".into()),
                ("totp", code.clone()),
                ("id", "sel-x".into()),
                ("id", "../../etc".into()),
            ],
        ),
    ] {
        for path in ["/dashboard/bulk-revoke", "/dashboard/bulk-revoke/start"] {
            let page = b.post(path, &form(&fields)).await;
            assert_eq!(
                page.status,
                StatusCode::BAD_REQUEST,
                "{what} at {path}: {}",
                page.body
            );
        }
    }
    assert_eq!(
        states(&env, &["sel-x", "sel-y"]).await,
        ["active", "active"]
    );
}
