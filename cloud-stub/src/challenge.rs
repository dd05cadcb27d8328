//! Registration challenges (protocol 2): self-verifying, so the unauthenticated endpoint that
//! mints them keeps nothing per caller, and a bounded book of the ones already consumed, kept
//! only until they expire, so each is good for one registration.
//!
//! A challenge is `base64url(version || expires_at (u64 BE) || nonce (16) || mac (32))` with
//! `mac = HMAC-SHA256(k, DOMAIN || device_id || 0 || expires_at || nonce)`; `expires_at` is on
//! the cloud's own clock. See docs/device-protocol.md.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use octomil_common::Secret;
use sha2::Sha256;

/// How long a challenge stays usable.
pub const TTL_SECS: u64 = 120;
/// Most consumed challenges remembered at once; past it (after dropping the expired ones),
/// registrations are refused until the oldest expire rather than forgetting any.
pub const MAX_CONSUMED: usize = 100_000;
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"octomil-challenge-v1\0";
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
const RAW_LEN: usize = 1 + 8 + NONCE_LEN + MAC_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the challenge is not one this cloud issued for this device")]
    Invalid,
    #[error("the challenge has expired; ask for a new one")]
    Expired,
    #[error("the challenge was already used; ask for a new one")]
    Used,
    #[error("too many registrations in flight; retry in {0} s")]
    Busy(u64),
}

/// A challenge whose MAC and expiry checked out, not yet consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    nonce: [u8; NONCE_LEN],
    expires_at: u64,
}

pub struct Challenges {
    key: Secret<Vec<u8>>,
    /// Nonce -> expiry (cloud seconds) of every consumed, unexpired challenge.
    consumed: Mutex<HashMap<[u8; NONCE_LEN], u64>>,
    cap: usize,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    pub fn new(key: Secret<Vec<u8>>) -> Self {
        Self::with_cap(key, MAX_CONSUMED)
    }

    pub fn with_cap(key: Secret<Vec<u8>>, cap: usize) -> Self {
        Self {
            key,
            consumed: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// A fresh challenge for `device_id`, valid [`TTL_SECS`] from `now_secs`.
    pub fn mint(&self, device_id: &str, now_secs: u64) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        self.mint_with(device_id, now_secs.saturating_add(TTL_SECS), nonce)
    }

    fn mint_with(&self, device_id: &str, expires_at: u64, nonce: [u8; NONCE_LEN]) -> String {
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&expires_at.to_be_bytes());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(
            &self
                .mac(device_id, expires_at, &nonce)
                .finalize()
                .into_bytes(),
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn mac(&self, device_id: &str, expires_at: u64, nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose())
            .expect("HMAC takes any key length");
        mac.update(DOMAIN);
        mac.update(device_id.as_bytes());
        mac.update(&[0]);
        mac.update(&expires_at.to_be_bytes());
        mac.update(nonce);
        mac
    }

    /// Checks that `challenge` was minted here for `device_id` and has not expired.
    pub fn check(
        &self,
        device_id: &str,
        challenge: &str,
        now_secs: u64,
    ) -> Result<Checked, ChallengeError> {
        let raw = URL_SAFE_NO_PAD
            .decode(challenge)
            .map_err(|_| ChallengeError::Invalid)?;
        if raw.len() != RAW_LEN || raw[0] != VERSION {
            return Err(ChallengeError::Invalid);
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&raw[1..9]);
        let expires_at = u64::from_be_bytes(exp);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[9..9 + NONCE_LEN]);
        self.mac(device_id, expires_at, &nonce)
            .verify_slice(&raw[9 + NONCE_LEN..])
            .map_err(|_| ChallengeError::Invalid)?;
        if now_secs >= expires_at {
            return Err(ChallengeError::Expired);
        }
        Ok(Checked { nonce, expires_at })
    }

    /// Marks a checked challenge used; a second use is [`ChallengeError::Used`].
    pub fn consume(&self, c: Checked, now_secs: u64) -> Result<(), ChallengeError> {
        let mut book = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        if book.contains_key(&c.nonce) {
            return Err(ChallengeError::Used);
        }
        if book.len() >= self.cap {
            book.retain(|_, exp| *exp > now_secs);
            if book.len() >= self.cap {
                let soonest = book.values().min().copied().unwrap_or(now_secs);
                return Err(ChallengeError::Busy(
                    soonest.saturating_sub(now_secs).max(1),
                ));
            }
        }
        book.insert(c.nonce, c.expires_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(cap: usize) -> Challenges {
        Challenges::with_cap(Secret::new(vec![7; 32]), cap)
    }

    #[test]
    fn a_challenge_is_good_once_for_its_device_until_it_expires() {
        let b = book(10);
        let c = b.mint("edge-01", 1_000);
        let checked = b.check("edge-01", &c, 1_000).unwrap();
        assert_eq!(b.check("edge-02", &c, 1_000), Err(ChallengeError::Invalid));
        assert_eq!(
            b.check("edge-01", &c, 1_000 + TTL_SECS),
            Err(ChallengeError::Expired)
        );
        b.consume(checked, 1_000).unwrap();
        let again = b.check("edge-01", &c, 1_001).unwrap();
        assert_eq!(b.consume(again, 1_001), Err(ChallengeError::Used));
    }

    #[test]
    fn forged_and_altered_challenges_are_invalid() {
        let b = book(10);
        let other = Challenges::new(Secret::new(vec![8; 32]));
        let forged = other.mint("edge-01", 1_000);
        assert_eq!(
            b.check("edge-01", &forged, 1_000),
            Err(ChallengeError::Invalid)
        );
        // Pushing the expiry out breaks the MAC.
        let c = b.mint_with("edge-01", 1_100, [1; NONCE_LEN]);
        let longer = b.mint_with("edge-01", u64::MAX, [1; NONCE_LEN]);
        let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        let tampered = URL_SAFE_NO_PAD.encode(&raw);
        assert_ne!(tampered, longer);
        assert_eq!(
            b.check("edge-01", &tampered, 1_000),
            Err(ChallengeError::Invalid)
        );
        for junk in ["", "!!", "AAAA"] {
            assert_eq!(
                b.check("edge-01", junk, 1_000),
                Err(ChallengeError::Invalid)
            );
        }
    }

    #[test]
    fn the_consumed_book_is_bounded_and_forgets_only_expired_entries() {
        let b = book(2);
        for n in 0..2u8 {
            let c = b.mint_with("d", 1_100, [n; NONCE_LEN]);
            b.consume(b.check("d", &c, 1_000).unwrap(), 1_000).unwrap();
        }
        let third = b.mint_with("d", 1_100, [9; NONCE_LEN]);
        let checked = b.check("d", &third, 1_000).unwrap();
        assert_eq!(b.consume(checked, 1_000), Err(ChallengeError::Busy(100)));
        // Once the first two expired they may be forgotten: they can no longer be used anyway.
        let later = b.mint_with("d", 1_300, [9; NONCE_LEN]);
        b.consume(b.check("d", &later, 1_200).unwrap(), 1_200)
            .unwrap();
    }
}
