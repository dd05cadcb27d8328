//! Trusting a private CA: the PEM a device or operator pins (`ca.pem`), parsed into rustls
//! roots and a client config; and presenting the device's MQTT client certificate, whose key
//! is the device's own Ed25519 identity key ([`ed25519_pkcs8`], [`client_config_with_cert`]).
//! Takes the PEM's bytes, not a path, so this crate stays free of I/O: the caller reads the
//! file and names it in its own error.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA PEM is invalid: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("the CA PEM holds no certificate")]
    NoCert,
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[source] rustls::Error),
    /// Deliberately without a source: it would describe the key.
    #[error("the client certificate does not certify this device key")]
    KeyMismatch,
}

/// Every certificate in `pem` (sections of other kinds are skipped); at least one.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CaError::Pem)?;
    if certs.is_empty() {
        return Err(CaError::NoCert);
    }
    Ok(certs)
}

/// A root store holding exactly the certificates in `pem` (usually one CA).
pub fn ca_roots(pem: &[u8]) -> Result<RootCertStore, CaError> {
    let mut roots = RootCertStore::empty();
    for cert in ca_certificates(pem)? {
        roots.add(cert).map_err(CaError::Rustls)?;
    }
    Ok(roots)
}

/// A client config (ring provider, rustls' safe default protocol versions, no client
/// certificate) that trusts exactly the certificates in `pem`.
pub fn client_config(pem: &[u8]) -> Result<Arc<ClientConfig>, CaError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CaError::Rustls)?
        .with_root_certificates(ca_roots(pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The fixed prefix of a PKCS#8 v1 `PrivateKeyInfo` holding an Ed25519 key (RFC 8410 section
/// 7): SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The device's Ed25519 identity key (its 32-byte seed, as ed25519-dalek's
/// `SigningKey::to_bytes`) as PKCS#8 DER, the form rustls' `any_supported_type` (ring) and
/// rumqttc take. The returned key zeroizes on drop; the caller should zeroize its seed copy.
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> PrivateKeyDer<'static> {
    let mut der = Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + seed.len());
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(seed);
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

/// A client config (ring provider) that trusts exactly the CAs in `ca_pem` and presents
/// `cert_pem` (the device certificate, then its CA, as the cloud hands it out in
/// `MqttInfo::client_cert`) with the device's Ed25519 key. Refuses a certificate that does not
/// certify this key, so a stale or foreign certificate fails here rather than at the broker.
/// TLS session resumption is off: a broker that resumed a session would not verify the
/// certificate again, so an expired one could keep working.
pub fn client_config_with_cert(
    ca_pem: &[u8],
    cert_pem: &[u8],
    seed: &[u8; 32],
) -> Result<Arc<ClientConfig>, CaError> {
    let chain = ca_certificates(cert_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signer = provider
        .key_provider
        .load_private_key(ed25519_pkcs8(seed))
        .map_err(CaError::Rustls)?;
    rustls::sign::CertifiedKey::new(chain.clone(), signer)
        .keys_match()
        .map_err(|_| CaError::KeyMismatch)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CaError::Rustls)?
        .with_root_certificates(ca_roots(ca_pem)?)
        .with_client_auth_cert(chain, ed25519_pkcs8(seed))
        .map_err(CaError::Rustls)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ed25519_seed_loads_as_a_rustls_signing_key() {
        let seed = [7u8; 32];
        let der = ed25519_pkcs8(&seed);
        assert_eq!(der.secret_der().len(), 48);
        let key = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        assert_eq!(key.algorithm(), rustls::SignatureAlgorithm::ED25519);
        // The public half rustls derives is the one ed25519-dalek derives from the seed.
        let spki = key.public_key().unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        assert!(spki.as_ref().ends_with(public.as_bytes()));
    }

    #[test]
    fn no_certificate_is_an_error() {
        assert!(matches!(ca_roots(b"no pem here"), Err(CaError::NoCert)));
        assert!(matches!(client_config(b""), Err(CaError::NoCert)));
    }

    #[test]
    fn a_broken_section_is_an_error() {
        let pem = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(ca_certificates(pem), Err(CaError::Pem(_))));
    }
}
