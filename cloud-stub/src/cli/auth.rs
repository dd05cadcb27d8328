//! `octomil auth login`: trades email, password and TOTP code for a dashboard session token.
//! The password never comes from a flag (argv is world-readable through `ps`).
//! `octomil auth logout` ends the session in `OCTOMIL_API_KEY` server-side.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use octomil_common::Secret;
use serde::{Deserialize, Serialize};

use super::output::{Out, when};
use super::{ApiClient, CliError, parse_email};

/// Where the password comes from when stdin is not used.
pub const PASSWORD_ENV: &str = "OCTOMIL_PASSWORD";

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Log in; the password is read from OCTOMIL_PASSWORD or one line of stdin
    Login(LoginArgs),
    /// End the session in OCTOMIL_API_KEY; its token is refused from then on
    Logout,
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
    out.note(&hint(&session, out.now))
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
