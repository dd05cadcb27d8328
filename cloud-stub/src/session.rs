//! Dashboard sessions: Argon2id passwords, RFC 6238 TOTP, and HS256 JWTs.
//!
//! The JWT is written here with RustCrypto's HMAC rather than `jsonwebtoken`: its pure-Rust
//! backend drags in RSA and P-256/P-384 for one HS256 MAC we can check in a few lines.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use octomil_common::Secret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::scope::Role;

/// Sessions last this long.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;

/// A session limited to TOTP enrolment lasts this long.
pub const ENROLMENT_TTL_SECS: u64 = 15 * 60;

/// A second factor counts as fresh for destructive calls this long (a TOTP login, an
/// enrolment or `POST /auth/step-up`).
pub const STEP_UP_WINDOW_SECS: u64 = 10 * 60;

/// Recovery codes handed out at enrolment.
pub const RECOVERY_CODES: usize = 10;

/// 403 for a destructive call made with a session whose second factor is older than
/// [`STEP_UP_WINDOW_SECS`]: give a TOTP code to `POST /auth/step-up`, then retry.
pub const STEP_UP_REQUIRED: &str = "step_up_required";

/// 403 for a call made with a session limited to TOTP enrolment.
pub const MFA_ENROLMENT_REQUIRED: &str = "mfa_enrolment_required";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("password hashing failed")]
    Hash,
    #[error("session token is malformed")]
    Malformed,
    #[error("session token signature does not verify")]
    BadSignature,
    #[error("session token has expired")]
    Expired,
    #[error("TOTP secret is unusable")]
    Totp,
}

pub fn hash_password(password: &str) -> Result<String, SessionError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| SessionError::Hash)
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Verifies `password` against the PHC string `phc`, with `memory` as Argon2's working
/// memory (grown to what the hash needs once, then reused): a login allocates nothing large,
/// so a flood of logins cannot grow the heap one 19 MiB block at a time.
pub fn verify_password_in(password: &str, phc: &str, memory: &mut Vec<argon2::Block>) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let need = params.block_count();
    if memory.len() < need {
        memory.resize(need, argon2::Block::default());
    }
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.as_bytes().len()) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            out,
            &mut memory[..need],
        )
        .is_err()
    {
        return false;
    }
    bool::from(out.ct_eq(expected.as_bytes()))
}

fn totp(secret: &[u8]) -> Result<totp_rs::Totp, SessionError> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .build()
        .map_err(|_| SessionError::Totp)
}

/// Checks a 6-digit code at `now_secs`, accepting one step of skew either way.
pub fn check_totp(secret: &[u8], code: &str, now_secs: u64) -> bool {
    totp(secret)
        .map(|t| t.check(code.trim(), now_secs).is_some())
        .unwrap_or(false)
}

/// The time step (of 30 s) whose code `code` is at `now_secs`, accepting one step of skew
/// either way; the caller accepts each step once only (RFC 6238 section 5.2).
pub fn totp_step(secret: &[u8], code: &str, now_secs: u64) -> Option<u64> {
    totp(secret).ok()?.check(code.trim(), now_secs)
}

/// A password hash of nothing anyone knows, made once with the same parameters as members'
/// hashes: a login for an unknown email checks against it, so it costs the same work.
pub fn dummy_phc() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let pw = octomil_common::token::random_base62(32);
        hash_password(pw.expose()).unwrap_or_default()
    })
}

/// The current code: for tests and for operators who script a login.
pub fn totp_code(secret: &[u8], now_secs: u64) -> Result<String, SessionError> {
    Ok(totp(secret)?.generate(now_secs).to_string())
}

pub fn totp_base32(secret: &[u8]) -> String {
    totp_rs::Secret::from(secret.to_vec()).to_base32()
}

pub fn totp_from_base32(s: &str) -> Result<Vec<u8>, SessionError> {
    totp_rs::Secret::try_from_base32(s.trim())
        .map(|s| s.as_bytes().to_vec())
        .map_err(|_| SessionError::Totp)
}

pub fn otpauth_uri(issuer: &str, email: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{issuer}:{email}?secret={}&issuer={issuer}&algorithm=SHA1&digits=6&period=30",
        totp_base32(secret)
    )
}

/// A new random TOTP secret (160 bits, as RFC 4226 recommends).
pub fn new_totp_secret() -> Result<Vec<u8>, SessionError> {
    let mut secret = vec![0u8; 20];
    getrandom::fill(&mut secret).map_err(|_| SessionError::Totp)?;
    Ok(secret)
}

/// [`RECOVERY_CODES`] new recovery codes (`xxxxx-xxxxx-xxxxx`, about 89 bits each) and
/// their hashes, which are all the store keeps.
pub fn new_recovery_codes() -> (Vec<Secret<String>>, Vec<[u8; 32]>) {
    let codes: Vec<Secret<String>> = (0..RECOVERY_CODES)
        .map(|_| {
            let raw = octomil_common::token::random_base62(15);
            let r = raw.expose();
            Secret::new(format!("{}-{}-{}", &r[..5], &r[5..10], &r[10..]))
        })
        .collect();
    let hashes = codes.iter().map(|c| recovery_hash(c.expose())).collect();
    (codes, hashes)
}

/// The stored form of a recovery code (blanks and dashes ignored, as people type them).
pub fn recovery_hash(code: &str) -> [u8; 32] {
    let norm: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    octomil_common::token::hash(&format!("recovery:{norm}"))
}

/// Whether `code` has the shape of a recovery code rather than a TOTP code.
pub fn looks_like_recovery_code(code: &str) -> bool {
    code.chars()
        .any(|c| !c.is_ascii_digit() && !c.is_whitespace())
}

/// The one check every destructive call made with a dashboard session goes through (revoke,
/// bulk revoke, delete org, role change, member removal, preset change, MFA reset): the
/// session's latest second factor must be at most [`STEP_UP_WINDOW_SECS`] old, else 403
/// [`STEP_UP_REQUIRED`]. API keys pass (their scopes bound them), as do members the preset
/// lets go without a second factor and who have none (there is nothing to step up with).
pub fn require_recent_second_factor(
    state: &crate::app::Cloud,
    auth: &crate::extract::Auth,
) -> crate::error::ApiResult<()> {
    let crate::extract::Principal::Session { jti, email, .. } = &auth.0 else {
        return Ok(());
    };
    let now = state.clock.now_secs();
    let fresh = state.store.read(|m| {
        let has_mfa = m.members.get(email).is_some_and(|r| r.has_mfa());
        let recent = m.sessions.get(jti).is_some_and(|s| {
            s.second_factor_at
                .is_some_and(|t| now < t.saturating_add(STEP_UP_WINDOW_SECS))
        });
        recent || !has_mfa
    });
    if fresh {
        Ok(())
    } else {
        Err(crate::error::ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            STEP_UP_REQUIRED,
            "this call needs a second factor given in the last 10 minutes: \
             POST /api/v1/auth/step-up with a TOTP code, then retry",
        ))
    }
}

/// What a session token asserts. The role is re-read from the member record on every
/// request, so a demotion or removal takes effect at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub org: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS256","typ":"JWT"}

/// Signs and verifies HS256 session tokens with the cloud's 32-byte session key.
pub struct SessionKeys {
    key: Secret<Vec<u8>>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(***)")
    }
}

impl SessionKeys {
    pub fn new(key: Secret<Vec<u8>>) -> Self {
        Self { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    pub fn issue(&self, claims: &Claims) -> Secret<String> {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(payload));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Secret::new(format!("{signing_input}.{sig}"))
    }

    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, SessionError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionError::Malformed);
        };
        if h != HEADER_B64 {
            return Err(SessionError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| SessionError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| SessionError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| SessionError::Malformed)?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| SessionError::Malformed)?;
        if claims.exp <= now_secs {
            return Err(SessionError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "a@example.com".into(),
            org: "org_1".into(),
            role: Role::Admin,
            iat: 1,
            exp,
            jti: "j".into(),
        }
    }

    #[test]
    fn jwt_round_trip_and_tampering() {
        let keys = SessionKeys::new(Secret::new(vec![7; 32]));
        let t = keys.issue(&claims(100));
        assert_eq!(keys.verify(t.expose(), 50).unwrap(), claims(100));
        assert!(matches!(
            keys.verify(t.expose(), 100),
            Err(SessionError::Expired)
        ));
        let other = SessionKeys::new(Secret::new(vec![8; 32]));
        assert!(matches!(
            other.verify(t.expose(), 50),
            Err(SessionError::BadSignature)
        ));
        // Swap in a payload that claims Owner: the signature no longer matches.
        let mut forged = claims(100);
        forged.role = Role::Owner;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = t.expose().split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(matches!(
            keys.verify(&tampered, 50),
            Err(SessionError::BadSignature)
        ));
        assert!(matches!(
            keys.verify("a.b", 50),
            Err(SessionError::Malformed)
        ));
        // alg=none and friends are refused outright.
        let none = format!("eyJhbGciOiJub25lIn0.{forged_payload}.");
        assert!(matches!(
            keys.verify(&none, 50),
            Err(SessionError::Malformed)
        ));
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a phc string"));
        let mut memory = Vec::new();
        assert!(verify_password_in("correct horse", &h, &mut memory));
        assert!(!verify_password_in("wrong", &h, &mut memory));
        assert!(!verify_password_in("x", "not a phc string", &mut memory));
        assert_eq!(memory.len(), 19 * 1024);
    }

    #[test]
    fn recovery_codes_are_long_random_and_typed_loosely() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(
            (codes.len(), hashes.len()),
            (RECOVERY_CODES, RECOVERY_CODES)
        );
        let c = codes[0].expose();
        assert_eq!(c.len(), 17);
        assert_eq!(c.matches('-').count(), 2);
        assert!(looks_like_recovery_code(c));
        assert!(!looks_like_recovery_code("123 456"));
        // Blanks and dashes do not matter; the code itself does.
        let bare: String = c.chars().filter(|ch| *ch != '-').collect();
        assert_eq!(recovery_hash(&bare), hashes[0]);
        assert_eq!(recovery_hash(&format!(" {c} ")), hashes[0]);
        assert_ne!(recovery_hash(&c[1..]), hashes[0]);
        let mut unique = hashes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
        assert!(!format!("{codes:?}").contains(c));
    }

    #[test]
    fn totp_matches_rfc6238_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59: 94287082 (8 digits); the 6-digit code is 287082.
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59).unwrap(), "287082");
        assert!(check_totp(secret, "287082", 59));
        assert!(check_totp(secret, "287082", 59 + 30)); // one step of skew
        assert!(!check_totp(secret, "287082", 59 + 90));
        assert!(!check_totp(secret, "abc", 59));
        assert_eq!(totp_step(secret, "287082", 59), Some(1));
        assert_eq!(totp_step(secret, "287082", 59 + 30), Some(1));
        assert_eq!(totp_step(secret, "287082", 59 + 90), None);
        let b32 = totp_base32(secret);
        assert_eq!(totp_from_base32(&b32).unwrap(), secret);
    }
}
