//! `octomil org members list|add|update|remove`: who may use the dashboard and the API, and
//! with which role.

use clap::Subcommand;
use octomil_common::Secret;
use serde::{Deserialize, Serialize};

use crate::cli::output::{Out, Table, clean, key_values, rfc3339};
use crate::cli::{ApiClient, CliError, Role, parse_email};

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// List members and their roles
    List,
    /// Add a member; prints the initial password and TOTP secret once
    Add {
        #[arg(value_parser = parse_email)]
        email: String,
        #[arg(long, value_enum, ignore_case = true)]
        role: Role,
    },
    /// Change a member's role
    Update {
        #[arg(value_parser = parse_email)]
        email: String,
        #[arg(long, value_enum, ignore_case = true)]
        role: Role,
    },
    /// Remove a member (the last Owner cannot be removed)
    Remove {
        #[arg(value_parser = parse_email)]
        email: String,
    },
}

#[derive(Debug, Deserialize)]
struct Member {
    email: String,
    role: String,
    #[serde(default)]
    created_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct MemberList {
    members: Vec<Member>,
}

/// `POST /org/members` answer: the member plus credentials shown this once.
#[derive(Debug, Deserialize)]
struct NewMember {
    #[serde(flatten)]
    member: Member,
    initial_password: Secret<String>,
    totp_secret: Secret<String>,
    #[serde(default)]
    otpauth_uri: Option<Secret<String>>,
}

#[derive(Debug, Serialize)]
struct MemberBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    role: Role,
}

pub async fn run(client: &ApiClient, cmd: MembersCmd, out: &mut Out<'_>) -> Result<(), CliError> {
    match cmd {
        MembersCmd::List => {
            let answer = client.get(&["org", "members"]).await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            let list: MemberList = answer.parse()?;
            if list.members.is_empty() {
                return out.note("no members");
            }
            out.print(&render_members(&list.members))
        }
        MembersCmd::Add { email, role } => {
            let body = MemberBody {
                email: Some(&email),
                role,
            };
            let answer = client.post(&["org", "members"], &body).await?;
            let added: NewMember = answer.parse()?;
            if out.json {
                out.json_value(answer.body.as_ref())?;
            } else {
                out.print(&render_new_member(&added))?;
            }
            out.note(&format!(
                "the initial password and TOTP secret are shown only this once: hand them to \
                 {} over a safe channel",
                clean(&added.member.email)
            ))
        }
        MembersCmd::Update { email, role } => {
            let body = MemberBody { email: None, role };
            let answer = client.patch(&["org", "members", &email], &body).await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            out.print(&render_member(&answer.parse()?))
        }
        MembersCmd::Remove { email } => {
            let answer = client.delete(&["org", "members", &email]).await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            out.print(&format!("removed member {email}"))
        }
    }
}

fn created(m: &Member) -> String {
    m.created_at.map_or_else(|| "-".to_owned(), rfc3339)
}

fn render_members(members: &[Member]) -> String {
    let mut t = Table::new(&["EMAIL", "ROLE", "CREATED"]);
    for m in members {
        t.row(vec![m.email.clone(), m.role.clone(), created(m)]);
    }
    t.render()
}

fn render_member(m: &Member) -> String {
    key_values(&[
        ("email", m.email.clone()),
        ("role", m.role.clone()),
        ("created_at", created(m)),
    ])
}

fn render_new_member(n: &NewMember) -> String {
    let mut pairs = vec![
        ("email", n.member.email.clone()),
        ("role", n.member.role.clone()),
        ("created_at", created(&n.member)),
        ("initial_password", n.initial_password.expose().clone()),
        ("totp_secret", n.totp_secret.expose().clone()),
    ];
    if let Some(uri) = &n.otpauth_uri {
        pairs.push(("otpauth_uri", uri.expose().clone()));
    }
    key_values(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::org::OrgCmd;
    use crate::cli::tests::parse;
    use clap::error::ErrorKind;

    fn cmd(args: &[&str]) -> MembersCmd {
        match parse(args).unwrap().command {
            Command::Org(OrgCmd::Members(c)) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_member_commands_as_in_the_seed() {
        assert!(matches!(cmd(&["org", "members", "list"]), MembersCmd::List));
        let c = cmd(&[
            "org",
            "members",
            "add",
            "user@example.com",
            "--role",
            "admin",
        ]);
        assert!(
            matches!(c, MembersCmd::Add { ref email, role: Role::Admin } if email == "user@example.com"),
            "{c:?}"
        );
        let c = cmd(&[
            "org",
            "members",
            "update",
            "user@example.com",
            "--role",
            "Member",
        ]);
        assert!(
            matches!(
                c,
                MembersCmd::Update {
                    role: Role::Member,
                    ..
                }
            ),
            "{c:?}"
        );
        let c = cmd(&["org", "members", "remove", "user@example.com"]);
        assert!(
            matches!(c, MembersCmd::Remove { ref email } if email == "user@example.com"),
            "{c:?}"
        );
    }

    #[test]
    fn member_commands_validate_roles_and_emails() {
        let e = parse(&["org", "members", "add", "u@example.com", "--role", "root"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["org", "members", "add", "u@example.com"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse(&[
            "org",
            "members",
            "update",
            "not-an-email",
            "--role",
            "admin",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = parse(&["org", "members", "remove", ""]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn member_bodies() {
        let b = MemberBody {
            email: Some("a@b.c"),
            role: Role::Owner,
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"email":"a@b.c","role":"owner"}"#
        );
        let b = MemberBody {
            email: None,
            role: Role::Member,
        };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"role":"member"}"#);
    }

    #[test]
    fn renders_members() {
        let list: MemberList = serde_json::from_value(serde_json::json!({"members": [
            {"email": "owner@example.com", "role": "owner", "created_at": 0},
            {"email": "a@b.c", "role": "member", "created_at": null}
        ]}))
        .unwrap();
        assert_eq!(
            render_members(&list.members),
            "EMAIL              ROLE    CREATED\n\
             owner@example.com  owner   1970-01-01T00:00:00Z\n\
             a@b.c              member  -\n"
        );
    }

    #[test]
    fn new_member_secrets_show_in_output_but_not_debug() {
        let n: NewMember = serde_json::from_value(serde_json::json!({
            "email": "a@b.c", "role": "admin", "created_at": 0,
            "initial_password": "pw-123", "totp_secret": "JBSWY3DP",
            "otpauth_uri": "otpauth://totp/x?secret=JBSWY3DP"
        }))
        .unwrap();
        let text = render_new_member(&n);
        assert!(text.contains("initial_password: pw-123\n"), "{text}");
        assert!(text.contains("totp_secret:      JBSWY3DP\n"), "{text}");
        let debug = format!("{n:?}");
        assert!(
            !debug.contains("pw-123") && !debug.contains("JBSWY3DP"),
            "{debug}"
        );
    }
}
