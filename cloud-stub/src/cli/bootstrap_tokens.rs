//! `octomil bootstrap-tokens create|list|update|revoke`: the fleet-wide tokens baked into
//! device images. `revoke --devices` is the leaked-token drill: the token and every device it
//! enrolled, revoked in two calls.

use clap::{Args, Subcommand};
use octomil_common::Secret;
use serde::{Deserialize, Serialize};

use super::api_keys::Environment;
use super::output::{Id, Out, Table, clean, or_dash, when};
use super::{ApiClient, CliError, parse_duration};

#[derive(Debug, Subcommand)]
pub enum BootstrapTokensCmd {
    /// Create a token; it is printed once and cannot be shown again
    Create(CreateArgs),
    /// List tokens with their uses, expiry, status and enrolled devices (every page, or
    /// --limit N)
    List(ListArgs),
    /// Extend (or shorten) a token's expiry or use limit
    Update(UpdateArgs),
    /// Revoke a token; with --devices also every device it enrolled
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    /// The new use limit (at least the uses so far)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_uses: Option<u32>,
    /// The new expiry, counted from now, e.g. 30d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<String>,
}

#[derive(Debug, Default, Args)]
pub struct ListArgs {
    /// Show at most N tokens (default: every token, fetched a page at a time)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// active, expired, used_up or revoked
    #[arg(long, value_parser = ["active", "expired", "used_up", "revoked"])]
    pub status: Option<String>,
    /// live or test (a session sees both; a key only its own)
    #[arg(long, value_enum, ignore_case = true)]
    pub environment: Option<Environment>,
}

/// The most `GET /bootstrap-tokens` serves per page.
const PAGE_MAX: usize = 1000;

#[derive(Debug, Args)]
pub struct RevokeArgs {
    pub id: String,
    /// Also revoke every device whose latest registration used this token
    #[arg(long)]
    pub devices: bool,
}

#[derive(Debug, Deserialize)]
struct TokenRow {
    id: String,
    #[serde(default)]
    max_uses: Option<u64>,
    uses: u64,
    #[serde(default)]
    expires_at: Option<u64>,
    status: String,
    devices: u64,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How many registrations it allows (10000 when omitted)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_uses: Option<u32>,
    /// How long it stays valid, e.g. 24h or 7d (90d when omitted)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<String>,
    /// live or test: devices enrolled with it take this environment (a key's own when
    /// omitted; for a session, the organization's)
    #[arg(long, value_enum, ignore_case = true)]
    pub environment: Option<Environment>,
}

#[derive(Debug, Serialize)]
struct CreateBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_uses: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<Environment>,
}

#[derive(Debug, Deserialize)]
struct CreatedToken {
    id: Id,
    token: Secret<String>,
    #[serde(default)]
    max_uses: Option<u64>,
    #[serde(default)]
    expires_at: Option<u64>,
}

pub async fn run(
    client: &ApiClient,
    cmd: BootstrapTokensCmd,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let args = match cmd {
        BootstrapTokensCmd::Create(args) => args,
        BootstrapTokensCmd::List(a) => return list(client, a, out).await,
        BootstrapTokensCmd::Update(a) => {
            let body = CreateBody {
                max_uses: a.max_uses,
                expires_in: a.expires_in.as_deref(),
                environment: None,
            };
            let answer = client.patch(&["bootstrap-tokens", &a.id], &body).await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            let t: TokenRow = answer.parse()?;
            return out.note(&format!(
                "bootstrap token {}: {} of {} uses, expires {}",
                clean(&t.id),
                t.uses,
                t.max_uses.map_or_else(|| "-".into(), |n| n.to_string()),
                when(t.expires_at, out.now)
            ));
        }
        BootstrapTokensCmd::Revoke(a) => {
            client.delete(&["bootstrap-tokens", &a.id]).await?;
            out.note(&format!("bootstrap token {} revoked", clean(&a.id)))?;
            if a.devices {
                let body = serde_json::json!({
                    "bootstrap_token_id": a.id,
                    "reason": "bootstrap token revoked",
                });
                let answer = client.post(&["revocations"], &body).await?;
                if out.json {
                    return out.json_value(answer.body.as_ref());
                }
                let b = answer.body.unwrap_or_default();
                let n = b["revoked"].as_array().map_or(0, Vec::len);
                return out.note(&format!(
                    "{n} devices revoked, {} were already",
                    b["already_revoked"].as_u64().unwrap_or(0)
                ));
            }
            return Ok(());
        }
    };
    let body = CreateBody {
        max_uses: args.max_uses,
        expires_in: args.expires_in.as_deref(),
        environment: args.environment,
    };
    let answer = client.post(&["bootstrap-tokens"], &body).await?;
    let created: CreatedToken = answer.parse()?;
    if out.json {
        out.json_value(answer.body.as_ref())?;
    } else {
        // The token alone on stdout, ready for `> bootstrap.token`.
        out.print(created.token.expose())?;
    }
    let note = created_note(&created, out.now);
    out.note(&note)
}

async fn list(client: &ApiClient, a: ListArgs, out: &mut Out<'_>) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(s) = a.status {
        query.push(("status", s));
    }
    if let Some(e) = a.environment {
        query.push(("environment", e.as_str().to_owned()));
    }
    let limit = a.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let raw = super::pages::fetch(
        client,
        &["bootstrap-tokens"],
        "bootstrap_tokens",
        &query,
        limit,
        PAGE_MAX,
    )
    .await?;
    if out.json {
        let all = serde_json::json!({ "bootstrap_tokens": raw });
        return out.json_value(Some(&all));
    }
    let rows: Vec<TokenRow> = super::pages::parse("bootstrap-tokens", &raw)?;
    let mut t = Table::new(&["ID", "STATUS", "USES", "EXPIRES", "DEVICES", "ENV"]);
    for r in &rows {
        t.row(vec![
            clean(&r.id),
            clean(&r.status),
            format!(
                "{}/{}",
                r.uses,
                r.max_uses.map_or_else(|| "-".into(), |n| n.to_string())
            ),
            when(r.expires_at, out.now),
            r.devices.to_string(),
            or_dash(r.environment.as_deref()),
        ]);
    }
    out.print(&t.render())
}

fn created_note(t: &CreatedToken, now: u64) -> String {
    let uses = t
        .max_uses
        .map_or_else(|| "unlimited uses".to_owned(), |n| format!("{n} uses"));
    let expiry = match t.expires_at {
        Some(_) => format!("expires {}", when(t.expires_at, now)),
        None => "no expiry".to_owned(),
    };
    format!(
        "created bootstrap token {} ({uses}, {expiry}); store it now: it will not be shown again",
        clean(&t.id.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::parse;
    use clap::error::ErrorKind;

    fn args(argv: &[&str]) -> CreateArgs {
        match parse(argv).unwrap().command {
            Command::BootstrapTokens(BootstrapTokensCmd::Create(a)) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_lifecycle_commands() {
        let c = parse(&["bootstrap-tokens", "revoke", "bt_1", "--devices"]).unwrap();
        assert!(matches!(
            c.command,
            Command::BootstrapTokens(BootstrapTokensCmd::Revoke(RevokeArgs { devices: true, .. }))
        ));
        let c = parse(&["bootstrap-tokens", "update", "bt_1", "--expires-in", "30d"]).unwrap();
        assert!(matches!(
            c.command,
            Command::BootstrapTokens(BootstrapTokensCmd::Update(UpdateArgs {
                max_uses: None,
                ..
            }))
        ));
        assert!(parse(&["bootstrap-tokens", "list"]).is_ok());
        let c = parse(&[
            "bootstrap-tokens",
            "list",
            "--limit",
            "3",
            "--status",
            "active",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::BootstrapTokens(BootstrapTokensCmd::List(ListArgs { limit: Some(3), .. }))
        ));
        assert!(parse(&["bootstrap-tokens", "list", "--status", "gone"]).is_err());
    }

    #[test]
    fn parses_create() {
        let a = args(&["bootstrap-tokens", "create"]);
        assert_eq!((a.max_uses, a.expires_in), (None, None));
        let a = args(&[
            "bootstrap-tokens",
            "create",
            "--max-uses",
            "50",
            "--expires-in",
            "24h",
        ]);
        assert_eq!(a.max_uses, Some(50));
        assert_eq!(a.expires_in.as_deref(), Some("24h"));
    }

    #[test]
    fn rejects_bad_values() {
        for argv in [
            &["bootstrap-tokens", "create", "--max-uses", "0"][..],
            &["bootstrap-tokens", "create", "--max-uses", "-3"],
            &["bootstrap-tokens", "create", "--max-uses", "many"],
            &["bootstrap-tokens", "create", "--expires-in", "24"],
            &["bootstrap-tokens", "create", "--expires-in", "0d"],
            &["bootstrap-tokens", "create", "--expires-in", "1w"],
        ] {
            let e = parse(argv).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ValueValidation | ErrorKind::UnknownArgument
                ),
                "{argv:?}: {:?}",
                e.kind()
            );
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn body_carries_only_what_was_given() {
        let b = CreateBody {
            max_uses: None,
            expires_in: None,
            environment: None,
        };
        assert_eq!(serde_json::to_string(&b).unwrap(), "{}");
        let b = CreateBody {
            max_uses: Some(5),
            expires_in: Some("24h"),
            environment: Some(Environment::Test),
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"max_uses":5,"expires_in":"24h","environment":"test"}"#
        );
    }

    #[test]
    fn note_describes_without_the_token() {
        let t: CreatedToken = serde_json::from_value(serde_json::json!({
            "id": "bt1", "token": "edg_bootstrap_secret", "max_uses": null, "expires_at": 7_200
        }))
        .unwrap();
        let note = created_note(&t, 0);
        assert_eq!(
            note,
            "created bootstrap token bt1 (unlimited uses, expires 1970-01-01T02:00:00Z (in 2h)); \
             store it now: it will not be shown again"
        );
        assert!(!format!("{t:?}").contains("edg_bootstrap_secret"));
    }
}
