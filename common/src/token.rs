//! Token formats: generate, parse, validate and hash API keys, device keys, bootstrap and
//! refresh tokens. Every token is a fixed prefix plus base62 characters from the OS CSPRNG.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Secret;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The kinds of bearer secret the system issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// `edg_live_`: API key or device key of a production organization.
    Live,
    /// `edg_test_`: API key or device key of a sandbox organization.
    Test,
    /// `edg_bootstrap_`: multi-use device enrolment token.
    Bootstrap,
    /// `edg_refresh_`: single-use, rotated on every refresh.
    Refresh,
}

impl TokenKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Live => "edg_live_",
            Self::Test => "edg_test_",
            Self::Bootstrap => "edg_bootstrap_",
            Self::Refresh => "edg_refresh_",
        }
    }

    /// Number of base62 characters after the prefix.
    pub const fn body_len(self) -> usize {
        match self {
            Self::Refresh => 48,
            _ => 32,
        }
    }

    /// True for the two kinds usable as `Authorization: Bearer` keys.
    pub const fn is_key(self) -> bool {
        matches!(self, Self::Live | Self::Test)
    }
}

/// Why a string is not a well-formed token. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token prefix (expected edg_live_, edg_test_, edg_bootstrap_ or edg_refresh_)")]
    UnknownPrefix,
    #[error("wrong token kind: expected a {expected} token")]
    WrongKind { expected: &'static str },
    #[error("token body must be {expected} base62 characters")]
    BadLength { expected: usize },
    #[error("token body has a character outside [0-9A-Za-z]")]
    BadCharacter,
}

/// Generates a fresh token of `kind` from the OS CSPRNG.
pub fn generate(kind: TokenKind) -> Secret<String> {
    let mut out = String::with_capacity(kind.prefix().len() + kind.body_len());
    out.push_str(kind.prefix());
    out.push_str(random_base62(kind.body_len()).expose());
    Secret::new(out)
}

/// `n` base62 characters, uniformly distributed (rejection sampling: bytes >= 248 are
/// redrawn so `% 62` has no bias).
pub fn random_base62(n: usize) -> Secret<String> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).expect("the OS random source failed");
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == n {
                break;
            }
            out.push(BASE62[(b % 62) as usize] as char);
        }
    }
    buf.fill(0);
    Secret::new(out)
}

/// Classifies `s` and checks its shape. Says nothing about whether it is valid on a server.
pub fn parse(s: &str) -> Result<TokenKind, TokenError> {
    let kind = [
        TokenKind::Bootstrap,
        TokenKind::Refresh,
        TokenKind::Live,
        TokenKind::Test,
    ]
    .into_iter()
    .find(|k| s.starts_with(k.prefix()))
    .ok_or(TokenError::UnknownPrefix)?;
    let body = &s[kind.prefix().len()..];
    if body.len() != kind.body_len() {
        return Err(TokenError::BadLength {
            expected: kind.body_len(),
        });
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(TokenError::BadCharacter);
    }
    Ok(kind)
}

/// Parses `s` and requires one of `expected`.
pub fn parse_as(
    s: &str,
    expected: &[TokenKind],
    name: &'static str,
) -> Result<TokenKind, TokenError> {
    let kind = parse(s)?;
    if expected.contains(&kind) {
        Ok(kind)
    } else {
        Err(TokenError::WrongKind { expected: name })
    }
}

/// SHA-256 of a token: what servers store instead of the token. Tokens carry 190+ bits of
/// entropy, so a fast unsalted hash is enough (a slow KDF protects guessable passwords only).
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_as_their_kind() {
        for kind in [
            TokenKind::Live,
            TokenKind::Test,
            TokenKind::Bootstrap,
            TokenKind::Refresh,
        ] {
            let t = generate(kind);
            assert!(t.expose().starts_with(kind.prefix()));
            assert_eq!(t.expose().len(), kind.prefix().len() + kind.body_len());
            assert_eq!(parse(t.expose()), Ok(kind));
        }
    }

    #[test]
    fn tokens_are_distinct() {
        let a = generate(TokenKind::Live);
        let b = generate(TokenKind::Live);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn malformed_tokens_are_rejected_with_a_reason() {
        let cases: &[(&str, TokenError)] = &[
            ("", TokenError::UnknownPrefix),
            (
                "sk_live_0123456789abcdef0123456789abcdef",
                TokenError::UnknownPrefix,
            ),
            (
                "edg_prod_0123456789abcdef0123456789abcdef",
                TokenError::UnknownPrefix,
            ),
            ("edg_live_short", TokenError::BadLength { expected: 32 }),
            (
                "edg_live_0123456789abcdef0123456789abcdef0",
                TokenError::BadLength { expected: 32 },
            ),
            (
                "edg_live_0123456789abcdef0123456789abcde!",
                TokenError::BadCharacter,
            ),
            (
                "edg_refresh_0123456789abcdef0123456789abcdef",
                TokenError::BadLength { expected: 48 },
            ),
            (
                "edg_test_0123456789abcdef0123456789abcdé",
                TokenError::BadCharacter,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn parse_as_checks_the_kind() {
        let t = generate(TokenKind::Bootstrap);
        assert!(parse_as(t.expose(), &[TokenKind::Bootstrap], "bootstrap").is_ok());
        assert_eq!(
            parse_as(t.expose(), &[TokenKind::Live, TokenKind::Test], "API key"),
            Err(TokenError::WrongKind {
                expected: "API key"
            })
        );
    }

    #[test]
    fn errors_never_echo_the_token() {
        let t = "edg_live_0123456789abcdef0123456789abcde!";
        let e = parse(t).unwrap_err().to_string();
        assert!(!e.contains("0123456789"));
    }

    #[test]
    fn hash_is_stable_and_comparison_is_exact() {
        let h1 = hash("edg_live_x");
        assert!(hashes_equal(&h1, &hash("edg_live_x")));
        assert!(!hashes_equal(&h1, &hash("edg_live_y")));
    }
}
