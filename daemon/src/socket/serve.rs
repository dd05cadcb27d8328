//! The accept loop: classify each caller before any HTTP, serve it with bounds, drain on shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::response::Response;
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use octomil_common::wire::codes;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::access::{Access, AccessPolicy, Peer, supplementary_groups};
use super::activity::{Activity, TrackedBody, TrackedIo};
use super::bind::{claim_identity, remove_if_ours};
use super::fast::{self, FastEnd, FastPath};
use super::{SocketOptions, SocketStats, error_response};

/// Read buffer cap per connection (hyper's minimum is 8 KiB): request heads here are tiny, and
/// 64 connections must stay cheap on a small device. Larger heads get 431.
pub(super) const MAX_BUF_BYTES: usize = 16 * 1024;
/// Busy connections being answered 503 at once; beyond this they are closed unanswered, so a
/// flood cannot grow the task set without bound.
const REJECT_SLOTS: usize = 16;
/// Pause after accept() fails for lack of resources (EMFILE and friends), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The per-connection bounds, copied into every connection task.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What a socket serves: the router, and optionally the hot requests answered before any
/// routing (see [`FastPath`]).
#[derive(Clone, Debug)]
pub struct Routes {
    pub router: Router,
    pub fast: Option<Arc<dyn FastPath>>,
}

impl From<Router> for Routes {
    fn from(router: Router) -> Self {
        Self { router, fast: None }
    }
}

/// Accept loop: reads peer credentials first (before parsing any HTTP), classifies them with the
/// policy current at accept time, and serves HTTP/1.1 with the `Peer` in each request's
/// extensions. Denied callers get 403 on every request without reaching the router. Beyond
/// `max_connections` a caller gets 503 with `Retry-After: 1` and the connection is closed.
///
/// On `shutdown`: stops accepting, removes the socket file if it is still the one `bind` created
/// (same device and inode), lets in-flight requests finish within `grace` while idle kept-alive
/// connections close at once, then drops whatever is left and returns.
pub async fn serve(
    listener: UnixListener,
    routes: impl Into<Routes>,
    policy: watch::Receiver<Arc<AccessPolicy>>,
    opts: &SocketOptions,
    stats: Arc<SocketStats>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // Recorded by bind, to recognise our socket file when we leave.
    let ours = claim_identity(&opts.path);
    let limits = Limits {
        header_read_timeout: opts.header_read_timeout,
        idle_timeout: opts.idle_timeout,
    };
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let uid_slots = Arc::new(UidSlots {
        cap: opts.per_uid_cap(),
        held: std::sync::Mutex::new(HashMap::new()),
    });
    let reject_slots = Arc::new(Semaphore::new(REJECT_SLOTS));
    let Routes { router, fast } = routes.into();
    let router = TowerToHyperService::new(router);
    let mut tasks = JoinSet::new();

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                // Reaped as they finish so the set stays the size of the live connections.
                if let Err(e) = done
                    && e.is_panic()
                {
                    warn!(error = %e, "connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                        let policy = policy.clone();
                        let conn = Connection {
                            slot: ActiveSlot::new(slot, Arc::clone(&stats)),
                            uid_slots: Arc::clone(&uid_slots),
                            router: router.clone(),
                            fast: fast.clone(),
                            limits,
                            shutdown: shutdown.clone(),
                        };
                        tasks.spawn(conn.run(stream, policy));
                    } else {
                        stats.rejected_busy.fetch_add(1, Ordering::Relaxed);
                        // With every reject slot taken too, the stream is dropped unanswered.
                        if let Ok(permit) = Arc::clone(&reject_slots).try_acquire_owned() {
                            tasks.spawn(reject_busy(stream, permit, limits));
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    if is_resource_exhaustion(&e) {
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                            () = shutdown.cancelled() => {}
                        }
                    }
                }
            }
        }
    }

    // Stop accepting first: callers now get "not running" instead of waiting in the backlog.
    drop(listener);
    remove_if_ours(&opts.path, ours);
    let in_flight = tasks.len();
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    match drained {
        Ok(()) => debug!(in_flight, "socket server drained"),
        Err(_) => {
            warn!(
                remaining = tasks.len(),
                ?grace,
                "grace period over; dropping connections"
            );
            tasks.shutdown().await;
        }
    }
}

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}

/// A served connection's place under `max_connections`; also keeps the `active` gauge right,
/// even when the task is aborted.
struct ActiveSlot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<SocketStats>,
}

impl ActiveSlot {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<SocketStats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many connections each caller uid holds, against the per-uid cap.
#[derive(Debug)]
struct UidSlots {
    cap: usize,
    held: std::sync::Mutex<HashMap<u32, usize>>,
}

/// One of a uid's connections; given back on drop.
struct UidSlot {
    slots: Arc<UidSlots>,
    uid: u32,
}

impl UidSlots {
    fn take(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(uid).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            slots: Arc::clone(self),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// One accepted connection that got a slot.
struct Connection {
    slot: ActiveSlot,
    uid_slots: Arc<UidSlots>,
    router: TowerToHyperService<Router>,
    fast: Option<Arc<dyn FastPath>>,
    limits: Limits,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(mut self, stream: UnixStream, mut policy_rx: watch::Receiver<Arc<AccessPolicy>>) {
        let policy = Arc::clone(&policy_rx.borrow_and_update());
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                warn!(error = %e, "cannot read peer credentials; closing");
                return;
            }
        };
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        let Some(_uid_slot) = self.uid_slots.take(uid) else {
            self.slot
                .stats
                .rejected_busy
                .fetch_add(1, Ordering::Relaxed);
            info!(
                uid,
                cap = self.uid_slots.cap,
                "caller holds its share of connections; answering 503"
            );
            let message = format!(
                "uid {uid} already holds {} connections to octomild, its share; retry shortly",
                self.uid_slots.cap
            );
            return answer_busy(stream, self.limits, message).await;
        };
        let supplementary = match pid {
            Some(pid) if policy.needs_groups(uid, gid) => supplementary_groups(pid, uid),
            _ => Vec::new(),
        };
        let access = policy.classify(uid, gid, &supplementary);
        let peer = Peer {
            uid,
            gid,
            pid,
            access,
        };
        if access == Access::Denied {
            self.slot.stats.denied.fetch_add(1, Ordering::Relaxed);
            info!(uid, gid, ?pid, "caller not allowed; answering 403");
        } else {
            debug!(uid, gid, ?pid, access = access.as_str(), "connection");
            // A reload that takes this caller off the allowed lists closes its connection
            // (after the request in flight): a kept-alive connection must not outlive the
            // permission it was accepted under.
            let stop = self.shutdown.child_token();
            let watcher = stop.clone();
            let _guard = stop.clone().drop_guard();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = watcher.cancelled() => return,
                        changed = policy_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let now = Arc::clone(&policy_rx.borrow_and_update());
                            if now.classify(uid, gid, &supplementary) == Access::Denied {
                                info!(uid, gid, "caller no longer allowed after a reload; closing its connection");
                                watcher.cancel();
                                return;
                            }
                        }
                    }
                }
            });
            self.shutdown = stop;
            return self.serve(stream, peer, access).await;
        }
        self.serve(stream, peer, access).await
    }

    async fn serve(self, stream: UnixStream, peer: Peer, access: Access) {
        let uid = peer.uid;

        // Allowed callers start on the fast path; hyper takes the connection when it must.
        let (stream, read_ahead) = match &self.fast {
            Some(fast) if access != Access::Denied => {
                match fast::serve(stream, fast.as_ref(), &peer, self.limits, &self.shutdown).await {
                    FastEnd::Closed => return,
                    FastEnd::HandOver(stream, read_ahead) => (stream, read_ahead),
                }
            }
            _ => (stream, Bytes::new()),
        };

        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(TrackedIo::new(stream, read_ahead, Arc::clone(&activity)));
        let service = PeerService {
            peer,
            router: self.router,
            activity: Arc::clone(&activity),
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(MAX_BUF_BYTES)
            // A denied caller gets one answer, then the connection is closed.
            .keep_alive(access != Access::Denied);
        let mut conn = pin!(builder.serve_connection(io, service));

        let idle = self.limits.idle_timeout;
        let mut draining = false;
        loop {
            // While a handler works the connection is not idle; look again later.
            let check_at = activity
                .idle_deadline(idle)
                .unwrap_or_else(|| Instant::now() + idle);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        debug!(uid, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.shutdown.cancelled(), if !draining => {
                    // Finishes the request in flight, if any, then closes.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                () = tokio::time::sleep_until(check_at) => {
                    if activity.idle_deadline(idle).is_some_and(|d| d <= Instant::now()) {
                        debug!(uid, ?idle, "idle connection closed");
                        return;
                    }
                }
            }
        }
    }
}

/// The hyper service of one connection: stamps the `Peer` on each request and routes it, or
/// answers 403 for a denied caller without touching the router.
struct PeerService {
    peer: Peer,
    router: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request<Incoming>> for PeerService {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if self.peer.access == Access::Denied {
            return Box::pin(std::future::ready(Ok(forbidden(&self.peer))));
        }
        let (parts, body) = req.into_parts();
        self.activity.request_started(body.is_end_stream());
        let body = TrackedBody::new(body, Arc::clone(&self.activity));
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(self.peer.clone());
        let routed = self.router.call(req);
        let activity = Arc::clone(&self.activity);
        Box::pin(async move {
            let res = routed.await;
            activity.response_ready();
            res
        })
    }
}

fn forbidden(peer: &Peer) -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        codes::FORBIDDEN,
        format!(
            "uid {} (gid {}) may not use this socket; add it to allowed_uids, or one of its \
             groups to allowed_gids",
            peer.uid, peer.gid
        ),
    )
}

/// Answers 503 to a connection over the cap. The request head is read first: closing a Unix
/// socket with unread data resets it, and the caller would lose the answer.
async fn reject_busy(stream: UnixStream, _permit: OwnedSemaphorePermit, limits: Limits) {
    answer_busy(
        stream,
        limits,
        "too many connections to octomild; retry shortly".into(),
    )
    .await;
}

async fn answer_busy(stream: UnixStream, limits: Limits, message: String) {
    let service = service_fn(move |_req: Request<Incoming>| {
        let message = message.clone();
        async move {
            let mut res =
                error_response(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, message);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok::<_, Infallible>(res)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    // Bounded even if the caller never reads the answer.
    let deadline = limits.header_read_timeout + Duration::from_secs(1);
    if let Ok(Err(e)) = tokio::time::timeout(deadline, conn).await {
        debug!(error = %e, "busy answer not delivered");
    }
}
