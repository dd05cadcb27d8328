//! Shared harness for the cloud's integration tests: a real `octomil-cloud` on port 0 with a
//! manual clock, an HTTPS client that trusts only its CA, and one-line helpers.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cli;
pub mod dashboard;
pub mod fixture;
pub mod mqtt;
pub mod ui;

use std::sync::Arc;

use octomil_cloud::{CloudStub, Handle};
use octomil_common::wire::{RefreshResponse, RegisterResponse};
use octomil_common::{ManualClock, proof};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct Env {
    pub handle: Handle,
    pub clock: ManualClock,
    pub client: reqwest::Client,
    pub owner_key: String,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir).await
}

pub async fn start_in(dir: tempfile::TempDir) -> Env {
    install_crypto();
    let clock = ManualClock::new();
    let handle = CloudStub::builder(dir.path().join("state"))
        .clock(Arc::new(clock.clone()))
        .spawn()
        .await
        .unwrap();
    env_for(handle, clock, dir)
}

/// The harness around an already started cloud.
pub fn env_for(handle: Handle, clock: ManualClock, dir: tempfile::TempDir) -> Env {
    let ca = reqwest::Certificate::from_pem(handle.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let owner_key = handle.owner_api_key().unwrap().expose().clone();
    Env {
        handle,
        clock,
        client,
        owner_key,
        dir,
    }
}

impl Env {
    /// `POST /devices/{id}/revoke` with the owner key and reason "stolen".
    pub async fn revoke(&self, id: &str) -> Answer {
        self.owner(
            Method::POST,
            &format!("/devices/{id}/revoke"),
            Some(serde_json::json!({"reason": "stolen"})),
        )
        .await
    }

    /// A call with a device key: `GET /models`, which every live device key may make.
    pub async fn device_call(&self, key: &str) -> Answer {
        self.call(Method::GET, "/models", Some(key), None).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}/api/v1{path}", self.handle.http_url));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    /// Sends raw bytes as the body.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}/api/v1{path}", self.handle.http_url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            body,
            headers,
        }
    }

    /// Lifts the registration and control-plane limits, for tests that register many
    /// devices from one IP and are not about rate limits.
    pub async fn relax_limits(&self) {
        let big = json!({"limit": 1_000_000, "period_secs": 60});
        let a = self
            .owner(
                Method::PATCH,
                "/org/settings",
                Some(json!({"rate_limits": {"registration": big, "control_plane": big, "auth_failures": big}})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }

    pub async fn owner(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(&self.owner_key), body).await
    }

    pub async fn create_key(&self, scopes: &[&str]) -> String {
        let a = self
            .owner(
                Method::POST,
                "/api-keys",
                Some(json!({"name": "test", "scopes": scopes})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.body["key"].as_str().unwrap().to_owned()
    }

    pub fn bootstrap_token(&self) -> String {
        self.handle.bootstrap_token().unwrap().expose().clone()
    }

    /// Adds a member and logs them in; returns the session token.
    pub async fn session(&self, email: &str, role: &str) -> String {
        let (password, totp) = self.add_member(email, role).await;
        self.login(email, &password, &totp).await
    }

    /// Logs a member in with a fresh TOTP code; returns the session token.
    pub async fn login(&self, email: &str, password: &str, totp: &[u8]) -> String {
        let a = self.try_login(email, password, totp).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body["token"].as_str().unwrap().to_owned()
    }

    pub async fn try_login(&self, email: &str, password: &str, totp: &[u8]) -> Answer {
        self.call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": email, "password": password, "mfa_code": self.totp_code(totp)})),
        )
        .await
    }

    /// Adds a member the way members join: the owner key invites, the invitee takes a TOTP
    /// secret and accepts with their own password. Returns (password, raw TOTP secret).
    pub async fn add_member(&self, email: &str, role: &str) -> (String, Vec<u8>) {
        let token = self.invite(email, role).await;
        let password = format!("pw-of-{email}-0123456789");
        let totp = self.accept_invitation(&token, &password).await;
        (password, totp)
    }

    /// `POST /org/members` with the owner key; returns the invitation token.
    pub async fn invite(&self, email: &str, role: &str) -> String {
        let a = self
            .owner(
                Method::POST,
                "/org/members",
                Some(json!({"email": email, "role": role})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.body["invitation_token"].as_str().unwrap().to_owned()
    }

    /// Takes a TOTP secret for `token` and accepts it with `password`, enrolling TOTP with
    /// the code of the previous time step (so a login at the current step is not a replay).
    /// Returns the raw TOTP secret.
    pub async fn accept_invitation(&self, token: &str, password: &str) -> Vec<u8> {
        let a = self
            .call(
                Method::POST,
                "/auth/invitations/totp",
                None,
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        let totp =
            octomil_cloud::session::totp_from_base32(a.body["totp_secret"].as_str().unwrap())
                .unwrap();
        let code = octomil_cloud::session::totp_code(&totp, self.clock_secs() - 30).unwrap();
        let a = self
            .call(
                Method::POST,
                "/auth/invitations/accept",
                None,
                Some(json!({"token": token, "password": password, "mfa_code": code})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        totp
    }

    pub fn totp_code(&self, secret: &[u8]) -> String {
        octomil_cloud::session::totp_code(secret, self.clock_secs()).unwrap()
    }

    pub fn clock_secs(&self) -> u64 {
        use octomil_common::Clock;
        self.clock.now_secs()
    }
}

/// A device with its own Ed25519 key.
pub struct Device {
    pub id: String,
    pub key: ed25519_dalek::SigningKey,
}

impl Device {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            key: proof::generate_signing_key(),
        }
    }

    /// A fresh challenge for this device (protocol 2).
    pub async fn challenge(&self, env: &Env) -> String {
        let a = env
            .call(
                Method::POST,
                "/devices/register/challenge",
                None,
                Some(json!({"device_id": self.id})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body["challenge"].as_str().unwrap().to_owned()
    }

    /// A register body over a fresh challenge.
    pub async fn register_body(&self, env: &Env, bootstrap: &str) -> Value {
        let challenge = self.challenge(env).await;
        self.register_body_with(bootstrap, &challenge)
    }

    /// A register body whose proof signs `challenge` and `bootstrap`.
    pub fn register_body_with(&self, bootstrap: &str, challenge: &str) -> Value {
        let pk = proof::encode_public_key(&self.key.verifying_key());
        let boot = proof::bootstrap_hash(bootstrap);
        let sig = proof::sign(
            &self.key,
            &proof::Statement {
                challenge,
                device_id: &self.id,
                device_public_key: &pk,
                bootstrap_hash: &boot,
            },
        );
        json!({
            "bootstrap_token": bootstrap,
            "device_id": self.id,
            "device_public_key": pk,
            "challenge": challenge,
            "proof": sig,
            "metadata": {"model": "rpi4"},
        })
    }

    pub async fn try_register(&self, env: &Env) -> Answer {
        let body = self.register_body(env, &env.bootstrap_token()).await;
        env.call(Method::POST, "/devices/register", None, Some(body))
            .await
    }

    pub async fn register(&self, env: &Env) -> RegisterResponse {
        let a = self.try_register(env).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        serde_json::from_value(a.body).unwrap()
    }

    pub async fn try_refresh(&self, env: &Env, refresh_token: &str) -> Answer {
        env.call(
            Method::POST,
            "/devices/refresh",
            None,
            Some(json!({"device_id": self.id, "refresh_token": refresh_token})),
        )
        .await
    }

    pub async fn refresh(&self, env: &Env, refresh_token: &str) -> RefreshResponse {
        let a = self.try_refresh(env, refresh_token).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        serde_json::from_value(a.body).unwrap()
    }
}
