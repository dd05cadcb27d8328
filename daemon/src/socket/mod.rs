//! The local API's Unix socket: safe creation, peer-credential access control, bounded serving.
//!
//! `bind` creates the socket with its final mode and owner before it becomes reachable; `serve`
//! runs the accept loop: credentials are read and classified before any HTTP is parsed, denied
//! callers never reach the router, and connection count, header reads and idle time are bounded so
//! one slow or stuck client cannot starve the rest.

mod access;
mod activity;
mod bind;
mod fast;
mod serve;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use octomil_common::wire::ErrorBody;

pub use access::{Access, AccessPolicy, Peer, RequireAdmin};
pub use bind::bind;
pub use fast::{FastAnswer, FastPath, FastRequest, FastStatus};
pub use serve::{Routes, serve};

/// Where and how the socket is created and how its connections are bounded.
#[derive(Clone, Debug)]
pub struct SocketOptions {
    /// Socket path; the spec default is `/run/octomil/octomild.sock`.
    pub path: PathBuf,
    /// File mode of the socket; 0o660: owner and group may connect, nobody else.
    pub mode: u32,
    /// Group to own the socket (so its members can connect); `None` keeps the daemon's gid.
    pub group: Option<u32>,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections one caller uid may hold at once, so no single uid can take every slot;
    /// `None`: `max_connections` less an eighth (at least one slot kept for others).
    pub max_connections_per_uid: Option<usize>,
    /// Longest wait for a complete request head, including the wait on an idle kept-alive
    /// connection (hyper starts this timer whenever it waits for a new request).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long, while no handler was working on a
    /// request, is closed (stalled uploads, clients that stop reading, idle keep-alives).
    pub idle_timeout: Duration,
}

impl SocketOptions {
    /// The documented defaults for a socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: 0o660,
            group: None,
            max_connections: 64,
            max_connections_per_uid: None,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl SocketOptions {
    /// The per-uid cap in effect.
    pub fn per_uid_cap(&self) -> usize {
        self.max_connections_per_uid.unwrap_or_else(|| {
            self.max_connections
                .saturating_sub((self.max_connections / 8).max(1))
                .max(1)
        })
    }
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self::new("/run/octomil/octomild.sock")
    }
}

/// Counters for `/metrics`, all per connection: `accepted` counts every accepted connection,
/// `rejected_busy` (answered 503) and `denied` (answered 403) are subsets of it, and `active` is
/// a gauge of connections holding a slot now.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub accepted: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub denied: AtomicU64,
    pub active: AtomicU64,
}

/// Why the socket could not be created. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another octomild is listening on {path}")]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket path {path} is {len} bytes; a Unix socket path may have at most {max}")]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket::bind must be called inside a tokio runtime")]
    NoRuntime,
}

/// A JSON error answer in the wire format every endpoint uses.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}
