//! Registration proof of possession (protocol 2) and key encodings. The device signs
//! `DOMAIN || challenge || 0 || device_id || 0 || device_public_key || 0 || hex(SHA-256(bootstrap_token))`
//! with the Ed25519 key whose public half it registers. The challenge is single-use and issued
//! by the cloud, so no clock on either side takes part, and a captured request cannot be
//! replayed; binding the bootstrap token's hash means a proof made for one fleet's token is
//! no use with another's. See docs/device-protocol.md.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"octomil-register-v2\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("device_public_key is not a base64url Ed25519 public key")]
    BadPublicKey,
    #[error("proof signature is not base64url Ed25519")]
    BadSignatureEncoding,
    #[error("proof signature does not verify")]
    BadSignature,
}

/// What a registration proof binds together.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    pub challenge: &'a str,
    pub device_id: &'a str,
    /// The base64url public key exactly as sent in `device_public_key`.
    pub device_public_key: &'a str,
    /// SHA-256 of the bootstrap token (what the cloud stores).
    pub bootstrap_hash: &'a [u8; 32],
}

impl Statement<'_> {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            DOMAIN.len()
                + self.challenge.len()
                + self.device_id.len()
                + self.device_public_key.len()
                + 67,
        );
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(self.challenge.as_bytes());
        m.push(0);
        m.extend_from_slice(self.device_id.as_bytes());
        m.push(0);
        m.extend_from_slice(self.device_public_key.as_bytes());
        m.push(0);
        for b in self.bootstrap_hash {
            m.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        m
    }
}

/// SHA-256 of a bootstrap token, as the proof binds it.
pub fn bootstrap_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Signs a registration proof; returns the base64url signature.
pub fn sign(key: &SigningKey, statement: &Statement<'_>) -> String {
    URL_SAFE_NO_PAD.encode(key.sign(&statement.message()).to_bytes())
}

/// Verifies a registration proof (strict Ed25519: no malleable or small-order signatures).
pub fn verify(
    public_key: &VerifyingKey,
    statement: &Statement<'_>,
    signature_b64: &str,
) -> Result<(), ProofError> {
    let raw = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| ProofError::BadSignatureEncoding)?;
    let sig = Signature::from_slice(&raw).map_err(|_| ProofError::BadSignatureEncoding)?;
    public_key
        .verify_strict(&statement.message(), &sig)
        .map_err(|_| ProofError::BadSignature)
}

/// Base64url (no padding) of an Ed25519 public key: how keys travel in JSON.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Decodes a public key, refusing weak (small-order) points: such a key would let anyone
/// forge signatures that verify under it.
pub fn decode_public_key(s: &str) -> Result<VerifyingKey, ProofError> {
    let raw = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| ProofError::BadPublicKey)?;
    let arr: [u8; 32] = raw.try_into().map_err(|_| ProofError::BadPublicKey)?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| ProofError::BadPublicKey)?;
    if key.is_weak() {
        return Err(ProofError::BadPublicKey);
    }
    Ok(key)
}

/// A new Ed25519 key from the OS CSPRNG.
pub fn generate_signing_key() -> SigningKey {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).expect("the OS random source failed");
    SigningKey::from_bytes(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_round_trip_and_every_bound_field() {
        let k = generate_signing_key();
        let pk_b64 = encode_public_key(&k.verifying_key());
        let pk = decode_public_key(&pk_b64).unwrap();
        let boot = bootstrap_hash("edg_bootstrap_a");
        let st = Statement {
            challenge: "c1",
            device_id: "edge-01",
            device_public_key: &pk_b64,
            bootstrap_hash: &boot,
        };
        let sig = sign(&k, &st);
        assert_eq!(verify(&pk, &st, &sig), Ok(()));
        let other_boot = bootstrap_hash("edg_bootstrap_b");
        let other_key = encode_public_key(&generate_signing_key().verifying_key());
        for changed in [
            Statement {
                challenge: "c2",
                ..st
            },
            Statement {
                device_id: "edge-02",
                ..st
            },
            Statement {
                device_public_key: &other_key,
                ..st
            },
            Statement {
                bootstrap_hash: &other_boot,
                ..st
            },
        ] {
            assert_eq!(verify(&pk, &changed, &sig), Err(ProofError::BadSignature));
        }
        assert_eq!(
            verify(&pk, &st, "!!"),
            Err(ProofError::BadSignatureEncoding)
        );
        let other = generate_signing_key().verifying_key();
        assert_eq!(verify(&other, &st, &sig), Err(ProofError::BadSignature));
    }

    #[test]
    fn bad_and_weak_public_keys() {
        assert_eq!(decode_public_key("abc"), Err(ProofError::BadPublicKey));
        assert_eq!(decode_public_key("%%%"), Err(ProofError::BadPublicKey));
        // The identity point: small order, so "signatures" under it are trivial to forge.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            decode_public_key(&URL_SAFE_NO_PAD.encode(identity)),
            Err(ProofError::BadPublicKey)
        );
    }
}
