//! Polling with a deadline: the one way a test waits for something another task, thread or
//! process does (a count to move, a file to appear, a device to show online). Checks every
//! [`INTERVAL`]; past the deadline it fails the test with "timed out after .. waiting for
//! `what`".

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to sleep between two checks.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// Blocking: calls `f` until it returns `Some`, sleeping the thread in between.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Deadline::new(timeout, what);
    loop {
        if let Some(v) = f() {
            return v;
        }
        deadline.check("");
        std::thread::sleep(INTERVAL);
    }
}

/// Async (inside a tokio runtime): awaits `f()` until it yields `Some`, sleeping the task in
/// between. For a plain condition, `|| std::future::ready(cond().then_some(()))`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(timeout, what, || {
        let check = f();
        async move { check.await.ok_or_else(String::new) }
    })
    .await
}

/// [`eventually`] for a check that can say why it is not done yet: `f` yields `Ok` when it
/// is, or `Err` with what it saw (the last status, a log); past the deadline the test fails
/// with the last such message.
pub async fn eventually_or<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Deadline::new(timeout, what);
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        deadline.check(&last);
        tokio::time::sleep(INTERVAL).await;
    }
}

struct Deadline<'a> {
    at: Instant,
    timeout: Duration,
    what: &'a str,
}

impl<'a> Deadline<'a> {
    fn new(timeout: Duration, what: &'a str) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
            what,
        }
    }

    /// Fails the test if the deadline has passed, with `last` (what the check saw) if any.
    fn check(&self, last: &str) {
        let sep = if last.is_empty() { "" } else { "; last: " };
        assert!(
            Instant::now() < self.at,
            "timed out after {:?} waiting for {}{sep}{last}",
            self.timeout,
            self.what
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_the_first_some() {
        let n = Cell::new(0);
        let got = wait_for(Duration::from_secs(5), "three calls", || {
            n.set(n.get() + 1);
            (n.get() == 3).then_some("done")
        });
        assert_eq!((got, n.get()), ("done", 3));
    }

    #[test]
    #[should_panic(expected = "timed out after 30ms waiting for nothing")]
    fn fails_at_the_deadline() {
        wait_for(Duration::from_millis(30), "nothing", || None::<()>);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_polls_until_some() {
        let n = Cell::new(0);
        let got = eventually(Duration::from_secs(5), "two calls", || {
            n.set(n.get() + 1);
            std::future::ready((n.get() == 2).then_some(n.get()))
        })
        .await;
        assert_eq!(got, 2);
    }

    #[tokio::test(flavor = "current_thread")]
    #[should_panic(expected = "waiting for ready; last: state is starting")]
    async fn the_last_detail_is_in_the_failure() {
        eventually_or(Duration::from_millis(30), "ready", || async {
            Err::<(), _>("state is starting".to_owned())
        })
        .await;
    }
}
