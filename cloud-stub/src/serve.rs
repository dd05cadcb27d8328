//! HTTPS (and plain HTTP) for an axum `Router` on our own accept loop, with a bounded graceful drain.
//!
//! `axum::serve` has no TLS, and axum-server would be one more stack to track; this loop is
//! small. It owns the listener and every connection task: on shutdown it stops accepting,
//! asks each connection to finish its in-flight requests, waits at most `grace`, then drops
//! whatever is left and returns.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// A client that connects but never finishes the handshake holds a task only this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error such as EMFILE, so a full fd table does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once; past it a new connection is closed at once, unread.
    pub max_connections: usize,
    /// A connection (HTTP/1.1 keep-alive or HTTP/2) that moves no byte this long is closed.
    pub idle_timeout: Duration,
    /// Request head (HTTP/1.1 read buffer) and HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            max_streams: 64,
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` is cancelled, then drains for at
/// most `grace`. Handlers can extract `ConnectInfo<SocketAddr>` (the TCP peer).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) {
    serve_https_with(listener, tls, router, shutdown, grace, Limits::default()).await;
}

/// [`serve_https`] with explicit [`Limits`].
pub async fn serve_https_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    limits: Limits,
) {
    serve(
        listener,
        Some(TlsAcceptor::from(tls)),
        router,
        shutdown,
        grace,
        limits,
    )
    .await;
}

/// As [`serve_https`] without TLS: for tests and for deployments behind a TLS-terminating proxy.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) {
    serve_http_with(listener, router, shutdown, grace, Limits::default()).await;
}

/// [`serve_http`] with explicit [`Limits`].
pub async fn serve_http_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    limits: Limits,
) {
    serve(listener, None, router, shutdown, grace, limits).await;
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    limits: Limits,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    // Tells hyper connections to finish their current requests and close.
    let graceful = GracefulShutdown::new();
    // Cancelled only when the grace period runs out: drops connections that did not finish.
    let abort = CancellationToken::new();

    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer gave up between SYN and accept: nothing wrong with us.
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept: connection dropped by peer");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // At the cap, close the newcomer at once: a flood cannot hold more than the cap of
        // sockets, tasks and TLS buffers, and clients see a refusal they can retry.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        // Subscribed now, before shutdown can be signalled, so no connection misses it.
        let watcher = graceful.watcher();
        let conn = connection(
            stream,
            peer,
            tls.clone(),
            router.clone(),
            watcher,
            shutdown.clone(),
            abort.clone(),
            limits,
        );
        tracker.spawn(async move {
            conn.await;
            drop(slot);
        });
    }

    // Closing the listener makes new connects fail fast instead of queueing in the backlog.
    drop(listener);
    tracker.close();
    let drained = tokio::time::timeout(grace, async {
        tokio::join!(graceful.shutdown(), tracker.wait());
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            grace_ms = grace.as_millis(),
            "grace period over; dropping remaining connections"
        );
        abort.cancel();
    }
}

/// One accepted TCP connection: TLS handshake (if any), then HTTP/1.1 or HTTP/2 until the
/// client closes, shutdown asks it to finish, or the grace period ends.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    watcher: Watcher,
    shutdown: CancellationToken,
    abort: CancellationToken,
    limits: Limits,
) {
    let activity = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream = IdleIo::new(stream, activity.clone());
    let Some(acceptor) = tls else {
        return http(
            TokioIo::new(stream),
            peer,
            router,
            watcher,
            abort,
            limits,
            activity,
        )
        .await;
    };
    // A half-done handshake has no request worth draining: drop it at shutdown.
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
    };
    match handshake {
        Ok(Ok(tls_stream)) => {
            http(
                TokioIo::new(tls_stream),
                peer,
                router,
                watcher,
                abort,
                limits,
                activity,
            )
            .await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    watcher: Watcher,
    abort: CancellationToken,
    limits: Limits,
    activity: Arc<std::sync::atomic::AtomicU64>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Handlers see the TCP peer exactly as with `into_make_service_with_connect_info`.
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // Without a timer hyper silently skips its 30 s header-read timeout (slowloris guard).
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_streams);
    let conn = watcher.watch(builder.serve_connection(io, svc));
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = abort.cancelled() => tracing::debug!(%peer, "connection dropped at end of grace period"),
        () = idle(&activity, limits.idle_timeout) => tracing::debug!(%peer, "idle connection closed"),
    }
}

/// Returns once no byte moved on the connection for `timeout` (`activity` counts I/O).
async fn idle(activity: &std::sync::atomic::AtomicU64, timeout: Duration) {
    use std::sync::atomic::Ordering;
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// A stream that counts its reads and writes, for the idle timeout.
struct IdleIo<T> {
    inner: T,
    activity: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> IdleIo<T> {
    fn new(inner: T, activity: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { inner, activity }
    }

    fn touch(&self) {
        self.activity
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept errors that concern one aborted connection rather than the listener or the process.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use axum::routing::get;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;
    use crate::tls::Pki;

    const GRACE: Duration = Duration::from_secs(5);

    fn echo_router() -> Router {
        Router::new().route(
            "/ip",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
    }

    /// A plain-HTTP echo server on a loopback port under `limits`: its address, its shutdown
    /// token and its task.
    async fn start_http(
        limits: Limits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_http_with(
            listener,
            echo_router(),
            shutdown.clone(),
            GRACE,
            limits,
        ));
        (addr, shutdown, server)
    }

    /// An HTTPS server on a loopback port with a fresh PKI in `dir`: the PKI (for the
    /// client), its address, its shutdown token and its task.
    async fn start_https(
        dir: &std::path::Path,
        alpn: &[&[u8]],
        router: Router,
        grace: Duration,
    ) -> (
        Pki,
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pki = Pki::load_or_create(dir, &[]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_https(
            listener,
            pki.server_config(alpn),
            router,
            shutdown.clone(),
            grace,
        ));
        (pki, addr, shutdown, server)
    }

    fn client_for(pki: &Pki, addr: SocketAddr) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", addr)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn https_echoes_peer_and_drains_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, addr, shutdown, server) =
            start_https(dir.path(), &[b"h2", b"http/1.1"], echo_router(), GRACE).await;

        // A client that speaks no TLS must not disturb the loop.
        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // One that connects and stays silent must not delay shutdown.
        let _silent = TcpStream::connect(addr).await.unwrap();

        let client = client_for(&pki, addr);
        for url in [
            format!("https://localhost:{}/ip", addr.port()),
            format!("https://127.0.0.1:{}/ip", addr.port()),
        ] {
            let body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(
                body.parse::<IpAddr>().unwrap(),
                IpAddr::from([127, 0, 0, 1])
            );
        }

        // `client` keeps an idle keep-alive connection open: graceful shutdown closes it.
        shutdown.cancel();
        timeout(GRACE, server)
            .await
            .expect("serve_https returns within the grace period")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn stuck_request_is_dropped_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, mut entered_rx) = mpsc::channel::<()>(1);
        let router = Router::new().route(
            "/hang",
            get(move || async move {
                let _ = entered_tx.send(()).await;
                std::future::pending::<&'static str>().await
            }),
        );
        let grace = Duration::from_millis(200);
        let (pki, addr, shutdown, server) =
            start_https(dir.path(), &[b"http/1.1"], router, grace).await;

        let client = client_for(&pki, addr);
        let request = tokio::spawn(async move {
            client
                .get(format!("https://localhost:{}/hang", addr.port()))
                .send()
                .await
        });
        entered_rx.recv().await.unwrap();
        shutdown.cancel();
        // Returns once the grace period is over, not when the handler would finish (never).
        timeout(grace + Duration::from_secs(5), server)
            .await
            .expect("serve_https gives up after the grace period")
            .unwrap();
        let outcome = timeout(Duration::from_secs(5), request)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.is_err(), "the stuck request was cut off");
    }

    /// Sends one keep-alive request on `s` and reads until the end of its answer's head.
    async fn request(s: &mut TcpStream, extra_header: &str) -> String {
        use tokio::io::AsyncReadExt;
        let req = format!("GET /ip HTTP/1.1\r\nhost: x\r\n{extra_header}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Reads until the peer closes; true if it did (EOF or reset) rather than send bytes.
    async fn closed(s: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let (addr, shutdown, server) = start_http(Limits {
            max_connections: 1,
            ..Limits::default()
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert!(request(&mut first, "").await.starts_with("HTTP/1.1 200"));
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut second).await, "over the cap: closed unanswered");
        drop(first);
        // Once the first is gone its slot frees: a new connection is served.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut next = TcpStream::connect(addr).await.unwrap();
            if request(&mut next, "").await.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "slot never freed");
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        timeout(GRACE, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let (addr, shutdown, server) = start_http(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!("x-big: {}\r\n", "a".repeat(40 * 1024));
        let answer = request(&mut s, &big).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
        shutdown.cancel();
        timeout(GRACE, server).await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (addr, shutdown, server) = start_http(Limits {
            idle_timeout: Duration::from_secs(5),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(request(&mut s, "").await.starts_with("HTTP/1.1 200"));
        let quiet_since = tokio::time::Instant::now();
        assert!(closed(&mut s).await);
        // Closed by the idle timeout (within two periods), long before hyper's 30 s header
        // timeout; the clock is tokio's paused one, so this is logic, not a wall-clock race.
        assert!(quiet_since.elapsed() <= Duration::from_secs(10));
        shutdown.cancel();
        timeout(GRACE, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn plain_http_echoes_peer() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, echo_router(), shutdown.clone(), GRACE));
        let body = reqwest::get(format!("http://{addr}/ip"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "127.0.0.1");
        shutdown.cancel();
        timeout(GRACE, server).await.unwrap().unwrap();
    }
}
