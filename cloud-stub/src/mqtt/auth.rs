//! Who may log in to the embedded broker: the cloud itself, or a device with its current key.
//!
//! The broker asks one question, [`Authenticator::authenticate`], and gets an [`Identity`]
//! back; everything after that (client-id rule, ACLs, quotas) keys on the identity only. Today
//! a device proves itself with username = device id and password = a current device key
//! ([`StoreAuthenticator`]); a client-certificate authenticator (issue 9, point 4) plugs in
//! behind the same trait, reading the identity from the verified certificate instead.

use std::net::SocketAddr;
use std::sync::Weak;

use octomil_common::token::{self, TokenKind};
use octomil_common::{DeviceId, Secret};

use super::CLOUD_USERNAME;
pub use super::broker::acl::Identity;
use crate::app::Cloud;
use crate::store::{DeviceState, Hash, Model};

/// What a CONNECT presents. Credentials never reach a log line or `Debug`.
pub struct Login<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub peer: SocketAddr,
}

impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Why a login was refused: a fixed reason (never quoting input), for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub &'static str);

/// Turns a CONNECT into an identity, or refuses it. Called once per CONNECT, on the
/// connection's own task: it must not block for long (a store read is fine).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, login: &Login<'_>) -> Result<Identity, Refused>;
}

/// The cloud's authenticator: [`check`] against the live store; a device's login counts as
/// presence activity. Holds the cloud weakly, so a stopped cloud refuses every login.
pub struct StoreAuthenticator {
    cloud: Weak<Cloud>,
    login: CloudLogin,
}

impl std::fmt::Debug for StoreAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreAuthenticator")
    }
}

impl StoreAuthenticator {
    pub fn new(cloud: Weak<Cloud>, login: CloudLogin) -> Self {
        Self { cloud, login }
    }
}

impl Authenticator for StoreAuthenticator {
    fn authenticate(&self, login: &Login<'_>) -> Result<Identity, Refused> {
        let Some(cloud) = self.cloud.upgrade() else {
            return Err(Refused("the cloud is stopping"));
        };
        let now = cloud.clock.now_secs();
        let (Some(user), Some(pass)) = (login.username, login.password) else {
            return Err(Refused("no username or password"));
        };
        let verdict = cloud
            .store
            .read(|m| check(m, now, &self.login, login.client_id, user, pass));
        match verdict {
            Verdict::Cloud => Ok(Identity::Cloud),
            Verdict::Device(id) => {
                cloud.presence.note_login(id.as_str(), now);
                Ok(Identity::Device(id))
            }
            Verdict::Refused(reason) => Err(Refused(reason)),
        }
    }
}

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
