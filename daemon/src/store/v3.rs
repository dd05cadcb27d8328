//! The record layout of formats 2 and 3 (format 3 changed only the key a record is sealed
//! under), kept only to read stores written by earlier releases: format 4 gave the MQTT
//! details a record of their own, with the client certificate.

use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use serde::Deserialize;

use super::{Identity, MqttRecord, Revoked};

/// `Persisted` as formats 2 and 3 wrote it (field order is the layout).
#[derive(Deserialize)]
pub(super) struct Persisted {
    identity: Option<Identity>,
    credentials: Option<Credentials>,
    revoked: Option<Revoked>,
    last_revocation_seq: Option<u64>,
}

#[derive(Deserialize)]
struct Credentials {
    api_key: Secret<String>,
    refresh_token: Secret<String>,
    expires_at: u64,
    issued_at: u64,
    registered_at_ms: u64,
    last_refresh: Option<u64>,
    revocation_public_key: [u8; 32],
    mqtt: Option<LegacyMqtt>,
    rate_limits: RateLimits,
    registration_epoch: u64,
}

/// The wire `MqttInfo` of formats 1 to 3 (three strings), as those stores hold it.
#[derive(Deserialize)]
pub(super) struct LegacyMqtt {
    url: String,
    topic: String,
    username: String,
}

impl From<LegacyMqtt> for MqttRecord {
    /// No certificate: the device logs in with its key until the next refresh answer brings
    /// one (from a cloud that issues them).
    fn from(m: LegacyMqtt) -> Self {
        Self {
            url: m.url,
            topic: m.topic,
            username: m.username,
            client_cert: None,
        }
    }
}

impl From<Persisted> for super::Persisted {
    fn from(v3: Persisted) -> Self {
        Self {
            identity: v3.identity,
            credentials: v3.credentials.map(|c| super::Credentials {
                api_key: c.api_key,
                refresh_token: c.refresh_token,
                expires_at: c.expires_at,
                issued_at: c.issued_at,
                registered_at_ms: c.registered_at_ms,
                last_refresh: c.last_refresh,
                revocation_public_key: c.revocation_public_key,
                mqtt: c.mqtt.map(Into::into),
                rate_limits: c.rate_limits,
                registration_epoch: c.registration_epoch,
            }),
            revoked: v3.revoked,
            last_revocation_seq: v3.last_revocation_seq,
        }
    }
}
