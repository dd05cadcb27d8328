//! The signed revocation envelope the cloud publishes on `octomil/v1/devices/{id}/revocation`.
//!
//! Wire format (version 2, docs/device-protocol.md):
//! `version: u8 (= 2) || body: postcard(Revocation) || signature: [u8; 64]`
//! where the Ed25519 signature covers `DOMAIN || version || body` and is checked with strict
//! verification. The domain tag keeps a signature made for anything else (a registration
//! proof, say) from ever verifying here. Freshness is judged only against values the cloud
//! issued (the registration epoch and a cloud-wide sequence), never against a clock.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

pub const VERSION: u8 = 2;
/// Upper bound on an encoded envelope; anything larger is rejected before parsing.
pub const MAX_ENVELOPE_LEN: usize = 1024;
pub const MAX_REASON_LEN: usize = 256;
const DOMAIN: &[u8] = b"octomil-revocation-v2\0";
const SIG_LEN: usize = 64;

/// What the cloud says about a revoked device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub device_id: String,
    /// The `registration_epoch` of the registration being revoked.
    pub epoch: u64,
    /// From a cloud-wide counter that never restarts (deleting and re-provisioning an id
    /// cannot make it repeat); a device ignores any sequence it has acted on.
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {0} bytes, over the {MAX_ENVELOPE_LEN}-byte limit")]
    Oversized(usize),
    #[error("envelope is truncated")]
    Truncated,
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("signature does not verify against the pinned key")]
    BadSignature,
    #[error("envelope body is malformed")]
    Malformed,
    #[error("reason is longer than {MAX_REASON_LEN} bytes")]
    ReasonTooLong,
    #[error("envelope names another device")]
    WrongDevice,
    #[error("envelope is for an earlier registration of this device")]
    Stale,
    #[error("envelope sequence {seq} was already seen")]
    Replayed { seq: u64 },
}

impl EnvelopeError {
    /// A stable label for metrics (`reason="bad_signature"`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oversized(_) => "oversized",
            Self::Truncated => "truncated",
            Self::UnknownVersion(_) => "unknown_version",
            Self::BadSignature => "bad_signature",
            Self::Malformed => "malformed",
            Self::ReasonTooLong => "reason_too_long",
            Self::WrongDevice => "wrong_device",
            Self::Stale => "stale",
            Self::Replayed { .. } => "replayed",
        }
    }
}

/// Encodes and signs a revocation.
pub fn seal(revocation: &Revocation, key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
    if revocation.reason.len() > MAX_REASON_LEN {
        return Err(EnvelopeError::ReasonTooLong);
    }
    let mut out = vec![VERSION];
    out.extend(postcard::to_stdvec(revocation).map_err(|_| EnvelopeError::Malformed)?);
    let sig = key.sign(&signed_message(&out));
    out.extend_from_slice(&sig.to_bytes());
    if out.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::Oversized(out.len()));
    }
    Ok(out)
}

/// Checks size, version and signature, then decodes. Says nothing about whether the
/// revocation applies to this device: see [`Expectations::check`].
pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<Revocation, EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::Oversized(bytes.len()));
    }
    let (&version, _) = bytes.split_first().ok_or(EnvelopeError::Truncated)?;
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    if bytes.len() < 1 + SIG_LEN + 1 {
        return Err(EnvelopeError::Truncated);
    }
    let (signed, sig) = bytes.split_at(bytes.len() - SIG_LEN);
    let sig = Signature::from_slice(sig).map_err(|_| EnvelopeError::BadSignature)?;
    key.verify_strict(&signed_message(signed), &sig)
        .map_err(|_| EnvelopeError::BadSignature)?;
    let (rev, rest) = postcard::take_from_bytes::<Revocation>(&signed[1..])
        .map_err(|_| EnvelopeError::Malformed)?;
    if !rest.is_empty() {
        return Err(EnvelopeError::Malformed);
    }
    if rev.reason.len() > MAX_REASON_LEN {
        return Err(EnvelopeError::ReasonTooLong);
    }
    Ok(rev)
}

fn signed_message(versioned_body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + versioned_body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(versioned_body);
    m
}

/// What a device knows that makes a verified envelope apply to it.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub device_id: &'a str,
    /// The `registration_epoch` of the device's current registration.
    pub epoch: u64,
    /// Highest sequence already acted on, if any.
    pub last_seq: Option<u64>,
}

impl Expectations<'_> {
    pub fn check(&self, rev: &Revocation) -> Result<(), EnvelopeError> {
        if rev.device_id != self.device_id {
            return Err(EnvelopeError::WrongDevice);
        }
        if rev.epoch < self.epoch {
            return Err(EnvelopeError::Stale);
        }
        if let Some(last) = self.last_seq
            && rev.seq <= last
        {
            return Err(EnvelopeError::Replayed { seq: rev.seq });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn rev() -> Revocation {
        Revocation {
            device_id: "edge-01".into(),
            epoch: 40,
            seq: 3,
            reason: "stolen".into(),
        }
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let bytes = seal(&rev(), &k).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(open(&bytes, &k.verifying_key()).unwrap(), rev());
    }

    #[test]
    fn forged_truncated_and_altered_envelopes_are_rejected() {
        let k = key(1);
        let bytes = seal(&rev(), &k).unwrap();
        let vk = k.verifying_key();
        assert_eq!(
            open(&bytes, &key(2).verifying_key()),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(open(&[], &vk), Err(EnvelopeError::Truncated));
        assert_eq!(open(&bytes[..10], &vk), Err(EnvelopeError::Truncated));
        assert_eq!(
            open(&bytes[..bytes.len() - 1], &vk),
            Err(EnvelopeError::BadSignature)
        );
        let mut flipped = bytes.clone();
        flipped[3] ^= 1;
        assert_eq!(open(&flipped, &vk), Err(EnvelopeError::BadSignature));
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert_eq!(open(&v1, &vk), Err(EnvelopeError::UnknownVersion(1)));
        assert!(matches!(
            open(&[1u8; 2000], &vk),
            Err(EnvelopeError::Oversized(2000))
        ));
    }

    #[test]
    fn expectations() {
        let r = rev();
        let ok = Expectations {
            device_id: "edge-01",
            epoch: r.epoch,
            last_seq: Some(2),
        };
        assert_eq!(ok.check(&r), Ok(()));
        let other = Expectations {
            device_id: "edge-02",
            ..ok.clone()
        };
        assert_eq!(other.check(&r), Err(EnvelopeError::WrongDevice));
        let later = Expectations {
            epoch: r.epoch + 1,
            ..ok.clone()
        };
        assert_eq!(later.check(&r), Err(EnvelopeError::Stale));
        let seen = Expectations {
            last_seq: Some(3),
            ..ok
        };
        assert_eq!(seen.check(&r), Err(EnvelopeError::Replayed { seq: 3 }));
    }

    #[test]
    fn a_version_1_envelope_is_an_unknown_version() {
        // What a protocol-1 cloud publishes: version byte 1, a body with a timestamp.
        let k = key(1);
        let mut v1 = vec![1u8];
        v1.extend(postcard::to_stdvec(&("edge-01", 1_700_000_000_000u64, 3u64, "x")).unwrap());
        v1.extend_from_slice(&[0u8; 64]);
        assert_eq!(
            open(&v1, &k.verifying_key()),
            Err(EnvelopeError::UnknownVersion(1))
        );
    }

    #[test]
    fn a_newer_registration_makes_an_older_epoch_stale_without_any_clock() {
        let mut r = rev();
        r.epoch = 7;
        let exp = Expectations {
            device_id: "edge-01",
            epoch: 8,
            last_seq: None,
        };
        assert_eq!(exp.check(&r), Err(EnvelopeError::Stale));
        r.epoch = 9; // revoked after a later re-registration the device has not saved yet
        assert_eq!(exp.check(&r), Ok(()));
    }

    #[test]
    fn long_reasons_are_refused_at_both_ends() {
        let mut r = rev();
        r.reason = "x".repeat(MAX_REASON_LEN + 1);
        assert_eq!(seal(&r, &key(1)), Err(EnvelopeError::ReasonTooLong));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_verify_or_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1500)) {
            let vk = key(1).verifying_key();
            proptest::prop_assert!(open(&bytes, &vk).is_err());
        }

        #[test]
        fn any_single_bit_flip_is_caught(pos in 0usize..200, bit in 0u8..8) {
            let k = key(1);
            let mut bytes = seal(&rev(), &k).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            proptest::prop_assert!(open(&bytes, &k.verifying_key()).is_err());
        }
    }
}
