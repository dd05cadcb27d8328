//! The operator's view: `octomil-cloud serve` and the `octomil` CLI as processes, with the
//! seed's commands exactly as written in the spec.

#![allow(clippy::unwrap_used)]

use octomil_e2e::{CloudProcess, fetch_challenge, files_containing, register_request, run};
use serde_json::Value;

/// Registers a device straight over the API (the daemon arrives with issue 2/5).
async fn register_device(cloud: &CloudProcess, id: &str) -> Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(&cloud.info.ca_file).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let api = format!("{}/api/v1", cloud.info.http_url);
    let challenge = fetch_challenge(&client, &api, id).await;
    let body = register_request(&cloud.bootstrap_token(), id, &challenge);
    let resp = client
        .post(format!("{}/api/v1/devices/register", cloud.info.http_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    resp.json().await.unwrap()
}

#[test]
fn api_key_is_printed_once_and_never_stored_in_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&tmp.path().join("cloud"));
    let (out, stdout, stderr) = run(cloud.cli().args([
        "api-keys",
        "create",
        "--name",
        "ci-pipeline",
        "--scopes",
        "models:read,models:write,rollouts:write",
    ]));
    assert!(out.status.success(), "{stderr}");
    let key = stdout.trim();
    assert!(
        key.starts_with("edg_live_") && key.len() == "edg_live_".len() + 32,
        "{stdout:?}"
    );
    assert_eq!(stdout.lines().count(), 1, "only the key goes to stdout");
    assert!(stderr.contains("not be shown again"));

    // Listing never shows it again.
    let (_, list, _) = run(cloud.cli().args(["api-keys", "list", "--json"]));
    assert!(list.contains("ci-pipeline"));
    assert!(!list.contains(key));

    // The key works with exactly its scopes.
    let (out, _, _) = run(cloud
        .cli()
        .env("OCTOMIL_API_KEY", key)
        .args(["devices", "list"]));
    assert_eq!(out.status.code(), Some(1), "no devices:read scope");

    // Stop the cloud so every page is on disk, then search the whole state dir.
    let dir = cloud.state_dir.clone();
    let status = cloud.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let hits = files_containing(&dir, key.as_bytes());
    assert!(hits.is_empty(), "plaintext key found in {hits:?}");
    // Nor the secret part alone.
    let hits = files_containing(&dir, &key.as_bytes()["edg_live_".len()..]);
    assert!(hits.is_empty(), "key body found in {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_commands_work_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&tmp.path().join("cloud"));

    let (out, stdout, stderr) =
        run(cloud
            .cli()
            .args(["org", "settings", "--device-token-expiry", "48h"]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("2d"), "{stdout}");
    let reg = register_device(&cloud, "edge-cli-1").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lifetime = reg["expires_at"].as_u64().unwrap() - now;
    assert!(
        (48 * 3600 - 5..=48 * 3600).contains(&lifetime),
        "lifetime {lifetime}"
    );

    let (out, added, stderr) = run(cloud.cli().args([
        "--json",
        "org",
        "members",
        "add",
        "user@example.com",
        "--role",
        "admin",
    ]));
    assert!(out.status.success(), "{stderr}");
    // An invitation, never the member's secrets; the invitee joins with their own password.
    let added: Value = serde_json::from_str(&added).unwrap();
    assert!(added.get("initial_password").is_none() && added.get("totp_secret").is_none());
    let (out, _, stderr) = run(cloud
        .cli()
        .env_remove("OCTOMIL_API_KEY")
        .env(
            "OCTOMIL_INVITATION",
            added["invitation_link"].as_str().unwrap(),
        )
        .env("OCTOMIL_PASSWORD", "the invitee's own password")
        .args(["auth", "accept-invite", "--no-mfa"]));
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = run(cloud.cli().args([
        "org",
        "members",
        "update",
        "user@example.com",
        "--role",
        "member",
    ]));
    assert!(out.status.success(), "{stderr}");
    let (_, members, _) = run(cloud.cli().args(["org", "members", "list", "--json"]));
    let members: Value = serde_json::from_str(&members).unwrap();
    let user = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "user@example.com")
        .unwrap();
    assert_eq!(user["role"], "member");

    let (out, _, stderr) = run(cloud.cli().args(["devices", "revoke", "edge-cli-1"]));
    assert!(out.status.success(), "{stderr}");
    let (_, shown, _) = run(cloud
        .cli()
        .args(["devices", "show", "edge-cli-1", "--json"]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["state"], "revoked");
    let (out, _, _) = run(cloud.cli().args(["devices", "delete", "edge-cli-1"]));
    assert!(out.status.success());
}

#[test]
fn errors_print_the_server_message_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&tmp.path().join("cloud"));
    let (out, _, stderr) = run(cloud.cli().args(["devices", "revoke", "no-such-device"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("device not found") && stderr.contains("not_found"),
        "{stderr}"
    );
    let (out, _, stderr) = run(cloud
        .cli()
        .env(
            "OCTOMIL_API_KEY",
            "edg_live_0000000000aaaaaaaaaaBBBBBBBBBB99",
        )
        .args(["devices", "list"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    // Local validation: exit 2, nothing sent.
    let (out, _, stderr) = run(cloud.cli().args([
        "api-keys",
        "create",
        "--name",
        "x",
        "--scopes",
        "models:delete",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("unknown scope"), "{stderr}");
    let (out, _, _) =
        run(cloud
            .cli()
            .args(["org", "settings", "--device-token-expiry", "forever"]));
    assert_eq!(out.status.code(), Some(2));
    let (_, list, _) = run(cloud.cli().args(["api-keys", "list", "--json"]));
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list["api_keys"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
    // A CA that did not sign the server's certificate is a clear TLS failure.
    let other = tempfile::tempdir().unwrap();
    let second = CloudProcess::start(&other.path().join("cloud"));
    let (out, _, stderr) = run(cloud
        .cli()
        .env("OCTOMIL_CA_FILE", &second.info.ca_file)
        .args(["devices", "list"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&cloud.info.http_url), "{stderr}");
}

#[test]
fn cloud_restarts_with_its_state_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cloud");
    let cloud = CloudProcess::start(&dir);
    let (_, key, _) = run(cloud.cli().args([
        "api-keys",
        "create",
        "--name",
        "keep",
        "--scopes",
        "devices:read",
    ]));
    let owner = cloud.owner_api_key();
    let ca = std::fs::read(&cloud.info.ca_file).unwrap();
    assert!(cloud.terminate().success());
    assert!(
        !dir.join("cloud.json").exists(),
        "cloud.json is gone once the cloud stops"
    );

    let cloud = CloudProcess::start(&dir);
    assert_eq!(cloud.owner_api_key(), owner, "no second provisioning");
    assert_eq!(
        std::fs::read(&cloud.info.ca_file).unwrap(),
        ca,
        "same CA: devices keep trusting it"
    );
    let (out, _, stderr) = run(cloud
        .cli()
        .env("OCTOMIL_API_KEY", key.trim())
        .args(["devices", "list"]));
    assert!(out.status.success(), "{stderr}");
}
