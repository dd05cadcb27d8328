//! The real `octomil` binary against a real cloud: `org members add` prints an invitation
//! (never a password or TOTP secret), `auth accept-invite` enrols the invitee in two steps
//! without a terminal, and a destructive call with a stale session steps up with the code
//! from `OCTOMIL_MFA_CODE` and is retried.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use octomil_cloud::session;
use reqwest::StatusCode;
use support::Device;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `octomil ARGS` with the cloud's URL and CA and the given environment, stdin closed.
async fn octomil(env: &support::Env, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let ca = env.dir.path().join("ca-for-cli.pem");
    std::fs::write(&ca, env.handle.ca_pem.as_bytes()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_octomil"));
    cmd.args(args)
        .env_clear()
        .env("OCTOMIL_API_URL", &env.handle.http_url)
        .env("OCTOMIL_CA_FILE", &ca)
        .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The value after `key:` in key-value output.
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_by_invitation_from_the_cli() {
    let env = support::start().await;
    let owner = [("OCTOMIL_API_KEY", env.owner_key.as_str())];
    let r = octomil(
        &env,
        &[
            "org",
            "members",
            "add",
            "new@example.com",
            "--role",
            "admin",
        ],
        &owner,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(!r.stdout.contains("password") && !r.stdout.contains("totp"));
    let link = value_of(&r.stdout, "invitation_link");
    assert!(link.contains("/invite#edg_invite_"), "{link}");

    // Without a terminal: the secret first, then the code.
    let r = octomil(
        &env,
        &["auth", "accept-invite"],
        &[("OCTOMIL_INVITATION", &link)],
    )
    .await;
    assert!(!r.ok && r.stderr.contains("--totp"), "{}", r.stderr);
    let r = octomil(
        &env,
        &["auth", "accept-invite", "--totp"],
        &[("OCTOMIL_INVITATION", &link)],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(value_of(&r.stdout, "email"), "new@example.com");
    let totp = session::totp_from_base32(&value_of(&r.stdout, "totp_secret")).unwrap();
    let code = session::totp_code(&totp, env.clock_secs() - 30).unwrap();
    let password = "my own long password";
    let r = octomil(
        &env,
        &["auth", "accept-invite", "--mfa-code", &code],
        &[
            ("OCTOMIL_INVITATION", &link),
            ("OCTOMIL_PASSWORD", password),
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(value_of(&r.stdout, "mfa_enrolled"), "true");
    assert_eq!(r.stdout.matches("\n  ").count(), 10, "{}", r.stdout);
    assert!(r.stderr.contains("shown only this once"));
    env.login("new@example.com", password, &totp).await;
    // The invitation is spent.
    let r = octomil(
        &env,
        &["auth", "accept-invite", "--totp"],
        &[("OCTOMIL_INVITATION", &link)],
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("invitation_invalid"),
        "{}",
        r.stderr
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_steps_up_when_asked_and_retries() {
    let env = support::start().await;
    env.relax_limits().await;
    let pw = env.handle.owner_password().unwrap();
    let totp = env.handle.owner_totp_secret().unwrap();
    let s = env
        .login(&env.handle.info.owner_email, pw.expose(), &totp)
        .await;
    Device::new("cli-dev-1").register(&env).await;
    env.clock.advance(Duration::from_secs(11 * 60));
    let session = [("OCTOMIL_API_KEY", s.as_str())];
    let r = octomil(&env, &["devices", "revoke", "cli-dev-1"], &session).await;
    assert!(
        !r.ok && r.stderr.contains("step_up_required"),
        "{}",
        r.stderr
    );
    let code = env.totp_code(&totp);
    let r = octomil(
        &env,
        &["devices", "revoke", "cli-dev-1"],
        &[("OCTOMIL_API_KEY", s.as_str()), ("OCTOMIL_MFA_CODE", &code)],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let a = env
        .owner(reqwest::Method::GET, "/devices/cli-dev-1", None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["state"], "revoked");
    env.handle.shutdown().await;
}
