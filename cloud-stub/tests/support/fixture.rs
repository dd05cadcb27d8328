//! State directories written by earlier releases (`tests/fixtures/state-*`, each with the
//! `fixture.json` of what it holds), copied where a test may open and change them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use octomil_cloud::CloudStub;
use octomil_common::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Answer, Env};

/// Copies fixture `name` into a fresh temp dir (0700, files 0600, as the cloud keeps them);
/// returns the temp dir, the state dir in it and the fixture's `fixture.json`.
pub fn copy(name: &str) -> (tempfile::TempDir, PathBuf, Value) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let to = dir.join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("fixture.json")).unwrap()).unwrap();
    (tmp, dir, info)
}

/// A cloud started on a copy of fixture `name`, its clock an hour after the fixture was
/// made; with the fixture's `fixture.json`.
pub async fn start(name: &str) -> (Env, Value) {
    super::install_crypto();
    let (tmp, dir, info) = copy(name);
    let made_at = info["made_at_ms"].as_u64().unwrap();
    let clock = ManualClock::at_ms(made_at + 3_600_000);
    let handle = CloudStub::builder(&dir)
        .clock(Arc::new(clock.clone()))
        .spawn()
        .await
        .unwrap();
    (super::env_for(handle, clock, tmp), info)
}

/// `POST /auth/login` as the fixture's member (`admin_email`, `admin_password`,
/// `admin_totp_base32`) with a fresh TOTP code.
pub async fn admin_login(env: &Env, info: &Value) -> Answer {
    let secret = info["admin_totp_base32"].as_str().unwrap();
    let totp = octomil_cloud::session::totp_from_base32(secret).unwrap();
    let body = json!({
        "email": info["admin_email"],
        "password": info["admin_password"],
        "mfa_code": env.totp_code(&totp),
    });
    env.call(Method::POST, "/auth/login", None, Some(body))
        .await
}

/// `POST /devices/refresh` as the fixture's device (`device_id`) with the refresh token the
/// old release gave it (`device_refresh_token`).
pub async fn refresh_device(env: &Env, info: &Value) -> Answer {
    let body = json!({
        "device_id": info["device_id"],
        "refresh_token": info["device_refresh_token"],
    });
    env.call(Method::POST, "/devices/refresh", None, Some(body))
        .await
}
