//! `octomil`, the operator CLI: flag definitions, local validation and dispatch to one module
//! per command group, all driving the control-plane API through `ApiClient`.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod bootstrap_tokens;
pub mod client;
pub mod devices;
pub mod error;
pub mod org;
pub mod output;
pub mod pages;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use octomil_common::{DeviceId, Secret, duration};
use serde::Serialize;

use crate::scope::Scope;

pub use client::{ApiClient, ClientOptions};
pub use error::CliError;
pub use output::Out;

/// The scopes an API key may carry (SPEC "API keys", plus `org:admin` for organisation
/// administration): the control plane's own [`Scope::ALL`], by name, so the CLI's check and
/// the server's cannot drift apart.
pub const SCOPES: [&str; Scope::ALL.len()] = {
    let mut names = [""; Scope::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Scope::ALL[i].as_str();
        i += 1;
    }
    names
};

#[derive(Debug, Parser)]
#[command(
    name = "octomil",
    version,
    about = "Operator CLI for the Octomil Edge control plane",
    after_help = "Prefer OCTOMIL_API_URL, OCTOMIL_API_KEY and OCTOMIL_CA_FILE to the flags: command \
                  lines are visible to every user in `ps`. An empty variable counts as unset."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Control-plane URL, e.g. https://127.0.0.1:8443 (`/api/v1` is appended)
    #[arg(long, env = "OCTOMIL_API_URL", global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// API key or session token
    #[arg(long, env = "OCTOMIL_API_KEY", global = true, value_name = "KEY",
          hide_env_values = true, value_parser = parse_secret)]
    pub api_key: Option<Secret<String>>,
    /// PEM file of the CA to trust; when set, it is the only CA trusted
    #[arg(long, env = "OCTOMIL_CA_FILE", global = true, value_name = "PATH",
          value_parser = parse_path)]
    pub ca_file: Option<PathBuf>,
    /// Print the server's JSON answer instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a request after this long (s, m, h or d)
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s",
          value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list and delete API keys
    #[command(subcommand)]
    ApiKeys(api_keys::ApiKeysCmd),
    /// List, inspect, revoke and delete devices
    #[command(subcommand)]
    Devices(devices::DevicesCmd),
    /// Create bootstrap tokens for device images
    #[command(subcommand)]
    BootstrapTokens(bootstrap_tokens::BootstrapTokensCmd),
    /// Organization settings and members
    #[command(subcommand)]
    Org(org::OrgCmd),
    /// Dashboard sessions
    #[command(subcommand)]
    Auth(auth::AuthCmd),
    /// Read, export and verify the audit log
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

/// Member roles, lowest first (Member < Admin < Owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

/// Runs one parsed command line. `out` takes everything printed; the caller prints the
/// returned error and exits with `CliError::exit_code`.
pub async fn run(cli: Cli, out: &mut Out<'_>) -> Result<(), CliError> {
    let g = &cli.global;
    match cli.command {
        Command::ApiKeys(cmd) => api_keys::run(&connect(g, true)?, cmd, out).await,
        Command::Devices(cmd) => devices::run(&connect(g, true)?, cmd, out).await,
        Command::BootstrapTokens(cmd) => bootstrap_tokens::run(&connect(g, true)?, cmd, out).await,
        Command::Org(cmd) => org::run(&connect(g, true)?, cmd, out).await,
        Command::Audit(cmd) => audit::run(&connect(g, true)?, cmd, out).await,
        // Logging in is how one gets a credential, so it needs none; logging out needs the
        // session it ends.
        Command::Auth(cmd) => {
            let needs_key = !matches!(
                cmd,
                auth::AuthCmd::Login(_) | auth::AuthCmd::AcceptInvite(_)
            );
            auth::run(&connect(g, needs_key)?, cmd, out).await
        }
    }
}

/// Builds the client from the global flags; settings missing here are usage errors.
pub fn connect(g: &GlobalArgs, needs_key: bool) -> Result<ApiClient, CliError> {
    // An empty variable counts as unset (`OCTOMIL_CA_FILE= octomil ...`), as clap passes it on.
    let api_url = g
        .api_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            CliError::usage("no API URL: set OCTOMIL_API_URL or pass --api-url https://HOST:PORT")
        })?;
    let key = g.api_key.as_ref().filter(|k| !k.expose().is_empty());
    let api_key = match (key, needs_key) {
        (Some(k), true) => Some(k.clone()),
        (None, true) => {
            return Err(CliError::usage(
                "no credential: set OCTOMIL_API_KEY to an API key or a session token \
                 (from `octomil auth login`)",
            ));
        }
        (_, false) => None,
    };
    let ca_pem = match g.ca_file.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| CliError::Ca(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    ApiClient::new(ClientOptions {
        api_url,
        ca_pem,
        api_key,
        timeout: g.timeout,
    })
}

// Value parsers: clap turns their `Err` into a usage error (exit 2) naming the flag.

/// Trimmed; empty is kept and later treated as "no key" (see [`connect`]).
fn parse_secret(s: &str) -> Result<Secret<String>, String> {
    Ok(Secret::new(s.trim().to_owned()))
}

/// Unlike clap's own path parser, accepts empty (treated as unset in [`connect`]).
fn parse_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match duration::parse_secs(s) {
        Ok(0) => Err("the timeout must be at least 1s".to_owned()),
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(e) => Err(e.to_string()),
    }
}

/// A positive duration such as `48h`, kept as the operator wrote it (trimmed): the API takes
/// the same `<n>s|m|h|d` text and parses it with the same function.
pub fn parse_duration(s: &str) -> Result<String, String> {
    match duration::parse_secs(s) {
        Ok(0) => Err("the duration must be greater than zero".to_owned()),
        Ok(_) => Ok(s.trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// One of the scopes of [`SCOPES`].
pub fn parse_scope(s: &str) -> Result<String, String> {
    let s = s.trim();
    if SCOPES.contains(&s) {
        Ok(s.to_owned())
    } else if s.is_empty() {
        Err("empty scope".to_owned())
    } else {
        Err(format!(
            "unknown scope {s:?}; known scopes: {}",
            SCOPES.join(", ")
        ))
    }
}

/// An address with one `@` between a non-empty local part and domain, no blanks: enough to
/// catch a swapped argument without second-guessing the server.
pub fn parse_email(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the email is empty".to_owned());
    }
    match s.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!("{s:?} is not an email address")),
    }
}

pub fn parse_device_id(s: &str) -> Result<DeviceId, String> {
    DeviceId::parse(s).map_err(|e| e.to_string())
}

/// Free text (a name, a reason): trimmed, non-empty, no control characters.
pub fn parse_text(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else if s.chars().any(char::is_control) {
        Err("must not contain control characters".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// An API-key id or other opaque id: non-empty, no blanks or control characters.
pub fn parse_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("the id must be non-empty and contain no blanks".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    /// Parses a command line with fixed global flags, so ambient OCTOMIL_* variables of the
    /// test environment cannot change what is parsed.
    pub(crate) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec![
            "octomil",
            "--api-url",
            "https://h:1",
            "--api-key",
            "edg_test_k",
        ];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "octomil",
            "devices",
            "list",
            "--json",
            "--timeout",
            "5s",
            "--api-url",
            "https://x:2",
            "--api-key",
            " edg_live_k ",
            "--ca-file",
            "/tmp/ca.pem",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.timeout, Duration::from_secs(5));
        assert_eq!(cli.global.api_url.as_deref(), Some("https://x:2"));
        assert_eq!(
            cli.global.api_key.as_ref().map(|k| k.expose().as_str()),
            Some("edg_live_k")
        );
        assert_eq!(cli.global.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        // The key never shows in Debug output.
        assert!(!format!("{cli:?}").contains("edg_live_k"));
    }

    #[test]
    fn timeout_defaults_and_validates() {
        let cli = parse(&["devices", "list"]).unwrap();
        assert_eq!(cli.global.timeout, Duration::from_secs(30));
        for bad in ["0s", "30", "fast"] {
            let e = parse(&["--timeout", bad, "devices", "list"]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn scopes_validate() {
        assert_eq!(parse_scope(" devices:read ").unwrap(), "devices:read");
        for s in SCOPES {
            assert!(parse_scope(s).is_ok());
        }
        assert!(parse_scope("").unwrap_err().contains("empty"));
        let e = parse_scope("devices:admin").unwrap_err();
        assert!(e.contains("unknown scope \"devices:admin\""), "{e}");
        assert!(e.contains("models:read"), "{e}");
    }

    #[test]
    fn durations_validate() {
        assert_eq!(parse_duration("48h").unwrap(), "48h");
        assert_eq!(parse_duration(" 7d ").unwrap(), "7d");
        assert!(
            parse_duration("0h")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("48").unwrap_err().contains("s, m, h or d"));
    }

    #[test]
    fn emails_and_ids_validate() {
        assert_eq!(parse_email("a@example.com").unwrap(), "a@example.com");
        for bad in [
            "",
            "  ",
            "example.com",
            "@example.com",
            "a@",
            "a@b@c",
            "a b@c",
        ] {
            assert!(parse_email(bad).is_err(), "{bad:?}");
        }
        assert!(parse_device_id("dev-1.a_b").is_ok());
        assert!(parse_device_id("../etc").is_err());
        assert!(parse_id("k_123").is_ok());
        assert!(parse_id("").is_err());
        assert!(parse_id("a b").is_err());
        assert_eq!(parse_text(" ci ").unwrap(), "ci");
        assert!(parse_text(" ").is_err());
        assert!(parse_text("a\nb").is_err());
    }

    #[test]
    fn missing_settings_are_usage_errors() {
        let cli = Cli::try_parse_from(["octomil", "--api-url", "https://h:1", "devices", "list"])
            .unwrap();
        let mut g = cli.global;
        g.api_key = Some(Secret::new(String::new()));
        let e = connect(&g, true).unwrap_err();
        assert_eq!(e.exit_code(), error::EXIT_USAGE);
        assert!(e.to_string().contains("OCTOMIL_API_KEY"));
        g.api_url = Some(String::new());
        assert!(
            connect(&g, false)
                .unwrap_err()
                .to_string()
                .contains("OCTOMIL_API_URL")
        );
        g.api_url = Some("https://h:1".to_owned());
        g.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        let e = connect(&g, false).unwrap_err();
        assert!(matches!(e, CliError::Ca(_)), "{e}");
        assert_eq!(e.exit_code(), error::EXIT_USAGE);
        // Empty values (an exported but empty variable) count as unset.
        let _ = rustls::crypto::ring::default_provider().install_default();
        g.ca_file = Some(PathBuf::new());
        g.api_key = None;
        assert!(connect(&g, false).is_ok());
    }

    #[test]
    fn unknown_commands_are_rejected() {
        let e = parse(&["devices", "frobnicate"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSubcommand);
        assert!(parse(&[]).is_err());
    }
}
