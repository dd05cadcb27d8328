//! `POST /api/v1/devices/register`

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RateLimits;
use crate::{DeviceId, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub bootstrap_token: Secret<String>,
    pub device_id: DeviceId,
    /// Base64url (no padding) Ed25519 public key of the device.
    pub device_public_key: String,
    /// The challenge from `POST /devices/register/challenge` (protocol 2); absent in a
    /// protocol-1 request, which the cloud refuses with `challenge_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    pub proof: Proof,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Proof of possession of the device key: see [`crate::proof`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Proof {
    /// Protocol 2: the base64url Ed25519 signature over the challenge statement.
    Signature(String),
    /// Protocol 1's `{timestamp, signature}`: parsed only so the cloud can name the
    /// protocol mismatch instead of answering a bare "invalid body".
    Legacy { timestamp: u64, signature: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub device_id: DeviceId,
    pub api_key: Secret<String>,
    pub refresh_token: Secret<String>,
    /// Unix seconds at which `api_key` stops working.
    pub expires_at: u64,
    /// The key's lifetime in seconds. Devices schedule from this, never from
    /// `expires_at - their clock`: an edge device's wall clock may be far off the cloud's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Where revocations are pushed; `null` when the cloud runs without a broker.
    pub mqtt: Option<MqttInfo>,
    /// Base64url Ed25519 key that signs revocation envelopes; the device pins it.
    pub revocation_public_key: String,
    pub rate_limits: RateLimits,
    /// Cloud-wide counter of successful registrations, never reused: revocation envelopes
    /// carry it, so a device judges their freshness without any clock.
    pub registration_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttInfo {
    pub url: String,
    pub topic: String,
    pub username: String,
    /// PEM: the device's X.509 client certificate for the broker, then the issuing CA's. It
    /// certifies the device's Ed25519 identity key (CN = device id) and is renewed at every
    /// refresh; absent from clouds before client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Seconds `client_cert` stays valid from the moment of the answer (scheduled like
    /// `expires_in`, never from the device's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_expires_in: Option<u64>,
}
