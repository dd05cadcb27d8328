//! Every value the cloud sends, checked or clamped before the daemon acts on it: an answer can
//! make the daemon refuse it and say why, never crash, spin or trust a key it cannot decode.
//! Pure functions, so each absurd value has a unit test.

use std::net::IpAddr;
use std::time::Duration;

use octomil_common::wire::{MqttInfo, RateLimit, RateLimits, RefreshResponse, RegisterResponse};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Key lifetimes are clamped into this range (seconds). The floor is 1 s, never more: a
/// lifetime read longer than the cloud said would have the daemon serve a key the cloud has
/// already expired, and refresh it too late (the cloud allows keys of 5 s). Only 0 is read as
/// 1 s, so the schedule has a unit; such a key is refreshed at once.
pub const LIFETIME_SECS: (u64, u64) = (1, 400 * 86_400);
/// A `Retry-After` longer than this is read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Rate-limit `limit` and `period_secs` are clamped into these ranges.
pub const LIMIT: (u32, u32) = (1, 1_000_000);
pub const PERIOD_SECS: (u32, u32) = (1, 86_400);
/// Refusals that waiting cannot heal are retried after this long, +-25 % jitter.
pub const SLOW_RETRY: Duration = Duration::from_secs(3600);
/// The MQTT client certificate chain: at most this much PEM text, and this many
/// certificates (the device's and its CA's; a longer chain leaves room for intermediates).
pub const MAX_CERT_PEM: usize = 16 * 1024;
pub const MAX_CERTS: usize = 4;
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the cloud's revocation_public_key is not a usable Ed25519 key")]
    BadRevocationKey,
    #[error("the cloud's answer has no expires_in (a cloud older than device protocol 2?)")]
    NoLifetime,
    #[error("the cloud's MQTT URL {0:?} is not mqtts://host:port or mqtt://host:port")]
    BadMqttUrl(String),
    #[error(
        "the cloud's MQTT URL {0:?} is plaintext to a host that is not loopback; only mqtts:// is accepted there"
    )]
    PlaintextMqtt(String),
    #[error("the cloud's MQTT client certificate is unusable: {0}")]
    BadClientCert(&'static str),
    #[error("the cloud's MQTT client certificate has no client_cert_expires_in")]
    NoCertLifetime,
}

/// The broker details of an answer, checked: what the lifecycle stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedMqtt {
    pub url: String,
    pub topic: String,
    pub username: String,
    pub client_cert: Option<CheckedCert>,
}

/// A client certificate chain that parses, certifies this device's key, and has a lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCert {
    pub chain_pem: String,
    /// From `client_cert_expires_in`, clamped like the key's lifetime.
    pub lifetime_secs: u64,
}

/// The parts of a register answer the daemon keeps, after checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRegister {
    pub lifetime_secs: u64,
    pub revocation_public_key: [u8; 32],
    pub rate_limits: RateLimits,
    pub mqtt: Option<CheckedMqtt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRefresh {
    pub lifetime_secs: u64,
    pub rate_limits: RateLimits,
    /// `None` from clouds before client certificates: the device keeps what it had.
    pub mqtt: Option<CheckedMqtt>,
}

/// `device_key` is the device's own Ed25519 public key: a client certificate must certify it.
pub fn check_register(
    r: &RegisterResponse,
    device_key: &[u8; 32],
) -> Result<CheckedRegister, AnswerError> {
    let key = octomil_common::proof::decode_public_key(&r.revocation_public_key)
        .map_err(|_| AnswerError::BadRevocationKey)?;
    Ok(CheckedRegister {
        lifetime_secs: lifetime(r.expires_in)?,
        revocation_public_key: key.to_bytes(),
        rate_limits: clamp_rate_limits(r.rate_limits),
        mqtt: r
            .mqtt
            .as_ref()
            .map(|m| check_mqtt(m, device_key))
            .transpose()?,
    })
}

pub fn check_refresh(
    r: &RefreshResponse,
    device_key: &[u8; 32],
) -> Result<CheckedRefresh, AnswerError> {
    Ok(CheckedRefresh {
        lifetime_secs: lifetime(r.expires_in)?,
        rate_limits: clamp_rate_limits(r.rate_limits),
        mqtt: r
            .mqtt
            .as_ref()
            .map(|m| check_mqtt(m, device_key))
            .transpose()?,
    })
}

/// The broker details: a URL we may use and, when present, a client certificate we can.
pub fn check_mqtt(m: &MqttInfo, device_key: &[u8; 32]) -> Result<CheckedMqtt, AnswerError> {
    check_mqtt_url(&m.url)?;
    let client_cert = match &m.client_cert {
        None => None,
        Some(pem) => Some(CheckedCert {
            chain_pem: check_cert_chain(pem, device_key)?,
            lifetime_secs: m
                .client_cert_expires_in
                .map(|s| s.clamp(LIFETIME_SECS.0, LIFETIME_SECS.1))
                .ok_or(AnswerError::NoCertLifetime)?,
        }),
    };
    Ok(CheckedMqtt {
        url: m.url.clone(),
        topic: m.topic.clone(),
        username: m.username.clone(),
        client_cert,
    })
}

/// PEM of at most [`MAX_CERT_PEM`] bytes holding 1 to [`MAX_CERTS`] certificates (and
/// nothing that fails to parse), the first of which carries the device's Ed25519 public key
/// as its SubjectPublicKeyInfo. The certificate's dates are not looked at: the device's
/// clock is not trusted for them (`client_cert_expires_in` schedules the renewal), and the
/// broker is the judge at the handshake.
fn check_cert_chain(pem: &str, device_key: &[u8; 32]) -> Result<String, AnswerError> {
    if pem.len() > MAX_CERT_PEM {
        return Err(AnswerError::BadClientCert("longer than 16 KiB"));
    }
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .take(MAX_CERTS + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| AnswerError::BadClientCert("not PEM certificates"))?;
    let Some(leaf) = chain.first() else {
        return Err(AnswerError::BadClientCert("no certificate in the PEM"));
    };
    if chain.len() > MAX_CERTS {
        return Err(AnswerError::BadClientCert("more than 4 certificates"));
    }
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(device_key);
    if !leaf.windows(spki.len()).any(|w| w == spki.as_slice()) {
        return Err(AnswerError::BadClientCert(
            "it does not certify this device's Ed25519 key",
        ));
    }
    Ok(pem.to_owned())
}

/// The key's lifetime from `expires_in`, clamped. `expires_at` (the cloud's clock) is never
/// compared with ours.
fn lifetime(expires_in: Option<u64>) -> Result<u64, AnswerError> {
    expires_in
        .map(|s| s.clamp(LIFETIME_SECS.0, LIFETIME_SECS.1))
        .ok_or(AnswerError::NoLifetime)
}

/// Plaintext MQTT only to loopback (issue 9): a revocation channel anyone on the path can
/// read and block is refused like any other bad value.
pub fn check_mqtt_url(url: &str) -> Result<(), AnswerError> {
    let (tls, host, _) =
        crate::mqtt::parse_url(url).map_err(|_| AnswerError::BadMqttUrl(url.to_owned()))?;
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(AnswerError::PlaintextMqtt(url.to_owned()));
    }
    Ok(())
}

pub fn clamp_rate_limits(l: RateLimits) -> RateLimits {
    let one = |r: RateLimit| RateLimit {
        limit: r.limit.clamp(LIMIT.0, LIMIT.1),
        period_secs: r.period_secs.clamp(PERIOD_SECS.0, PERIOD_SECS.1),
    };
    RateLimits {
        control_plane: one(l.control_plane),
        inference: one(l.inference),
    }
}

pub fn clamp_retry_after(d: Duration) -> Duration {
    d.min(MAX_RETRY_AFTER)
}

/// The slow retry of a refusal that waiting cannot heal; `unit` is a uniform draw in [0, 1).
pub fn slow_retry(unit: f64) -> Duration {
    SLOW_RETRY.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use octomil_common::Secret;
    use octomil_common::wire::MqttInfo;

    const DEVICE_KEY: [u8; 32] = [0; 32];
    const SEED: [u8; 32] = [5; 32];

    fn device_key() -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&SEED)
            .verifying_key()
            .to_bytes()
    }

    fn with_cert(pem: Option<String>, expires_in: Option<u64>) -> MqttInfo {
        MqttInfo {
            url: "mqtts://broker.example:8883".into(),
            topic: "t".into(),
            username: "d".into(),
            client_cert: pem,
            client_cert_expires_in: expires_in,
        }
    }

    #[test]
    fn a_client_certificate_for_this_device_passes_with_its_lifetime_clamped() {
        let (chain, _) = crate::client_tls::test_chain(&SEED, "d");
        // (client_cert_expires_in sent, lifetime kept)
        for (sent, kept) in [(86_400, 86_400), (0, 1), (u64::MAX, 400 * 86_400)] {
            let m = check_mqtt(&with_cert(Some(chain.clone()), Some(sent)), &device_key()).unwrap();
            let c = m.client_cert.unwrap();
            assert_eq!(c.chain_pem, chain);
            assert_eq!(c.lifetime_secs, kept);
        }
        // No certificate (an older cloud): password login, nothing to check.
        let m = check_mqtt(&with_cert(None, Some(5)), &device_key()).unwrap();
        assert_eq!(m.client_cert, None);
        // In a refresh answer too; a refresh answer without broker details keeps ours.
        let mut r = RefreshResponse {
            api_key: Secret::new("k".into()),
            refresh_token: Secret::new("r".into()),
            expires_at: 0,
            expires_in: Some(60),
            rate_limits: RateLimits::default(),
            mqtt: None,
        };
        assert_eq!(check_refresh(&r, &device_key()).unwrap().mqtt, None);
        r.mqtt = Some(with_cert(Some(chain), Some(60)));
        assert!(check_refresh(&r, &device_key()).unwrap().mqtt.is_some());
    }

    #[test]
    fn unusable_client_certificates_are_refused() {
        let (chain, ca) = crate::client_tls::test_chain(&SEED, "d");
        let (other, _) = crate::client_tls::test_chain(&[6; 32], "d");
        let junk = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let long = format!("{chain}{}", "x".repeat(MAX_CERT_PEM));
        let five = chain.repeat(3);
        // (PEM sent, why refused)
        let cases: Vec<(String, &str)> = vec![
            (junk.into(), "not PEM certificates"),
            ("not pem at all".into(), "no certificate in the PEM"),
            (String::new(), "no certificate in the PEM"),
            (long, "longer than 16 KiB"),
            (five, "more than 4 certificates"),
            (other, "it does not certify this device's Ed25519 key"),
            // The CA alone: a certificate, but not of this device's key.
            (ca, "it does not certify this device's Ed25519 key"),
        ];
        for (pem, why) in cases {
            let e = check_mqtt(&with_cert(Some(pem), Some(60)), &device_key()).unwrap_err();
            assert_eq!(e, AnswerError::BadClientCert(why));
            assert!(e.to_string().contains(why));
        }
        assert_eq!(
            check_mqtt(&with_cert(Some(chain.clone()), None), &device_key()),
            Err(AnswerError::NoCertLifetime)
        );
        // A bad certificate refuses the whole answer, register or refresh.
        let mut r = register();
        r.mqtt = Some(with_cert(Some(chain), Some(60)));
        assert!(check_register(&r, &device_key()).is_ok());
        assert!(matches!(
            check_register(&r, &[1; 32]),
            Err(AnswerError::BadClientCert(_))
        ));
    }

    fn register() -> RegisterResponse {
        RegisterResponse {
            device_id: "d".parse().unwrap(),
            api_key: Secret::new("k".into()),
            refresh_token: Secret::new("r".into()),
            expires_at: 0,
            expires_in: Some(86_400),
            mqtt: Some(MqttInfo {
                url: "mqtts://broker.example:8883".into(),
                topic: "t".into(),
                username: "d".into(),
                client_cert: None,
                client_cert_expires_in: None,
            }),
            revocation_public_key: octomil_common::proof::encode_public_key(
                &octomil_common::proof::generate_signing_key().verifying_key(),
            ),
            rate_limits: RateLimits::default(),
            registration_epoch: 1,
        }
    }

    #[test]
    fn a_sane_answer_passes_unchanged() {
        let c = check_register(&register(), &DEVICE_KEY).unwrap();
        assert_eq!(c.lifetime_secs, 86_400);
        assert_eq!(c.rate_limits, RateLimits::default());
    }

    #[test]
    fn absurd_values_are_refused_or_clamped() {
        // (what the cloud sent, what the daemon makes of it)
        let mut r = register();
        r.revocation_public_key = "not-a-key".into();
        assert_eq!(
            check_register(&r, &DEVICE_KEY),
            Err(AnswerError::BadRevocationKey)
        );
        r.revocation_public_key = String::new();
        assert_eq!(
            check_register(&r, &DEVICE_KEY),
            Err(AnswerError::BadRevocationKey)
        );

        let mut r = register();
        r.expires_in = None;
        assert_eq!(
            check_register(&r, &DEVICE_KEY),
            Err(AnswerError::NoLifetime)
        );
        for (sent, kept) in [(0, 1), (1, 1), (6, 6), (u64::MAX, 400 * 86_400)] {
            r.expires_in = Some(sent);
            assert_eq!(check_register(&r, &DEVICE_KEY).unwrap().lifetime_secs, kept);
        }

        let mut r = register();
        let absurd = RateLimit {
            limit: u32::MAX,
            period_secs: 0,
        };
        r.rate_limits = RateLimits {
            control_plane: absurd,
            inference: RateLimit {
                limit: 0,
                period_secs: u32::MAX,
            },
        };
        let c = check_register(&r, &DEVICE_KEY).unwrap().rate_limits;
        assert_eq!(c.control_plane.limit, 1_000_000);
        assert_eq!(c.control_plane.period_secs, 1);
        assert_eq!(c.inference.limit, 1);
        assert_eq!(c.inference.period_secs, 86_400);

        assert_eq!(
            clamp_retry_after(Duration::from_secs(u64::MAX)),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn plaintext_mqtt_only_to_loopback() {
        for ok in [
            "mqtts://broker.example:8883",
            "mqtt://127.0.0.1:1883",
            "mqtt://[::1]:1883",
            "mqtt://localhost:1883",
        ] {
            assert_eq!(check_mqtt_url(ok), Ok(()), "{ok}");
        }
        for bad in ["mqtt://broker.example:1883", "mqtt://10.0.0.5:1883"] {
            assert_eq!(
                check_mqtt_url(bad),
                Err(AnswerError::PlaintextMqtt(bad.into()))
            );
        }
        assert!(matches!(
            check_mqtt_url("http://x:1"),
            Err(AnswerError::BadMqttUrl(_))
        ));
        let mut r = register();
        r.mqtt.as_mut().unwrap().url = "mqtt://broker.example:1883".into();
        assert!(matches!(
            check_register(&r, &DEVICE_KEY),
            Err(AnswerError::PlaintextMqtt(_))
        ));
    }

    #[test]
    fn slow_retries_are_about_hourly_and_jittered() {
        assert_eq!(slow_retry(0.0), Duration::from_secs(2700));
        assert_eq!(slow_retry(0.5), Duration::from_secs(3600));
        assert!(slow_retry(0.999) < Duration::from_secs(4500));
    }
}
