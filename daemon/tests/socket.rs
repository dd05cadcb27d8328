//! The local API socket end to end: creation, peer-credential access, bounds, shutdown, clients.
#![allow(clippy::unwrap_used)]

mod emulation;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{Method, StatusCode};
use octomil_testkit::{poll, skip};
use octomild::client::{ClientError, SocketClient};
use octomild::socket::{
    self, AccessPolicy, FastAnswer, FastPath, FastRequest, FastStatus, Peer, RequireAdmin, Routes,
    SocketError, SocketOptions, SocketStats,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The uid/gid `setpriv` drops to for "another user" (Debian's nobody/nogroup).
const NOBODY: u32 = 65534;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for "eventually" conditions; generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// A temp dir other uids can traverse (tempfile makes 0700 ones).
fn socket_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("octomild-sock")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Polls `cond` until it holds or `DEADLINE` passes ([`poll::eventually`] on a plain condition).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    poll::eventually(DEADLINE, what, || std::future::ready(cond().then_some(()))).await
}

/// Lets a test hold a handler mid-request: it reports entering, then waits for release.
#[derive(Clone)]
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    release: watch::Receiver<bool>,
}

/// The fast path every test server has, as the daemon has one for its hot requests: while
/// `on`, `GET /fast` answers `{"fast":true}` and `POST /fast/limited` 429 with
/// `Retry-After: 7`, both on the socket. The router's versions answer `{"fast":false}`, so
/// each answer tells which path served it.
#[derive(Debug)]
struct TestFast {
    on: AtomicBool,
    served: AtomicU64,
}

impl FastPath for TestFast {
    fn answer(&self, req: &FastRequest<'_>) -> Option<FastAnswer> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        let (status, retry_after) = match (req.method, req.target) {
            ("GET", "/fast") => (FastStatus::Ok, None),
            ("POST", "/fast/limited") => (FastStatus::TooManyRequests, Some(7)),
            _ => return None,
        };
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(FastAnswer {
            status,
            retry_after,
            body: bytes::Bytes::from_static(br#"{"fast":true}"#),
        })
    }
}

fn router(gate: Gate) -> Router {
    Router::new()
        .route("/x", get(|| async { "ok" }))
        .route("/fast", get(|| async { Json(json!({"fast": false})) }))
        .route(
            "/fast/limited",
            post(|| async { (StatusCode::TOO_MANY_REQUESTS, Json(json!({"fast": false}))) }),
        )
        .route(
            "/whoami",
            get(|peer: Peer| async move {
                Json(json!({
                    "uid": peer.uid, "gid": peer.gid, "pid": peer.pid,
                    "access": peer.access.as_str(),
                }))
            }),
        )
        .route("/admin", post(|_: RequireAdmin| async { "admin ok" }))
        .route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }))
        .route(
            "/slow",
            get(|State(mut gate): State<Gate>| async move {
                let _ = gate.entered.send(());
                let _ = gate.release.wait_for(|r| *r).await;
                "done"
            }),
        )
        // A handler that works (no I/O) for the given time: simulates a slow cloud call.
        .route(
            "/work/{ms}",
            get(|UrlPath(ms): UrlPath<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "worked"
            }),
        )
        .with_state(gate)
}

struct TestServer {
    dir: TempDir,
    path: PathBuf,
    policy: watch::Sender<Arc<AccessPolicy>>,
    stats: Arc<SocketStats>,
    fast: Arc<TestFast>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    entered: mpsc::UnboundedReceiver<()>,
    release: watch::Sender<bool>,
}

impl TestServer {
    async fn start(tune: impl FnOnce(&mut SocketOptions), grace: Duration) -> Self {
        let dir = socket_dir();
        let path = dir.path().join("octomild.sock");
        let mut opts = SocketOptions::new(&path);
        tune(&mut opts);
        let listener = socket::bind(&opts).unwrap();
        let (policy, policy_rx) = watch::channel(Arc::new(AccessPolicy::default()));
        let stats = Arc::new(SocketStats::default());
        let shutdown = CancellationToken::new();
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (release, release_rx) = watch::channel(false);
        let gate = Gate {
            entered: entered_tx,
            release: release_rx,
        };
        let fast = Arc::new(TestFast {
            on: AtomicBool::new(true),
            served: AtomicU64::new(0),
        });
        let routes = Routes {
            router: router(gate),
            fast: Some(Arc::clone(&fast) as Arc<dyn FastPath>),
        };
        let task = tokio::spawn({
            let (stats, shutdown) = (Arc::clone(&stats), shutdown.clone());
            async move {
                socket::serve(listener, routes, policy_rx, &opts, stats, shutdown, grace).await;
            }
        });
        Self {
            dir,
            path,
            policy,
            stats,
            fast,
            shutdown,
            task,
            entered,
            release,
        }
    }

    fn client(&self) -> SocketClient {
        SocketClient::new(&self.path, CLIENT_TIMEOUT)
    }

    fn allow(&self, uids: &[u32], gids: &[u32]) {
        self.policy.send_replace(Arc::new(AccessPolicy {
            allowed_uids: uids.iter().copied().collect(),
            allowed_gids: gids.iter().copied().collect(),
        }));
    }

    /// Stops the server; the socket's directory lives on in the returned guard.
    async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .unwrap()
            .unwrap();
        self.dir
    }
}

// ---------------------------------------------------------------------------------------------
// bind

#[tokio::test]
async fn bind_creates_exact_mode_group_and_parent_and_leaves_no_temp_dir() {
    let dir = socket_dir();
    let parent = dir.path().join("run").join("octomil");
    let path = parent.join("octomild.sock");
    let mut opts = SocketOptions::new(&path);
    opts.group = Some(4242);
    let _listener = socket::bind(&opts).unwrap();

    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), 4242);
    let parent_meta = std::fs::metadata(&parent).unwrap();
    assert_eq!(parent_meta.mode() & 0o7777, 0o755);
    let entries: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec!["octomild.sock"], "staging dir left behind");
}

#[tokio::test]
async fn bind_replaces_a_stale_socket() {
    let dir = socket_dir();
    let path = dir.path().join("octomild.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let stale_ino = std::fs::symlink_metadata(&path).unwrap().ino();

    let listener = socket::bind(&SocketOptions::new(&path)).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_ne!(meta.ino(), stale_ino);
    assert_eq!(meta.mode() & 0o7777, 0o660);
    let (connected, accepted) = tokio::join!(UnixStream::connect(&path), listener.accept());
    connected.unwrap();
    accepted.unwrap();
}

#[tokio::test]
async fn bind_refuses_a_live_socket_and_a_regular_file() {
    let dir = socket_dir();
    let path = dir.path().join("octomild.sock");
    let _live = socket::bind(&SocketOptions::new(&path)).unwrap();
    let ino = std::fs::symlink_metadata(&path).unwrap().ino();
    let err = socket::bind(&SocketOptions::new(&path)).unwrap_err();
    assert!(matches!(err, SocketError::AlreadyRunning { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("another octomild is listening on {}", path.display())
    );
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = socket::bind(&SocketOptions::new(&file)).unwrap_err();
    assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // Neither failure left a staging directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

// ---------------------------------------------------------------------------------------------
// serve: identity and access

#[tokio::test]
async fn root_caller_is_admin_and_sees_its_own_credentials() {
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    let client = server.client();
    let res = client.request(Method::GET, "/whoami", None).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let me: Value = res.json().unwrap();
    assert_eq!(me["uid"], 0);
    assert_eq!(me["access"], "admin");
    assert_eq!(me["pid"], std::process::id());

    let res = client.request(Method::POST, "/admin", None).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let body = json!({"surface": "inference", "n": [1, 2, 3]});
    let res = client
        .request(Method::POST, "/echo", Some(&body))
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().unwrap(), body);
    assert_eq!(server.stats.denied.load(Ordering::Relaxed), 0);
    server.stop().await;
}

/// What the helper below printed: the answer, or the client error.
#[derive(Debug, serde::Deserialize)]
struct HelperResult {
    status: Option<u16>,
    body: Option<Value>,
    error: Option<String>,
}

/// Runs `helper_client` as another user via `setpriv`.
async fn request_as(
    uid: u32,
    groups: &str,
    socket: &Path,
    method: &str,
    url: &str,
) -> HelperResult {
    request_as_with(uid, groups, socket, method, url, false).await
}

/// As `request_as`; with `hold`, the helper keeps its connection open after the answer and
/// reports whether the server closed it (within 20 s).
async fn request_as_with(
    uid: u32,
    groups: &str,
    socket: &Path,
    method: &str,
    url: &str,
    hold: bool,
) -> HelperResult {
    let exe = std::env::current_exe().unwrap();
    let groups_arg = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!("--groups={groups}")
    };
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg(groups_arg)
        .arg(exe)
        .args(["--exact", "helper_client", "--ignored", "--nocapture"])
        .env("OCTOMILD_TEST_SOCKET", socket)
        .env("OCTOMILD_TEST_METHOD", method)
        .env("OCTOMILD_TEST_URL", url)
        .env("OCTOMILD_TEST_HOLD", if hold { "1" } else { "" });
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HELPER_RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no result; stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// Not a test: the client that `request_as` runs under another uid.
#[test]
#[ignore = "run by other tests as a subprocess under another uid"]
fn helper_client() {
    let socket = std::env::var("OCTOMILD_TEST_SOCKET").unwrap();
    let method: Method = std::env::var("OCTOMILD_TEST_METHOD")
        .unwrap()
        .parse()
        .unwrap();
    let url = std::env::var("OCTOMILD_TEST_URL").unwrap();
    if std::env::var("OCTOMILD_TEST_HOLD").as_deref() == Ok("1") {
        // One request on a raw connection, then wait for the server to close it.
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        write!(s, "{method} {url} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let status: u16 = String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        println!(
            "HELPER_RESULT {}",
            json!({"status": status, "body": {"closed": closed}})
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        SocketClient::new(socket, CLIENT_TIMEOUT)
            .request(method, &url, None)
            .await
    });
    let out = match result {
        Ok(res) => json!({
            "status": res.status.as_u16(),
            "body": res.json::<Value>().unwrap_or(Value::Null),
        }),
        Err(e @ ClientError::PermissionDenied { .. }) => {
            json!({"error": "permission_denied", "message": e.to_string()})
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    println!("HELPER_RESULT {out}");
}

/// A reload that removes a uid from the allowed list closes that uid's open connections: a
/// kept-alive connection does not keep a permission the operator took away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_uid_closes_its_open_connections() {
    if let Some(why) = emulation::cannot_exec_self() {
        eprintln!(
            "SKIPPED a_reload_that_removes_a_uid_closes_its_open_connections: setpriv must run this test binary as another user; {why}"
        );
        return;
    }
    let server = TestServer::start(|o| o.group = Some(NOBODY), Duration::from_secs(1)).await;
    server.allow(&[NOBODY], &[]);
    let path = server.path.clone();
    let held =
        tokio::spawn(async move { request_as_with(NOBODY, "", &path, "GET", "/fast", true).await });
    let fast = Arc::clone(&server.fast);
    eventually("the held request to be answered", || {
        fast.served.load(Ordering::Relaxed) == 1
    })
    .await;
    let removed = Instant::now();
    server.allow(&[], &[]);
    let res = held.await.unwrap();
    assert_eq!(res.status, Some(200), "{res:?}");
    assert_eq!(res.body.unwrap()["closed"], true);
    // Well before the idle timeout would have closed it anyway.
    assert!(removed.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_uid_is_denied_until_the_policy_allows_it() {
    if let Some(why) = emulation::cannot_exec_self() {
        skip::emulation_limit(
            "other_uid_is_denied_until_the_policy_allows_it",
            &format!("setpriv must run this test binary as another user; {why}"),
        );
        return;
    }
    // The socket's group is nogroup so that NOBODY can connect at all; the policy decides.
    let server = TestServer::start(|o| o.group = Some(NOBODY), Duration::from_secs(1)).await;
    let path = server.path.clone();

    let res = request_as(NOBODY, "", &path, "GET", "/whoami").await;
    assert_eq!(res.status, Some(403), "{res:?}");
    assert_eq!(res.body.as_ref().unwrap()["error"], "forbidden");
    // Denied callers never reach the fast path either.
    let res = request_as(NOBODY, "", &path, "GET", "/fast").await;
    assert_eq!(res.status, Some(403), "{res:?}");
    assert_eq!(server.fast.served.load(Ordering::Relaxed), 0);
    assert!(
        res.body.as_ref().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534"),
    );
    assert_eq!(server.stats.denied.load(Ordering::Relaxed), 2);

    // The swap applies to the next connection.
    server.allow(&[NOBODY], &[]);
    let res = request_as(NOBODY, "", &path, "GET", "/whoami").await;
    assert_eq!(res.status, Some(200), "{res:?}");
    let body = res.body.unwrap();
    assert_eq!(body["uid"], NOBODY);
    assert_eq!(body["access"], "read");
    // Readers get the fast path's answer (the daemon's key).
    let res = request_as(NOBODY, "", &path, "GET", "/fast").await;
    assert_eq!(res.body, Some(json!({"fast": true})), "{res:?}");

    // Readers are not admins.
    let res = request_as(NOBODY, "", &path, "POST", "/admin").await;
    assert_eq!(res.status, Some(403), "{res:?}");
    assert_eq!(res.body.unwrap()["error"], "forbidden");

    // Allowed through a supplementary group (read from /proc), then through the primary gid.
    server.allow(&[], &[4242]);
    let res = request_as(NOBODY, "", &path, "GET", "/whoami").await;
    assert_eq!(res.status, Some(403), "{res:?}");
    let res = request_as(NOBODY, "4242", &path, "GET", "/whoami").await;
    assert_eq!(res.status, Some(200), "{res:?}");
    server.allow(&[], &[NOBODY]);
    let res = request_as(NOBODY, "", &path, "GET", "/whoami").await;
    assert_eq!(res.status, Some(200), "{res:?}");

    assert_eq!(server.stats.denied.load(Ordering::Relaxed), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_keeps_out_users_outside_its_group() {
    if let Some(why) = emulation::cannot_exec_self() {
        skip::emulation_limit(
            "socket_mode_keeps_out_users_outside_its_group",
            &format!("setpriv must run this test binary as another user; {why}"),
        );
        return;
    }
    // Default group (root) and mode 0660: NOBODY cannot even connect, whatever the policy says.
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    server.allow(&[NOBODY], &[]);
    let res = request_as(NOBODY, "", &server.path, "GET", "/whoami").await;
    assert_eq!(res.error.as_deref(), Some("permission_denied"), "{res:?}");
    assert_eq!(server.stats.accepted.load(Ordering::Relaxed), 0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// serve: bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_caller_gets_503_quickly_and_the_others_keep_working() {
    const CAP: usize = 3;
    let server = TestServer::start(
        |o| {
            o.max_connections = CAP;
            // One caller fills every slot here; the per-uid share has its own test.
            o.max_connections_per_uid = Some(CAP);
            o.header_read_timeout = Duration::from_secs(30);
        },
        Duration::from_secs(1),
    )
    .await;
    let client = server.client();
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut conn = client.connect().await.unwrap();
        let res = conn.request(Method::GET, "/x", None).await.unwrap();
        assert_eq!(res.status, StatusCode::OK);
        held.push(conn);
    }
    assert_eq!(server.stats.active.load(Ordering::Relaxed), CAP as u64);

    let start = Instant::now();
    let res = client.request(Method::GET, "/x", None).await.unwrap();
    let took = start.elapsed();
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers["retry-after"], "1");
    assert_eq!(res.json::<Value>().unwrap()["error"], "unavailable");
    assert!(took < Duration::from_secs(2), "busy answer took {took:?}");
    println!("busy 503 answered in {took:?}");
    assert_eq!(server.stats.rejected_busy.load(Ordering::Relaxed), 1);

    for conn in &mut held {
        let res = conn.request(Method::GET, "/x", None).await.unwrap();
        assert_eq!(res.status, StatusCode::OK);
    }

    // Closing one frees its slot for a newcomer.
    held.pop();
    let stats = Arc::clone(&server.stats);
    eventually("a slot to free up", || {
        stats.active.load(Ordering::Relaxed) == CAP as u64 - 1
    })
    .await;
    let res = client.request(Method::GET, "/x", None).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    server.stop().await;
}

/// One caller uid cannot hold every connection slot: past its share it gets 503 naming the
/// uid, while a slot stays free for other callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_cannot_hold_every_connection_slot() {
    let server = TestServer::start(
        |o| {
            o.max_connections = 8;
            o.header_read_timeout = Duration::from_secs(30);
        },
        Duration::from_secs(1),
    )
    .await;
    let client = server.client();
    let mut held = Vec::new();
    // The default share: 8 less an eighth.
    for _ in 0..7 {
        let mut conn = client.connect().await.unwrap();
        let res = conn.request(Method::GET, "/x", None).await.unwrap();
        assert_eq!(res.status, StatusCode::OK);
        held.push(conn);
    }
    let res = client.request(Method::GET, "/x", None).await.unwrap();
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = res.json::<Value>().unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("uid 0"),
        "{body}"
    );
    // The slot it did not get is still free for someone else.
    let stats = Arc::clone(&server.stats);
    eventually("the refused connection to end", || {
        stats.active.load(Ordering::Relaxed) == 7
    })
    .await;
    held.pop();
    eventually("a share slot to free up", || {
        stats.active.load(Ordering::Relaxed) == 6
    })
    .await;
    let res = client.request(Method::GET, "/x", None).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    server.stop().await;
}

/// Reads until EOF; returns what was read and when EOF came.
async fn read_to_eof(stream: &mut UnixStream) -> (String, Instant) {
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
        .await
        .expect("server never closed the connection")
        .unwrap();
    (String::from_utf8_lossy(&buf).into_owned(), Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_after_header_read_timeout_without_delaying_others() {
    const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
    let server = TestServer::start(
        |o| {
            o.header_read_timeout = HEADER_TIMEOUT;
            o.idle_timeout = Duration::from_secs(60);
        },
        Duration::from_secs(1),
    )
    .await;
    let start = Instant::now();
    let mut half = UnixStream::connect(&server.path).await.unwrap();
    half.write_all(b"GET /x HT").await.unwrap();
    let mut silent = UnixStream::connect(&server.path).await.unwrap();
    // Answered on the fast path, then half of a second request.
    let mut then_half = UnixStream::connect(&server.path).await.unwrap();
    then_half
        .write_all(b"GET /fast HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\nHo")
        .await
        .unwrap();

    let res = server
        .client()
        .request(Method::GET, "/x", None)
        .await
        .unwrap();
    let other_answered = start.elapsed();
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        other_answered < HEADER_TIMEOUT,
        "another client waited {other_answered:?}"
    );

    for (name, stream) in [
        ("half request line", &mut half),
        ("silent", &mut silent),
        ("one answer, then half a head", &mut then_half),
    ] {
        let (got, at) = read_to_eof(stream).await;
        let after = at - start;
        println!("{name}: closed after {after:?} with {got:?}");
        assert!(
            after >= HEADER_TIMEOUT.mul_f32(0.9),
            "{name} closed after {after:?}"
        );
        assert!(after < HEADER_TIMEOUT * 4, "{name} closed after {after:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalled_connections_are_closed_but_slow_handlers_are_not() {
    const IDLE: Duration = Duration::from_millis(500);
    let server = TestServer::start(
        |o| {
            o.header_read_timeout = Duration::from_secs(30);
            o.idle_timeout = IDLE;
        },
        Duration::from_secs(1),
    )
    .await;

    // Kept alive after one answer, then idle: served by the router, then by the fast path.
    for path in ["/x", "/fast"] {
        let mut idle = UnixStream::connect(&server.path).await.unwrap();
        idle.write_all(format!("GET {path} HTTP/1.1\r\nHost: l\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let answered = Instant::now();
        let (_, at) = read_to_eof(&mut idle).await;
        let after = at - answered;
        println!("idle keep-alive after {path} closed after {after:?}");
        assert!(
            after >= IDLE.mul_f32(0.9) && after < Duration::from_secs(5),
            "{path}: {after:?}"
        );
    }
    assert_eq!(server.fast.served.load(Ordering::Relaxed), 1);

    // A request body that stops arriving while the handler waits for it.
    let mut stalled = UnixStream::connect(&server.path).await.unwrap();
    stalled
        .write_all(b"POST /echo HTTP/1.1\r\nHost: l\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let sent = Instant::now();
    let (_, at) = read_to_eof(&mut stalled).await;
    let after = at - sent;
    println!("stalled upload closed after {after:?}");
    assert!(
        after >= IDLE.mul_f32(0.9) && after < Duration::from_secs(5),
        "{after:?}"
    );

    // A handler busy for three idle periods is not cut off.
    let res = server
        .client()
        .request(
            Method::GET,
            &format!("/work/{}", IDLE.as_millis() * 3),
            None,
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// serve: the fast path (the daemon's GET /v1/token)

/// Splits what a server wrote into (status line, lowercased head, body) per answer.
fn answers(raw: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (head, after) = rest.split_once("\r\n\r\n").expect("a complete head");
        let head = head.to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .parse()
            .unwrap();
        let status = head.lines().next().unwrap().to_owned();
        out.push((status, head, after[..len].to_owned()));
        rest = &after[len..];
    }
    out
}

/// `GET /fast` on a fresh connection: the JSON answer.
async fn get_fast(server: &TestServer) -> Value {
    let res = server
        .client()
        .request(Method::GET, "/fast", None)
        .await
        .unwrap();
    res.json().unwrap()
}

/// Writes `raw` on a fresh connection and reads until the server closes it. A server that
/// closes with part of `raw` unread (an oversized head) resets the connection after its answer.
async fn exchange(server: &TestServer, raw: &[u8]) -> String {
    let mut stream = UnixStream::connect(&server.path).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("server never closed the connection");
        match read {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_answers_until_another_request_then_the_router_serves_the_connection() {
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    let mut conn = server.client().connect().await.unwrap();
    for _ in 0..3 {
        let res = conn.request(Method::GET, "/fast", None).await.unwrap();
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.headers["content-type"], "application/json");
        assert!(res.headers.contains_key("date"));
        assert_eq!(res.json::<Value>().unwrap(), json!({"fast": true}));
    }
    // A 429 with its Retry-After, also on the fast path.
    let res = conn
        .request(Method::POST, "/fast/limited", None)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers["retry-after"], "7");
    assert_eq!(res.json::<Value>().unwrap(), json!({"fast": true}));
    assert_eq!(server.fast.served.load(Ordering::Relaxed), 4);

    // Any other request hands the connection to hyper and the router, for good.
    let res = conn.request(Method::GET, "/x", None).await.unwrap();
    assert_eq!(&res.body[..], b"ok");
    let res = conn.request(Method::GET, "/fast", None).await.unwrap();
    assert_eq!(res.json::<Value>().unwrap(), json!({"fast": false}));
    assert_eq!(server.fast.served.load(Ordering::Relaxed), 4);

    // Without an answer (the daemon: no valid key) the router answers, with its own codes.
    server.fast.on.store(false, Ordering::Relaxed);
    assert_eq!(get_fast(&server).await, json!({"fast": false}));
    server.stop().await;
}

/// Back-to-back requests on concurrent connections all get their answer (a connection whose
/// wake-up got lost would stall until its header-read timeout, then fail its client). A
/// narrow race may still slip through a debug build: the token benchmark (release, 8
/// clients) is the harder check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_serves_concurrent_kept_alive_clients_without_losing_a_request() {
    const CLIENTS: usize = 8;
    const EACH: usize = 500;
    let server =
        TestServer::start(|o| o.header_read_timeout = Duration::from_secs(2), DEADLINE).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let client = server.client();
        tasks.spawn(async move {
            let mut conn = client.connect().await.unwrap();
            for _ in 0..EACH {
                let res = conn.request(Method::GET, "/fast", None).await.unwrap();
                assert_eq!(&res.body[..], br#"{"fast":true}"#);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        server.fast.served.load(Ordering::Relaxed),
        (CLIENTS * EACH) as u64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_keeps_pipelined_requests_in_order_across_the_hand_over() {
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    let raw = concat!(
        "GET /fast HTTP/1.1\r\nHost: l\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: l\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: l\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n",
    );
    let got = answers(&exchange(&server, raw.as_bytes()).await);
    let bodies: Vec<&str> = got.iter().map(|(_, _, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"fast":true}"#,
            r#"{"fast":true}"#,
            "ok",
            r#"{"fast":false}"#
        ]
    );
    assert!(
        got.iter().all(|(s, _, _)| s == "http/1.1 200 ok"),
        "{got:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_reads_heads_in_pieces_and_honours_connection_close() {
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    let mut stream = UnixStream::connect(&server.path).await.unwrap();
    for piece in [
        "GET /fa",
        "st HTTP/1.1\r\nHost: l\r\nConn",
        "ection: close\r\n\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let got = answers(&read_to_eof(&mut stream).await.0);
    assert_eq!(got.len(), 1, "{got:?}");
    let (status, head, body) = &got[0];
    assert_eq!(status, "http/1.1 200 ok");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert_eq!(body, r#"{"fast":true}"#);
    assert_eq!(server.fast.served.load(Ordering::Relaxed), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_same_answers_as_without_the_fast_path() {
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    let huge = format!(
        "GET /fast HTTP/1.1\r\nHost: l\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: [(&str, &[u8], &str); 6] = [
        ("garbage", b"hello there\r\n\r\n", "HTTP/1.1 400"),
        ("oversized head", huge.as_bytes(), "HTTP/1.1 431"),
        (
            "POST to the fast path",
            b"POST /fast HTTP/1.1\r\nHost: l\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "HTTP/1.1 405",
        ),
        (
            "unknown path",
            b"GET /nope HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        ("HTTP/1.0", b"GET /fast HTTP/1.0\r\n\r\n", "HTTP/1.0 200"),
        (
            "a body on the fast path's GET",
            b"GET /fast HTTP/1.1\r\nHost: l\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            "HTTP/1.1 200",
        ),
    ];
    for (what, raw, want) in cases {
        let got = exchange(&server, raw).await;
        assert!(got.starts_with(want), "{what}: {got:?}");
        if want.ends_with("200") {
            assert!(got.ends_with(r#"{"fast":false}"#), "{what}: {got:?}");
        }
    }
    assert_eq!(server.fast.served.load(Ordering::Relaxed), 0);
    // None of that hurt the server.
    assert_eq!(get_fast(&server).await, json!({"fast": true}));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_removes_the_socket() {
    let mut server = TestServer::start(|_| {}, Duration::from_secs(10)).await;
    let client = server.client();
    let mut idle_conn = client.connect().await.unwrap();
    idle_conn.request(Method::GET, "/x", None).await.unwrap();
    let mut idle_fast = client.connect().await.unwrap();
    idle_fast.request(Method::GET, "/fast", None).await.unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.request(Method::GET, "/slow", None).await }
    });
    server.entered.recv().await.unwrap();

    let start = Instant::now();
    server.shutdown.cancel();
    let path = server.path.clone();
    eventually("the socket file to go", || !path.exists()).await;
    let err = client.request(Method::GET, "/x", None).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    // The idle kept-alive connection is closed at once, not after the grace period.
    assert!(idle_conn.request(Method::GET, "/x", None).await.is_err());
    assert!(idle_fast.request(Method::GET, "/fast", None).await.is_err());

    server.release.send_replace(true);
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(&res.body[..], b"done");
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .unwrap()
        .unwrap();
    println!("drained in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(server.stats.active.load(Ordering::Relaxed), 0);
    drop(server.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_grace_when_a_request_hangs() {
    const GRACE: Duration = Duration::from_millis(500);
    let mut server = TestServer::start(|_| {}, GRACE).await;
    let client = server.client();
    let stuck = tokio::spawn(async move { client.request(Method::GET, "/slow", None).await });
    server.entered.recv().await.unwrap();

    let start = Instant::now();
    server.shutdown.cancel();
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .unwrap()
        .unwrap();
    let took = start.elapsed();
    println!("shutdown with a hung request took {took:?} (grace {GRACE:?})");
    assert!(
        took >= GRACE.mul_f32(0.9) && took < GRACE + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(!server.path.exists());
    assert!(
        stuck.await.unwrap().is_err(),
        "the hung request was dropped"
    );
    assert_eq!(server.stats.active.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn shutdown_leaves_a_socket_that_is_no_longer_ours() {
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    // Another process took the path over (e.g. a second daemon after a stale-socket check).
    let other_path = server.dir.path().join("other.sock");
    let _other = std::os::unix::net::UnixListener::bind(&other_path).unwrap();
    std::fs::rename(&other_path, &server.path).unwrap();
    let theirs = std::fs::symlink_metadata(&server.path).unwrap().ino();

    let path = server.path.clone();
    let _dir = server.stop().await;
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), theirs);
}

// ---------------------------------------------------------------------------------------------
// clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_works_against_the_socket() {
    let which = Command::new("curl").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        skip::missing_dependency("curl_works_against_the_socket", "curl is not installed");
        return;
    }
    let server = TestServer::start(|_| {}, Duration::from_secs(1)).await;
    let path = server.path.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--unix-socket"])
            .arg(&path)
            .arg("http://localhost/whoami")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["access"], "admin");
    server.stop().await;
}

#[tokio::test]
async fn a_stale_socket_reads_as_not_running() {
    let dir = socket_dir();
    let path = dir.path().join("octomild.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let err = SocketClient::new(&path, CLIENT_TIMEOUT)
        .request(Method::GET, "/x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let dir = socket_dir();
    let path = dir.path().join("octomild.sock");
    // Accepts (kernel backlog) but never reads or answers.
    let _mute = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = SocketClient::new(&path, timeout)
        .request(Method::GET, "/x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < timeout * 5);
}
