//! Who may log in to the embedded broker: the cloud itself, or a device with its current key.

use octomil_common::token::{self, TokenKind};
use octomil_common::{DeviceId, Secret};

use super::CLOUD_USERNAME;
use crate::store::{DeviceState, Hash, Model};

/// The outcome of a CONNECT's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Cloud,
    Device(DeviceId),
    Refused(&'static str),
}

/// The cloud's own login, kept as a hash so the check is a constant-time compare.
pub struct CloudLogin {
    hash: Hash,
}

impl std::fmt::Debug for CloudLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloudLogin(***)")
    }
}

impl CloudLogin {
    pub fn new(secret: &Secret<String>) -> Self {
        Self {
            hash: token::hash(secret.expose()),
        }
    }
}

/// Checks a CONNECT: the cloud logs in as [`CLOUD_USERNAME`] with its secret; a device logs
/// in with client id = username = its device id and password = a device key that belongs to
/// that device, has not expired, and whose device is not revoked. Reasons never quote input.
pub fn check(
    model: &Model,
    now: u64,
    cloud: &CloudLogin,
    client_id: &str,
    username: &str,
    password: &str,
) -> Verdict {
    if username == CLOUD_USERNAME {
        return if token::hashes_equal(&token::hash(password), &cloud.hash) {
            Verdict::Cloud
        } else {
            Verdict::Refused("wrong cloud password")
        };
    }
    let Ok(id) = DeviceId::parse(username) else {
        return Verdict::Refused("username is not a device id");
    };
    if client_id != username {
        return Verdict::Refused("client id differs from the username");
    }
    if !matches!(
        token::parse(password),
        Ok(TokenKind::Live | TokenKind::Test)
    ) {
        return Verdict::Refused("password is not a device key");
    }
    if model.org.as_ref().is_none_or(|o| o.deleted) {
        return Verdict::Refused("organization deleted");
    }
    let h = token::hash(password);
    let Some(device) = model
        .device_by_key_hash(&h)
        .filter(|d| d.device_id == id.as_str())
    else {
        return Verdict::Refused("unknown key for this device");
    };
    if device.state != DeviceState::Active {
        return Verdict::Refused("device revoked");
    }
    match device
        .keys
        .iter()
        .find(|k| token::hashes_equal(&k.hash, &h))
    {
        Some(k) if k.expires_at > now => Verdict::Device(id),
        Some(_) => Verdict::Refused("device key expired"),
        None => Verdict::Refused("unknown key for this device"),
    }
}
