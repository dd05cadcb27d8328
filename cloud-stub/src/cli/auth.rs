//! `octomil auth login`: trades email, password and TOTP code for a dashboard session token.
//! The password never comes from a flag (argv is world-readable through `ps`).
//! `octomil auth logout` ends the session in `OCTOMIL_API_KEY` server-side.
//! `octomil auth accept-invite` enrols an invitee (their own password, TOTP, recovery codes);
//! `octomil auth step-up`, `mfa-enrol` and `mfa-confirm` act on the session in
//! `OCTOMIL_API_KEY`.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use octomil_common::Secret;
use serde::{Deserialize, Serialize};

use super::output::{Out, when};
use super::{ApiClient, CliError, parse_email};

/// Where the password comes from when stdin is not used.
pub const PASSWORD_ENV: &str = "OCTOMIL_PASSWORD";

/// Where `accept-invite` reads the invitation (token or link) from.
pub const INVITATION_ENV: &str = "OCTOMIL_INVITATION";

/// A TOTP code for a step-up the CLI is asked for (else it prompts on a terminal).
pub const MFA_CODE_ENV: &str = "OCTOMIL_MFA_CODE";

/// The API's answer to a destructive call made with a stale session.
pub const STEP_UP_REQUIRED: &str = "step_up_required";

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Log in; the password is read from OCTOMIL_PASSWORD or one line of stdin
    Login(LoginArgs),
    /// End the session in OCTOMIL_API_KEY; its token is refused from then on
    Logout,
    /// Join an organization with an invitation from OCTOMIL_INVITATION (token or link):
    /// choose a password (OCTOMIL_PASSWORD or one stdin line) and enrol TOTP
    AcceptInvite(AcceptArgs),
    /// Give a fresh TOTP code for the session in OCTOMIL_API_KEY (destructive calls need one
    /// from the last 10 minutes)
    StepUp {
        #[arg(long, value_name = "CODE", value_parser = parse_mfa_code)]
        mfa_code: String,
    },
    /// Start TOTP enrolment for the session in OCTOMIL_API_KEY: prints a secret for the
    /// authenticator app
    MfaEnrol,
    /// Finish TOTP enrolment with a code of that secret; prints recovery codes once
    MfaConfirm {
        #[arg(long, value_name = "CODE", value_parser = parse_mfa_code)]
        mfa_code: String,
    },
}

#[derive(Debug, Args)]
pub struct AcceptArgs {
    /// Only hand out a TOTP secret (step one without a terminal); then run again with
    /// --mfa-code
    #[arg(long, conflicts_with_all = ["mfa_code", "no_mfa"])]
    pub totp: bool,
    /// A code of the secret printed by --totp
    #[arg(long, value_name = "CODE", value_parser = parse_mfa_code)]
    pub mfa_code: Option<String>,
    /// Join without TOTP (refused when the compliance preset requires it for the role)
    #[arg(long, conflicts_with = "mfa_code")]
    pub no_mfa: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(long, value_parser = parse_email)]
    pub email: String,
    /// The current TOTP code, when the organization requires MFA
    #[arg(long, value_name = "CODE", value_parser = parse_mfa_code)]
    pub mfa_code: Option<String>,
}

#[derive(Debug, Serialize)]
struct LoginBody<'a> {
    email: &'a str,
    password: &'a Secret<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mfa_code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct Session {
    token: Secret<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    enrolment_required: bool,
}

#[derive(Debug, Deserialize)]
struct TotpOffer {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    role: Option<String>,
    totp_secret: Secret<String>,
    otpauth_uri: Secret<String>,
}

#[derive(Debug, Deserialize)]
struct Joined {
    email: String,
    role: String,
    mfa_enrolled: bool,
    recovery_codes: Vec<Secret<String>>,
}

#[derive(Debug, Deserialize)]
struct Enrolled {
    recovery_codes: Vec<Secret<String>>,
}

/// RFC 6238 codes are 6 to 8 digits; blanks are allowed for `123 456` as apps show it.
fn parse_mfa_code(s: &str) -> Result<String, String> {
    let code: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(code)
    } else {
        Err("the MFA code must be the 6 to 8 digits of the authenticator app".to_owned())
    }
}

pub async fn run(client: &ApiClient, cmd: AuthCmd, out: &mut Out<'_>) -> Result<(), CliError> {
    let args = match cmd {
        AuthCmd::Login(args) => args,
        AuthCmd::Logout => {
            client
                .post(&["auth", "logout"], &serde_json::json!({}))
                .await?;
            return out.note("logged out: the session token is no longer accepted");
        }
        AuthCmd::AcceptInvite(args) => return accept_invite(client, args, out).await,
        AuthCmd::StepUp { mfa_code } => {
            client
                .post(&["auth", "step-up"], &serde_json::json!({"code": mfa_code}))
                .await?;
            return out.note("second factor accepted: destructive calls pass for 10 minutes");
        }
        AuthCmd::MfaEnrol => {
            let answer = client
                .post(&["auth", "mfa", "totp"], &serde_json::json!({}))
                .await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            let offer: TotpOffer = answer.parse()?;
            out.print(&render_offer(&offer))?;
            return out.note(
                "add the secret to your authenticator app, then run \
                 `octomil auth mfa-confirm --mfa-code CODE`",
            );
        }
        AuthCmd::MfaConfirm { mfa_code } => {
            let answer = client
                .post(
                    &["auth", "mfa", "confirm"],
                    &serde_json::json!({"code": mfa_code}),
                )
                .await?;
            if out.json {
                out.json_value(answer.body.as_ref())?;
            } else {
                let e: Enrolled = answer.parse()?;
                out.print(&render_codes(&e.recovery_codes))?;
            }
            return out.note(RECOVERY_NOTE);
        }
    };
    let password = read_password()?;
    let body = LoginBody {
        email: &args.email,
        password: &password,
        mfa_code: args.mfa_code.as_deref(),
    };
    let answer = client.post(&["auth", "login"], &body).await?;
    let session: Session = answer.parse()?;
    if out.json {
        out.json_value(answer.body.as_ref())?;
    } else {
        // The token alone on stdout, so `export OCTOMIL_API_KEY=$(octomil auth login ...)`
        // works; the hint goes to stderr and never repeats the token.
        out.print(session.token.expose())?;
    }
    if session.enrolment_required {
        return out.note(
            "this organization requires TOTP for your role and you have none yet: the token is \
             good only for enrolment; with it in OCTOMIL_API_KEY run `octomil auth mfa-enrol`, \
             then `octomil auth mfa-confirm --mfa-code CODE` (the same token then works fully)",
        );
    }
    out.note(&hint(&session, out.now))
}

const RECOVERY_NOTE: &str = "recovery codes are shown only this once: store them offline; each \
     works once at login in place of a TOTP code";

fn render_offer(o: &TotpOffer) -> String {
    let mut pairs = Vec::new();
    if let Some(e) = &o.email {
        pairs.push(("email", e.clone()));
    }
    if let Some(r) = &o.role {
        pairs.push(("role", r.clone()));
    }
    pairs.push(("totp_secret", o.totp_secret.expose().clone()));
    pairs.push(("otpauth_uri", o.otpauth_uri.expose().clone()));
    super::output::key_values(&pairs)
}

fn render_codes(codes: &[Secret<String>]) -> String {
    let mut s = String::from("recovery codes:\n");
    for c in codes {
        s.push_str("  ");
        s.push_str(c.expose());
        s.push('\n');
    }
    s
}

/// The invitation token from `OCTOMIL_INVITATION`: the token itself or the dashboard link
/// (`https://HOST/invite#TOKEN`).
fn invitation_token() -> Result<Secret<String>, CliError> {
    let raw = std::env::var(INVITATION_ENV)
        .ok()
        .map(Secret::new)
        .filter(|s| !s.expose().trim().is_empty())
        .ok_or_else(|| {
            CliError::usage(format!(
                "no invitation: set {INVITATION_ENV} to the token or link you were given"
            ))
        })?;
    Ok(token_of(raw.expose()))
}

fn token_of(raw: &str) -> Secret<String> {
    let raw = raw.trim();
    Secret::new(raw.rsplit_once('#').map_or(raw, |(_, t)| t).to_owned())
}

async fn accept_invite(
    client: &ApiClient,
    args: AcceptArgs,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let token = invitation_token()?;
    let interactive = std::io::stdin().is_terminal();
    if args.totp {
        let o = offer(client, &token).await?;
        out.print(&render_offer(&o))?;
        return out.note(
            "add the secret to your authenticator app, then run this again with \
             --mfa-code CODE (and the password in OCTOMIL_PASSWORD or on stdin)",
        );
    }
    if args.mfa_code.is_none() && !args.no_mfa && !interactive {
        return Err(CliError::usage(
            "without a terminal, run with --totp first, then with --mfa-code CODE \
             (or --no-mfa when the organization does not require TOTP)",
        ));
    }
    let password = read_password()?;
    let mfa_code = match (args.mfa_code, args.no_mfa) {
        (Some(code), _) => Some(code),
        (None, true) => None,
        (None, false) => {
            let o = offer(client, &token).await?;
            out.print(&render_offer(&o))?;
            Some(prompt_code(
                "add the secret to your authenticator app; its current code: ",
            )?)
        }
    };
    #[derive(Serialize)]
    struct Accept<'a> {
        token: &'a Secret<String>,
        password: &'a Secret<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mfa_code: Option<&'a str>,
    }
    let answer = client
        .post(
            &["auth", "invitations", "accept"],
            &Accept {
                token: &token,
                password: &password,
                mfa_code: mfa_code.as_deref(),
            },
        )
        .await?;
    if out.json {
        out.json_value(answer.body.as_ref())?;
    } else {
        let j: Joined = answer.parse()?;
        out.print(&super::output::key_values(&[
            ("email", j.email.clone()),
            ("role", j.role.clone()),
            ("mfa_enrolled", j.mfa_enrolled.to_string()),
        ]))?;
        if !j.recovery_codes.is_empty() {
            out.print(&render_codes(&j.recovery_codes))?;
            out.note(RECOVERY_NOTE)?;
        }
    }
    out.note("joined: log in with `octomil auth login --email ...`")
}

/// Step one: a TOTP secret for the invitee's authenticator.
async fn offer(client: &ApiClient, token: &Secret<String>) -> Result<TotpOffer, CliError> {
    client
        .post(
            &["auth", "invitations", "totp"],
            &serde_json::json!({"token": token}),
        )
        .await?
        .parse()
}

/// Reads one line from the terminal after `prompt` on stderr: a 6 to 8 digit code.
fn prompt_code(prompt: &str) -> Result<String, CliError> {
    let mut err = std::io::stderr();
    write!(err, "{prompt}")
        .and_then(|()| err.flush())
        .map_err(CliError::io("writing the prompt"))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(CliError::io("reading the code"))?;
    parse_mfa_code(&line).map_err(CliError::usage)
}

/// The TOTP code for a step-up the API asked for: `OCTOMIL_MFA_CODE`, else a prompt when
/// stdin is a terminal, else `None` (the caller reports `step_up_required`).
pub fn step_up_code() -> Result<Option<String>, CliError> {
    if let Some(code) = std::env::var(MFA_CODE_ENV)
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return parse_mfa_code(&code).map(Some).map_err(CliError::usage);
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    prompt_code("this call needs a fresh second factor; TOTP code: ").map(Some)
}

fn hint(s: &Session, now: u64) -> String {
    let expiry = match s.expires_at {
        Some(_) => format!("session expires {}; ", when(s.expires_at, now)),
        None => String::new(),
    };
    format!(
        "{expiry}use it with: export OCTOMIL_API_KEY=\"$(octomil auth login --email ...)\" \
         or paste the token above into OCTOMIL_API_KEY"
    )
}

/// The password from `OCTOMIL_PASSWORD`, else one line of stdin (with a prompt on a
/// terminal; input is echoed there, so prefer the variable or a pipe).
fn read_password() -> Result<Secret<String>, CliError> {
    let env = std::env::var(PASSWORD_ENV).ok().map(Secret::new);
    let stdin = std::io::stdin();
    if env.is_none() && stdin.is_terminal() {
        let mut err = std::io::stderr();
        write!(err, "password for login (echoed; prefer {PASSWORD_ENV}): ")
            .and_then(|()| err.flush())
            .map_err(CliError::io("writing the prompt"))?;
    }
    password_from(env, &mut stdin.lock())
}

/// `env` wins when set and non-empty; otherwise exactly one line of `input`, without its
/// line ending (inner and edge blanks are kept: they may be part of the password).
fn password_from(
    env: Option<Secret<String>>,
    input: &mut dyn BufRead,
) -> Result<Secret<String>, CliError> {
    if let Some(pw) = env.filter(|p| !p.expose().is_empty()) {
        return Ok(pw);
    }
    // Room for any sane password up front, so growing the buffer leaves no stray copies;
    // the bytes move into the zeroizing wrapper before anything can return early.
    let mut buf = String::with_capacity(1024);
    let read = input.read_line(&mut buf);
    let len = buf.trim_end_matches(['\n', '\r']).len();
    buf.truncate(len);
    let line = Secret::new(buf);
    read.map_err(CliError::io("reading the password from stdin"))?;
    if line.expose().is_empty() {
        return Err(CliError::usage(format!(
            "no password: set {PASSWORD_ENV} or write it as one line on stdin"
        )));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::parse;
    use clap::error::ErrorKind;

    fn args(argv: &[&str]) -> LoginArgs {
        match parse(argv).unwrap().command {
            Command::Auth(AuthCmd::Login(a)) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_invitation_and_mfa_commands() {
        let c = parse(&["auth", "accept-invite", "--mfa-code", "123456"])
            .unwrap()
            .command;
        assert!(
            matches!(c, Command::Auth(AuthCmd::AcceptInvite(AcceptArgs { totp: false, mfa_code: Some(ref m), no_mfa: false })) if m == "123456"),
            "{c:?}"
        );
        assert!(parse(&["auth", "accept-invite", "--totp", "--mfa-code", "123456"]).is_err());
        assert!(parse(&["auth", "accept-invite", "--no-mfa", "--mfa-code", "123456"]).is_err());
        assert!(parse(&["auth", "accept-invite", "--token", "x"]).is_err());
        assert!(matches!(
            parse(&["auth", "step-up", "--mfa-code", "654321"])
                .unwrap()
                .command,
            Command::Auth(AuthCmd::StepUp { .. })
        ));
        assert!(matches!(
            parse(&["auth", "mfa-enrol"]).unwrap().command,
            Command::Auth(AuthCmd::MfaEnrol)
        ));
        assert!(parse(&["auth", "mfa-confirm"]).is_err());
    }

    #[test]
    fn an_invitation_link_or_token_gives_the_token() {
        assert_eq!(
            token_of(" https://cloud.example:8443/invite#edg_invite_abc\n").expose(),
            "edg_invite_abc"
        );
        assert_eq!(token_of("edg_invite_abc").expose(), "edg_invite_abc");
    }

    #[test]
    fn parses_logout() {
        assert!(matches!(
            parse(&["auth", "logout"]).unwrap().command,
            Command::Auth(AuthCmd::Logout)
        ));
    }

    #[test]
    fn parses_login() {
        let a = args(&["auth", "login", "--email", "ops@example.com"]);
        assert_eq!((a.email.as_str(), a.mfa_code), ("ops@example.com", None));
        let a = args(&[
            "auth",
            "login",
            "--email",
            "ops@example.com",
            "--mfa-code",
            "123 456",
        ]);
        assert_eq!(a.mfa_code.as_deref(), Some("123456"));
    }

    #[test]
    fn login_rejects_bad_input_and_has_no_password_flag() {
        let e = parse(&["auth", "login"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse(&["auth", "login", "--email", "nobody"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        for code in ["12345", "123456789", "12a456"] {
            let e = parse(&["auth", "login", "--email", "a@b.c", "--mfa-code", code]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{code}");
        }
        let e = parse(&["auth", "login", "--email", "a@b.c", "--password", "x"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn password_comes_from_env_first_then_one_stdin_line() {
        let mut stdin: &[u8] = b"from stdin\nsecond line\n";
        let pw = password_from(Some(Secret::new("from env".into())), &mut stdin).unwrap();
        assert_eq!(pw.expose(), "from env");
        let pw = password_from(None, &mut stdin).unwrap();
        assert_eq!(pw.expose(), "from stdin");
        let mut crlf: &[u8] = b" spaced pw \r\n";
        assert_eq!(
            password_from(None, &mut crlf).unwrap().expose(),
            " spaced pw "
        );
        let mut no_newline: &[u8] = b"pw";
        assert_eq!(
            password_from(Some(Secret::new(String::new())), &mut no_newline)
                .unwrap()
                .expose(),
            "pw"
        );
    }

    #[test]
    fn missing_password_is_a_usage_error() {
        for input in [&b""[..], b"\n"] {
            let mut r = input;
            let e = password_from(None, &mut r).unwrap_err();
            assert_eq!(e.exit_code(), crate::cli::error::EXIT_USAGE);
            assert!(e.to_string().contains(PASSWORD_ENV), "{e}");
        }
    }

    #[test]
    fn body_and_hint_keep_secrets_where_they_belong() {
        let pw = Secret::new("hunter2".to_owned());
        let body = LoginBody {
            email: "a@b.c",
            password: &pw,
            mfa_code: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"email":"a@b.c","password":"hunter2"}"#
        );
        assert!(!format!("{body:?}").contains("hunter2"));
        let s: Session = serde_json::from_value(serde_json::json!({
            "token": "eyJhbGciOi.secret.sig", "expires_at": 3_600
        }))
        .unwrap();
        let h = hint(&s, 0);
        assert!(
            h.starts_with("session expires 1970-01-01T01:00:00Z (in 1h); "),
            "{h}"
        );
        assert!(!h.contains("eyJhbGciOi"));
    }
}
