//! Fuzzes the revocation envelope decoder: any bytes off the MQTT topic must give an error or a
//! revocation that verifies, never a panic, and nothing forged may verify.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use octomil_common::envelope::{self, Expectations, Revocation};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    if let Ok(rev) = envelope::open(data, &key) {
        // Only the holder of the signing key can produce this; the fuzzer cannot.
        let _ = Expectations {
            device_id: &rev.device_id,
            epoch: 0,
            last_seq: None,
        }
        .check(&rev);
        panic!("forged envelope verified: {rev:?}");
    }
    // Round trip: sealing what the fuzzer gave as a reason always opens again.
    let reason = String::from_utf8_lossy(data).chars().take(64).collect::<String>();
    let rev = Revocation {
        device_id: "fuzz".into(),
        epoch: 1,
        seq: 1,
        reason,
    };
    let signer = SigningKey::from_bytes(&[7; 32]);
    if let Ok(sealed) = envelope::seal(&rev, &signer) {
        assert_eq!(envelope::open(&sealed, &key).ok(), Some(rev));
    }
});
