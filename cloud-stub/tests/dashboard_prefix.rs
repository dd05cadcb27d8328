//! The dashboard's API keys page shows each key's prefix (issue 12: "reload, see only its
//! prefix"): a key created on the page is shown once, then only as `edg_live_a1B2c3…`; keys
//! made before state format 5 show their environment's prefix alone.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_cloud::dashboard::{SESSION_COOKIE, csrf_token};
use reqwest::{Method, StatusCode};

/// The dashboard as the Owner sees it: the session a login through the API gives, sent as
/// the dashboard's cookie (the harness's client keeps it across a same-origin redirect), and
/// the CSRF token that goes with it.
struct Owner {
    cookie: String,
    csrf: String,
}

impl Owner {
    async fn sign_in(env: &support::Env) -> Self {
        let password = env.handle.owner_password().unwrap();
        let totp = env.handle.owner_totp_secret().unwrap();
        let session = env
            .login(&env.handle.info.owner_email, password.expose(), &totp)
            .await;
        Self {
            cookie: format!("{SESSION_COOKIE}={session}"),
            csrf: csrf_token(&session),
        }
    }

    /// `GET /dashboard/api-keys`, or a form posted to it (then the page it redirects to).
    async fn keys_page(&self, env: &support::Env, form: &[(&str, &str)]) -> String {
        let url = format!("{}/dashboard/api-keys", env.handle.http_url);
        let mut req = env.client.get(&url);
        if !form.is_empty() {
            req = env
                .client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(form).unwrap());
        }
        let resp = req.header("cookie", &self.cookie).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// The text between `start` and the next `<` in `page`.
fn text_after<'a>(page: &'a str, start: &str) -> &'a str {
    let at = page.find(start).unwrap() + start.len();
    let rest = &page[at..];
    &rest[..rest.find('<').unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_the_page_is_shown_by_its_prefix_after_a_reload() {
    let env = support::start().await;
    let owner = Owner::sign_in(&env).await;
    let shown_once = owner
        .keys_page(
            &env,
            &[
                ("csrf", &owner.csrf),
                ("name", "grafana"),
                ("scope", "models:read"),
                ("environment", ""),
                ("expires_in", "30d"),
            ],
        )
        .await;
    let key = text_after(&shown_once, "id=\"new-key\">").to_owned();
    assert!(key.starts_with("edg_live_"), "{key}");

    let listed = env.owner(Method::GET, "/api-keys", None).await;
    let prefix = listed.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "grafana")
        .unwrap()["prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(key.starts_with(&prefix) && prefix.len() < key.len());

    let reloaded = owner.keys_page(&env, &[]).await;
    assert!(!reloaded.contains(&key), "the key is never shown again");
    assert!(!reloaded.contains("id=\"new-key\""));
    assert!(reloaded.contains(&format!("{prefix}…")), "{reloaded}");
    // The Owner's first-start key is listed by its own prefix too.
    let owner_prefix = &env.owner_key[..prefix.len()];
    assert!(reloaded.contains(&format!("{owner_prefix}…")));
    assert!(!reloaded.contains(&env.owner_key));
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_before_format_5_show_their_environments_prefix() {
    let (env, info) = support::fixture::start("state-v4").await;
    let owner = Owner::sign_in(&env).await;
    let page = owner.keys_page(&env, &[]).await;
    assert!(page.contains("edg_live_…"), "{page}");
    assert!(page.contains("edg_test_…"), "{page}");
    for k in ["reader_key", "sandbox_key", "expiring_key"] {
        assert!(!page.contains(info[k].as_str().unwrap()));
    }
    env.handle.shutdown().await;
}
