//! A real Mosquitto for interop tests and benchmarks, started per test on a free port and
//! killed on drop. [`Mosquitto::start_with_client_certs`] runs exactly
//! `docs/mosquitto.conf.example` and `docs/mosquitto.acl.example` (client certificates from
//! the cloud's MQTT CA; only paths, the port and the run-as user are substituted). There is
//! no password file: every client, the cloud included, logs in by certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `name` on PATH, or in the sbin directories Debian installs daemons to.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether the broker binary is installed (if not, the caller reports it through
/// [`crate::skip::missing_dependency`]).
pub fn available() -> bool {
    find("mosquitto").is_some()
}

/// A free loopback port (bound and released: another process may take it in between).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

/// The repository's `docs/` directory (the configuration examples the harness runs).
fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

impl Mosquitto {
    /// Starts Mosquitto in `dir` on `port` with `docs/mosquitto.conf.example` and
    /// `docs/mosquitto.acl.example`: TLS with the cloud's server certificate
    /// (`state_dir/server.{pem,key}`), client certificates verified against the cloud's MQTT
    /// CA (`state_dir/mqtt_ca.pem`), identity = CN, client id = CN, no password file.
    pub fn start_with_client_certs(dir: &Path, state_dir: &Path, port: u16) -> Self {
        std::fs::create_dir_all(dir).expect("mosquitto dir");
        let docs = docs_dir();
        let acl = dir.join("octomil.acl");
        std::fs::copy(docs.join("mosquitto.acl.example"), &acl).expect("acl example");
        let example =
            std::fs::read_to_string(docs.join("mosquitto.conf.example")).expect("conf example");
        let log = dir.join("mosquitto.log");
        let state = state_dir.display();
        let subs = [
            (
                "persistence_location /var/lib/mosquitto/",
                format!("persistence_location {}/", dir.display()),
            ),
            (
                "log_dest file /var/log/mosquitto/mosquitto.log",
                format!("log_dest file {}", log.display()),
            ),
            (
                "acl_file /etc/mosquitto/octomil.acl",
                format!("acl_file {}", acl.display()),
            ),
            ("listener 8883", format!("listener {port} 127.0.0.1")),
            (
                "certfile /etc/mosquitto/certs/server.pem",
                format!("certfile {state}/server.pem"),
            ),
            (
                "keyfile /etc/mosquitto/certs/server.key",
                format!("keyfile {state}/server.key"),
            ),
            (
                "cafile /etc/mosquitto/certs/octomil-mqtt-ca.pem",
                format!("cafile {state}/mqtt_ca.pem"),
            ),
            // Run as whoever runs the test (as root, Mosquitto would drop to `mosquitto`,
            // which cannot read the test's temp files).
            ("user mosquitto", format!("user {}", current_user())),
        ];
        let mut conf_text = String::new();
        for line in example.lines() {
            let replaced = subs
                .iter()
                .find(|(from, _)| line == *from)
                .map(|(_, to)| to.as_str());
            conf_text.push_str(replaced.unwrap_or(line));
            conf_text.push('\n');
        }
        for (from, _) in &subs {
            assert!(
                example.lines().any(|l| l == *from),
                "docs/mosquitto.conf.example no longer has the line {from:?} the harness substitutes"
            );
        }
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, conf_text).expect("conf");
        Self::spawn(conf, dir, port, log)
    }

    fn spawn(conf: PathBuf, dir: &Path, port: u16, log: PathBuf) -> Self {
        let child = Command::new(find("mosquitto").expect("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        // Polled with a deadline: Mosquitto has no readiness signal.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen on {port} within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self {
            child,
            dir: dir.to_owned(),
            port,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The broker's process id (to signal it from a script, e.g. SIGHUP after editing the
    /// password file).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}

/// The name of the user running the test (`user` in the Mosquitto config).
fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
