//! Live device events: what changed about a device, in memory, for the dashboard's
//! server-sent events (`dashboard/live.rs`). Fed by the store after each durable commit that
//! writes or deletes a device (register, re-registration, refresh, revoke, bulk revocation,
//! delete: every path, since the hook is the writer's) and by the presence table after a
//! broker login or a status message. Never before the commit: the store calls its hook only
//! once the batch is durable and visible to reads.
//!
//! One `tokio::sync::broadcast` carries every event: a send never waits for a receiver, and a
//! receiver that falls behind loses the oldest events and is told so (`Lagged`); the stream
//! then sends `resync` and the page re-fetches what it shows. Each event is a snapshot of the
//! device taken under one lock and sent in that order, so the last event of a device always
//! shows its current state, whichever of two concurrent changes sent first.
//!
//! The hub also bounds the streams: a few per session and a few hundred in all, so a session
//! cannot tie up the cloud with open connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, Cloud};
use crate::store::{DeviceState, Environment};

/// Events a receiver may fall behind by before it loses some (and resyncs).
pub const CAPACITY: usize = 1024;
/// A commit that touches more devices than this (a bulk revocation) sends one `Resync`
/// instead of an event per device: the pages re-fetch once.
pub const BURST: usize = 64;
/// Open streams per session (a few tabs) and in all.
pub const MAX_STREAMS_PER_SESSION: usize = 4;
pub const MAX_STREAMS: usize = 256;

/// A device as it stands after a change: state and presence, with its environment so a
/// stream passes it only to viewers who see that environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    /// Increases with every event the hub sends.
    pub seq: u64,
    pub device_id: String,
    pub environment: Environment,
    /// `None`: the device was deleted.
    pub state: Option<DeviceState>,
    pub online: bool,
    pub last_seen: Option<u64>,
    pub last_refresh_at: Option<u64>,
    pub key_expires_at: Option<u64>,
    pub daemon_version: Option<String>,
}

/// What the hub broadcasts.
#[derive(Debug, Clone)]
pub enum Message {
    Device(Arc<DeviceEvent>),
    /// Too much changed at once to tell device by device: re-read what you show.
    Resync,
}

/// Why a stream was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    #[error("this session already has {0} live streams open; close a tab")]
    SessionFull(usize),
    #[error("the cloud already serves {0} live streams; try again later")]
    Full(usize),
}

/// How many streams may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub per_session: usize,
    pub total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_session: MAX_STREAMS_PER_SESSION,
            total: MAX_STREAMS,
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_session: HashMap<String, usize>,
}

/// The cloud's event hub (one per cloud, in [`Cloud::events`]).
#[derive(Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Message>,
    /// The last sequence number; held while a snapshot is taken and sent.
    seq: Mutex<u64>,
    /// Changes heard, listened to or not (see [`EventHub::changes`]).
    changes: AtomicU64,
    open: Arc<Mutex<Open>>,
    limits: StreamLimits,
    /// Cancelled when the cloud shuts down: every stream ends, so the drain does not wait.
    closing: CancellationToken,
    /// Bumped by [`EventHub::end_streams`].
    ended: watch::Sender<u64>,
}

/// An open stream's share of the hub: its receiver, and its slot, given back on drop.
#[derive(Debug)]
pub struct Subscription {
    pub rx: broadcast::Receiver<Message>,
    pub closing: CancellationToken,
    pub ended: watch::Receiver<u64>,
    _slot: Slot,
}

#[derive(Debug)]
struct Slot {
    open: Arc<Mutex<Open>>,
    session: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_session.get_mut(&self.session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_session.remove(&self.session);
            }
        }
    }
}

impl EventHub {
    /// A hub whose streams end when `closing` is cancelled (the server's shutdown).
    pub fn new(closing: CancellationToken) -> Self {
        Self::with_limits(closing, StreamLimits::default())
    }

    pub fn with_limits(closing: CancellationToken, limits: StreamLimits) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            tx,
            seq: Mutex::new(0),
            changes: AtomicU64::new(0),
            open: Arc::new(Mutex::new(Open::default())),
            limits,
            closing,
            ended: watch::Sender::new(0),
        }
    }

    /// Opens a stream for `session` (a session id), within the limits.
    pub fn subscribe(&self, session: &str) -> Result<Subscription, EventsError> {
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.total >= self.limits.total {
                return Err(EventsError::Full(open.total));
            }
            let mine = open.per_session.get(session).copied().unwrap_or(0);
            if mine >= self.limits.per_session {
                return Err(EventsError::SessionFull(mine));
            }
            open.total += 1;
            open.per_session.insert(session.to_owned(), mine + 1);
        }
        Ok(Subscription {
            rx: self.tx.subscribe(),
            closing: self.closing.clone(),
            ended: self.ended.subscribe(),
            _slot: Slot {
                open: self.open.clone(),
                session: session.to_owned(),
            },
        })
    }

    /// How many changes the hub has heard so far, whether or not a stream listened. A page
    /// renders it; a stream's first event sends it again: if they differ, something changed
    /// between the two and the page re-fetches.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Tells every stream to resync (its page re-fetches what it shows).
    pub fn resync(&self) {
        let _ = self.tx.send(Message::Resync);
    }

    /// Ends every open stream now; browsers reconnect and re-fetch. (Tests use it to check
    /// the reconnect path.)
    pub fn end_streams(&self) {
        self.ended.send_modify(|n| *n += 1);
    }

    /// The store committed changes to `touched` (device id, environment).
    pub fn devices_changed(&self, cloud: &Cloud, touched: &[(String, Environment)]) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if self.tx.receiver_count() == 0 {
            return;
        }
        if touched.len() > BURST {
            self.resync();
            return;
        }
        for (id, env) in touched {
            self.send_snapshot(cloud, id, Some(*env));
        }
    }

    /// The presence table changed for `device_id`.
    pub fn presence_changed(&self, cloud: &Cloud, device_id: &str) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if self.tx.receiver_count() == 0 {
            return;
        }
        self.send_snapshot(cloud, device_id, None);
    }

    /// Sends the device as it stands now. A device the store does not have is sent as
    /// deleted if its environment is known (`env`), and not at all otherwise.
    fn send_snapshot(&self, cloud: &Cloud, id: &str, env: Option<Environment>) {
        let mut seq = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
        let record = cloud.store.read(|m| {
            m.devices.get(id).map(|d| {
                (
                    d.environment,
                    d.state,
                    d.last_refresh_at,
                    d.key_expires_at(),
                )
            })
        });
        let (environment, state, last_refresh_at, key_expires_at) = match (record, env) {
            (Some((e, s, r, k)), _) => (e, Some(s), r, k),
            (None, Some(e)) => (e, None, None, None),
            (None, None) => return,
        };
        let seen = cloud.presence.get(id).unwrap_or_default();
        *seq += 1;
        let event = DeviceEvent {
            seq: *seq,
            device_id: id.to_owned(),
            environment,
            state,
            online: seen.online && state.is_some(),
            last_seen: seen.last_seen,
            last_refresh_at,
            key_expires_at,
            daemon_version: seen.daemon_version,
        };
        let _ = self.tx.send(Message::Device(Arc::new(event)));
    }
}

/// Feeds `cloud`'s hub from its store and its presence table. The hooks hold the cloud
/// weakly: they never keep it alive.
pub fn attach(cloud: &AppState) {
    let weak = Arc::downgrade(cloud);
    cloud
        .store
        .on_device_commit(Box::new(move |touched: &[(String, Environment)]| {
            if let Some(c) = weak.upgrade() {
                c.events.devices_changed(&c, touched);
            }
        }));
    let weak = Arc::downgrade(cloud);
    cloud.presence.on_change(Box::new(move |id: &str| {
        if let Some(c) = weak.upgrade() {
            c.events.presence_changed(&c, id);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_session_and_in_all_and_given_back() {
        let hub = EventHub::with_limits(
            CancellationToken::new(),
            StreamLimits {
                per_session: 2,
                total: 3,
            },
        );
        let a1 = hub.subscribe("a").unwrap();
        let a2 = hub.subscribe("a").unwrap();
        assert_eq!(
            hub.subscribe("a").map(|_| ()),
            Err(EventsError::SessionFull(2))
        );
        let b1 = hub.subscribe("b").unwrap();
        assert_eq!(hub.subscribe("c").map(|_| ()), Err(EventsError::Full(3)));
        assert_eq!(hub.open_streams(), 3);
        drop(a1);
        let _a3 = hub.subscribe("a").unwrap();
        drop((a2, b1));
        assert_eq!(hub.open_streams(), 1);
        assert_eq!(
            hub.open.lock().unwrap().per_session.len(),
            1,
            "a session without streams is forgotten"
        );
    }

    #[tokio::test]
    async fn a_lagging_receiver_is_told_and_the_sender_never_waits() {
        let hub = EventHub::new(CancellationToken::new());
        let mut sub = hub.subscribe("s").unwrap();
        for _ in 0..CAPACITY + 10 {
            hub.resync();
        }
        assert!(matches!(
            sub.rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        assert!(matches!(sub.rx.recv().await, Ok(Message::Resync)));
    }

    #[tokio::test]
    async fn end_streams_and_closing_reach_every_subscription() {
        let closing = CancellationToken::new();
        let hub = EventHub::new(closing.clone());
        let mut sub = hub.subscribe("s").unwrap();
        hub.end_streams();
        sub.ended.changed().await.unwrap();
        closing.cancel();
        sub.closing.cancelled().await;
    }
}
