//! The MQTT client certificate as rustls takes it: the chain the cloud issued (device
//! certificate, then its CA) with the device's own Ed25519 identity key as PKCS#8, built once
//! per certificate by the driver. The MQTT session only ever sees the finished config; the
//! key never leaves this module except inside rustls.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio::time::Instant;
use zeroize::Zeroizing;

/// PKCS#8 v1 (RFC 8410) for an Ed25519 private key: this prefix, then the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("the MQTT client certificate is not PEM certificates")]
    Pem,
    #[error("the MQTT client certificate holds no certificate")]
    Empty,
    /// rustls refused the chain and key together (say, a certificate for another key).
    #[error("TLS client authentication rejected: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The TLS setup of one client certificate, and its validity on the monotonic clock.
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// The PEM it was built from: a new one means a renewed certificate.
    pub chain_pem: String,
    pub received: Instant,
    pub valid_until: Instant,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("received", &self.received)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.chain_pem == other.chain_pem && self.valid_until == other.valid_until
    }
}

/// The device's Ed25519 seed as a PKCS#8 document (the buffer is wiped when dropped).
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut der = Zeroizing::new(Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + seed.len()));
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(seed);
    der
}

/// A client config trusting `roots` (the pinned CA) that authenticates with `chain_pem` and
/// the key of `seed` (ring provider: `any_supported_type` takes Ed25519).
pub fn client_config(
    roots: &RootCertStore,
    chain_pem: &str,
    seed: &[u8; 32],
) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ClientTlsError::Pem)?;
    if chain.is_empty() {
        return Err(ClientTlsError::Empty);
    }
    let der = ed25519_pkcs8(seed);
    // rustls keeps its own copy of the key inside the config.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_slice()).clone_key());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientTlsError::Rustls)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(ClientTlsError::Rustls)?;
    Ok(Arc::new(config))
}

/// A certificate for `seed`'s key, signed by a throwaway CA: (chain PEM, CA PEM).
#[cfg(test)]
pub(crate) fn test_chain(seed: &[u8; 32], cn: &str) -> (String, String) {
    let (chain, ca, _) = test_pki(seed, cn);
    (chain, ca)
}

/// [`test_chain`], plus a server certificate for `localhost` from the same CA: (chain PEM,
/// CA PEM, (server certificate DER, server key PKCS#8 DER)).
#[cfg(test)]
#[allow(clippy::type_complexity)]
fn test_pki(seed: &[u8; 32], cn: &str) -> (String, String, (Vec<u8>, Vec<u8>)) {
    let der = ed25519_pkcs8(seed);
    let device = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der.as_slice()),
        &rcgen::PKCS_ED25519,
    )
    .expect("device key");
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test mqtt ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&device, &issuer).expect("cert");
    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    (
        format!("{}{}", cert.pem(), ca.pem()),
        ca.pem(),
        (server.der().to_vec(), server_key.serialize_der()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_key_and_its_certificate_make_a_client_config() {
        let seed = [7u8; 32];
        let (chain, ca) = test_chain(&seed, "dev-1");
        let roots = octomil_common::tls::ca_roots(ca.as_bytes()).unwrap();
        client_config(&roots, &chain, &seed).unwrap();
        // The PKCS#8 is what a standard encoder makes of the seed.
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = ed25519_pkcs8(&seed);
        let parsed = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(der.as_slice()),
            &rcgen::PKCS_ED25519,
        )
        .unwrap();
        assert_eq!(parsed.public_key_raw(), key.verifying_key().as_bytes());
    }

    /// A real TLS 1.3 handshake (in memory) with a server that requires a client certificate
    /// from the CA: rustls' ring provider signs with the Ed25519 identity key, and the server
    /// sees the device's certificate.
    #[test]
    fn a_server_requiring_client_certificates_accepts_the_device() {
        use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
        let seed = [7u8; 32];
        let (chain, ca, (server_cert, server_key)) = test_pki(&seed, "dev-1");
        let roots = Arc::new(octomil_common::tls::ca_roots(ca.as_bytes()).unwrap());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key)),
            )
            .unwrap();
        let client_config = client_config(&roots, &chain, &seed).unwrap();
        let mut client = rustls::ClientConnection::new(
            client_config,
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!server.is_handshaking(), "handshake finished");
        let seen = server
            .peer_certificates()
            .expect("the client sent its certificate");
        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(seen[0], leaf);
    }

    #[test]
    fn a_certificate_for_another_key_or_no_certificate_is_refused() {
        let (chain, ca) = test_chain(&[7u8; 32], "dev-1");
        let roots = octomil_common::tls::ca_roots(ca.as_bytes()).unwrap();
        assert!(matches!(
            client_config(&roots, &chain, &[8u8; 32]),
            Err(ClientTlsError::Rustls(_))
        ));
        assert!(matches!(
            client_config(&roots, "", &[7u8; 32]),
            Err(ClientTlsError::Empty)
        ));
        let shown = format!(
            "{:?}",
            client_config(&roots, &chain, &[8u8; 32]).unwrap_err()
        );
        assert!(!shown.contains("7, 7, 7"), "{shown}");
    }
}
