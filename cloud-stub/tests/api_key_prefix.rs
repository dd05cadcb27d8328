//! API keys carry a listed prefix (issue 12: "list with prefix"): the environment's
//! `edg_live_`/`edg_test_` and the key's first six random characters, answered at creation,
//! listed by `GET /api-keys` and `octomil api-keys list`, and never more of the key.

#![allow(clippy::unwrap_used)]

mod support;

use octomil_cloud::store::KEY_PREFIX_CHARS;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `POST /api-keys` with the owner key: the whole answer.
async fn create(env: &support::Env, body: Value) -> Value {
    let a = env.owner(Method::POST, "/api-keys", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    a.body
}

fn listed<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_list_shows_each_keys_prefix_and_never_the_key() {
    let env = support::start().await;
    let live = create(&env, json!({"name": "ci", "scopes": ["models:read"]})).await;
    let test = create(
        &env,
        json!({"name": "sandbox", "scopes": ["devices:read"], "environment": "test"}),
    )
    .await;
    for (k, fixed) in [(&live, "edg_live_"), (&test, "edg_test_")] {
        let (key, prefix) = (k["key"].as_str().unwrap(), k["prefix"].as_str().unwrap());
        assert_eq!(prefix.len(), fixed.len() + KEY_PREFIX_CHARS, "{prefix}");
        assert!(prefix.starts_with(fixed), "{prefix}");
        assert_eq!(&key[..prefix.len()], prefix);
    }
    let live_id = live["id"].as_str().unwrap();
    let a = env
        .owner(Method::DELETE, &format!("/api-keys/{live_id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);

    let a = env.owner(Method::GET, "/api-keys", None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let text = a.body.to_string();
    for k in [&live, &test] {
        let row = listed(&a.body, k["id"].as_str().unwrap());
        assert_eq!(row["prefix"], k["prefix"]);
        assert!(!text.contains(k["key"].as_str().unwrap()));
    }
    // A revoked key keeps its prefix in the list.
    assert_eq!(listed(&a.body, live_id)["status"], "revoked");
    // The first-start Owner key has one too: that of the key in its 0600 file.
    let owner = a.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["created_by"] == "provisioning")
        .unwrap();
    let prefix = owner["prefix"].as_str().unwrap();
    assert!(env.owner_key.starts_with(prefix) && prefix.len() < env.owner_key.len());
    assert!(!text.contains(&env.owner_key));

    // The CLI's table shows the prefixes, its JSON the same field as the API.
    let (r, out, _) = env.octomil(&env.owner_key, &["api-keys", "list"]).await;
    r.unwrap();
    assert!(out.lines().next().unwrap().contains("KEY"), "{out}");
    for k in [&live, &test] {
        assert!(
            out.contains(&format!("{}…", k["prefix"].as_str().unwrap())),
            "{out}"
        );
        assert!(!out.contains(k["key"].as_str().unwrap()));
    }
    let (r, out, _) = env
        .octomil(&env.owner_key, &["--json", "api-keys", "list"])
        .await;
    r.unwrap();
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed(&cli, test["id"].as_str().unwrap())["prefix"],
        test["prefix"]
    );
    env.handle.shutdown().await;
}
