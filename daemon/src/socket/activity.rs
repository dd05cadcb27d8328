//! Per-connection activity tracking, so a connection that stalls can be told from one that waits
//! on a slow handler.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use bytes::Buf;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Between requests: waiting for the next one, or writing the last response.
const BETWEEN_REQUESTS: u8 = 0;
/// A handler runs but the client still owes part of the request body.
const READING_BODY: u8 = 1;
/// The request body is complete (or dropped) and a handler is computing the response.
const HANDLING: u8 = 2;

/// When the connection last moved a byte, and whether a handler is at work.
/// HTTP/1.1 runs one request at a time per connection, so one phase suffices.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last successful read or write.
    last_io_ms: AtomicU64,
    phase: AtomicU8,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            phase: AtomicU8::new(BETWEEN_REQUESTS),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }

    /// A request arrived; `body_done` when it has no body left to read.
    pub(crate) fn request_started(&self, body_done: bool) {
        let phase = if body_done { HANDLING } else { READING_BODY };
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// The handler has its response: from now on only the client can be slow.
    pub(crate) fn response_ready(&self) {
        self.phase.store(BETWEEN_REQUESTS, Ordering::Relaxed);
    }

    /// The current request's body was read to the end or dropped by the handler.
    fn body_finished(&self) {
        // Only moves "reading body" to "handling"; a body dropped after the response is ignored.
        let _ = self.phase.compare_exchange(
            READING_BODY,
            HANDLING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When the connection becomes idle if nothing moves: `None` while a handler works.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.phase.load(Ordering::Relaxed) == HANDLING {
            return None;
        }
        let last = Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
        Some(self.start + last + idle)
    }
}

/// A stream that stamps `Activity` on every byte moved. Bytes already read from the stream
/// (by the fast path, before it handed the connection over) are read first.
#[derive(Debug)]
pub(crate) struct TrackedIo<T> {
    read_ahead: Bytes,
    inner: T,
    activity: std::sync::Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, read_ahead: Bytes, activity: std::sync::Arc<Activity>) -> Self {
        Self {
            read_ahead,
            inner,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead[..n]);
            self.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that reports when it has been read to the end or dropped.
#[derive(Debug)]
pub(crate) struct TrackedBody<B> {
    inner: B,
    activity: std::sync::Arc<Activity>,
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, activity: std::sync::Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(res, Poll::Ready(None | Some(Err(_)))) {
            self.activity.body_finished();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.activity.body_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracked_io_reads_the_bytes_read_ahead_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        b.write_all(b" world").await.unwrap();
        drop(b);
        let activity = std::sync::Arc::new(Activity::new());
        let mut io = TrackedIo::new(a, Bytes::from_static(b"hello"), activity);
        let mut small = [0u8; 3];
        io.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = String::new();
        io.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "lo world");
    }

    #[test]
    fn idle_deadline_follows_io_and_pauses_while_handling() {
        let idle = Duration::from_secs(30);
        let a = Activity::new();
        let t0 = a.start;
        assert_eq!(a.idle_deadline(idle), Some(t0 + idle));

        // As if the last byte moved 10 s after the start.
        a.last_io_ms.store(10_000, Ordering::Relaxed);
        assert_eq!(a.idle_deadline(idle), Some(t0 + Duration::from_secs(40)));
        a.touch();
        assert!(a.idle_deadline(idle) < Some(t0 + Duration::from_secs(40)));

        // A body-less request: the handler is working, no deadline.
        a.request_started(true);
        assert_eq!(a.idle_deadline(idle), None);
        a.response_ready();
        assert!(a.idle_deadline(idle).is_some());

        // A request with a body: the client owes bytes until the body is finished.
        a.request_started(false);
        assert!(a.idle_deadline(idle).is_some());
        a.body_finished();
        assert_eq!(a.idle_deadline(idle), None);
        a.response_ready();
        // A body dropped after the response must not mark the connection busy again.
        a.body_finished();
        assert!(a.idle_deadline(idle).is_some());
    }
}
