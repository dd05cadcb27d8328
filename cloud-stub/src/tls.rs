//! The cloud's own PKI: a local CA and the server certificate it signs, kept in the state directory.
//!
//! The CA is the long-lived thing devices and operators pin (`ca.pem`); it is created once and
//! never replaced behind anyone's back. The server certificate is disposable: it is re-issued
//! whenever the requested names change, its files disagree, or it no longer verifies against
//! the CA (for example once expired). Every config built here uses the `ring` provider
//! explicitly, so nothing depends on a process-wide default provider.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};

use crate::files::{self, FilesError};

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server.key";
/// The normalized SAN list the current server certificate was issued for, one per line.
const SERVER_NAMES_FILE: &str = "server.names";

/// Also the issuer name of every leaf: it must stay byte-identical to the stored CA's subject,
/// because a loaded CA is rebuilt from these parameters plus its key (see [`ca_params`]).
const CA_COMMON_NAME: &str = "Octomil Edge local CA";
const SERVER_COMMON_NAME: &str = "Octomil Edge cloud";
/// Names every server certificate carries, whatever the configuration adds.
const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const CA_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60); // 10 years
const SERVER_VALIDITY: Duration = Duration::from_secs(1827 * 24 * 60 * 60); // 5 years
/// Start validity 48 hours in the past, so a device whose clock lags by up to two days (a
/// board without an RTC before NTP answered, say) still accepts a freshly made certificate.
const BACKDATE: Duration = Duration::from_secs(48 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(
        "{} exists but its key {} is missing; refusing to replace a CA that clients may already \
         trust (move {} away to start a new CA)",
        cert.display(), key.display(), cert.display()
    )]
    CaKeyMissing { cert: PathBuf, key: PathBuf },
    /// Deliberately without a source: parser errors may quote the input.
    #[error("{} does not hold a usable PKCS#8 private key", path.display())]
    BadKey { path: PathBuf },
    #[error("{} does not hold a usable certificate: {reason}", path.display())]
    BadCert { path: PathBuf, reason: String },
    #[error("{} and {} do not belong together", cert.display(), key.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{name:?} is neither an IP address nor a valid DNS name")]
    BadName { name: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
    #[error(transparent)]
    Ca(#[from] octomil_common::tls::CaError),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The loaded PKI: the CA clients should pin, and ready-made rustls configs.
/// Holds the server key (inside `server`); `Debug` is written by hand and shows only `ca_file`.
pub struct Pki {
    /// Path of `ca.pem`, the file to hand to clients.
    pub ca_file: PathBuf,
    /// Contents of `ca.pem`.
    pub ca_pem: String,
    /// The normalized names (DNS and IP) the server certificate is valid for.
    pub server_names: Vec<String>,
    /// Server config with the certificate chain and key, no ALPN; cloned per caller.
    server: ServerConfig,
    /// The same chain and key, for configs that also verify client certificates.
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// The CA as loaded or created: its certificate and an issuer (DN + key) to sign leaves.
struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// Where each file lives in the state directory.
struct Paths {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    server_names: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
            server_names: dir.join(SERVER_NAMES_FILE),
        }
    }
}

impl Pki {
    /// Loads the PKI from `state_dir`, creating the CA and the server certificate on first
    /// start and re-issuing the server certificate (same CA) when the names it should carry
    /// (`localhost`, `127.0.0.1`, `::1` plus `extra_names`) differ from the stored ones.
    pub fn load_or_create(state_dir: &Path, extra_names: &[String]) -> Result<Pki, TlsError> {
        files::ensure_private_dir(state_dir)?;
        let paths = Paths::new(state_dir);
        let names = normalize_names(extra_names)?;
        let provider = ring_provider();

        let (ca, ca_created) = match (exists(&paths.ca_cert)?, exists(&paths.ca_key)?) {
            (true, true) => (load_ca(&paths, &provider)?, false),
            (true, false) => {
                return Err(TlsError::CaKeyMissing {
                    cert: paths.ca_cert,
                    key: paths.ca_key,
                });
            }
            // A key without a certificate is left from a crash before `ca.pem` was written:
            // nobody can trust that CA yet, so starting over is safe.
            (false, _) => (create_ca(&paths)?, true),
        };

        let stored_names = read_names(&paths.server_names)?;
        let mut issued = false;
        if ca_created || stored_names.as_ref() != Some(&names) {
            issue_server_cert(&paths, &ca, &names)?;
            issued = true;
        }
        let (server, server_chain, server_key) = match load_server(&paths, &ca, &provider) {
            Ok(server) => server,
            Err(e) if !issued => {
                tracing::warn!(error = %e, "server certificate unusable; issuing a new one");
                issue_server_cert(&paths, &ca, &names)?;
                issued = true;
                load_server(&paths, &ca, &provider)?
            }
            Err(e) => return Err(e),
        };
        if issued {
            tracing::info!(names = ?names, "issued a new server certificate");
        }

        let client = client_config_from_ca_pem(ca.pem.as_bytes())?;
        Ok(Pki {
            ca_file: paths.ca_cert,
            ca_pem: ca.pem,
            server_names: names,
            server,
            server_chain,
            server_key,
            client,
        })
    }

    /// A server config presenting the server certificate that also asks every client for a
    /// certificate and verifies any it gets against `client_roots` (the MQTT CA: rustls'
    /// `WebPkiClientVerifier`, ring, which also refuses an expired one). A client without a
    /// certificate is refused at the handshake: the embedded broker has no password login.
    pub fn server_config_verifying_clients(
        &self,
        client_roots: RootCertStore,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = ring_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(client_roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(TlsError::Rustls)?;
        // No session resumption: a resumed session carries the client certificate of the
        // first handshake without verifying it again, so a certificate would outlive its
        // notAfter for as long as a ticket lives. Every connection verifies afresh.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// A server config presenting the server certificate, offering `alpn` (for example
    /// `[b"h2", b"http/1.1"]`). No client authentication: devices authenticate with tokens.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = self.server.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client config that trusts only this CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }
}

/// A client config that trusts exactly the certificates in `pem` (usually one CA).
pub fn client_config_from_ca_pem(pem: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(octomil_common::tls::client_config(pem)?)
}

/// A client config that trusts exactly the CAs in `pem` and presents `chain` with `key` (the
/// cloud's own MQTT certificate).
pub fn client_config_with_cert(
    pem: &[u8],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(octomil_common::tls::ca_roots(pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    Ok(Arc::new(config))
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| {
        TlsError::Files(FilesError::Metadata {
            path: path.to_owned(),
            source,
        })
    })
}

/// The default names plus `extra`, each validated and normalized (IPs in canonical form, DNS
/// names lowercased), sorted and deduplicated so comparing with the stored list is a set test.
fn normalize_names(extra: &[String]) -> Result<Vec<String>, TlsError> {
    let mut names = Vec::with_capacity(DEFAULT_NAMES.len() + extra.len());
    for raw in DEFAULT_NAMES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let name = raw.trim();
        let normalized = if let Ok(ip) = name.parse::<IpAddr>() {
            ip.to_string()
        } else if DnsName::try_from(name).is_ok() {
            name.to_ascii_lowercase()
        } else {
            return Err(TlsError::BadName {
                name: raw.to_owned(),
            });
        };
        names.push(normalized);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn read_names(path: &Path) -> Result<Option<Vec<String>>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            names.sort();
            names.dedup();
            Ok(Some(names))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FilesError::Read {
            path: path.to_owned(),
            source,
        }
        .into()),
    }
}

/// Sets the validity window from now. rcgen's date type accepts `std::time::Duration`
/// arithmetic, so the `time` crate need not be a direct dependency.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + lifetime;
}

/// The CA's parameters. Also used to rebuild the issuer of a loaded CA: rcgen takes only the
/// DN, key-identifier method and key usages from them, all fixed here, so leaves issued after
/// a restart chain to the stored `ca.pem` (checked in [`load_server`] anyway).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn create_ca(paths: &Paths) -> Result<Ca, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params = ca_params();
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    let pem = cert.pem();
    // Key first: a crash in between leaves a key without a certificate, which the next start
    // safely replaces; the reverse would leave a published CA that can no longer sign.
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    files::write_private(&paths.ca_key, key_pem.as_bytes())?;
    files::write_public(&paths.ca_cert, pem.as_bytes())?;
    tracing::info!(path = %paths.ca_cert.display(), "created a new local CA");
    Ok(Ca {
        pem,
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    })
}

fn load_ca(paths: &Paths, provider: &Arc<CryptoProvider>) -> Result<Ca, TlsError> {
    let pem = std::fs::read_to_string(&paths.ca_cert).map_err(|source| FilesError::Read {
        path: paths.ca_cert.clone(),
        source,
    })?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadCert {
        path: paths.ca_cert.clone(),
        reason: e.to_string(),
    })?;
    let key_pem = files::read_secret_string(&paths.ca_key)?;
    let bad_key = || TlsError::BadKey {
        path: paths.ca_key.clone(),
    };
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|_| bad_key())?;
    let key = KeyPair::from_pem(key_pem.expose()).map_err(|_| bad_key())?;
    // Refuse a CA key that does not match `ca.pem`: leaves signed with it would not verify.
    check_pair(&der, key_der, provider, &paths.ca_cert, &paths.ca_key)?;
    Ok(Ca {
        pem,
        der,
        issuer: Issuer::new(ca_params(), key),
    })
}

/// Errors unless `key` is the private half of `cert`'s public key.
fn check_pair(
    cert: &CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| TlsError::BadKey {
            path: key_path.to_owned(),
        })?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signer)
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        })
}

fn san(name: &str) -> Result<SanType, TlsError> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => name
            .try_into()
            .map(SanType::DnsName)
            .map_err(|_| TlsError::BadName {
                name: name.to_owned(),
            }),
    }
}

fn issue_server_cert(paths: &Paths, ca: &Ca, names: &[String]) -> Result<(), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SERVER_COMMON_NAME);
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, SERVER_VALIDITY);
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(TlsError::Generate)?;

    // Drop the names record first: until it is written again, a crash midway forces the next
    // start to re-issue instead of pairing a new key with an old certificate.
    match std::fs::remove_file(&paths.server_names) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FilesError::Write {
                path: paths.server_names.clone(),
                source,
            }
            .into());
        }
    }
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    files::write_private(&paths.server_key, key_pem.as_bytes())?;
    // The chain a TLS server sends: the leaf, then the CA.
    let chain = format!("{}{}", cert.pem(), ca.pem);
    files::write_public(&paths.server_cert, chain.as_bytes())?;
    let mut record = names.join("\n");
    record.push('\n');
    files::write_public(&paths.server_names, record.as_bytes())?;
    Ok(())
}

/// Loads `server.pem` + `server.key` into a server config, after checking that the chain
/// verifies against the CA for `localhost` right now (which also catches an expired leaf).
type ServerParts = (
    ServerConfig,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
);

fn load_server(
    paths: &Paths,
    ca: &Ca,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerParts, TlsError> {
    let bad_cert = |reason: String| TlsError::BadCert {
        path: paths.server_cert.clone(),
        reason,
    };
    let chain_pem = std::fs::read(&paths.server_cert).map_err(|source| FilesError::Read {
        path: paths.server_cert.clone(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(bad_cert("no certificate".into()));
    };

    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).map_err(TlsError::Rustls)?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()
            .map_err(|e| bad_cert(e.to_string()))?;
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &ServerName::try_from(DEFAULT_NAMES[0]).map_err(|e| bad_cert(e.to_string()))?,
            &[],
            UnixTime::now(),
        )
        .map_err(|e| bad_cert(format!("does not verify against the CA: {e}")))?;

    let key_pem = files::read_secret_string(&paths.server_key)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|_| {
        TlsError::BadKey {
            path: paths.server_key.clone(),
        }
    })?;
    check_pair(
        leaf,
        key.clone_key(),
        provider,
        &paths.server_cert,
        &paths.server_key,
    )?;
    let config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(TlsError::Rustls)?;
    Ok((config, chain, key))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    /// Runs one TLS handshake over an in-memory pipe and echoes a byte; returns the ALPN
    /// protocol the server picked.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<Option<Vec<u8>>, io::Error> {
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let server_task = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await?;
            Ok::<_, io::Error>(())
        });
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let result = async {
            let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
            tls.write_all(b"x").await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            assert_eq!(&byte, b"x");
            Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
        .await;
        if result.is_ok() {
            server_task.await.unwrap()?;
        }
        result
    }

    #[test]
    fn create_then_load_keeps_ca_and_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let extra = vec!["cloud.example".to_owned(), "10.0.0.7".to_owned()];
        let first = Pki::load_or_create(dir.path(), &extra).unwrap();
        let server_pem = read(dir.path(), SERVER_CERT_FILE);

        // Same names in another order and case: nothing is re-issued.
        let again = vec!["10.0.0.7".to_owned(), "Cloud.Example".to_owned()];
        let second = Pki::load_or_create(dir.path(), &again).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(second.ca_file, dir.path().join(CA_CERT_FILE));
        assert_eq!(read(dir.path(), CA_CERT_FILE), first.ca_pem);
        assert_eq!(read(dir.path(), SERVER_CERT_FILE), server_pem);
        assert_eq!(
            second.server_names,
            ["10.0.0.7", "127.0.0.1", "::1", "cloud.example", "localhost"]
        );
        // server.pem is the leaf followed by the CA.
        assert_eq!(server_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(server_pem.ends_with(&first.ca_pem));
    }

    #[test]
    fn files_have_exact_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Pki::load_or_create(&state, &[]).unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(CA_CERT_FILE)), 0o644);
        assert_eq!(mode(&state.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&state.join(SERVER_CERT_FILE)), 0o644);
        assert_eq!(mode(&state.join(SERVER_KEY_FILE)), 0o600);
    }

    #[tokio::test]
    async fn client_from_ca_pem_completes_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let ca_pem = std::fs::read(&pki.ca_file).unwrap();
        let client = client_config_from_ca_pem(&ca_pem).unwrap();
        let server = pki.server_config(&[b"h2", b"http/1.1"]);

        for name in ["localhost", "127.0.0.1", "::1"] {
            handshake(Arc::clone(&server), Arc::clone(&client), name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Pki::client_config trusts the same CA.
        handshake(Arc::clone(&server), pki.client_config(), "localhost")
            .await
            .unwrap();
        // A name the certificate does not carry is refused.
        assert!(
            handshake(Arc::clone(&server), Arc::clone(&client), "other.example")
                .await
                .is_err()
        );
        // ALPN is offered as configured.
        let mut h2_client = (*client).clone();
        h2_client.alpn_protocols = vec![b"h2".to_vec()];
        let alpn = handshake(server, Arc::new(h2_client), "localhost")
            .await
            .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn changed_names_reissue_leaf_but_keep_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &[]).unwrap();
        let ca_key = read(dir.path(), CA_KEY_FILE);
        let leaf = read(dir.path(), SERVER_CERT_FILE);
        let leaf_key = read(dir.path(), SERVER_KEY_FILE);

        let extra = vec!["cloud.example".to_owned(), "192.0.2.1".to_owned()];
        let second = Pki::load_or_create(dir.path(), &extra).unwrap();
        assert_eq!(second.ca_pem, first.ca_pem);
        assert_eq!(read(dir.path(), CA_KEY_FILE), ca_key);
        assert_ne!(read(dir.path(), SERVER_CERT_FILE), leaf);
        assert_ne!(read(dir.path(), SERVER_KEY_FILE), leaf_key);
        assert!(read(dir.path(), SERVER_NAMES_FILE).contains("cloud.example\n"));

        // The new leaf verifies against the old CA file, for the new names too.
        let client = client_config_from_ca_pem(first.ca_pem.as_bytes()).unwrap();
        for name in ["cloud.example", "192.0.2.1", "localhost"] {
            handshake(second.server_config(&[]), Arc::clone(&client), name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn broken_leaf_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &[]).unwrap();
        // A server key that does not match server.pem (as after a crash mid-issue).
        let other = KeyPair::generate().unwrap().serialize_pem();
        files::write_private(&dir.path().join(SERVER_KEY_FILE), other.as_bytes()).unwrap();
        let second = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(second.ca_pem, first.ca_pem);
        assert_ne!(read(dir.path(), SERVER_KEY_FILE), other);
    }

    #[test]
    fn ca_cert_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path(), &[]).unwrap();
        let ca_pem = read(dir.path(), CA_CERT_FILE);
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = Pki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::CaKeyMissing { .. }), "{err}");
        // The published CA was left alone.
        assert_eq!(read(dir.path(), CA_CERT_FILE), ca_pem);
    }

    #[test]
    fn mismatched_ca_key_is_refused_without_leaking_it() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path(), &[]).unwrap();
        let other = KeyPair::generate().unwrap().serialize_pem();
        files::write_private(&dir.path().join(CA_KEY_FILE), other.as_bytes()).unwrap();
        let err = Pki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY"));

        files::write_private(&dir.path().join(CA_KEY_FILE), b"garbage KEYBYTES").unwrap();
        let err = Pki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::BadKey { .. }), "{err}");
        assert!(!err.to_string().contains("KEYBYTES"));
    }

    #[test]
    fn orphan_ca_key_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        files::write_private(&dir.path().join(CA_KEY_FILE), b"left from a crash").unwrap();
        Pki::load_or_create(dir.path(), &[]).unwrap();
        assert!(read(dir.path(), CA_KEY_FILE).contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn debug_shows_only_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let debug = format!("{pki:?}");
        assert!(debug.contains("ca_file"));
        assert!(!debug.contains("KEY"));
        assert!(!debug.contains("server"));
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = Pki::load_or_create(dir.path(), &["not a name".to_owned()]).unwrap_err();
        assert!(matches!(err, TlsError::BadName { .. }), "{err}");
        assert!(matches!(
            client_config_from_ca_pem(b"no pem here"),
            Err(TlsError::Ca(octomil_common::tls::CaError::NoCert))
        ));
    }
}
