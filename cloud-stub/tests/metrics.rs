//! `GET /api/v1/metrics` (issue 11, point 11): Prometheus text behind the `metrics:read`
//! scope, counting registrations, refreshes, revocations, 429s by surface and login
//! failures, with gauges for devices, MQTT sessions and the outbox.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::Device;

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_parse_as_prometheus_text() {
    let env = support::start().await;
    let scraper = env.create_key(&["metrics:read"]).await;
    let d = Device::new("m-1");
    let reg = d.register(&env).await;
    d.refresh(&env, reg.refresh_token.expose()).await;
    env.revoke("m-1").await;
    let a = env
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": "owner@octomil.local", "password": "wrong"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    let resp = env
        .client
        .get(format!("{}/api/v1/metrics", env.handle.http_url))
        .bearer_auth(&scraper)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    assert_eq!(sample(&text, "octomil_cloud_registrations_total"), 1);
    assert_eq!(sample(&text, "octomil_cloud_refreshes_total"), 1);
    assert_eq!(sample(&text, "octomil_cloud_revocations_total"), 1);
    assert_eq!(sample(&text, "octomil_cloud_login_failures_total"), 1);
    assert_eq!(sample(&text, "octomil_cloud_devices{state=\"revoked\"}"), 1);
    assert_eq!(sample(&text, "octomil_cloud_outbox_depth"), 0);

    // Every sample follows its HELP and TYPE lines and has a valid name and value.
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        let base = name.split('{').next().unwrap();
        assert!(typed.contains(base), "{line}: no TYPE before it");
        assert!(
            base.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{line}"
        );
        value.parse::<f64>().unwrap();
    }
    promtool_check(&text);

    // A key without the scope reads nothing.
    let other = env.create_key(&["models:read"]).await;
    let a = env.call(Method::GET, "/metrics", Some(&other), None).await;
    assert_eq!(a.code(), "insufficient_scope");
    env.handle.shutdown().await;
}

/// `promtool check metrics`, when installed; CI (CI=true) must have it.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is missing (apt-get install prometheus)")
        }
        Err(_) => {
            eprintln!("SKIPPED: promtool check metrics (promtool not installed)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
