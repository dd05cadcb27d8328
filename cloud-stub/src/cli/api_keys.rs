//! `octomil api-keys create|list|delete`: control-plane API keys (`/api-keys`).

use clap::{Args, Subcommand, ValueEnum};
use octomil_common::Secret;
use serde::{Deserialize, Serialize};

use super::output::{Id, Out, Table, ago, clean, rfc3339};
use super::{ApiClient, CliError, parse_id, parse_scope, parse_text};

#[derive(Debug, Subcommand)]
pub enum ApiKeysCmd {
    /// Create a key; it is printed once and cannot be shown again
    Create(CreateArgs),
    /// List the organization's keys, revoked and expired ones for 90 days (never the keys
    /// themselves; every page, or --limit N)
    List(ListArgs),
    /// Delete a key; it stops working at once
    Delete {
        #[arg(value_parser = parse_id)]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name to recognise the key by, e.g. ci-pipeline
    #[arg(long, value_parser = parse_text)]
    pub name: String,
    /// Comma-separated scopes, e.g. models:read,models:write
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_scope)]
    pub scopes: Vec<String>,
    /// live (production) or test (sandbox); the server's default when omitted
    #[arg(long, value_enum, ignore_case = true)]
    pub environment: Option<Environment>,
}

#[derive(Debug, Default, Args)]
pub struct ListArgs {
    /// Show at most N keys (default: every key, fetched a page at a time)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// active, expired or revoked
    #[arg(long, value_parser = ["active", "expired", "revoked"])]
    pub status: Option<String>,
    /// live or test
    #[arg(long, value_enum, ignore_case = true)]
    pub environment: Option<Environment>,
}

/// The most `GET /api-keys` serves per page.
const PAGE_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }
}

#[derive(Debug, Serialize)]
struct CreateBody<'a> {
    name: &'a str,
    scopes: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<Environment>,
}

/// The create answer: the listed fields plus the key itself, shown this once.
#[derive(Debug, Deserialize)]
struct CreatedKey {
    key: Secret<String>,
    #[serde(flatten)]
    info: KeyInfo,
}

#[derive(Debug, Deserialize)]
struct KeyInfo {
    id: Id,
    #[serde(default)]
    name: String,
    /// The key's first characters; absent or `null` for keys made before the cloud kept them.
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    last_used_at: Option<u64>,
    #[serde(default)]
    status: Option<String>,
}

pub async fn run(client: &ApiClient, cmd: ApiKeysCmd, out: &mut Out<'_>) -> Result<(), CliError> {
    match cmd {
        ApiKeysCmd::Create(args) => create(client, args, out).await,
        ApiKeysCmd::List(a) => {
            let mut query = Vec::new();
            if let Some(s) = a.status {
                query.push(("status", s));
            }
            if let Some(e) = a.environment {
                query.push(("environment", e.as_str().to_owned()));
            }
            let limit = a.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let raw =
                super::pages::fetch(client, &["api-keys"], "api_keys", &query, limit, PAGE_MAX)
                    .await?;
            if out.json {
                let all = serde_json::json!({ "api_keys": raw });
                return out.json_value(Some(&all));
            }
            let keys: Vec<KeyInfo> = super::pages::parse("api-keys", &raw)?;
            if keys.is_empty() {
                return out.note("no API keys");
            }
            out.print(&render_list(&keys, out.now))
        }
        ApiKeysCmd::Delete { id } => {
            let answer = client.delete(&["api-keys", &id]).await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            out.print(&format!("deleted API key {id}"))
        }
    }
}

async fn create(client: &ApiClient, args: CreateArgs, out: &mut Out<'_>) -> Result<(), CliError> {
    let body = CreateBody {
        name: &args.name,
        scopes: dedup(&args.scopes),
        environment: args.environment,
    };
    let answer = client.post(&["api-keys"], &body).await?;
    // Parse even in JSON mode: the note below needs the id, and a body without a key
    // would leave the operator with nothing to copy.
    let created: CreatedKey = answer.parse()?;
    if out.json {
        out.json_value(answer.body.as_ref())?;
    } else {
        // The key alone on stdout, so `KEY=$(octomil api-keys create ...)` captures it.
        out.print(created.key.expose())?;
    }
    out.note(&created_note(&created))
}

/// Scopes in the order given, each once.
fn dedup(scopes: &[String]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for s in scopes {
        if !seen.contains(&s.as_str()) {
            seen.push(s);
        }
    }
    seen
}

fn created_note(created: &CreatedKey) -> String {
    let k = &created.info;
    format!(
        "created API key {} ({}, {}, scopes {}); store it now: it will not be shown again",
        clean(&k.id.0),
        clean(&k.name),
        clean(k.environment.as_deref().unwrap_or("-")),
        clean(&k.scopes.join(",")),
    )
}

/// What the KEY column shows: the prefix and an ellipsis, as the dashboard does; for a key
/// without a known prefix, its environment's (`edg_live_…`).
fn shown_prefix(k: &KeyInfo) -> String {
    let prefix = match (&k.prefix, k.environment.as_deref()) {
        (Some(p), _) => p.clone(),
        (None, Some(env @ ("live" | "test"))) => format!("edg_{env}_"),
        (None, _) => return "-".to_owned(),
    };
    format!("{prefix}…")
}

fn render_list(keys: &[KeyInfo], now: u64) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "KEY",
        "ENV",
        "SCOPES",
        "CREATED",
        "LAST USED",
        "STATUS",
    ]);
    for k in keys {
        t.row(vec![
            k.id.0.clone(),
            k.name.clone(),
            shown_prefix(k),
            k.environment.clone().unwrap_or_else(|| "-".to_owned()),
            k.scopes.join(","),
            k.created_at.map_or_else(|| "-".to_owned(), rfc3339),
            match k.last_used_at {
                Some(_) => ago(k.last_used_at, now),
                None => "never".to_owned(),
            },
            k.status.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::parse;
    use clap::error::ErrorKind;

    fn cmd(args: &[&str]) -> ApiKeysCmd {
        match parse(args).unwrap().command {
            Command::ApiKeys(c) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_create_as_in_the_seed() {
        let c = cmd(&[
            "api-keys",
            "create",
            "--name",
            "ci-pipeline",
            "--scopes",
            "models:read,models:write,rollouts:write",
        ]);
        let ApiKeysCmd::Create(a) = c else {
            panic!("{c:?}")
        };
        assert_eq!(a.name, "ci-pipeline");
        assert_eq!(a.scopes, ["models:read", "models:write", "rollouts:write"]);
        assert_eq!(a.environment, None);
        let c = cmd(&[
            "api-keys",
            "create",
            "--name",
            "n",
            "--scopes",
            "devices:read",
            "--environment",
            "TEST",
        ]);
        let ApiKeysCmd::Create(a) = c else {
            panic!("{c:?}")
        };
        assert_eq!(a.environment, Some(Environment::Test));
    }

    #[test]
    fn create_rejects_bad_scopes_and_environments() {
        for args in [
            &[
                "api-keys",
                "create",
                "--name",
                "n",
                "--scopes",
                "models:read,devices:admin",
            ][..],
            &["api-keys", "create", "--name", "n", "--scopes", ""],
            &[
                "api-keys",
                "create",
                "--name",
                "n",
                "--scopes",
                "models:read,",
            ],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
            assert_eq!(e.exit_code(), 2);
        }
        let e = parse(&["api-keys", "create", "--name", "n"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse(&[
            "api-keys",
            "create",
            "--name",
            " ",
            "--scopes",
            "models:read",
        ]);
        assert_eq!(e.unwrap_err().kind(), ErrorKind::ValueValidation);
        let e = parse(&[
            "api-keys",
            "create",
            "--name",
            "n",
            "--scopes",
            "models:read",
            "--environment",
            "prod",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn parses_list_and_delete() {
        assert!(matches!(cmd(&["api-keys", "list"]), ApiKeysCmd::List(_)));
        let c = cmd(&["api-keys", "list", "--limit", "5", "--status", "revoked"]);
        assert!(
            matches!(c, ApiKeysCmd::List(ref a) if a.limit == Some(5) && a.status.as_deref() == Some("revoked")),
            "{c:?}"
        );
        assert!(parse(&["api-keys", "list", "--status", "gone"]).is_err());
        let c = cmd(&["api-keys", "delete", "key_42"]);
        assert!(
            matches!(c, ApiKeysCmd::Delete { ref id } if id == "key_42"),
            "{c:?}"
        );
        assert!(parse(&["api-keys", "delete"]).is_err());
    }

    #[test]
    fn body_names_lowercase_environment_and_unique_scopes() {
        let scopes = vec!["models:read".to_owned(), "models:read".to_owned()];
        let body = CreateBody {
            name: "n",
            scopes: dedup(&scopes),
            environment: Some(Environment::Live),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"name": "n", "scopes": ["models:read"], "environment": "live"})
        );
    }

    #[test]
    fn created_note_never_holds_the_key() {
        let k: CreatedKey = serde_json::from_value(serde_json::json!({
            "id": "k1", "name": "ci", "key": "edg_live_secret", "scopes": ["models:read"],
            "environment": "live", "created_at": 0
        }))
        .unwrap();
        let note = created_note(&k);
        assert!(
            note.contains("k1") && note.contains("not be shown again"),
            "{note}"
        );
        assert!(!note.contains("edg_live_secret"));
        assert!(!format!("{k:?}").contains("edg_live_secret"));
    }

    #[test]
    fn list_renders_a_table() {
        let keys: Vec<KeyInfo> = serde_json::from_value(serde_json::json!([
            {"id": "k1", "name": "owner", "prefix": "edg_live_a1B2c3",
             "scopes": ["models:read", "devices:write"],
             "environment": "live", "created_at": 0, "last_used_at": 3_540, "status": "active"},
            {"id": 7, "name": "ci", "prefix": null, "scopes": [], "environment": "test",
             "created_at": 86_400, "last_used_at": null, "status": "revoked"},
            {"id": "k3", "name": "old"}
        ]))
        .unwrap();
        assert_eq!(
            render_list(&keys, 3_600),
            "ID  NAME   KEY               ENV   SCOPES                     CREATED               LAST USED  STATUS\n\
             k1  owner  edg_live_a1B2c3…  live  models:read,devices:write  1970-01-01T00:00:00Z  1m ago     active\n\
             7   ci     edg_test_…        test                             1970-01-02T00:00:00Z  never      revoked\n\
             k3  old    -                 -                                -                     never      -\n"
        );
    }
}
