//! The MQTT client certificate as rustls takes it: the chain the cloud issued (device
//! certificate, then its CA) with the device's own Ed25519 identity key as PKCS#8
//! (`octomil_common::tls::client_config_with_cert`), built once per certificate by the
//! driver. The MQTT session only ever sees the finished config; the key never leaves the
//! driver except inside rustls.

use std::sync::Arc;

use octomil_common::tls::CaError;
use rustls::ClientConfig;
use tokio::time::Instant;

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

/// A client config trusting `ca_pem` (the pinned CA) that authenticates with `chain_pem`
/// and the key of `seed` (ring provider: `any_supported_type` takes Ed25519). A chain that
/// does not certify this key is refused here, not at the broker.
pub fn client_config(
    ca_pem: &[u8],
    chain_pem: &str,
    seed: &[u8; 32],
) -> Result<Arc<ClientConfig>, CaError> {
    octomil_common::tls::client_config_with_cert(ca_pem, chain_pem.as_bytes(), seed)
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
    let der = octomil_common::tls::ed25519_pkcs8(seed);
    let device = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(der.secret_der()),
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

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// A real TLS 1.3 handshake (in memory) with a server that requires a client certificate
    /// from the CA: rustls' ring provider signs with the Ed25519 identity key, and the server
    /// sees the device's certificate.
    #[test]
    fn a_server_requiring_client_certificates_accepts_the_device() {
        use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
        let seed = [7u8; 32];
        let (chain, ca, (server_cert, server_key)) = test_pki(&seed, "dev-1");
        let roots = Arc::new(octomil_common::tls::ca_roots(ca.as_bytes()).unwrap());
        let client_config = client_config(ca.as_bytes(), &chain, &seed).unwrap();
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
        let ca = ca.as_bytes();
        assert!(matches!(
            client_config(ca, &chain, &[8u8; 32]),
            Err(CaError::KeyMismatch)
        ));
        assert!(matches!(
            client_config(ca, "", &[7u8; 32]),
            Err(CaError::NoCert)
        ));
        let shown = format!("{:?}", client_config(ca, &chain, &[8u8; 32]).unwrap_err());
        assert!(!shown.contains("7, 7, 7"), "{shown}");
    }
}
