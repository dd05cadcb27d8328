//! Every list of the control plane is paged with a cursor bound to its filters (issue 11,
//! point 1): API keys (revoked and expired ones included while they are kept), bootstrap
//! tokens, members and resources; each states its maximum `limit`, keeps a stable order, and
//! answers a cursor from another filter or list, or a forged one, 400 `invalid_cursor`. The
//! `octomil ... list` commands follow the cursor, or stop at `--limit`. Before, these lists
//! came whole in one answer.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Env;

/// Follows `path`'s cursor with `limit`; returns the `field` of every item, page by page.
async fn walk(env: &Env, path: &str, list: &str, field: &str, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let mut p = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={c}"));
        }
        let a = env.owner(Method::GET, &p, None).await;
        assert_eq!(a.status, StatusCode::OK, "{p}: {:?}", a.body);
        pages.push(
            a.body[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i[field].as_str().unwrap().to_owned())
                .collect(),
        );
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return pages,
        }
    }
}

async fn octomil(env: &Env, args: &[&str]) -> Value {
    let argv = [&["--json"], args].concat();
    let (r, out, _) = env.octomil(&env.owner_key, &argv).await;
    r.unwrap();
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_pages_in_a_stable_order() {
    let env = support::start().await;
    env.relax_limits().await;
    // API keys: the owner's, four more, one of them revoked (still listed).
    let mut keys = Vec::new();
    for _ in 0..4 {
        let a = env
            .owner(
                Method::POST,
                "/api-keys",
                Some(json!({"name": "k", "scopes": ["models:read"]})),
            )
            .await;
        keys.push(a.body["id"].as_str().unwrap().to_owned());
    }
    let a = env
        .owner(Method::DELETE, &format!("/api-keys/{}", keys[0]), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let pages = walk(&env, "/api-keys", "api_keys", "id", 2).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let all: Vec<String> = pages.concat();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "id order");
    assert!(all.contains(&keys[0]), "the revoked key is listed");
    let a = env
        .owner(Method::GET, "/api-keys?status=revoked", None)
        .await;
    assert_eq!(a.body["api_keys"][0]["id"], keys[0].as_str());
    assert_eq!(a.body["api_keys"].as_array().unwrap().len(), 1);

    // Bootstrap tokens: the first-start one and four more, one revoked.
    let mut tokens = Vec::new();
    for _ in 0..4 {
        let a = env.owner(Method::POST, "/bootstrap-tokens", None).await;
        tokens.push(a.body["id"].as_str().unwrap().to_owned());
    }
    env.owner(
        Method::DELETE,
        &format!("/bootstrap-tokens/{}", tokens[1]),
        None,
    )
    .await;
    let pages = walk(&env, "/bootstrap-tokens", "bootstrap_tokens", "id", 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
    let pages = walk(
        &env,
        "/bootstrap-tokens?status=active",
        "bootstrap_tokens",
        "id",
        3,
    )
    .await;
    assert_eq!(pages.concat().len(), 4);

    // Members: the owner and three more.
    for i in 0..3 {
        env.add_member(&format!("m{i}@example.com"), "member").await;
    }
    let pages = walk(&env, "/org/members", "members", "email", 3).await;
    assert_eq!(
        pages,
        [
            vec!["m0@example.com", "m1@example.com", "m2@example.com"],
            vec!["owner@octomil.local"]
        ]
    );

    // Resources: five models, a version of one.
    let mut models = Vec::new();
    for i in 0..5 {
        let a = env
            .owner(
                Method::POST,
                "/models",
                Some(json!({"name": format!("m{i}")})),
            )
            .await;
        models.push(a.body["id"].as_str().unwrap().to_owned());
    }
    env.owner(
        Method::POST,
        &format!("/models/{}/versions", models[0]),
        Some(json!({"name": "v1"})),
    )
    .await;
    let pages = walk(&env, "/models", "items", "id", 2).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let mut sorted = models.clone();
    sorted.sort();
    assert_eq!(pages.concat(), sorted);
    let pages = walk(
        &env,
        &format!("/models/{}/versions", models[0]),
        "items",
        "name",
        1,
    )
    .await;
    assert_eq!(pages, [vec!["v1"]]);

    // Limits past the stated maximum, and cursors that are not this list's, are refused.
    for (path, max) in [
        ("/api-keys", 1000),
        ("/bootstrap-tokens", 1000),
        ("/org/members", 1000),
        ("/models", 1000),
        ("/audit", 5000),
        ("/devices", 5000),
    ] {
        let a = env
            .owner(Method::GET, &format!("{path}?limit={}", max + 1), None)
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{path}"
        );
        let a = env
            .owner(Method::GET, &format!("{path}?limit={max}"), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
    }
    let a = env.owner(Method::GET, "/api-keys?limit=1", None).await;
    let key_cursor = a.body["next_cursor"].as_str().unwrap().to_owned();
    for bad in [
        format!("/org/members?cursor={key_cursor}"),
        format!("/bootstrap-tokens?cursor={key_cursor}"),
        format!("/models?cursor={key_cursor}"),
        format!("/audit?cursor={key_cursor}"),
        format!("/api-keys?status=active&cursor={key_cursor}"),
        // The audit cursor of earlier releases was a bare sequence number.
        "/audit?cursor=2".to_owned(),
    ] {
        let a = env.owner(Method::GET, &bad, None).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_cursor"),
            "{bad}"
        );
    }

    // The CLI follows the cursor to the end, or stops at --limit.
    let all = octomil(&env, &["api-keys", "list"]).await;
    assert_eq!(all["api_keys"].as_array().unwrap().len(), 5);
    let some = octomil(&env, &["api-keys", "list", "--limit", "2"]).await;
    assert_eq!(some["api_keys"].as_array().unwrap().len(), 2);
    let all = octomil(&env, &["bootstrap-tokens", "list"]).await;
    assert_eq!(all["bootstrap_tokens"].as_array().unwrap().len(), 5);
    let some = octomil(&env, &["bootstrap-tokens", "list", "--status", "revoked"]).await;
    assert_eq!(some["bootstrap_tokens"][0]["id"], tokens[1].as_str());
    let some = octomil(&env, &["devices", "list", "--limit", "1"]).await;
    assert_eq!(some["devices"], json!([]));
    env.handle.shutdown().await;
}
