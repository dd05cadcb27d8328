//! The MQTT CA: the cloud's own certificate authority for broker logins, apart from the HTTPS CA.
//!
//! It issues short-lived X.509 client certificates that certify a device's own Ed25519
//! identity key (the one it proved at registration; the cloud never holds the private half),
//! CN = device id, valid as long as the device key issued with it; and one certificate for the
//! cloud's own broker session. Any broker that trusts `mqtt_ca.pem` (the embedded one,
//! Mosquitto with `require_certificate`, EMQX) then authenticates both without passwords.
//!
//! The CA key is ECDSA P-256: every TLS stack in the path verifies P-256 signatures in a chain
//! (rustls/webpki, OpenSSL 3 under Debian's Mosquitto, Erlang/OTP under EMQX), while Ed25519
//! chain signatures are missing from older OTP and some embedded stacks. The leaves carry
//! Ed25519 keys, which TLS 1.2 and 1.3 client authentication in all three accept.
//! It is separate from the HTTPS CA (`ca.pem`), so trusting the cloud's web server never lets
//! its server certificate log in to a broker, and the MQTT CA can be handed to a broker alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::files::{self, FilesError};
use crate::tls::TlsError;

/// `mqtt_ca.pem`: what a broker's `cafile` names (public).
pub const CA_CERT_FILE: &str = "mqtt_ca.pem";
/// `mqtt_ca.key`: the CA's private key, 0600.
pub const CA_KEY_FILE: &str = "mqtt_ca.key";
/// The CA's subject. A loaded CA is rebuilt from it plus its key, so it must not change.
const CA_COMMON_NAME: &str = "Octomil Edge MQTT CA";
const CA_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60); // 10 years
/// Client certificates start this far in the past, so a broker whose clock runs a little
/// ahead of the cloud's accepts a certificate the moment it is issued.
pub const CLIENT_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The cloud's own broker certificate: its key lives only in memory and a new one is made at
/// every start, so a long validity exposes nothing on disk.
const CLOUD_CERT_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60);
/// Prefix of the URI SAN every device certificate carries (`urn:octomil:device:{id}`).
pub const DEVICE_URI_PREFIX: &str = "urn:octomil:device:";

/// The loaded MQTT CA. `Debug` shows only the file path.
pub struct MqttCa {
    /// Path of `mqtt_ca.pem`.
    pub ca_file: PathBuf,
    /// Contents of `mqtt_ca.pem`.
    pub ca_pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for MqttCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttCa")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// A certificate issued to a client, with the PEM chain handed out (leaf then CA).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub chain_pem: String,
    pub der: CertificateDer<'static>,
    /// Seconds from issuance to `not_after`.
    pub expires_in: u64,
}

/// The cloud's own login: its certificate chain and the key (in memory only).
pub struct CloudCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for CloudCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloudCert(***)")
    }
}

/// An Ed25519 public key rcgen can put into a certificate it signs without holding the key.
struct Ed25519Public<'a>(&'a [u8; 32]);

impl PublicKeyData for Ed25519Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl MqttCa {
    /// Loads `mqtt_ca.pem` + `mqtt_ca.key` from `dir`, creating them on first start. A
    /// certificate whose key is missing or does not match is refused (brokers may trust it).
    pub fn load_or_create(dir: &Path) -> Result<Arc<Self>, TlsError> {
        files::ensure_private_dir(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let exists = |p: &Path| {
            p.try_exists().map_err(|source| {
                TlsError::Files(FilesError::Metadata {
                    path: p.to_owned(),
                    source,
                })
            })
        };
        let ca = match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(cert_path, &key_path)?,
            (true, false) => {
                return Err(TlsError::CaKeyMissing {
                    cert: cert_path,
                    key: key_path,
                });
            }
            // A key alone is left from a crash before the certificate was written: nobody
            // trusts that CA yet, so starting over is safe.
            (false, _) => Self::create(cert_path, &key_path)?,
        };
        Ok(Arc::new(ca))
    }

    fn create(cert_path: PathBuf, key_path: &Path) -> Result<Self, TlsError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        let mut params = ca_params();
        let now = unix_now();
        set_validity(
            &mut params,
            now.saturating_sub(CLIENT_BACKDATE),
            now + CA_VALIDITY,
        );
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        let pem = cert.pem();
        // Key first: a crash in between leaves a key without a certificate (replaced at the
        // next start), never a published CA that can no longer sign.
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        files::write_private(key_path, key_pem.as_bytes())?;
        files::write_public(&cert_path, pem.as_bytes())?;
        tracing::info!(path = %cert_path.display(), "created the MQTT CA");
        Ok(Self {
            ca_file: cert_path,
            ca_pem: pem,
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    fn load(cert_path: PathBuf, key_path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read_to_string(&cert_path).map_err(|source| FilesError::Read {
            path: cert_path.clone(),
            source,
        })?;
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadCert {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        let key_pem = files::read_secret_string(key_path)?;
        let bad_key = || TlsError::BadKey {
            path: key_path.to_owned(),
        };
        let key = KeyPair::from_pem(key_pem.expose()).map_err(|_| bad_key())?;
        let key_der =
            PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|_| bad_key())?;
        let provider = rustls::crypto::ring::default_provider();
        let signer = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|_| bad_key())?;
        rustls::sign::CertifiedKey::new(vec![der.clone()], signer)
            .keys_match()
            .map_err(|_| TlsError::KeyMismatch {
                cert: cert_path.clone(),
                key: key_path.to_owned(),
            })?;
        Ok(Self {
            ca_file: cert_path,
            ca_pem: pem,
            der,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA certificate (for a root store).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// A client certificate for `device_id` certifying its Ed25519 identity key, valid from
    /// a little before now for `lifetime`.
    pub fn issue_device(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        lifetime: Duration,
    ) -> Result<IssuedCert, TlsError> {
        let mut params = leaf_params(device_id)?;
        let uri = format!("{DEVICE_URI_PREFIX}{device_id}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(TlsError::Generate)?)];
        let now = unix_now();
        set_validity(
            &mut params,
            now.saturating_sub(CLIENT_BACKDATE),
            now + lifetime,
        );
        let cert = params
            .signed_by(&Ed25519Public(public_key), &self.issuer)
            .map_err(TlsError::Generate)?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.ca_pem),
            der: cert.der().clone(),
            expires_in: lifetime.as_secs(),
        })
    }

    /// A certificate and fresh key for the cloud's own broker session, CN = `identity`.
    pub fn issue_cloud(&self, identity: &str) -> Result<CloudCert, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(TlsError::Generate)?;
        let mut params = leaf_params(identity)?;
        let now = unix_now();
        set_validity(
            &mut params,
            now.saturating_sub(CLIENT_BACKDATE),
            now + CLOUD_CERT_VALIDITY,
        );
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::Generate)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|_| TlsError::Generate(rcgen::Error::CouldNotParseKeyPair))?;
        Ok(CloudCert {
            chain: vec![cert.der().clone(), self.der.clone()],
            key,
        })
    }
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's CN: the identity a broker logs the client in as.
    pub common_name: String,
    /// The certified public key's bits (32 bytes for a device's Ed25519 key).
    pub public_key: Vec<u8>,
}

/// Reads the subject CN (the first, if several) and key of a certificate. Call it only on a
/// certificate the TLS layer has verified against the MQTT CA.
pub fn cert_identity(cert: &CertificateDer<'_>) -> Option<CertIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    Some(CertIdentity {
        common_name: cn.as_str().ok()?.to_owned(),
        public_key: parsed.public_key().subject_public_key.data.to_vec(),
    })
}

/// The subject CN of a certificate (see [`cert_identity`]).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    cert_identity(cert).map(|c| c.common_name)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A TLS client leaf named `cn`, with a random serial (RFC 5280: unique per CA).
fn leaf_params(cn: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|_| TlsError::Generate(rcgen::Error::RingUnspecified))?;
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Certificates are judged by the brokers' wall clocks, so validity is real time, not the
/// cloud's injectable clock.
fn set_validity(params: &mut CertificateParams, from: Duration, to: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + from;
    params.not_after = epoch + to;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::UnixTime;

    use super::*;

    fn verify(ca: &MqttCa, leaf: &CertificateDer<'static>) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        verifier
            .verify_client_cert(leaf, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn created_once_private_key_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = MqttCa::load_or_create(dir.path()).unwrap();
        let mode = |n: &str| {
            std::fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
        let second = MqttCa::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        // A leaf signed after the reload chains to the first CA.
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let cert = second
            .issue_device(
                "edge-1",
                key.verifying_key().as_bytes(),
                Duration::from_secs(60),
            )
            .unwrap();
        verify(&first, &cert.der).unwrap();
        assert!(format!("{second:?}").contains("ca_file"));
        assert!(!format!("{second:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        MqttCa::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            MqttCa::load_or_create(dir.path()),
            Err(TlsError::CaKeyMissing { .. })
        ));
    }

    #[test]
    fn device_and_cloud_certificates_name_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MqttCa::load_or_create(dir.path()).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let cert = ca
            .issue_device(
                "edge-9",
                key.verifying_key().as_bytes(),
                Duration::from_secs(60),
            )
            .unwrap();
        let who = cert_identity(&cert.der).unwrap();
        assert_eq!(who.common_name, "edge-9");
        assert_eq!(who.public_key, key.verifying_key().as_bytes());
        assert_eq!(cert.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let cloud = ca.issue_cloud("octomil-cloud").unwrap();
        assert_eq!(
            common_name(&cloud.chain[0]).as_deref(),
            Some("octomil-cloud")
        );
        verify(&ca, &cloud.chain[0]).unwrap();
        assert_eq!(format!("{cloud:?}"), "CloudCert(***)");
        // Another CA's certificate does not verify.
        let other_dir = tempfile::tempdir().unwrap();
        let other = MqttCa::load_or_create(other_dir.path()).unwrap();
        assert!(verify(&other, &cert.der).is_err());
    }
}
