//! `octomild.toml`: the daemon's configuration. Every key is checked and every problem is
//! reported at once, naming the key and the file; the daemon then exits 78 (EX_CONFIG).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use octomil_common::{DeviceId, duration};

pub const DEFAULT_PATH: &str = "/etc/octomil/octomild.toml";
pub const EX_CONFIG: i32 = 78;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config was read from (for messages and SIGHUP).
    pub path: PathBuf,
    /// Base URL of the control plane, e.g. `https://cloud.example.com:8443` (required).
    pub cloud_url: String,
    /// PEM file of the CA that signed the cloud's certificate; the only CA trusted (required).
    pub ca_file: PathBuf,
    /// Bootstrap token file. Also read: `$CREDENTIALS_DIRECTORY/octomil-bootstrap-token`
    /// (first) and `$OCTOMIL_BOOTSTRAP_TOKEN` (last). Needed only until registered.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Default: derived from `/etc/machine-id` (an app-specific hash, never the raw id).
    pub device_id: DeviceId,
    /// Default `/var/lib/octomil`; created 0700.
    pub state_dir: PathBuf,
    /// Default `/run/octomil/octomild.sock`.
    pub socket: PathBuf,
    /// Default `0660`.
    pub socket_mode: u32,
    /// Group owning the socket (name or gid); default: the daemon's own group.
    pub socket_group: Option<u32>,
    /// Uids (besides root) that may read status and tokens; numbers or user names. Reloaded
    /// on SIGHUP.
    pub allowed_uids: BTreeSet<u32>,
    /// Gids whose members may read status and tokens; numbers or group names. Reloaded on
    /// SIGHUP.
    pub allowed_gids: BTreeSet<u32>,
    /// `human` (default) or `json`.
    pub log_format: LogFormat,
    /// A log filter: a level or `target=level` directives (`info`, `octomild=debug,info`; see
    /// [`log_filter`]). Reloaded on SIGHUP.
    pub log_level: String,
    /// Sealing key used when no systemd credential is given; default `<state_dir>/seal.key`.
    pub seal_key_file: PathBuf,
    /// Concurrent socket connections; default 64.
    pub max_connections: usize,
    /// Timeout of each call to the cloud; default `10s`.
    pub cloud_timeout: Duration,
    /// How long shutdown waits for in-flight requests; default `5s`.
    pub shutdown_grace: Duration,
    /// MQTT keep-alive of the revocation session; default `60s`. The broker declares the
    /// device offline (Last Will) after 1.5 times this without traffic.
    pub mqtt_keepalive: Duration,
    /// Cap each caller uid at this fraction (0 < x <= 1) of every local rate limit, so one
    /// app cannot take the whole budget; default: no cap (first come, first served).
    pub limit_per_uid_share: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Everything wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration in {}:", self.path.display())?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

const KEYS: &[&str] = &[
    "cloud_url",
    "ca_file",
    "bootstrap_token_file",
    "device_id",
    "state_dir",
    "socket",
    "socket_mode",
    "socket_group",
    "allowed_uids",
    "allowed_gids",
    "log_format",
    "log_level",
    "seal_key_file",
    "max_connections",
    "cloud_timeout",
    "shutdown_grace",
    "mqtt_keepalive",
    "limit_per_uid_share",
];

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, &text, &Env::from_process())
}

/// What validation reads from outside the file (injectable for tests).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub machine_id: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            machine_id: std::fs::read_to_string("/etc/machine-id").ok(),
        }
    }
}

/// Parses and validates config text.
pub fn parse(path: &Path, text: &str, env: &Env) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        path: path.to_owned(),
        problems,
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(vec![Problem {
            key: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        }])
    })?;
    let mut p = Checker {
        table: &table,
        problems: Vec::new(),
    };
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            p.problem(key, "unknown key");
        }
    }

    let cloud_url = p.string("cloud_url");
    match cloud_url.as_deref() {
        None => p.problem("cloud_url", "is required"),
        Some(u) if !u.starts_with("https://") || u.len() <= "https://".len() => {
            p.problem("cloud_url", "must be an https:// URL")
        }
        _ => {}
    }
    let ca_file = p.path("ca_file");
    match &ca_file {
        None => p.problem(
            "ca_file",
            "is required (the CA that signed the cloud's certificate)",
        ),
        Some(f) if !f.is_absolute() => p.problem("ca_file", "must be an absolute path"),
        _ => {}
    }
    let bootstrap_token_file = p.path("bootstrap_token_file");
    if bootstrap_token_file
        .as_ref()
        .is_some_and(|f| !f.is_absolute())
    {
        p.problem("bootstrap_token_file", "must be an absolute path");
    }
    let device_id = match p.string("device_id") {
        Some(s) => DeviceId::parse(&s)
            .map_err(|e| p.problem("device_id", &e.to_string()))
            .ok(),
        None => match env
            .machine_id
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            Some(m) => Some(derive_device_id(m)),
            None => {
                p.problem(
                    "device_id",
                    "is not set and /etc/machine-id is unreadable; set device_id",
                );
                None
            }
        },
    };
    let state_dir = p
        .path("state_dir")
        .unwrap_or_else(|| "/var/lib/octomil".into());
    let socket = p
        .path("socket")
        .unwrap_or_else(|| "/run/octomil/octomild.sock".into());
    for (key, v) in [("state_dir", &state_dir), ("socket", &socket)] {
        if !v.is_absolute() {
            p.problem(key, "must be an absolute path");
        }
    }
    let socket_mode = match p.string("socket_mode") {
        None => 0o660,
        Some(s) => match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => m,
            Ok(_) => {
                p.problem(
                    "socket_mode",
                    "must be an octal mode between 0600 and 0777 (owner rw)",
                );
                0o660
            }
            Err(_) => {
                p.problem("socket_mode", "must be an octal string such as \"0660\"");
                0o660
            }
        },
    };
    let socket_group = match table.get("socket_group") {
        None => None,
        Some(toml::Value::Integer(g)) => u32::try_from(*g)
            .map_err(|_| p.problem("socket_group", "gid out of range"))
            .ok(),
        Some(toml::Value::String(name)) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            _ => {
                p.problem("socket_group", &format!("no group named {name:?}"));
                None
            }
        },
        Some(_) => {
            p.problem("socket_group", "must be a group name or a gid");
            None
        }
    };
    let allowed_uids = p.ids("allowed_uids", true);
    let allowed_gids = p.ids("allowed_gids", false);
    let log_format = match p.string("log_format").as_deref() {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(_) => {
            p.problem("log_format", "must be \"human\" or \"json\"");
            LogFormat::Human
        }
    };
    let log_level = p.string("log_level").unwrap_or_else(|| "info".into());
    if log_filter(&log_level).is_none() {
        p.problem(
            "log_level",
            "is not a valid filter (e.g. \"info\", \"octomild=debug\")",
        );
    }
    let seal_key_file = p
        .path("seal_key_file")
        .unwrap_or_else(|| state_dir.join("seal.key"));
    if !seal_key_file.is_absolute() {
        p.problem("seal_key_file", "must be an absolute path");
    }
    let max_connections = match table.get("max_connections") {
        None => 64,
        Some(toml::Value::Integer(n)) if (1..=65_536).contains(n) => *n as usize,
        Some(_) => {
            p.problem("max_connections", "must be an integer from 1 to 65536");
            64
        }
    };
    let cloud_timeout = p.duration("cloud_timeout", Duration::from_secs(10), 1..=300);
    let shutdown_grace = p.duration("shutdown_grace", Duration::from_secs(5), 0..=300);
    let mqtt_keepalive = p.duration("mqtt_keepalive", Duration::from_secs(60), 1..=3600);
    let limit_per_uid_share = match table.get("limit_per_uid_share") {
        None => None,
        Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(x) if x > 0.0 && x <= 1.0 => Some(x),
            _ => {
                p.problem(
                    "limit_per_uid_share",
                    "must be a number greater than 0 and at most 1 (e.g. 0.5)",
                );
                None
            }
        },
    };

    if !p.problems.is_empty() {
        return Err(fail(p.problems));
    }
    Ok(Config {
        path: path.to_owned(),
        cloud_url: cloud_url
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned(),
        ca_file: ca_file.unwrap_or_default(),
        bootstrap_token_file,
        device_id: device_id.unwrap_or_else(|| derive_device_id("unreachable")),
        state_dir,
        socket,
        socket_mode,
        socket_group,
        allowed_uids,
        allowed_gids,
        log_format,
        log_level,
        seal_key_file,
        max_connections,
        cloud_timeout,
        shutdown_grace,
        mqtt_keepalive,
        limit_per_uid_share,
    })
}

/// `edge-` + 32 hex chars of HMAC-SHA256(machine-id, "octomil-device-id"): stable per machine,
/// and the raw machine id (which other software treats as confidential) never leaves it.
/// A log filter as `log_level` and `RUST_LOG` take it: a level, or `target=level` directives
/// separated by commas (`"info"`, `"octomild=debug,info"`); `None` when it does not parse.
/// This is tracing's `Targets`, not `EnvFilter`: no span or field filters, and so no regex
/// engine in the daemon's binary.
pub fn log_filter(spec: &str) -> Option<tracing_subscriber::filter::Targets> {
    spec.parse().ok()
}

pub fn derive_device_id(machine_id: &str) -> DeviceId {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(machine_id.trim().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"octomil-device-id");
    let digest = mac.finalize().into_bytes();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    DeviceId::parse(&format!("edge-{hex}")).unwrap_or_else(|_| unreachable!("hex is a valid id"))
}

struct Checker<'a> {
    table: &'a toml::Table,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: &str) {
        self.problems.push(Problem {
            key: key.to_owned(),
            message: message.to_owned(),
        });
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.table.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            _ => {
                self.problem(key, "must be a string");
                None
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        self.string(key).map(PathBuf::from)
    }

    /// A list of numeric ids or names (`users` picks user or group names), resolved through
    /// NSS when the config is read (again on SIGHUP).
    fn ids(&mut self, key: &str, users: bool) -> BTreeSet<u32> {
        let kind = if users { "user" } else { "group" };
        let Some(v) = self.table.get(key) else {
            return BTreeSet::new();
        };
        let Some(items) = v.as_array() else {
            self.problem(
                key,
                &format!("must be a list of {kind} ids or names, e.g. [1000, \"app\"]"),
            );
            return BTreeSet::new();
        };
        let mut out = BTreeSet::new();
        for item in items {
            let id = match item {
                toml::Value::Integer(i) => u32::try_from(*i).ok(),
                toml::Value::String(name) if users => nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw()),
                toml::Value::String(name) => nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw()),
                _ => None,
            };
            match id {
                Some(id) => {
                    out.insert(id);
                }
                None => self.problem(
                    key,
                    &format!("{item} is not a {kind} id or a known {kind} name"),
                ),
            }
        }
        out
    }

    fn duration(
        &mut self,
        key: &str,
        default: Duration,
        range_secs: std::ops::RangeInclusive<u64>,
    ) -> Duration {
        let Some(s) = self.string(key) else {
            return default;
        };
        match duration::parse_secs(&s) {
            Ok(secs) if range_secs.contains(&secs) => Duration::from_secs(secs),
            Ok(_) => {
                self.problem(
                    key,
                    &format!(
                        "must be between {}s and {}s",
                        range_secs.start(),
                        range_secs.end()
                    ),
                );
                default
            }
            Err(e) => {
                self.problem(key, &e.to_string());
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            machine_id: Some("0123456789abcdef0123456789abcdef\n".into()),
        }
    }

    fn parse_ok(text: &str) -> Config {
        parse(Path::new("/etc/octomil/octomild.toml"), text, &env()).unwrap()
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        parse(Path::new("/x.toml"), text, &env())
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    }

    const MINIMAL: &str =
        "cloud_url = \"https://cloud.example:8443/\"\nca_file = \"/etc/octomil/ca.pem\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.cloud_url, "https://cloud.example:8443");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/octomil"));
        assert_eq!(c.socket, PathBuf::from("/run/octomil/octomild.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.seal_key_file, PathBuf::from("/var/lib/octomil/seal.key"));
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.max_connections, 64);
        assert_eq!(c.cloud_timeout, Duration::from_secs(10));
        assert!(c.device_id.as_str().starts_with("edge-"));
        assert_eq!(c.device_id.as_str().len(), 5 + 32);
    }

    #[test]
    fn device_id_from_machine_id_is_stable_and_not_the_machine_id() {
        let a = derive_device_id("0123456789abcdef0123456789abcdef");
        assert_eq!(a, derive_device_id("0123456789abcdef0123456789abcdef\n"));
        assert_ne!(a, derive_device_id("fedcba9876543210fedcba9876543210"));
        assert!(!a.as_str().contains("0123456789abcdef"));
    }

    #[test]
    fn every_key_is_read() {
        let c = parse_ok(
            r#"
            cloud_url = "https://c:1"
            ca_file = "/ca.pem"
            bootstrap_token_file = "/boot"
            device_id = "edge-01"
            state_dir = "/s"
            socket = "/r/s.sock"
            socket_mode = "0600"
            socket_group = 0
            allowed_uids = [1000, 1001]
            allowed_gids = [50]
            log_format = "json"
            log_level = "octomild=debug"
            seal_key_file = "/k"
            max_connections = 8
            cloud_timeout = "30s"
            shutdown_grace = "1s"
            mqtt_keepalive = "5s"
            limit_per_uid_share = 0.25
            "#,
        );
        assert_eq!(c.device_id.as_str(), "edge-01");
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.socket_group, Some(0));
        assert_eq!(c.allowed_uids, BTreeSet::from([1000, 1001]));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.max_connections, 8);
        assert_eq!(c.shutdown_grace, Duration::from_secs(1));
        assert_eq!(c.mqtt_keepalive, Duration::from_secs(5));
        assert_eq!(c.limit_per_uid_share, Some(0.25));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let got = problems(
            r#"
            cloud_url = "http://plain"
            colud_url = "typo"
            device_id = "bad/id"
            socket = "relative.sock"
            socket_mode = "777x"
            allowed_uids = [true]
            log_format = "xml"
            log_level = "octomild=loud"
            max_connections = 0
            cloud_timeout = "forever"
            limit_per_uid_share = 2
            "#,
        );
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "cloud_url",
            "colud_url",
            "ca_file",
            "device_id",
            "socket",
            "socket_mode",
            "allowed_uids",
            "log_format",
            "log_level",
            "max_connections",
            "cloud_timeout",
            "limit_per_uid_share",
        ] {
            assert!(keys.contains(&k), "no problem reported for {k}: {got:?}");
        }
        assert!(got.contains(&("colud_url".into(), "unknown key".into())));
    }

    #[test]
    fn log_filters_take_levels_and_per_target_levels() {
        for ok in [
            "info",
            "debug",
            "octomild=debug",
            "octomild=debug,rumqttc=warn,info",
        ] {
            assert!(log_filter(ok).is_some(), "{ok}");
        }
        for bad in ["octomild=loud", "info,octomild=verbose"] {
            assert!(log_filter(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn syntax_errors_and_wrong_types() {
        let e = parse(Path::new("/x.toml"), "cloud_url = ", &env()).unwrap_err();
        assert!(e.to_string().contains("/x.toml"));
        assert!(e.to_string().contains("not valid TOML"));
        let got = problems("cloud_url = 5\nca_file = [\"/x\"]\n");
        assert!(got.contains(&("cloud_url".into(), "must be a string".into())));
        assert!(got.contains(&("ca_file".into(), "must be a string".into())));
    }

    #[test]
    fn display_names_the_file_and_each_key() {
        let e = parse(
            Path::new("/etc/octomil/octomild.toml"),
            "log_format = 1",
            &env(),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("invalid configuration in /etc/octomil/octomild.toml:"));
        assert!(s.contains("\n  log_format: must be a string"));
        assert!(s.contains("\n  cloud_url: is required"));
    }

    #[test]
    fn ids_may_be_names() {
        let c = parse_ok(&format!(
            "{MINIMAL}allowed_uids = [\"root\", 1000]\nallowed_gids = [\"root\"]\n"
        ));
        assert_eq!(c.allowed_uids, BTreeSet::from([0, 1000]));
        assert_eq!(c.allowed_gids, BTreeSet::from([0]));
        let got = problems(&format!(
            "{MINIMAL}allowed_gids = [\"no-such-group-here\", 1.5]\n"
        ));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].1.contains("no-such-group-here"));
    }

    #[test]
    fn missing_machine_id_needs_an_explicit_device_id() {
        let e = parse(Path::new("/x"), MINIMAL, &Env::default()).unwrap_err();
        assert_eq!(e.problems[0].key, "device_id");
        assert!(
            parse(
                Path::new("/x"),
                &format!("{MINIMAL}device_id = \"d\""),
                &Env::default()
            )
            .is_ok()
        );
    }
}
