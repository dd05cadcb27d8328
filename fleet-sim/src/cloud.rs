//! The cloud's HTTP API as the simulator uses it: the operator's calls (org settings,
//! bootstrap token, bulk revocation) with the org:admin key, and each device's own
//! (challenge, register, refresh). One HTTPS client whose pool is bounded by the caller's
//! concurrency, so the simulator never holds more than that many connections to the cloud.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use octomil_common::{Secret, proof};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{call}: {source}")]
    Http {
        call: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The cloud's error code only; its message may name what was sent.
    #[error("{call} answered {status} ({code})")]
    Status {
        call: &'static str,
        status: u16,
        code: String,
    },
    #[error("the CA file holds no usable certificate: {0}")]
    Ca(#[source] reqwest::Error),
}

impl CloudError {
    /// The HTTP status, when the cloud answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the register answer says about the broker.
#[derive(Debug, Clone, Deserialize)]
pub struct MqttInfo {
    pub url: String,
    pub topic: String,
    pub username: String,
    /// PEM of the device's X.509 client certificate (clouds with certificate logins).
    #[serde(default)]
    pub client_cert: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
    api_key: Secret<String>,
    refresh_token: Secret<String>,
    mqtt: Option<MqttInfo>,
    revocation_public_key: String,
    registration_epoch: u64,
}

#[derive(Deserialize)]
struct Refreshed {
    api_key: Secret<String>,
    refresh_token: Secret<String>,
}

/// A device's current credentials; a refresh replaces both.
#[derive(Debug)]
pub struct Creds {
    pub api_key: Secret<String>,
    pub refresh_token: Secret<String>,
}

/// One simulated device: its identity key and what the cloud told it at registration.
pub struct Device {
    pub idx: usize,
    pub id: String,
    pub key: SigningKey,
    pub epoch: u64,
    pub mqtt: MqttInfo,
    pub revocation_key: String,
    pub creds: Mutex<Creds>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The key the device logs in to a password broker with right now.
    pub fn api_key(&self) -> String {
        self.lock().api_key.expose().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Creds> {
        self.creds.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The org's registration limit as it was before the run, to put back.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub limit: u64,
    pub period_secs: u64,
}

/// The cloud: `https://host:port` and its API.
pub struct Cloud {
    api: String,
    http: reqwest::Client,
    admin: Secret<String>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl Cloud {
    /// A client trusting only `ca_pem`, keeping at most `pool` idle connections.
    pub fn new(
        url: &str,
        ca_pem: &[u8],
        admin: Secret<String>,
        pool: usize,
    ) -> Result<Self, CloudError> {
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(CloudError::Ca)?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(pool)
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| CloudError::Http {
                call: "client",
                source: e,
            })?;
        Ok(Self {
            api: format!("{}/api/v1", url.trim_end_matches('/')),
            http,
            admin,
        })
    }

    async fn call(
        &self,
        call: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, CloudError> {
        let r = req
            .send()
            .await
            .map_err(|source| CloudError::Http { call, source })?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let code = body["error"].as_str().unwrap_or("no_error_code").to_owned();
            return Err(CloudError::Status { call, status, code });
        }
        Ok(body)
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(self.admin.expose())
    }

    /// The org's registration limit (`GET /org/settings`).
    pub async fn registration_limit(&self) -> Result<Limit, CloudError> {
        let v = self
            .call(
                "GET /org/settings",
                self.admin(reqwest::Method::GET, "/org/settings"),
            )
            .await?;
        let r = &v["rate_limits"]["registration"];
        Ok(Limit {
            limit: r["limit"].as_u64().unwrap_or(10),
            period_secs: r["period_secs"].as_u64().unwrap_or(60),
        })
    }

    /// `PATCH /org/settings` with a new registration limit.
    pub async fn set_registration_limit(&self, l: Limit) -> Result<(), CloudError> {
        let body = json!({"rate_limits": {"registration": {"limit": l.limit, "period_secs": l.period_secs}}});
        self.call(
            "PATCH /org/settings",
            self.admin(reqwest::Method::PATCH, "/org/settings")
                .json(&body),
        )
        .await
        .map(drop)
    }

    /// A bootstrap token for `uses` registrations, valid a day: (id, token).
    pub async fn bootstrap_token(
        &self,
        uses: usize,
    ) -> Result<(String, Secret<String>), CloudError> {
        let v = self
            .call(
                "POST /bootstrap-tokens",
                self.admin(reqwest::Method::POST, "/bootstrap-tokens")
                    .json(&json!({"max_uses": uses, "expires_in": "1d"})),
            )
            .await?;
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let token = Secret::new(v["token"].as_str().unwrap_or_default().to_owned());
        Ok((id, token))
    }

    /// Revokes the run's bootstrap token (no enrolment secret outlives the run).
    pub async fn revoke_bootstrap_token(&self, id: &str) -> Result<(), CloudError> {
        self.call(
            "DELETE /bootstrap-tokens/{id}",
            self.admin(reqwest::Method::DELETE, &format!("/bootstrap-tokens/{id}")),
        )
        .await
        .map(drop)
    }

    /// `POST /revocations` for every device enrolled with bootstrap token `token_id` (what an
    /// operator does when a token leaks; one small body whatever the fleet's size): (revoked,
    /// published), and when the answer came.
    pub async fn bulk_revoke(&self, token_id: &str) -> Result<(usize, usize, Instant), CloudError> {
        let v = self
            .call(
                "POST /revocations",
                self.admin(reqwest::Method::POST, "/revocations")
                    .json(&json!({"bootstrap_token_id": token_id, "reason": "fleet simulator"})),
            )
            .await?;
        let revoked = v["revoked"].as_array().map_or(0, Vec::len);
        let published = v["published"].as_u64().unwrap_or(0) as usize;
        Ok((revoked, published, Instant::now()))
    }

    /// Registers device `id` as octomild does: a fresh Ed25519 key, a challenge, a proof.
    pub async fn register(
        &self,
        idx: usize,
        id: &str,
        bootstrap: &Secret<String>,
    ) -> Result<Device, CloudError> {
        let v = self
            .call(
                "POST /devices/register/challenge",
                self.http
                    .post(format!("{}/devices/register/challenge", self.api))
                    .json(&json!({"device_id": id})),
            )
            .await?;
        let challenge = v["challenge"].as_str().unwrap_or_default().to_owned();
        let key = proof::generate_signing_key();
        let pk = proof::encode_public_key(&key.verifying_key());
        let boot = proof::bootstrap_hash(bootstrap.expose());
        let sig = proof::sign(
            &key,
            &proof::Statement {
                challenge: &challenge,
                device_id: id,
                device_public_key: &pk,
                bootstrap_hash: &boot,
            },
        );
        let body = json!({
            "bootstrap_token": bootstrap.expose(),
            "device_id": id,
            "device_public_key": pk,
            "challenge": challenge,
            "proof": sig,
        });
        let v = self
            .call(
                "POST /devices/register",
                self.http
                    .post(format!("{}/devices/register", self.api))
                    .json(&body),
            )
            .await?;
        let r: Registered = serde_json::from_value(v).map_err(|_| CloudError::Status {
            call: "POST /devices/register",
            status: 200,
            code: "unexpected_answer".into(),
        })?;
        let mqtt = r.mqtt.ok_or(CloudError::Status {
            call: "POST /devices/register",
            status: 200,
            code: "cloud_has_no_broker".into(),
        })?;
        Ok(Device {
            idx,
            id: id.to_owned(),
            key,
            epoch: r.registration_epoch,
            mqtt,
            revocation_key: r.revocation_public_key,
            creds: Mutex::new(Creds {
                api_key: r.api_key,
                refresh_token: r.refresh_token,
            }),
        })
    }

    /// `POST /devices/refresh` with the device's refresh token; keeps the new credentials.
    pub async fn refresh(&self, d: &Device) -> Result<(), CloudError> {
        let token = d.lock().refresh_token.expose().clone();
        let v = self
            .call(
                "POST /devices/refresh",
                self.http
                    .post(format!("{}/devices/refresh", self.api))
                    .json(&json!({"device_id": d.id, "refresh_token": token})),
            )
            .await?;
        let r: Refreshed = serde_json::from_value(v).map_err(|_| CloudError::Status {
            call: "POST /devices/refresh",
            status: 200,
            code: "unexpected_answer".into(),
        })?;
        *d.lock() = Creds {
            api_key: r.api_key,
            refresh_token: r.refresh_token,
        };
        Ok(())
    }
}
