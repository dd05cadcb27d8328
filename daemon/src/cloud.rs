//! The daemon's client of the control plane: register and refresh over HTTPS, trusting only
//! the configured CA, with every answer classified for the retry logic.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use octomil_common::wire::{
    ChallengeRequest, ChallengeResponse, ErrorBody, Proof, RefreshRequest, RefreshResponse,
    RegisterRequest, RegisterResponse, codes,
};
use octomil_common::{DeviceId, Secret, proof};
use reqwest::StatusCode;

/// What went wrong with a call, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// Try again later (network, 5xx, timeouts).
    #[error("cloud unreachable or failing: {0}")]
    Transient(String),
    /// Try again after the server's `Retry-After`.
    #[error("rate limited by the cloud; retry in {0:?}")]
    RateLimited(Duration),
    /// The device is revoked: stop for good.
    #[error("the cloud says this device is revoked")]
    Revoked,
    /// Retrying the same request cannot succeed (bad bootstrap token, id taken, refresh token
    /// rejected...). `code` is the server's error code.
    #[error("the cloud refused: {message} ({code})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The client itself could not be set up (bad CA file).
    #[error("cannot set up the cloud client: {0}")]
    Setup(String),
    /// The cloud speaks another protocol version; waiting cannot fix it, an upgrade can.
    #[error("{0}")]
    Incompatible(String),
    /// The cloud answered with a value the daemon refuses (see [`crate::answer`]).
    #[error("{0}")]
    BadAnswer(String),
    /// TLS says the cloud's certificate is not valid yet: this device's clock is behind.
    #[error(
        "the cloud's TLS certificate is not valid yet by this device's clock: the clock is behind"
    )]
    ClockBehind,
}

impl CloudError {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    base: String,
}

impl CloudClient {
    /// A client for `cloud_url` trusting only the CA in `ca_file`.
    pub fn new(cloud_url: &str, ca_file: &Path, timeout: Duration) -> Result<Self, CloudError> {
        let pem = std::fs::read(ca_file)
            .map_err(|e| CloudError::Setup(format!("reading {}: {e}", ca_file.display())))?;
        let setup =
            |e: &dyn std::fmt::Display| CloudError::Setup(format!("{}: {e}", ca_file.display()));
        let certs = octomil_common::tls::ca_certificates(&pem)
            .map_err(|e| setup(&e))?
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(&e))?;
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("octomild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            base: format!("{}/api/v1", cloud_url.trim_end_matches('/')),
        })
    }

    /// Protocol 2: fetch a challenge, sign it with the device key (bound to the device id,
    /// the public key and the bootstrap token), register. No clock is involved.
    pub async fn register(
        &self,
        bootstrap_token: &Secret<String>,
        device_id: &DeviceId,
        key: &SigningKey,
    ) -> Result<RegisterResponse, CloudError> {
        let challenge: ChallengeResponse = match self
            .post(
                "/devices/register/challenge",
                &ChallengeRequest {
                    device_id: device_id.clone(),
                },
            )
            .await
        {
            Err(CloudError::Rejected {
                status: 404 | 405, ..
            }) => {
                return Err(CloudError::Incompatible(
                    "the cloud is older than device protocol 2 (it has no registration \
                     challenge endpoint); upgrade octomil-cloud"
                        .into(),
                ));
            }
            other => other?,
        };
        let public_key = proof::encode_public_key(&key.verifying_key());
        let boot_hash = proof::bootstrap_hash(bootstrap_token.expose());
        let signature = proof::sign(
            key,
            &proof::Statement {
                challenge: &challenge.challenge,
                device_id: device_id.as_str(),
                device_public_key: &public_key,
                bootstrap_hash: &boot_hash,
            },
        );
        let body = RegisterRequest {
            bootstrap_token: bootstrap_token.clone(),
            device_id: device_id.clone(),
            device_public_key: public_key,
            challenge: Some(challenge.challenge),
            proof: Proof::Signature(signature),
            metadata: Some(metadata()),
        };
        self.post("/devices/register", &body).await
    }

    pub async fn refresh(
        &self,
        device_id: &DeviceId,
        refresh_token: &Secret<String>,
    ) -> Result<RefreshResponse, CloudError> {
        let body = RefreshRequest {
            device_id: device_id.clone(),
            refresh_token: refresh_token.clone(),
        };
        self.post("/devices/refresh", &body).await
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CloudError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            // reqwest's errors name the URL, never the body: safe to keep.
            .map_err(|e| match tls_time(&e) {
                Some(TlsTime::NotYetValid) => CloudError::ClockBehind,
                Some(TlsTime::Expired(Some(at))) => CloudError::Transient(format!(
                    "the cloud's TLS certificate expired at {} (by this device's clock)",
                    crate::lifecycle::fmt_secs(at)
                )),
                Some(TlsTime::Expired(None)) => CloudError::Transient(
                    "the cloud's TLS certificate has expired (by this device's clock)".into(),
                ),
                None => CloudError::Transient(error_chain(&e)),
            })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<T>()
                .await
                .map_err(|e| CloudError::Transient(format!("unreadable answer: {e}")));
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let err: Option<ErrorBody> = resp.json().await.ok();
        Err(classify(status, retry_after, err))
    }
}

/// A certificate validity failure found in an error's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsTime {
    NotYetValid,
    /// With the certificate's `not_after` (Unix seconds) when rustls gives it.
    Expired(Option<u64>),
}

/// Walks `e`'s sources (and the errors inside `io::Error`s, which `source()` skips) for a
/// rustls certificate-validity error.
fn tls_time(e: &(dyn std::error::Error + 'static)) -> Option<TlsTime> {
    use rustls::CertificateError as C;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = err.downcast_ref::<rustls::Error>() {
            match c {
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    return Some(TlsTime::NotYetValid);
                }
                C::Expired => return Some(TlsTime::Expired(None)),
                C::ExpiredContext { not_after, .. } => {
                    return Some(TlsTime::Expired(Some(not_after.as_secs())));
                }
                _ => {}
            }
        }
        // An io::Error's source() skips the error it wraps: descend into that one itself
        // (transports wrap io::Errors in io::Errors).
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// `e` and its causes, so "error sending request" says what went wrong underneath.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Option<ErrorBody>,
) -> CloudError {
    let (code, message) = body
        .map(|b| (b.error, b.message))
        .unwrap_or_else(|| (String::new(), status.to_string()));
    if code == codes::DEVICE_REVOKED {
        return CloudError::Revoked;
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return CloudError::RateLimited(crate::answer::clamp_retry_after(
            retry_after.unwrap_or(Duration::from_secs(1)),
        ));
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return CloudError::Transient(format!("{status}: {message}"));
    }
    CloudError::Rejected {
        status: status.as_u16(),
        code,
        message,
    }
}

/// What the device tells the cloud about itself at registration.
fn metadata() -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("daemon_version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("arch".into(), std::env::consts::ARCH.into());
    if let Ok(u) = nix::sys::utsname::uname() {
        m.insert("kernel".into(), u.release().to_string_lossy().into_owned());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> Option<ErrorBody> {
        Some(ErrorBody::new(code, "m"))
    }

    #[test]
    fn certificate_time_errors_are_found_inside_io_errors() {
        let not_yet = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet);
        let io = std::io::Error::other(not_yet);
        assert_eq!(tls_time(&io), Some(TlsTime::NotYetValid));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
            time: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(2_000)),
            not_after: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_000)),
        });
        assert_eq!(tls_time(&expired), Some(TlsTime::Expired(Some(1_000))));
        let twice = std::io::Error::other(std::io::Error::other(
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet),
        ));
        assert_eq!(tls_time(&twice), Some(TlsTime::NotYetValid));
        let other = std::io::Error::other("connection refused");
        assert_eq!(tls_time(&other), None);
    }

    #[test]
    fn classification() {
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, None, body("device_revoked")),
            CloudError::Revoked
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, None, body("device_revoked")),
            CloudError::Revoked
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(7)), body("rate_limited")),
            CloudError::RateLimited(d) if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, None),
            CloudError::Transient(_)
        ));
        let e = classify(
            StatusCode::UNAUTHORIZED,
            None,
            body("invalid_bootstrap_token"),
        );
        assert_eq!(e.code(), Some("invalid_bootstrap_token"));
        let e = classify(StatusCode::CONFLICT, None, body("device_id_taken"));
        assert_eq!(e.code(), Some("device_id_taken"));
    }
}
