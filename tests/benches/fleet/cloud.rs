//! The cloud under the fleet benchmark: an `octomil-cloud serve` process on fixed ports (so it
//! can be restarted in place: the reconnect storm), with its embedded broker or pointed at a
//! Mosquitto started here, which can also be stopped and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use octomil_cloud::CloudInfo;
use octomil_e2e::mosquitto::{self, Mosquitto};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Embedded,
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

/// A running cloud process (and its Mosquitto). Both are killed on drop.
pub struct Cloud {
    child: Option<Child>,
    args: Vec<String>,
    pub state: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    pub info: CloudInfo,
    pub mosquitto: Option<Mosquitto>,
    mosquitto_port: u16,
}

impl Cloud {
    pub fn start(dir: &Path, broker: Broker, bin: &Path) -> Self {
        let state = dir.join("cloud");
        let http = mosquitto::free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--http-listen".into(),
            format!("127.0.0.1:{http}"),
        ];
        let mut mosq = None;
        let mut mosquitto_port = 0;
        match broker {
            Broker::Embedded => {
                args.extend([
                    "--mqtt-listen".into(),
                    format!("127.0.0.1:{}", mosquitto::free_port()),
                ]);
            }
            Broker::Mosquitto => {
                // The cloud's CAs first: Mosquitto serves the cloud's server certificate and
                // verifies every client certificate (the cloud's, the devices') against the
                // MQTT CA (docs/mosquitto.conf.example).
                octomil_cloud::tls::Pki::load_or_create(&state, &[]).unwrap();
                octomil_cloud::mqtt::ca::MqttCa::load_or_create(&state).unwrap();
                mosquitto_port = mosquitto::free_port();
                let m = Mosquitto::start_with_client_certs(
                    &dir.join("mosquitto"),
                    &state,
                    mosquitto_port,
                );
                args.extend([
                    "--mqtt-broker".into(),
                    m.url(),
                    // Before the pipelined fan-out a bulk revoke made while the broker is
                    // away waited this long for each envelope, 32 at a time; it now answers
                    // at once and the outbox delivers them when the broker is back.
                    "--mqtt-ack-timeout-ms".into(),
                    "100".into(),
                ]);
                mosq = Some(m);
            }
        }
        let mut me = Self {
            child: None,
            args,
            state,
            dir: dir.to_owned(),
            log: dir.join("cloud.log"),
            info: placeholder(),
            mosquitto: mosq,
            mosquitto_port,
        };
        me.spawn(bin);
        me
    }

    fn spawn(&mut self, bin: &Path) {
        let _ = std::fs::remove_file(self.state.join(CloudInfo::FILE));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(bin)
            .args(&self.args)
            // BENCH_CLOUD_LOG (e.g. `warn,octomil_cloud=debug`) shows the cloud's own timings.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_CLOUD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        self.info = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("octomil-cloud exited with {status}:\n{}", self.log_tail(30));
            }
            if let Ok(info) = CloudInfo::read(&self.state) {
                break info;
            }
            assert!(
                Instant::now() < deadline,
                "no cloud.json:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = Some(child);
    }

    /// SIGTERM, wait for the exit, start again on the same ports and state: (stopped after,
    /// serving again after).
    pub fn restart(&mut self, bin: &Path) -> (Duration, Duration) {
        let t = Instant::now();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let stopped = t.elapsed();
        self.spawn(bin);
        (stopped, t.elapsed())
    }

    /// Kills Mosquitto (its sessions drop at once).
    pub fn stop_mosquitto(&mut self) {
        self.mosquitto = None;
    }

    /// Starts Mosquitto again on the same port with the same configuration.
    pub fn start_mosquitto(&mut self) {
        let m = Mosquitto::start_with_client_certs(
            &self.dir.join("mosquitto"),
            &self.state,
            self.mosquitto_port,
        );
        self.mosquitto = Some(m);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the cloud and of Mosquitto, MiB.
    pub fn rss(&self) -> (Option<u64>, Option<u64>) {
        (
            self.pid().and_then(rss_mib),
            self.mosquitto.as_ref().and_then(|m| rss_mib(m.pid())),
        )
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `VmRSS` of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn placeholder() -> CloudInfo {
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
