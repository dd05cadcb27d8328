//! Registration proof of possession and key encodings. The device signs
//! `DOMAIN || device_id || 0 || timestamp` with the Ed25519 key whose public half it registers,
//! so a stolen bootstrap token alone cannot claim someone else's device id.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

const DOMAIN: &[u8] = b"octomil-register-v1\0";
/// How far a proof's timestamp may be from the server's clock.
pub const MAX_SKEW_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("device_public_key is not a base64url Ed25519 public key")]
    BadPublicKey,
    #[error("proof signature is not base64url Ed25519")]
    BadSignatureEncoding,
    #[error("proof signature does not verify")]
    BadSignature,
    #[error("proof timestamp is more than {MAX_SKEW_SECS} s from the server clock")]
    Skewed,
}

fn message(device_id: &str, timestamp: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + device_id.len() + 21);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(device_id.as_bytes());
    m.push(0);
    m.extend_from_slice(timestamp.to_string().as_bytes());
    m
}

/// Signs a registration proof; returns the base64url signature.
pub fn sign(key: &SigningKey, device_id: &str, timestamp: u64) -> String {
    URL_SAFE_NO_PAD.encode(key.sign(&message(device_id, timestamp)).to_bytes())
}

/// Verifies a registration proof made at `timestamp` against the server's `now_secs`.
pub fn verify(
    public_key: &VerifyingKey,
    device_id: &str,
    timestamp: u64,
    signature_b64: &str,
    now_secs: u64,
) -> Result<(), ProofError> {
    if timestamp.abs_diff(now_secs) > MAX_SKEW_SECS {
        return Err(ProofError::Skewed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| ProofError::BadSignatureEncoding)?;
    let sig = Signature::from_slice(&raw).map_err(|_| ProofError::BadSignatureEncoding)?;
    public_key
        .verify(&message(device_id, timestamp), &sig)
        .map_err(|_| ProofError::BadSignature)
}

/// Base64url (no padding) of an Ed25519 public key: how keys travel in JSON.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub fn decode_public_key(s: &str) -> Result<VerifyingKey, ProofError> {
    let raw = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| ProofError::BadPublicKey)?;
    let arr: [u8; 32] = raw.try_into().map_err(|_| ProofError::BadPublicKey)?;
    VerifyingKey::from_bytes(&arr).map_err(|_| ProofError::BadPublicKey)
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
    fn proof_round_trip_and_failures() {
        let k = generate_signing_key();
        let pk = decode_public_key(&encode_public_key(&k.verifying_key())).unwrap();
        let sig = sign(&k, "edge-01", 1_000);
        assert_eq!(verify(&pk, "edge-01", 1_000, &sig, 1_100), Ok(()));
        assert_eq!(
            verify(&pk, "edge-02", 1_000, &sig, 1_100),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify(&pk, "edge-01", 1_001, &sig, 1_100),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify(&pk, "edge-01", 1_000, &sig, 2_000),
            Err(ProofError::Skewed)
        );
        assert_eq!(
            verify(&pk, "edge-01", 1_000, "!!", 1_000),
            Err(ProofError::BadSignatureEncoding)
        );
        let other = generate_signing_key().verifying_key();
        assert_eq!(
            verify(&other, "edge-01", 1_000, &sig, 1_000),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn bad_public_keys() {
        assert_eq!(decode_public_key("abc"), Err(ProofError::BadPublicKey));
        assert_eq!(decode_public_key("%%%"), Err(ProofError::BadPublicKey));
    }
}
