//! The cloud under benchmark: a release `octomil-cloud serve` process with its embedded broker
//! or pointed at a Mosquitto started here, plus the HTTP calls the benchmark makes to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use octomil_cloud::CloudInfo;
use octomil_common::proof;
use octomil_common::wire::RegisterResponse;
use octomil_e2e::mosquitto::{self, Mosquitto};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The embedded broker inside the cloud process.
    Embedded,
    /// A Mosquitto process; the cloud is one of its clients (`--mqtt-broker`).
    Mosquitto,
}

impl Broker {
    pub fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Mosquitto => "mosquitto",
        }
    }
}

/// A running cloud (and its Mosquitto, if any). Both are killed on drop.
pub struct Cloud {
    // Declared first so the cloud stops before its Mosquitto.
    _child: KillOnDrop,
    log: PathBuf,
    pub info: CloudInfo,
    /// `https://127.0.0.1:PORT/api/v1`
    pub api: String,
    pub http: reqwest::Client,
    pub owner: String,
    pub bootstrap: String,
    pub ca_pem: String,
    /// The key that signs revocation envelopes, as devices pin it.
    pub revocation_key: VerifyingKey,
    pub mosquitto: Option<Mosquitto>,
}

/// What a revoke call answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The broker acknowledged the envelope before the answer.
    pub published: bool,
    /// The cloud's publish-to-PUBACK time, from the answer.
    pub ack: Option<Duration>,
    /// When the answer was read in full.
    pub done: Instant,
}

impl Cloud {
    /// Starts a cloud on `dir/cloud` with `broker`, and lifts the registration and
    /// control-plane rate limits (the benchmark registers a fleet from one address).
    pub async fn start(dir: &Path, broker: Broker) -> Self {
        let state = dir.join("cloud");
        let mut args: Vec<String> = vec!["serve".into(), "--state-dir".into()];
        args.push(state.display().to_string());
        let mut mosq = None;
        if broker == Broker::Mosquitto {
            // The cloud's CAs first: Mosquitto serves the cloud's server certificate and
            // verifies every client's certificate (the cloud's, the devices') against its
            // MQTT CA (docs/mosquitto.conf.example).
            octomil_cloud::tls::Pki::load_or_create(&state, &[]).unwrap();
            octomil_cloud::mqtt::ca::MqttCa::load_or_create(&state).unwrap();
            let m = Mosquitto::start_with_client_certs(
                &dir.join("mosquitto"),
                &state,
                mosquitto::free_port(),
            );
            args.extend(["--mqtt-broker".into(), m.url()]);
            mosq = Some(m);
        }
        let log = dir.join("cloud.log");
        let mut child = KillOnDrop(
            Command::new(bin("octomil-cloud"))
                .args(&args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("octomil-cloud exited with {status}:\n{}", log_text());
            }
            if let Ok(info) = CloudInfo::read(&state) {
                break info;
            }
            assert!(Instant::now() < deadline, "no cloud.json:\n{}", log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ca_pem = std::fs::read_to_string(&info.ca_file).unwrap();
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        let me = Self {
            api: format!("{}/api/v1", info.http_url),
            owner: octomil_e2e::read_trimmed(&info.owner_api_key_file),
            bootstrap: octomil_e2e::read_trimmed(&info.bootstrap_token_file),
            revocation_key: proof::decode_public_key(&info.revocation_public_key).unwrap(),
            _child: child,
            log,
            info,
            http,
            ca_pem,
            mosquitto: mosq,
        };
        let big = json!({"limit": 1_000_000, "period_secs": 60});
        let r = me
            .http
            .patch(format!("{}/org/settings", me.api))
            .bearer_auth(&me.owner)
            .json(&json!({"rate_limits": {"registration": big, "control_plane": big}}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "lifting rate limits: {}",
            r.status()
        );
        me
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The cloud process's resident memory, MiB (from /proc).
    pub fn rss_mib(&self) -> Option<u64> {
        rss_mib(&format!("/proc/{}/status", self._child.0.id()))
    }

    /// The last `n` lines of Mosquitto's log (empty with the embedded broker).
    pub fn broker_log_tail(&self, n: usize) -> String {
        let text = self
            .mosquitto
            .as_ref()
            .map(|m| m.log_text())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A cheap authenticated call, so the next one reuses a warm TLS connection.
    pub async fn warm(&self, id: &str) {
        let r = self
            .http
            .get(format!("{}/devices/{id}", self.api))
            .bearer_auth(&self.owner)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{id}: {}", r.status());
    }

    /// Deletes a revoked device (which also clears its retained revocation).
    pub async fn delete(&self, id: &str) {
        let r = self
            .http
            .delete(format!("{}/devices/{id}", self.api))
            .bearer_auth(&self.owner)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "deleting {id}: {}", r.status());
    }

    /// Registers `id` as a device would (fresh Ed25519 key, proof, bootstrap token); the key
    /// presents the answer's MQTT client certificate.
    pub async fn register(&self, id: &str) -> (RegisterResponse, SigningKey) {
        register(&self.http, &self.api, &self.bootstrap, id).await
    }
}

/// By hand: the Owner key and bootstrap token stay out of any output.
impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// A child process killed (and reaped) when dropped, also when a start-up check panics.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn register(
    http: &reqwest::Client,
    api: &str,
    bootstrap: &str,
    id: &str,
) -> (RegisterResponse, SigningKey) {
    let challenge = octomil_e2e::fetch_challenge(http, api, id).await;
    let key = octomil_common::proof::generate_signing_key();
    let body = octomil_e2e::register_request_with_key(bootstrap, id, &challenge, &key);
    let r = http
        .post(format!("{api}/devices/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "registering {id}: {}", r.status());
    (r.json().await.unwrap(), key)
}

/// `POST /devices/{id}/revoke`, read to the end.
pub async fn revoke(http: &reqwest::Client, api: &str, owner: &str, id: &str) -> Answer {
    let r = http
        .post(format!("{api}/devices/{id}/revoke"))
        .bearer_auth(owner)
        .json(&json!({"reason": "benchmark"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    Answer {
        status,
        published: body["revocation_published"] == true,
        ack: body["revocation_ack_ms"]
            .as_u64()
            .map(Duration::from_millis),
        done: Instant::now(),
    }
}

/// `VmRSS` of a `/proc/*/status` file, MiB.
pub fn rss_mib(status: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A release binary next to this bench's directory (checked in `main`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join(name)
}
