//! Who may log in to the embedded broker: the cloud itself, or a device, named by the client certificate the TLS layer verified against the MQTT CA.
//!
//! The broker asks one question, [`Authenticator::authenticate`], and gets an [`Identity`]
//! back; everything after that (client-id rule, ACLs, quotas) keys on the identity only. A
//! client presents a certificate from the cloud's MQTT CA ([`super::ca`]); the identity is its
//! CN: the cloud's configured MQTT identity, or a registered device whose record holds the
//! certified key ([`check_cert`]). A revoked device still logs in, as [`Identity::Revoked`].
//! There is no password login: the TLS layer refuses a client without a certificate.

use std::net::SocketAddr;
use std::sync::Weak;

use octomil_common::DeviceId;

pub use super::broker::acl::Identity;
use super::ca::CertIdentity;
use crate::app::Cloud;
use crate::store::{DeviceState, Model};

/// What a CONNECT presents. Credentials never reach a log line or `Debug`.
pub struct Login<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub peer: SocketAddr,
    /// The client certificate, already verified against the MQTT CA by the TLS layer.
    pub cert: Option<&'a CertIdentity>,
}

impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("peer", &self.peer)
            .field("cert", &self.cert.map(|c| c.common_name.as_str()))
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

/// The cloud's authenticator: [`check_cert`] against the live
/// store; a device's login counts as presence activity. Holds the cloud weakly, so a stopped
/// cloud refuses every login.
pub struct StoreAuthenticator {
    cloud: Weak<Cloud>,
    /// The CN of the cloud's own certificate.
    identity: String,
}

impl std::fmt::Debug for StoreAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreAuthenticator")
    }
}

impl StoreAuthenticator {
    pub fn new(cloud: Weak<Cloud>, identity: String) -> Self {
        Self { cloud, identity }
    }
}

impl Authenticator for StoreAuthenticator {
    fn authenticate(&self, login: &Login<'_>) -> Result<Identity, Refused> {
        let Some(cloud) = self.cloud.upgrade() else {
            return Err(Refused("the cloud is stopping"));
        };
        let now = cloud.clock.now_secs();
        // The TLS layer requires a certificate; a connection without one (a broker served
        // without TLS, in tests) has no identity.
        let Some(cert) = login.cert else {
            return Err(Refused("no client certificate"));
        };
        let verdict = cloud
            .store
            .read(|m| check_cert(m, &self.identity, login.client_id, cert));
        match verdict {
            Verdict::Cloud => Ok(Identity::Cloud),
            Verdict::Device(id) => {
                cloud.presence.note_login(id.as_str(), now);
                Ok(Identity::Device(id))
            }
            Verdict::Revoked(id) => Ok(Identity::Revoked(id)),
            Verdict::Refused(reason) => Err(Refused(reason)),
        }
    }
}

/// Checks a CONNECT whose client certificate verified against the MQTT CA: CN = the cloud's
/// `identity` is the cloud (client id `{identity}` or `{identity}:{suffix}`); any other CN
/// must be a registered device whose record holds the certified key (so a certificate
/// outlives neither a delete nor a re-registration under another key), with client id = CN.
/// A revoked device is [`Verdict::Revoked`]. Reasons never quote input.
pub fn check_cert(model: &Model, identity: &str, client_id: &str, cert: &CertIdentity) -> Verdict {
    check_identity(
        model,
        identity,
        client_id,
        &cert.common_name,
        Some(&cert.public_key),
    )
}

/// [`check_cert`] on a certificate's CN and, when the caller has it, its key (a broker asking
/// over HTTP forwards only the CN: then any certificate the MQTT CA issued for that device id
/// passes, until it expires).
pub fn check_identity(
    model: &Model,
    identity: &str,
    client_id: &str,
    cn: &str,
    public_key: Option<&[u8]>,
) -> Verdict {
    if cn == identity {
        let suffix_ok = client_id
            .strip_prefix(identity)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'));
        return if suffix_ok {
            Verdict::Cloud
        } else {
            Verdict::Refused("client id is not the cloud's identity")
        };
    }
    let Ok(id) = DeviceId::parse(cn) else {
        return Verdict::Refused("certificate CN is not a device id");
    };
    if client_id != cn {
        return Verdict::Refused("client id differs from the certificate's identity");
    }
    if model.org.as_ref().is_none_or(|o| o.deleted) {
        return Verdict::Refused("organization deleted");
    }
    let Some(device) = model.devices.get(cn) else {
        return Verdict::Refused("unknown device");
    };
    if public_key.is_some_and(|k| k != device.public_key.as_slice()) {
        return Verdict::Refused("certificate is not for this device's key");
    }
    match device.state {
        DeviceState::Active => Verdict::Device(id),
        DeviceState::Revoked => Verdict::Revoked(id),
    }
}

/// The outcome of a CONNECT's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Cloud,
    Device(DeviceId),
    Revoked(DeviceId),
    Refused(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_identities_before_the_store_is_read() {
        let m = Model::default();
        let v =
            |client_id: &str, cn: &str| check_identity(&m, "octomil-cloud", client_id, cn, None);
        assert_eq!(v("octomil-cloud", "octomil-cloud"), Verdict::Cloud);
        assert_eq!(v("octomil-cloud:a1", "octomil-cloud"), Verdict::Cloud);
        for bad in ["octomil-cloudx", "edge-1", ""] {
            assert!(
                matches!(v(bad, "octomil-cloud"), Verdict::Refused(_)),
                "{bad}"
            );
        }
        // A CN that is no device id, a client id other than the CN, no organization.
        assert!(matches!(v("a/b", "a/b"), Verdict::Refused(_)));
        assert_eq!(
            v("edge-2", "edge-1"),
            Verdict::Refused("client id differs from the certificate's identity")
        );
        assert_eq!(
            v("edge-1", "edge-1"),
            Verdict::Refused("organization deleted")
        );
    }
}
