//! `octomil org members list|add|update|remove|reset-mfa`: who may use the dashboard and the
//! API, and with which role. `add` prints a one-time invitation; the invitee runs
//! `octomil auth accept-invite` and sets their own password and TOTP.

use clap::Subcommand;
use octomil_common::Secret;
use serde::{Deserialize, Serialize};

use crate::cli::output::{Out, Table, clean, key_values, rfc3339};
use crate::cli::{ApiClient, CliError, Role, parse_email};

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// List members and their roles
    List,
    /// Invite a member; prints a one-time invitation token and link (72h unless --expires-in)
    Add {
        #[arg(value_parser = parse_email)]
        email: String,
        #[arg(long, value_enum, ignore_case = true)]
        role: Role,
        /// How long the invitation lives (s, m, h or d; at most 30d)
        #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration)]
        expires_in: Option<String>,
    },
    /// Change a member's role
    Update {
        #[arg(value_parser = parse_email)]
        email: String,
        #[arg(long, value_enum, ignore_case = true)]
        role: Role,
    },
    /// Remove a member or withdraw their invitation (the last Owner cannot be removed)
    Remove {
        #[arg(value_parser = parse_email)]
        email: String,
    },
    /// Forget a member's TOTP and recovery codes and end their sessions; they enrol again
    ResetMfa {
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
    #[serde(default)]
    invitations: Vec<Invitation>,
}

#[derive(Debug, Deserialize)]
struct Invitation {
    email: String,
    role: String,
    expires_at: u64,
}

/// `POST /org/members` answer: an invitation whose token is shown this once.
#[derive(Debug, Deserialize)]
struct NewMember {
    email: String,
    role: String,
    invitation_token: Secret<String>,
    invitation_link: Secret<String>,
    expires_at: u64,
}

#[derive(Debug, Serialize)]
struct MemberBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<&'a str>,
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
            out.print(&render_members(&list.members))?;
            if !list.invitations.is_empty() {
                out.print(&render_invitations(&list.invitations, out.now))?;
            }
            Ok(())
        }
        MembersCmd::Add {
            email,
            role,
            expires_in,
        } => {
            let body = MemberBody {
                email: Some(&email),
                role,
                expires_in: expires_in.as_deref(),
            };
            let answer = client.post(&["org", "members"], &body).await?;
            let added: NewMember = answer.parse()?;
            if out.json {
                out.json_value(answer.body.as_ref())?;
            } else {
                out.print(&render_new_member(&added))?;
            }
            out.note(&format!(
                "the invitation works once and is shown only this once: hand it to {} over a \
                 safe channel; they run `OCTOMIL_INVITATION=<token> octomil auth accept-invite` \
                 (or open the link) and choose their own password and TOTP",
                clean(&added.email)
            ))
        }
        MembersCmd::ResetMfa { email } => {
            client
                .post(
                    &["org", "members", &email, "mfa-reset"],
                    &serde_json::json!({}),
                )
                .await?;
            out.print(&format!(
                "reset MFA of {email}: their sessions ended; they enrol TOTP again at next login"
            ))
        }
        MembersCmd::Update { email, role } => {
            let body = MemberBody {
                email: None,
                role,
                expires_in: None,
            };
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

fn render_invitations(list: &[Invitation], now: u64) -> String {
    let mut t = Table::new(&["INVITED", "ROLE", "EXPIRES"]);
    for i in list {
        t.row(vec![
            i.email.clone(),
            i.role.clone(),
            crate::cli::output::when(Some(i.expires_at), now),
        ]);
    }
    t.render()
}

fn render_new_member(n: &NewMember) -> String {
    key_values(&[
        ("email", n.email.clone()),
        ("role", n.role.clone()),
        ("invitation_token", n.invitation_token.expose().clone()),
        ("invitation_link", n.invitation_link.expose().clone()),
        ("expires_at", rfc3339(n.expires_at)),
    ])
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
            matches!(c, MembersCmd::Add { ref email, role: Role::Admin, expires_in: None } if email == "user@example.com"),
            "{c:?}"
        );
        let c = cmd(&[
            "org",
            "members",
            "add",
            "user@example.com",
            "--role",
            "member",
            "--expires-in",
            "7d",
        ]);
        assert!(
            matches!(c, MembersCmd::Add { expires_in: Some(ref d), .. } if d == "7d"),
            "{c:?}"
        );
        let c = cmd(&["org", "members", "reset-mfa", "user@example.com"]);
        assert!(
            matches!(c, MembersCmd::ResetMfa { ref email } if email == "user@example.com"),
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
            expires_in: None,
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"email":"a@b.c","role":"owner"}"#
        );
        let b = MemberBody {
            email: None,
            role: Role::Member,
            expires_in: None,
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
    fn an_invitation_shows_in_output_but_not_debug() {
        let n: NewMember = serde_json::from_value(serde_json::json!({
            "email": "a@b.c", "role": "admin", "created_at": 0, "invitation_id": "inv_1",
            "invitation_token": "edg_invite_SECRET",
            "invitation_link": "https://cloud/invite#edg_invite_SECRET",
            "expires_at": 259200
        }))
        .unwrap();
        let text = render_new_member(&n);
        assert!(text.contains("edg_invite_SECRET\n"), "{text}");
        assert!(text.contains("1970-01-04T00:00:00Z"), "{text}");
        assert!(
            !text.contains("password") && !text.contains("totp"),
            "{text}"
        );
        let debug = format!("{n:?}");
        assert!(!debug.contains("edg_invite_SECRET"), "{debug}");
    }
}
