//! A fast path for the hot requests (the daemon's `GET /v1/token` and
//! `POST /v1/limits/{surface}/acquire`), answered straight from the socket before hyper and the
//! router are involved.
//!
//! Every allowed connection starts here. Requests are parsed with `httparse` (hyper's own
//! parser); a request the fast path may answer is a `GET` or `POST` over HTTP/1.1 with no body
//! (none, or `Content-Length: 0`) and no `Expect`/`Upgrade`, and the [`FastPath`] must have an
//! answer for it. The first request that is anything else (another method or path, HTTP/1.0,
//! a body, a malformed or oversized head, an error answer) hands the connection to hyper for
//! good, with the bytes read so far put back in front of the stream: hyper then parses that
//! request itself and answers it (404, 400, 431, 503 `token_expired`, ...), exactly as it would
//! have without the fast path.
//!
//! Same bounds as the hyper path: a request head must be complete within `header_read_timeout`
//! of the previous answer (or of the connection's start), and no connection waits longer than
//! `idle_timeout` for its next request. On shutdown an idle connection closes at once and one
//! with a partial head gets its answer first.
//!
//! Measured in BENCHMARKS.md (`cargo bench -p octomil-e2e --bench token`): it is what brings
//! `GET /v1/token` level with nginx serving a static file.

use std::fmt;
use std::io::{self, Write as _};
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use zeroize::Zeroizing;

use super::access::Peer;
use super::serve::Limits;

/// A body-less request the fast path may answer.
#[derive(Debug)]
pub struct FastRequest<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// The request target as sent: path and query string, not decoded.
    pub target: &'a str,
    /// Who is asking (never a denied caller).
    pub peer: &'a Peer,
}

/// The statuses the fast path writes; anything else is the router's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastStatus {
    Ok,
    TooManyRequests,
}

impl FastStatus {
    fn status_line(self) -> &'static str {
        match self {
            Self::Ok => "HTTP/1.1 200 OK\r\n",
            Self::TooManyRequests => "HTTP/1.1 429 Too Many Requests\r\n",
        }
    }
}

/// A complete answer; the body is `application/json`.
pub struct FastAnswer {
    pub status: FastStatus,
    /// `Retry-After`, in whole seconds.
    pub retry_after: Option<u64>,
    /// May hold the device key: never printed, not even by `Debug`.
    pub body: Bytes,
}

impl fmt::Debug for FastAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastAnswer")
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// The requests a socket answers itself; see the module docs.
pub trait FastPath: Send + Sync + fmt::Debug + 'static {
    /// The answer to `req`, or `None` to let the router answer it (and the rest of the
    /// connection). Called once per request: an implementation counts its answers here, and
    /// must not change anything when it returns `None`, since the router then handles the same
    /// request again.
    fn answer(&self, req: &FastRequest<'_>) -> Option<FastAnswer>;
}

/// A head the fast path answers is far smaller than this; a larger partial head is handed to
/// hyper, whose own limit (the same) answers 431.
const MAX_HEAD_BYTES: usize = super::serve::MAX_BUF_BYTES;
/// Headers parsed per request; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;
/// Room kept free in the read buffer before each read.
const READ_CHUNK: usize = 1024;

/// What the bytes buffered so far hold.
#[derive(Debug)]
enum Step {
    /// An incomplete request head.
    Partial,
    /// An answered request, `len` bytes long; `close` if the client asked for the connection
    /// to be closed after the answer.
    Answer {
        len: usize,
        close: bool,
        answer: FastAnswer,
    },
    /// Anything else: hyper takes over.
    Other,
}

/// Parses the first request in `buf` and asks `fast` for its answer.
fn step(buf: &[u8], fast: &dyn FastPath, peer: &Peer) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Step::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Step::Other,
    };
    let (Some(method @ ("GET" | "POST")), Some(target), Some(1)) =
        (req.method, req.path, req.version)
    else {
        return Step::Other;
    };
    let Some(close) = bodyless_keep_alive(req.headers) else {
        return Step::Other;
    };
    match fast.answer(&FastRequest {
        method,
        target,
        peer,
    }) {
        Some(answer) => Step::Answer { len, close, answer },
        None => Step::Other,
    }
}

/// For a request without a body and without protocol changes: whether the client asked to
/// close the connection after the answer. `None` for anything else.
fn bodyless_keep_alive(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut close = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return None;
                }
            }
        }
    }
    Some(close)
}

/// The complete HTTP answer, in hyper's header order, into `out` (cleared first).
fn encode(out: &mut Vec<u8>, answer: &FastAnswer, close: bool) {
    out.clear();
    out.extend_from_slice(answer.status.status_line().as_bytes());
    // Writes into a Vec cannot fail.
    let _ = write!(
        out,
        "content-type: application/json\r\ncontent-length: {}\r\n",
        answer.body.len()
    );
    if let Some(secs) = answer.retry_after {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&answer.body);
}

/// Appends the current time as an HTTP date, formatted at most once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *text = httpdate::fmt_http_date(now);
            *at = secs;
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// How a connection left the fast path.
pub(super) enum FastEnd {
    /// Closed: by the client, by a bound, by shutdown, or after `Connection: close`.
    Closed,
    /// Hyper serves the rest, starting with these bytes read but not answered.
    HandOver(UnixStream, Bytes),
}

/// Serves fast requests on `stream` until the connection ends or needs hyper.
pub(super) async fn serve(
    mut stream: UnixStream,
    fast: &dyn FastPath,
    peer: &Peer,
    bounds: Limits,
    shutdown: &CancellationToken,
) -> FastEnd {
    let wait = bounds.header_read_timeout.min(bounds.idle_timeout);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // The answer holds the key: wiped when the connection ends. Sized for the usual answer so
    // it does not grow (a reallocation would leave a copy behind).
    let mut out = Zeroizing::new(Vec::with_capacity(512));
    // When the wait for the current request head began.
    let mut waiting_since = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(waiting_since + wait));
    let mut cancelled = pin!(shutdown.cancelled());
    let mut draining = false;
    loop {
        // Answer every complete request already buffered (pipelining keeps their order).
        loop {
            match step(&buf, fast, peer) {
                Step::Partial => break,
                Step::Other => return hand_over(stream, buf),
                Step::Answer { len, close, answer } => {
                    buf.drain(..len);
                    if out.capacity() < answer.body.len() + 256 {
                        // Never grow in place: wipe the old buffer by replacing it.
                        *out = Vec::with_capacity(answer.body.len() + 256);
                    }
                    encode(&mut out, &answer, close);
                    drop(answer);
                    if let Err(e) = write_answer(&mut stream, &out, bounds.idle_timeout).await {
                        debug!(error = %e, "answer not delivered; closing");
                        return FastEnd::Closed;
                    }
                    if close || draining {
                        return FastEnd::Closed;
                    }
                    waiting_since = Instant::now();
                }
            }
        }
        if draining && buf.is_empty() {
            return FastEnd::Closed;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        // After an answer this read usually says EAGAIN: that is what clears tokio's cached
        // readiness safely. (Skipping it when the last read came up short loses wake-ups: a
        // request arriving in between would have its readiness cleared too.)
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return FastEnd::Closed,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                debug!(error = %e, "read failed; closing");
                return FastEnd::Closed;
            }
        }
        // Nothing to read: wait for bytes, the deadline or shutdown. The timer is only reset
        // when it fires early, not per request.
        let deadline = waiting_since + wait;
        loop {
            tokio::select! {
                biased;
                ready = stream.readable() => {
                    if let Err(e) = ready {
                        debug!(error = %e, "socket failed; closing");
                        return FastEnd::Closed;
                    }
                    break;
                }
                () = &mut cancelled, if !draining => {
                    draining = true;
                    if buf.is_empty() {
                        return FastEnd::Closed;
                    }
                }
                () = &mut timer => {
                    if Instant::now() >= deadline {
                        debug!(?wait, partial = !buf.is_empty(), "no request in time; closing");
                        return FastEnd::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

fn hand_over(stream: UnixStream, buf: Vec<u8>) -> FastEnd {
    FastEnd::HandOver(stream, Bytes::from(buf))
}

/// Writes one answer: one syscall when the socket has room, else waits (bounded) for it.
async fn write_answer(stream: &mut UnixStream, out: &[u8], timeout: Duration) -> io::Result<()> {
    let rest = match stream.try_write(out) {
        Ok(n) => &out[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => out,
        Err(e) => return Err(e),
    };
    if rest.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(timeout, stream.write_all(rest))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::Access;

    /// Answers `GET /v1/token` (200) and `POST /limited` (429, retry in 7 s).
    #[derive(Debug)]
    struct Routes;

    impl FastPath for Routes {
        fn answer(&self, req: &FastRequest<'_>) -> Option<FastAnswer> {
            let (status, retry_after) = match (req.method, req.target) {
                ("GET", "/v1/token") => (FastStatus::Ok, None),
                ("POST", "/limited") => (FastStatus::TooManyRequests, Some(7)),
                _ => return None,
            };
            Some(FastAnswer {
                status,
                retry_after,
                body: Bytes::from_static(b"{}"),
            })
        }
    }

    fn peer() -> Peer {
        Peer {
            uid: 1000,
            gid: 1000,
            pid: None,
            access: Access::Read,
        }
    }

    /// `partial`, `other`, or `answer <len> <status> <close>`.
    fn summary(input: &[u8]) -> String {
        match step(input, &Routes, &peer()) {
            Step::Partial => "partial".into(),
            Step::Other => "other".into(),
            Step::Answer { len, close, answer } => {
                format!("answer {len} {:?} close={close}", answer.status)
            }
        }
    }

    #[test]
    fn step_table() {
        let plain = "GET /v1/token HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let plain_want = format!("answer {} Ok close=false", plain.len());
        let cases: &[(&str, &str)] = &[
            (plain, &plain_want),
            ("GET /v1/token HTTP/1.1\r\n\r\n", "answer 26 Ok close=false"),
            (
                "GET /v1/token HTTP/1.1\r\nConnection: close\r\n\r\n",
                "answer 45 Ok close=true",
            ),
            (
                "GET /v1/token HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n",
                "answer 57 Ok close=true",
            ),
            (
                "GET /v1/token HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "answer 45 Ok close=false",
            ),
            (
                "POST /limited HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "answer 45 TooManyRequests close=false",
            ),
            (
                "POST /limited HTTP/1.1\r\n\r\n",
                "answer 26 TooManyRequests close=false",
            ),
            // Incomplete heads wait for more.
            ("", "partial"),
            ("GET /v1/tok", "partial"),
            ("GET /v1/token HTTP/1.1\r\nHost: l\r\n", "partial"),
            // Everything else is hyper's.
            ("GET /v1/status HTTP/1.1\r\n\r\n", "other"),
            ("GET /v1/token?x=1 HTTP/1.1\r\n\r\n", "other"),
            ("HEAD /v1/token HTTP/1.1\r\n\r\n", "other"),
            ("POST /v1/token HTTP/1.1\r\n\r\n", "other"),
            ("PUT /limited HTTP/1.1\r\n\r\n", "other"),
            ("get /v1/token HTTP/1.1\r\n\r\n", "other"),
            ("GET /v1/token HTTP/1.0\r\n\r\n", "other"),
            (
                "POST /limited HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                "other",
            ),
            (
                "POST /limited HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "other",
            ),
            (
                "GET /v1/token HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
                "other",
            ),
            (
                "GET /v1/token HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
                "other",
            ),
            ("GET /v1/token HTTP/1.1\r\nbad header\r\n\r\n", "other"),
            ("\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03", "other"),
            ("GET /v1/token HTTP/9.9\r\n\r\n", "other"),
        ];
        for (input, want) in cases {
            assert_eq!(summary(input.as_bytes()), *want, "{input:?}");
        }
    }

    #[test]
    fn step_hands_over_too_many_headers_and_oversized_partial_heads() {
        let mut many = String::from("GET /v1/token HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(summary(many.as_bytes()), "other");

        let mut huge = String::from("GET /v1/token HTTP/1.1\r\nx-big: ");
        huge.push_str(&"a".repeat(MAX_HEAD_BYTES));
        assert_eq!(summary(huge.as_bytes()), "other");
    }

    #[test]
    fn step_reads_only_the_first_of_pipelined_requests() {
        let two = "GET /v1/token HTTP/1.1\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n";
        assert_eq!(summary(two.as_bytes()), "answer 26 Ok close=false");
        assert_eq!(summary(&two.as_bytes()[26..]), "other");
    }

    fn encoded(answer: &FastAnswer, close: bool) -> (Vec<String>, String) {
        let mut out = Vec::new();
        encode(&mut out, answer, close);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (
            head.split("\r\n").map(str::to_owned).collect(),
            body.to_owned(),
        )
    }

    #[test]
    fn debug_never_shows_the_body() {
        let answer = || FastAnswer {
            status: FastStatus::Ok,
            retry_after: None,
            body: Bytes::from_static(b"{\"token\":\"edg_live_secret\"}"),
        };
        let step = Step::Answer {
            len: 1,
            close: false,
            answer: answer(),
        };
        let shown = format!("{:?} {step:?}", answer());
        assert!(!shown.contains("edg_live_secret"), "{shown}");
        assert!(shown.contains("<27 bytes>"), "{shown}");
    }

    #[test]
    fn encode_writes_complete_http_answers() {
        let ok = FastAnswer {
            status: FastStatus::Ok,
            retry_after: None,
            body: Bytes::from_static(b"{\"a\":1}"),
        };
        let (head, body) = encoded(&ok, false);
        assert_eq!(body, "{\"a\":1}");
        assert_eq!(
            head[..3],
            [
                "HTTP/1.1 200 OK",
                "content-type: application/json",
                "content-length: 7"
            ]
        );
        let date = head[3].strip_prefix("date: ").unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(head.len(), 4);

        let limited = FastAnswer {
            status: FastStatus::TooManyRequests,
            retry_after: Some(7),
            body: Bytes::new(),
        };
        let (head, body) = encoded(&limited, true);
        assert_eq!(body, "");
        assert_eq!(
            head[..5],
            [
                "HTTP/1.1 429 Too Many Requests",
                "content-type: application/json",
                "content-length: 0",
                "retry-after: 7",
                "connection: close"
            ]
        );
        assert!(head[5].starts_with("date: "));
    }
}
