//! `ApiClient`: HTTPS calls to the control plane under `<api-url>/api/v1`, with the bearer
//! credential attached and every failure turned into a `CliError`.

use std::time::Duration;

use octomil_common::Secret;
use octomil_common::tls::CaError;
use reqwest::{Certificate, Method, Url, header, redirect};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ApiError, CliError, chain};

/// Everything needed to talk to one control plane. Tests build this directly with the
/// stub's URL and CA PEM; the CLI builds it from flags and environment.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `https://host:port`, optionally with a path prefix; `/api/v1` is appended.
    pub api_url: String,
    /// PEM of the only CA to trust; `None` trusts the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// API key or session JWT; `None` for calls that need none (`auth login`).
    pub api_key: Option<Secret<String>>,
    pub timeout: Duration,
}

/// One answer of the API: where it came from and its JSON body (`None` for 204).
#[derive(Debug, Clone)]
pub struct Answer {
    pub url: String,
    /// HTTP status (always 2xx: anything else is an error).
    pub status: u16,
    pub body: Option<Value>,
}

impl Answer {
    /// The body as a typed value; a missing or mismatched body is a `Decode` error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, CliError> {
        let body = self.body.clone().ok_or_else(|| CliError::Decode {
            url: self.url.clone(),
            detail: "empty body".to_owned(),
        })?;
        serde_json::from_value(body).map_err(|e| CliError::Decode {
            url: self.url.clone(),
            detail: e.to_string(),
        })
    }
}

#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    /// Always ends in `/api/v1`.
    base: Url,
    api_key: Option<Secret<String>>,
    timeout: Duration,
}

impl ApiClient {
    /// Needs a rustls crypto provider installed first (the binary installs ring).
    pub fn new(opts: ClientOptions) -> Result<Self, CliError> {
        let base = base_url(&opts.api_url)?;
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            // Never send the bearer to http:// nor follow a redirect elsewhere: an API has
            // no reason to redirect, and a redirect is the classic way a token leaks.
            .https_only(true)
            .redirect(redirect::Policy::none())
            .user_agent(concat!("octomil/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &opts.ca_pem {
            // The one CA-PEM parser the daemon and the cloud share; reqwest gets the DER.
            let certs = octomil_common::tls::ca_certificates(pem)
                .map_err(|e| {
                    CliError::Ca(match e {
                        CaError::NoCert => "no certificate found in the PEM".to_owned(),
                        CaError::Pem(e) => format!("not a PEM certificate bundle: {e}"),
                        e => e.to_string(),
                    })
                })?
                .iter()
                .map(|der| Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CliError::Ca(format!("not a DER certificate: {}", chain(&e))))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Ca(format!("TLS setup failed: {}", chain(&e))))?;
        Ok(Self {
            http,
            base,
            api_key: opts.api_key,
            timeout: opts.timeout,
        })
    }

    /// `https://host:port/api/v1`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub async fn get(&self, path: &[&str]) -> Result<Answer, CliError> {
        self.send(Method::GET, path, None::<&()>).await
    }

    /// `GET` with query parameters (each name and value percent-encoded).
    pub async fn get_query(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Answer, CliError> {
        let mut url = self.url(path)?;
        url.query_pairs_mut().extend_pairs(query);
        self.send_url(Method::GET, url, None::<&()>).await
    }

    pub async fn post<B: Serialize>(&self, path: &[&str], body: &B) -> Result<Answer, CliError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize>(&self, path: &[&str], body: &B) -> Result<Answer, CliError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &[&str]) -> Result<Answer, CliError> {
        self.send(Method::DELETE, path, None::<&()>).await
    }

    /// `path` is a list of raw segments; each is percent-encoded, so an email or an id with
    /// `/`, `?` or `#` in it stays one segment.
    pub fn url(&self, path: &[&str]) -> Result<Url, CliError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::usage(format!("API URL {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&B>,
    ) -> Result<Answer, CliError> {
        let url = self.url(path)?;
        self.send_url(method, url, body).await
    }

    /// Sends once; a destructive call answered `step_up_required` (a session whose second
    /// factor is stale) is retried once after `POST /auth/step-up` with a TOTP code from
    /// [`super::auth::step_up_code`] (`OCTOMIL_MFA_CODE`, or a prompt on a terminal).
    async fn send_url<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Answer, CliError> {
        match self.send_once(method.clone(), url.clone(), body).await {
            Err(CliError::Api(e)) if e.code == super::auth::STEP_UP_REQUIRED => {
                let Some(code) = super::auth::step_up_code()? else {
                    return Err(CliError::Api(e));
                };
                let step_up = self.url(&["auth", "step-up"])?;
                self.send_once(
                    Method::POST,
                    step_up,
                    Some(&serde_json::json!({ "code": code })),
                )
                .await?;
                self.send_once(method, url, body).await
            }
            other => other,
        }
    }

    async fn send_once<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Answer, CliError> {
        let shown = url.to_string();
        let mut req = self
            .http
            .request(method, url)
            .header(header::ACCEPT, "application/json");
        if let Some(key) = &self.api_key {
            // reqwest marks this header sensitive, which keeps it out of its own Debug output.
            req = req.bearer_auth(key.expose());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(&shown, &e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.transport(&shown, &e))?;
        if !status.is_success() {
            return Err(CliError::Api(ApiError::from_parts(
                status.as_u16(),
                retry_after.as_deref(),
                &bytes,
            )));
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            let value = serde_json::from_slice(&bytes).map_err(|e| CliError::Decode {
                url: shown.clone(),
                detail: format!("not JSON: {e}"),
            })?;
            Some(value)
        };
        Ok(Answer {
            url: shown,
            status: status.as_u16(),
            body,
        })
    }

    /// Sorts a reqwest failure into "never connected", "too slow" and "broke midway",
    /// with a hint when the cause looks like an untrusted certificate.
    fn transport(&self, url: &str, e: &reqwest::Error) -> CliError {
        let url = url.to_owned();
        if e.is_timeout() {
            return CliError::Timeout {
                url,
                secs: self.timeout.as_secs(),
            };
        }
        // reqwest's own text repeats the URL and hyper's says "client error (Connect)": the
        // cause worth showing (refused, unknown issuer) is further down the chain.
        let mut detail = match std::error::Error::source(e) {
            Some(cause) => chain(cause)
                .split(": ")
                .filter(|part| !part.starts_with("client error ("))
                .collect::<Vec<_>>()
                .join(": "),
            None => e.to_string(),
        };
        if e.is_connect() {
            if detail.contains("UnknownIssuer") {
                detail.push_str(" (does --ca-file / OCTOMIL_CA_FILE name the cloud's CA?)");
            }
            return CliError::Connect { url, detail };
        }
        CliError::Request { url, detail }
    }
}

/// Checks the operator's URL and appends `/api/v1` (unless already there).
fn base_url(raw: &str) -> Result<Url, CliError> {
    let bad = |why: &str| CliError::usage(format!("invalid API URL {raw:?}: {why}"));
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad(
            "must start with https:// (the key is never sent in clear)",
        ));
    }
    if url.host().is_none() {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not carry a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials; use OCTOMIL_API_KEY"));
    }
    let already = url.path().trim_end_matches('/').ends_with("/api/v1");
    {
        let mut segs = url
            .path_segments_mut()
            .map_err(|()| bad("cannot take a path"))?;
        segs.pop_if_empty();
        if !already {
            segs.extend(["api", "v1"]);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> ApiClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        ApiClient::new(ClientOptions {
            api_url: url.to_owned(),
            ca_pem: None,
            api_key: Some(Secret::new("edg_test_x".to_owned())),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn base_url_appends_api_v1_once() {
        for (raw, want) in [
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443/api/v1"),
            ("https://127.0.0.1:8443/", "https://127.0.0.1:8443/api/v1"),
            ("https://h/prefix/", "https://h/prefix/api/v1"),
            ("https://h/api/v1/", "https://h/api/v1"),
        ] {
            assert_eq!(base_url(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn base_url_rejects_clear_text_and_junk() {
        for raw in [
            "http://h:8443",
            "h:8443",
            "",
            "https://h/?a=1",
            "https://u:p@h/",
        ] {
            let e = base_url(raw).unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{raw}: {e}");
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        let c = client("https://h:1");
        let u = c.url(&["org", "members", "a+b/c@example.com"]).unwrap();
        assert_eq!(
            u.as_str(),
            "https://h:1/api/v1/org/members/a+b%2Fc@example.com"
        );
        assert_eq!(c.base_url().as_str(), "https://h:1/api/v1");
    }

    #[test]
    fn ca_pem_must_hold_a_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let opts = ClientOptions {
            api_url: "https://h".to_owned(),
            ca_pem: Some(b"not a pem".to_vec()),
            api_key: None,
            timeout: Duration::from_secs(1),
        };
        let e = ApiClient::new(opts).unwrap_err();
        assert!(matches!(e, CliError::Ca(_)), "{e}");
    }

    #[test]
    fn ca_pem_is_accepted() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let opts = ClientOptions {
            api_url: "https://localhost:1".to_owned(),
            ca_pem: Some(ca.cert.pem().into_bytes()),
            api_key: None,
            timeout: Duration::from_secs(1),
        };
        assert!(ApiClient::new(opts).is_ok());
    }

    #[tokio::test]
    async fn refused_connection_names_the_url() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client(&format!("https://127.0.0.1:{port}"));
        let e = c.get(&["devices"]).await.unwrap_err();
        assert!(matches!(e, CliError::Connect { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("127.0.0.1:{port}/api/v1/devices"))
        );
        assert!(!e.to_string().contains("edg_test_x"));
    }
}
