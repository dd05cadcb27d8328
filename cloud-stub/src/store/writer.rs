//! The single writer with group commit.
//!
//! Every change to the cloud's state is a step queued here: a check-and-change closure over
//! the model. One OS thread (so an fsync never blocks the async runtime) takes whatever is
//! queued (up to [`MAX_BATCH`] steps), runs the steps in queue order against its working copy
//! of the model, applying each step's changes to that copy before the next step runs (so
//! every step sees the ones before it, and today's read-check-write rules hold across a
//! batch: refresh-token reuse, bootstrap use limits, `device_id_taken`), links audit records
//! into the chain in that order, commits the whole batch in one redb transaction, applies it
//! to the read model, and only then answers each caller.
//!
//! A step that fails (or panics) returns no changes, so it changes nothing and the steps after
//! it do not see it. A commit that fails answers every step of the batch with the error; the
//! working copy is then rebuilt from the read model, which never saw the batch.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::{JoinHandle, ThreadId};

use redb::Database;
use tokio::sync::{mpsc, oneshot};

use super::{Change, Environment, HookSlot, Model, Store, StoreError};

/// Steps that may wait for the writer; past this a write is refused with
/// [`StoreError::Busy`] (HTTP 503 with Retry-After) instead of queueing without bound.
pub const QUEUE_CAP: usize = 4096;
/// Most steps committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Counters of the write path since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Steps run (successful or not).
    pub steps: u64,
    /// Durable commits (one fsync'd redb transaction each; batches without changes commit
    /// nothing).
    pub commits: u64,
    /// Commits that failed (every step of the batch was answered with the error).
    pub failed_commits: u64,
    /// Writes refused because the queue was full.
    pub busy: u64,
    /// The largest batch committed.
    pub max_batch: u64,
}

#[derive(Default)]
struct Counters {
    steps: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
    busy: AtomicU64,
    max_batch: AtomicU64,
    /// Test hook: this many next commits fail without writing.
    fail_commits: AtomicU64,
}

/// A queued step, with its types erased.
trait Job: Send {
    /// Runs the step against `model`; returns its changes (none if it failed).
    fn run(&mut self, model: &Model) -> Vec<Change>;
    /// Answers the caller once the batch's commit is known.
    fn finish(self: Box<Self>, committed: &Result<(), StoreError>);
}

struct Pending<R, E, F> {
    f: Option<F>,
    out: Option<Result<R, E>>,
    tx: oneshot::Sender<Result<R, E>>,
}

impl<R, E, F> Job for Pending<R, E, F>
where
    F: FnOnce(&Model) -> Result<(R, Vec<Change>), E> + Send + 'static,
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run(&mut self, model: &Model) -> Vec<Change> {
        let Some(f) = self.f.take() else {
            return Vec::new();
        };
        match catch_unwind(AssertUnwindSafe(|| f(model))) {
            Ok(Ok((r, changes))) => {
                self.out = Some(Ok(r));
                changes
            }
            Ok(Err(e)) => {
                self.out = Some(Err(e));
                Vec::new()
            }
            Err(_) => {
                tracing::error!("a state write step panicked; it changed nothing");
                Vec::new()
            }
        }
    }

    fn finish(self: Box<Self>, committed: &Result<(), StoreError>) {
        let answer = match (self.out, committed) {
            (Some(Ok(r)), Ok(())) => Ok(r),
            (Some(Ok(_)), Err(e)) => Err(E::from(e.clone())),
            (Some(Err(e)), _) => Err(e),
            (None, _) => Err(E::from(StoreError::WriterGone)),
        };
        // The caller may have gone (request cancelled); its change stands all the same.
        let _ = self.tx.send(answer);
    }
}

/// The store's end of the writer: the queue and the thread.
pub(super) struct Handle {
    tx: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
    counters: Arc<Counters>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Starts the writer thread over `db`; `read` is the committed model readers see and
    /// `working` the writer's copy of it.
    pub(super) fn start(
        db: Arc<Database>,
        read: Arc<RwLock<Model>>,
        working: Model,
        device_hook: Arc<HookSlot>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAP);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("octomil-store-writer".into())
            .spawn(move || run(&db, &read, working, rx, &c, &device_hook))
            .map_err(|e| StoreError::Db(format!("starting the state writer: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread_id: thread.thread().id(),
            thread: Some(thread),
            counters,
        })
    }

    /// Queues `f`; the receiver gets its answer once its batch is durable (or failed).
    pub(super) fn submit<R, E, F>(
        &self,
        f: F,
    ) -> Result<oneshot::Receiver<Result<R, E>>, StoreError>
    where
        F: FnOnce(&Model) -> Result<(R, Vec<Change>), E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending {
            f: Some(f),
            out: None,
            tx,
        });
        let queue = self.tx.as_ref().ok_or(StoreError::WriterGone)?;
        match queue.try_send(job) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::WriterGone),
        }
    }

    pub(super) fn stats(&self) -> WriteStats {
        let c = &self.counters;
        WriteStats {
            steps: c.steps.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            max_batch: c.max_batch.load(Ordering::Relaxed),
        }
    }

    /// Steps waiting in the queue (not counting the batch being run).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, |t| t.max_capacity() - t.capacity())
    }

    /// Makes the next `n` commits fail without writing anything.
    #[cfg(test)]
    pub(super) fn fail_next_commits(&self, n: u64) {
        self.counters.fail_commits.store(n, Ordering::SeqCst);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has answered what was queued; waiting
        // for it closes the database before a reopen. A step that held the last reference
        // to the store drops it on the writer thread itself, which must not wait for itself.
        self.tx = None;
        if let Some(t) = self.thread.take()
            && std::thread::current().id() != self.thread_id
        {
            let _ = t.join();
        }
    }
}

fn run(
    db: &Database,
    read: &RwLock<Model>,
    mut work: Model,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    counters: &Counters,
    device_hook: &HookSlot,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        counters
            .steps
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let mut changes = Vec::new();
        let mut audited = None;
        for job in &mut batch {
            for mut c in job.run(&work) {
                if let Change::Audit(r) = &mut c {
                    // Linked after everything before it in this batch.
                    r.seal(work.audit_head);
                    audited = Some(r.at_ms);
                }
                work.apply(c.clone());
                changes.push(c);
            }
        }
        let stepped = started.elapsed();
        let result = if changes.is_empty() {
            Ok(())
        } else {
            let r = if take_injected_failure(counters) {
                Err(StoreError::Db("injected commit failure".into()))
            } else {
                Store::commit(db, &changes)
            };
            match &r {
                Ok(()) => {
                    tracing::debug!(
                        steps = batch.len(),
                        changes = changes.len(),
                        step_us = stepped.as_micros() as u64,
                        commit_us = (started.elapsed() - stepped).as_micros() as u64,
                        "state commit"
                    );
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    counters
                        .max_batch
                        .fetch_max(batch.len() as u64, Ordering::Relaxed);
                    let mut m = read.write().unwrap_or_else(|p| p.into_inner());
                    let hook = device_hook.0.get();
                    let touched = hook.map(|_| touched_devices(&m, &changes));
                    for c in changes.drain(..) {
                        m.apply(c);
                    }
                    drop(m);
                    // Durable and visible to reads: now the listeners may hear of it.
                    if let (Some(hook), Some(touched)) = (hook, touched)
                        && !touched.is_empty()
                        && catch_unwind(AssertUnwindSafe(|| hook(touched.as_slice()))).is_err()
                    {
                        tracing::error!("the device commit hook panicked; the commit stands");
                    }
                }
                Err(e) => {
                    counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, steps = batch.len(), "state commit failed; every write of the batch was refused");
                    changes.clear();
                    audited = None;
                    work = read.read().unwrap_or_else(|p| p.into_inner()).clone();
                }
            }
            r
        };
        if let Some(now_ms) = audited {
            // Before the answers, so a caller sees the retention applied (about once a day);
            // a failure loses nothing and the next audited batch tries again.
            let before = work.audit_oldest_ms;
            match Store::prune_if_due(db, &mut work, now_ms) {
                Ok(()) if work.audit_oldest_ms != before => {
                    read.write()
                        .unwrap_or_else(|p| p.into_inner())
                        .audit_oldest_ms = work.audit_oldest_ms;
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "audit retention pruning failed"),
            }
        }
        for job in batch.drain(..) {
            job.finish(&result);
        }
    }
}

/// The devices `changes` write or delete, with their environment (a deleted one's from
/// `before`, the model the changes are not yet applied to).
fn touched_devices(before: &Model, changes: &[Change]) -> Vec<(String, Environment)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Device(d) => Some((d.device_id.clone(), d.environment)),
            Change::DeleteDevice(id) => before.devices.get(id).map(|d| (id.clone(), d.environment)),
            _ => None,
        })
        .collect()
}

fn take_injected_failure(counters: &Counters) -> bool {
    counters
        .fail_commits
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
