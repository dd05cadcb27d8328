//! The record layout of format version 1 (protocol 1, before the registration epoch), kept
//! only to read stores written by earlier releases and migrate them to the current format.

use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use serde::Deserialize;

use super::v3::LegacyMqtt;
use super::{Identity, Revoked};

/// `Persisted` as format 1 wrote it (field order is the layout).
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
}

impl From<Persisted> for super::Persisted {
    /// Credentials from a protocol-1 registration carry epoch 0: a protocol-2 cloud seals
    /// revocations of registrations it has no epoch for with epoch 0, so they still apply.
    fn from(v1: Persisted) -> Self {
        Self {
            identity: v1.identity,
            credentials: v1.credentials.map(|c| super::Credentials {
                api_key: c.api_key,
                refresh_token: c.refresh_token,
                expires_at: c.expires_at,
                issued_at: c.issued_at,
                registered_at_ms: c.registered_at_ms,
                last_refresh: c.last_refresh,
                revocation_public_key: c.revocation_public_key,
                mqtt: c.mqtt.map(Into::into),
                rate_limits: c.rate_limits,
                registration_epoch: 0,
            }),
            revoked: v1.revoked,
            last_revocation_seq: v1.last_revocation_seq,
        }
    }
}
