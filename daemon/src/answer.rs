//! Every value the cloud sends, checked or clamped before the daemon acts on it: an answer can
//! make the daemon refuse it and say why, never crash, spin or trust a key it cannot decode.
//! Pure functions, so each absurd value has a unit test.

use std::net::IpAddr;
use std::time::Duration;

use octomil_common::wire::{RateLimit, RateLimits, RefreshResponse, RegisterResponse};

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
}

/// The parts of a register answer the daemon keeps, after checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedRegister {
    pub lifetime_secs: u64,
    pub revocation_public_key: [u8; 32],
    pub rate_limits: RateLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedRefresh {
    pub lifetime_secs: u64,
    pub rate_limits: RateLimits,
}

pub fn check_register(r: &RegisterResponse) -> Result<CheckedRegister, AnswerError> {
    let key = octomil_common::proof::decode_public_key(&r.revocation_public_key)
        .map_err(|_| AnswerError::BadRevocationKey)?;
    if let Some(m) = &r.mqtt {
        check_mqtt_url(&m.url)?;
    }
    Ok(CheckedRegister {
        lifetime_secs: lifetime(r.expires_in)?,
        revocation_public_key: key.to_bytes(),
        rate_limits: clamp_rate_limits(r.rate_limits),
    })
}

pub fn check_refresh(r: &RefreshResponse) -> Result<CheckedRefresh, AnswerError> {
    Ok(CheckedRefresh {
        lifetime_secs: lifetime(r.expires_in)?,
        rate_limits: clamp_rate_limits(r.rate_limits),
    })
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
        let c = check_register(&register()).unwrap();
        assert_eq!(c.lifetime_secs, 86_400);
        assert_eq!(c.rate_limits, RateLimits::default());
    }

    #[test]
    fn absurd_values_are_refused_or_clamped() {
        // (what the cloud sent, what the daemon makes of it)
        let mut r = register();
        r.revocation_public_key = "not-a-key".into();
        assert_eq!(check_register(&r), Err(AnswerError::BadRevocationKey));
        r.revocation_public_key = String::new();
        assert_eq!(check_register(&r), Err(AnswerError::BadRevocationKey));

        let mut r = register();
        r.expires_in = None;
        assert_eq!(check_register(&r), Err(AnswerError::NoLifetime));
        for (sent, kept) in [(0, 1), (1, 1), (6, 6), (u64::MAX, 400 * 86_400)] {
            r.expires_in = Some(sent);
            assert_eq!(check_register(&r).unwrap().lifetime_secs, kept);
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
        let c = check_register(&r).unwrap().rate_limits;
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
            check_register(&r),
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
