//! Trusting a private CA: the PEM a device or operator pins (`ca.pem`), parsed into rustls
//! roots and a client config. Takes the PEM's bytes, not a path, so this crate stays free of
//! I/O: the caller reads the file and names it in its own error.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA PEM is invalid: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("the CA PEM holds no certificate")]
    NoCert,
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[source] rustls::Error),
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

#[cfg(test)]
mod tests {
    use super::*;

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
