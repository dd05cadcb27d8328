//! Client side of the local API socket, for `octomild status|token|acquire|refresh` and tests.

use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// Largest response body accepted; the API's answers are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Talks to `octomild` over its Unix socket. Cheap to create; holds no connection.
#[derive(Clone, Debug)]
pub struct SocketClient {
    path: PathBuf,
    /// Bound on each call: connect, send, and read the whole answer.
    timeout: Duration,
}

/// An answer from the daemon, body read in full.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a call did not produce an answer. HTTP error statuses are answers, not errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("octomild is not running (no socket at {path})")]
    NotRunning { path: PathBuf },
    #[error("permission denied on {path}: run as root or as a member of the socket's group")]
    PermissionDenied { path: PathBuf },
    #[error("octomild did not answer within {after:?}")]
    Timeout { after: Duration },
    #[error("cannot talk to octomild at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("HTTP error talking to octomild: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("answer larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
}

impl SocketClient {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One call on a fresh connection, closed afterwards.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let req = build_request(method, path_and_query, json_body)?;
        self.within_timeout(async {
            let mut conn = self.open().await?;
            // Tell the server we are done after this one, so both sides close promptly.
            let mut req = req;
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            conn.send(req).await
        })
        .await
    }

    /// A kept-alive connection whose `request` calls reuse it (benchmarks, repeated polling).
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        self.within_timeout(self.open()).await
    }

    async fn open(&self) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|e| connect_error(&self.path, e))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection; ends when the sender is dropped or the server closes.
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "socket client connection ended with an error");
            }
        });
        Ok(Connection {
            sender,
            driver,
            timeout: self.timeout,
        })
    }

    async fn within_timeout<T>(
        &self,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                after: self.timeout,
            })?
    }
}

/// One open HTTP/1.1 connection to the daemon. The server closes it when idle or busy; a call
/// on a closed connection fails with `ClientError::Http`.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Body>,
    driver: JoinHandle<()>,
    timeout: Duration,
}

impl Connection {
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let req = build_request(method, path_and_query, json_body)?;
        let after = self.timeout;
        tokio::time::timeout(after, self.send(req))
            .await
            .map_err(|_| ClientError::Timeout { after })?
    }

    async fn send(&mut self, req: Request<Body>) -> Result<Response, ClientError> {
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body: read_body(body).await?,
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn build_request(
    method: Method,
    path_and_query: &str,
    json_body: Option<&serde_json::Value>,
) -> Result<Request<Body>, ClientError> {
    if !path_and_query.starts_with('/') {
        return Err(ClientError::InvalidRequest(format!(
            "path must start with '/': {path_and_query:?}"
        )));
    }
    let builder = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, "localhost");
    let built = match json_body {
        Some(value) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(value.to_string())),
        None => builder.body(Body::empty()),
    };
    built.map_err(|e| ClientError::InvalidRequest(e.to_string()))
}

async fn read_body(mut body: Incoming) -> Result<Bytes, ClientError> {
    let mut buf = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::ResponseTooLarge {
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Maps connect() failures to what a shell user needs to hear.
fn connect_error(path: &Path, e: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        _ => ClientError::Io { path, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_built_with_host_and_json_type() {
        let body = serde_json::json!({"n": 1});
        let req = build_request(Method::POST, "/v1/x?a=b", Some(&body)).unwrap();
        assert_eq!(req.uri(), "/v1/x?a=b");
        assert_eq!(req.headers()[header::HOST], "localhost");
        assert_eq!(req.headers()[header::CONTENT_TYPE], "application/json");
        assert!(build_request(Method::GET, "v1/x", None).is_err());
        assert!(build_request(Method::GET, "/a b", None).is_err());
    }

    #[test]
    fn connect_errors_name_the_cause() {
        let p = Path::new("/run/x.sock");
        let e = connect_error(p, io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            e.to_string(),
            "octomild is not running (no socket at /run/x.sock)"
        );
        let e = connect_error(p, io::Error::from_raw_os_error(nix::libc::ECONNREFUSED));
        assert!(matches!(e, ClientError::NotRunning { .. }));
        let e = connect_error(p, io::Error::from_raw_os_error(nix::libc::EACCES));
        assert!(matches!(e, ClientError::PermissionDenied { .. }));
    }

    #[tokio::test]
    async fn missing_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let client = SocketClient::new(dir.path().join("none.sock"), Duration::from_secs(1));
        let err = client.request(Method::GET, "/", None).await.unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    }
}
