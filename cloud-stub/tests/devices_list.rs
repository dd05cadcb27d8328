//! `GET /devices` is paged with a cursor and takes the filters the dashboard needs (issue 11,
//! point 1), and `octomil devices list` follows the cursor to the end.

#![allow(clippy::unwrap_used)]

mod support;

use clap::Parser;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{Device, Env};

fn ids(a: &Value) -> Vec<String> {
    a["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn get(env: &Env, query: &str) -> support::Answer {
    env.owner(Method::GET, &format!("/devices{query}"), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_filters() {
    let env = support::start().await;
    env.relax_limits().await;
    for id in ["cam-a", "cam-b", "gate-c", "gate-d", "gate-e"] {
        Device::new(id).register(&env).await;
    }
    assert_eq!(env.revoke("gate-d").await.status, StatusCode::OK);

    // Three pages of two, in id order, each cursor leading on.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let a = get(&env, &query).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        pages += 1;
        seen.extend(ids(&a.body));
        match a.body["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["cam-a", "cam-b", "gate-c", "gate-d", "gate-e"]);

    assert_eq!(ids(&get(&env, "?state=revoked").await.body), ["gate-d"]);
    assert_eq!(
        ids(&get(&env, "?q=GATE&state=active").await.body),
        ["gate-c", "gate-e"]
    );
    assert_eq!(ids(&get(&env, "?q=rpi4&limit=1").await.body), ["cam-a"]);
    assert_eq!(
        ids(&get(&env, "?online=true").await.body),
        Vec::<String>::new()
    );
    let boot = env.owner(Method::GET, "/bootstrap-tokens", None).await.body["bootstrap_tokens"][0]
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ids(&get(&env, &format!("?bootstrap_token={boot}")).await.body).len(),
        5
    );
    for bad in [
        "?limit=0",
        "?limit=5001",
        "?limit=x",
        "?state=gone",
        "?environment=staging",
        "?colour=red",
    ] {
        let a = get(&env, bad).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{bad}"
        );
    }

    // A cursor is good only with the filters it was made for, and only if this cloud made
    // it: another filter's, a forged one (the next id, encoded) and garbage are refused.
    let a = get(&env, "?q=gate&limit=1").await;
    let gate_cursor = a.body["next_cursor"].as_str().unwrap().to_owned();
    let a = get(&env, &format!("?q=gate&limit=1&cursor={gate_cursor}")).await;
    assert_eq!(ids(&a.body), ["gate-d"]);
    use base64::Engine as _;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("gate-c");
    for bad in [
        format!("?q=cam&limit=1&cursor={gate_cursor}"),
        format!("?limit=1&cursor={gate_cursor}"),
        format!("?q=gate&limit=1&cursor={forged}"),
        "?cursor=%%%".to_owned(),
    ] {
        let a = get(&env, &bad).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_cursor"),
            "{bad}"
        );
    }
    // A different limit is the same list: the cursor still opens.
    let a = get(&env, &format!("?q=gate&limit=3&cursor={gate_cursor}")).await;
    assert_eq!(ids(&a.body), ["gate-d", "gate-e"]);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octomil_devices_list_follows_the_cursor() {
    let env = support::start().await;
    env.relax_limits().await;
    let n = octomil_cloud::api::devices::DEFAULT_PAGE + 3;
    let boot = env.bootstrap_token();
    for i in 0..n {
        let d = Device::new(&format!("dev-{i:04}"));
        let body = d.register_body(&env, &boot).await;
        let a = env
            .call(Method::POST, "/devices/register", None, Some(body))
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let ca = env.dir.path().join("ca-for-cli.pem");
    std::fs::write(&ca, env.handle.ca_pem.as_bytes()).unwrap();
    let cli = octomil_cloud::cli::Cli::try_parse_from([
        "octomil",
        "--api-url",
        &env.handle.http_url,
        "--api-key",
        &env.owner_key,
        "--ca-file",
        ca.to_str().unwrap(),
        "--json",
        "devices",
        "list",
    ])
    .unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut out = octomil_cloud::cli::Out::new(&mut stdout, &mut stderr, true, 0);
    octomil_cloud::cli::run(cli, &mut out).await.unwrap();
    let all: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(all["devices"].as_array().unwrap().len(), n);
    env.handle.shutdown().await;
}
