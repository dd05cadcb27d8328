//! Harness for end-to-end tests: find the workspace's binaries, run them as processes on temp
//! dirs and port 0, and wait on files and conditions with deadlines (never bare sleeps).

pub use octomil_testkit::mosquitto;
pub mod proxy;
pub mod push;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use octomil_cloud::{Builder, CloudInfo, CloudStub, Handle};

/// Path of a workspace binary next to the running test (`target/<profile>/NAME`).
///
/// `cargo test --workspace` builds every binary before any test runs; a lone
/// `cargo test -p octomil-e2e` needs `cargo build --workspace --bins` first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Polls `f` until it returns `Some` or `timeout` passes (the workspace's one copy, in testkit).
pub use octomil_testkit::poll::wait_for;

/// A running `octomil-cloud serve` process. Killed on drop.
#[derive(Debug)]
pub struct CloudProcess {
    pub child: Child,
    pub state_dir: PathBuf,
    pub info: CloudInfo,
    pub log: PathBuf,
}

impl CloudProcess {
    /// Starts the cloud on `state_dir` and waits for its `cloud.json`.
    pub fn start(state_dir: &Path) -> Self {
        std::fs::create_dir_all(state_dir.parent().unwrap_or(state_dir)).expect("mkdir");
        // A cloud.json left by a killed run would point at a dead port.
        let _ = std::fs::remove_file(state_dir.join(CloudInfo::FILE));
        let log = state_dir.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin("octomil-cloud"))
            .args(["serve", "--state-dir"])
            .arg(state_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn octomil-cloud");
        let mut me = Self {
            child,
            state_dir: state_dir.to_owned(),
            info: placeholder_info(),
            log,
        };
        me.info = wait_for(Duration::from_secs(30), "cloud.json", || {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!(
                    "octomil-cloud exited early with {status}: {}",
                    me.log_text()
                );
            }
            CloudInfo::read(state_dir).ok()
        });
        me
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn owner_api_key(&self) -> String {
        read_trimmed(&self.info.owner_api_key_file)
    }

    pub fn bootstrap_token(&self) -> String {
        read_trimmed(&self.info.bootstrap_token_file)
    }

    /// An `octomil` command with the API URL, CA and Owner key in its environment.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin("octomil"));
        c.env("OCTOMIL_API_URL", &self.info.http_url)
            .env("OCTOMIL_CA_FILE", &self.info.ca_file)
            .env("OCTOMIL_API_KEY", self.owner_api_key())
            .stdin(Stdio::null());
        c
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let child = &mut self.child;
        wait_for(Duration::from_secs(15), "octomil-cloud to exit", || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn placeholder_info() -> CloudInfo {
    CloudInfo {
        http_url: String::new(),
        mqtt_url: None,
        ca_file: PathBuf::new(),
        owner_api_key_file: PathBuf::new(),
        bootstrap_token_file: PathBuf::new(),
        owner_email: String::new(),
        owner_password_file: PathBuf::new(),
        owner_totp_secret_file: PathBuf::new(),
        revocation_public_key: String::new(),
    }
}

/// libfaketime's multi-threaded library, wherever this system keeps it (Debian-like systems:
/// `/usr/lib/<triplet>/faketime`, on any architecture; `OCTOMIL_LIBFAKETIME` overrides).
/// Missing: panics under `CI=true`, otherwise prints SKIPPED and returns `None`.
pub fn libfaketime(test: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("OCTOMIL_LIBFAKETIME") {
        return Some(PathBuf::from(p));
    }
    let mut roots = vec![PathBuf::from("/usr/lib/faketime")];
    for base in ["/usr/lib", "/usr/lib64", "/usr/local/lib"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            roots.extend(entries.flatten().map(|e| e.path().join("faketime")));
        }
    }
    let found = roots
        .into_iter()
        .map(|r| r.join("libfaketimeMT.so.1"))
        .find(|p| p.exists());
    if found.is_none() {
        octomil_testkit::skip::missing_dependency(
            test,
            "libfaketime not found (apt-get install faketime, or set OCTOMIL_LIBFAKETIME)",
        );
    }
    found
}

/// `POST {api}/devices/register/challenge` for `id` (`api` ends in `/api/v1`).
pub async fn fetch_challenge(http: &reqwest::Client, api: &str, id: &str) -> String {
    let r = http
        .post(format!("{api}/devices/register/challenge"))
        .json(&serde_json::json!({"device_id": id}))
        .send()
        .await
        .expect("challenge request");
    assert!(
        r.status().is_success(),
        "challenge for {id}: {}",
        r.status()
    );
    let v: serde_json::Value = r.json().await.expect("challenge answer");
    v["challenge"].as_str().expect("a challenge").to_owned()
}

/// A `POST /devices/register` body for `id`: a fresh device key and a proof over `challenge`.
pub fn register_request(bootstrap_token: &str, id: &str, challenge: &str) -> serde_json::Value {
    let key = octomil_common::proof::generate_signing_key();
    register_request_with_key(bootstrap_token, id, challenge, &key)
}

/// [`register_request`] with the caller's device key (which then logs in to the broker with
/// the certificate the answer carries, as `mqtt.client_cert`).
pub fn register_request_with_key(
    bootstrap_token: &str,
    id: &str,
    challenge: &str,
    key: &ed25519_dalek::SigningKey,
) -> serde_json::Value {
    use octomil_common::proof;
    let pk = proof::encode_public_key(&key.verifying_key());
    let boot = proof::bootstrap_hash(bootstrap_token);
    let sig = proof::sign(
        key,
        &proof::Statement {
            challenge,
            device_id: id,
            device_public_key: &pk,
            bootstrap_hash: &boot,
        },
    );
    serde_json::json!({
        "bootstrap_token": bootstrap_token,
        "device_id": id,
        "device_public_key": pk,
        "challenge": challenge,
        "proof": sig,
    })
}

pub fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Runs a command and returns its output, with stdout and stderr as text.
pub fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run command");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// Options of a test daemon; `DaemonProcess::start` writes them into a config file.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub cloud_url: String,
    pub ca_file: PathBuf,
    /// Written to `<dir>/bootstrap_token` when set.
    pub bootstrap_token: Option<String>,
    pub device_id: String,
    /// Extra TOML lines appended to the config.
    pub extra: String,
    pub env: Vec<(String, String)>,
}

/// A running `octomild run` process on a temp dir. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct DaemonProcess {
    pub child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DaemonOptions {
    pub fn for_cloud(info: &CloudInfo, bootstrap_token: Option<String>, device_id: &str) -> Self {
        Self {
            cloud_url: info.http_url.clone(),
            ca_file: info.ca_file.clone(),
            bootstrap_token,
            device_id: device_id.to_owned(),
            extra: String::new(),
            env: Vec::new(),
        }
    }

    /// Writes the config (and bootstrap token) into `dir`; returns the config path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("daemon dir");
        let boot = dir.join("bootstrap_token");
        if let Some(t) = &self.bootstrap_token {
            // 0600: octomild refuses a bootstrap token file that group or others may read.
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&boot)
                .expect("bootstrap token");
            std::io::Write::write_all(&mut f, t.as_bytes()).expect("bootstrap token");
        }
        let config = format!(
            "cloud_url = {:?}\nca_file = {:?}\nbootstrap_token_file = {:?}\ndevice_id = {:?}\nstate_dir = {:?}\nsocket = {:?}\nshutdown_grace = \"2s\"\n{}\n",
            self.cloud_url,
            self.ca_file,
            boot,
            self.device_id,
            dir.join("state"),
            dir.join("run/octomild.sock"),
            self.extra
        );
        let path = dir.join("octomild.toml");
        std::fs::write(&path, config).expect("config");
        path
    }
}

impl DaemonProcess {
    /// Writes the config into `dir` and starts the daemon; waits until its socket answers.
    pub fn start(dir: &Path, opts: &DaemonOptions) -> Self {
        let config = opts.write(dir);
        Self::start_with_config(dir, &config, &opts.env)
    }

    pub fn start_with_config(dir: &Path, config: &Path, env: &[(String, String)]) -> Self {
        Self::start_program(&bin("octomild"), dir, config, env)
    }

    /// As `start_with_config`, with an explicit `octomild` executable (benchmarks run the
    /// release build, which does not live next to a test binary).
    pub fn start_program(
        program: &Path,
        dir: &Path,
        config: &Path,
        env: &[(String, String)],
    ) -> Self {
        let log = dir.join("octomild.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(["run", "--config"])
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn octomild");
        let mut me = Self {
            child,
            dir: dir.to_owned(),
            config: config.to_owned(),
            socket: dir.join("run/octomild.sock"),
            log,
        };
        let socket = me.socket.clone();
        let child = &mut me.child;
        let log = me.log.clone();
        wait_for(Duration::from_secs(30), "the daemon's socket", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "octomild exited early with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(|_| ())
        });
        me
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> octomild::client::SocketClient {
        octomild::client::SocketClient::new(&self.socket, Duration::from_secs(30))
    }

    /// `GET path` on the socket: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(http::Method::GET, path).await
    }

    pub async fn call(&self, method: http::Method, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client()
            .request(method, path, None)
            .await
            .expect("socket request");
        let body = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status.as_u16(), body)
    }

    /// Holds the cloud's next refresh answer for `hold`, asks the daemon to refresh
    /// (`POST /v1/admin/refresh`), and returns once that refresh reached the cloud: the
    /// daemon is then mid-refresh for about `hold`. The task gives the daemon's answer.
    pub fn refresh_held_by(
        &self,
        cloud: &octomil_cloud::app::Cloud,
        hold: Duration,
    ) -> tokio::task::JoinHandle<Result<octomild::client::Response, octomild::client::ClientError>>
    {
        use octomil_cloud::faults::DeviceCall;
        cloud.faults.delay(DeviceCall::Refresh, hold);
        let client = self.client();
        let refresh = tokio::spawn(async move {
            client
                .request(http::Method::POST, "/v1/admin/refresh", None)
                .await
        });
        wait_for(
            Duration::from_secs(10),
            "the refresh to reach the cloud",
            || (!cloud.faults.calls(DeviceCall::Refresh).is_empty()).then_some(()),
        );
        refresh
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        let r = self
            .client()
            .request(http::Method::GET, "/metrics", None)
            .await
            .expect("socket request");
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// Polls `/v1/status` until `state` is `want` or the deadline passes; returns the status.
    pub async fn wait_state(&self, want: &str, timeout: Duration) -> serde_json::Value {
        octomil_testkit::poll::eventually_or(timeout, &format!("state {want}"), || async {
            let (_, body) = self.get("/v1/status").await;
            if body["state"] == want {
                return Ok(body);
            }
            Err(format!("status {body}\nlog:\n{}", self.log_text()))
        })
        .await
    }

    /// The key `/v1/token` serves now.
    pub async fn token(&self) -> String {
        let (status, body) = self.get("/v1/token").await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let child = &mut self.child;
        wait_for(Duration::from_secs(15), "octomild to exit", || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real cloud in-process (no MQTT unless the builder says so), with an HTTPS client that
/// trusts only its CA, and the Owner's key.
#[derive(Debug)]
pub struct TestCloud {
    pub handle: Handle,
    pub client: reqwest::Client,
    pub owner: String,
}

impl TestCloud {
    /// A cloud in `dir/cloud` with default options.
    pub async fn start(dir: &Path) -> Self {
        Self::with(CloudStub::builder(dir.join("cloud"))).await
    }

    pub async fn with(builder: Builder) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self::wrap(builder.spawn().await.expect("cloud starts"))
    }

    pub fn wrap(handle: Handle) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(handle.ca_pem.as_bytes()).expect("CA PEM");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .expect("HTTPS client");
        let owner = handle.owner_api_key().expect("owner key").expose().clone();
        Self {
            handle,
            client,
            owner,
        }
    }

    /// Daemon options for `device_id` against this cloud, with its bootstrap token.
    pub fn opts(&self, device_id: &str) -> DaemonOptions {
        let boot = self.handle.bootstrap_token().expect("bootstrap token");
        DaemonOptions::for_cloud(&self.handle.info, Some(boot.expose().clone()), device_id)
    }

    /// An Owner call: (status, JSON body or null).
    pub async fn owner(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .client
            .request(method, format!("{}/api/v1{path}", self.handle.http_url))
            .bearer_auth(&self.owner);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("cloud answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `PATCH /org/settings`, which must succeed.
    pub async fn settings(&self, body: serde_json::Value) {
        let (status, answer) = self
            .owner(reqwest::Method::PATCH, "/org/settings", Some(body))
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    /// Lifts the per-IP registration and per-device control-plane limits, for tests that
    /// register many devices and are not about rate limits.
    pub async fn relax_limits(&self) {
        let big = serde_json::json!({"limit": 1_000_000, "period_secs": 60});
        self.settings(
            serde_json::json!({"rate_limits": {"registration": big, "control_plane": big}}),
        )
        .await;
    }

    /// Whether the cloud accepts `key` (a device key may list models).
    pub async fn accepts(&self, key: &str) -> bool {
        self.client
            .get(format!("{}/api/v1/models", self.handle.http_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("cloud answers")
            .status()
            .is_success()
    }
}
