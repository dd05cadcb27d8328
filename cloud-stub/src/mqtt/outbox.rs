//! The persisted outbox: retained messages the broker has not acknowledged yet, retried until it does, deleted once it has.
//!
//! An entry is written in the same redb commit as the revocation (or deletion) it announces,
//! so what the HTTP caller was told is never lost: not to a broker outage, not to a cloud
//! restart. The broker client (`broker_client.rs`) hands every PUBACK to [`write_acks`], which deletes the entry
//! if it still holds exactly the acknowledged payload (a newer one stays). [`retry`] sends
//! whatever is owed and not already on its way: at each (re)connection, then with capped
//! backoff while anything remains.

use std::sync::Arc;
use std::time::Duration;

use octomil_common::DeviceId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::correlate::Message;
use super::revocation_sender::Shared;
use crate::app::AppState;
use crate::store::{Change, OutboxRecord, StoreError};
use octomil_common::backoff::{Backoff, Jitter, unit_random};

const RETRY_CAP: Duration = Duration::from_secs(60);
const RETRY: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: RETRY_CAP,
    jitter: Jitter::QUARTER,
};
/// At most this many publishes outstanding on behalf of the retry loop at once, so a large
/// backlog cannot fill rumqttc's queue and starve fresh revocations.
pub(crate) const RETRY_WINDOW: usize = 512;

/// The outbox entry announcing `payload` for `device` (empty payload: clear the retained
/// revocation).
pub fn entry(device: &DeviceId, payload: Vec<u8>, now_ms: u64) -> Change {
    Change::OutboxPut(OutboxRecord {
        device_id: device.as_str().to_owned(),
        payload,
        queued_at_ms: now_ms,
    })
}

fn message(o: &OutboxRecord) -> Option<Message> {
    let id = DeviceId::parse(&o.device_id).ok()?;
    Some(Message {
        topic: id.revocation_topic(),
        payload: o.payload.clone(),
    })
}

/// Deletes the outbox entries the broker acknowledged, batching whatever arrived together
/// into one commit. Ends when the session task (the sender) ends.
pub(super) async fn write_acks(
    shared: Arc<Shared>,
    cloud: AppState,
    mut acks: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(first) = acks.recv().await {
        let mut batch = vec![first];
        while let Ok(m) = acks.try_recv() {
            batch.push(m);
        }
        let pending = cloud.store.write(move |model| {
            let changes = batch
                .iter()
                .filter_map(|m| {
                    let id = super::device_of_topic(&m.topic, "revocation")?;
                    let o = model.outbox.get(id)?;
                    (o.payload == m.payload).then(|| Change::DeleteOutbox(id.to_owned()))
                })
                .collect();
            Ok::<_, StoreError>(((), changes))
        });
        let r = pending.await;
        if let Err(e) = r {
            // The entry stays; the retry loop sends it again and the next PUBACK deletes it.
            tracing::warn!(error = %e, "could not delete acknowledged outbox entries");
        }
        // Places in the window came free: let the pump refill it.
        shared.kick.notify_one();
    }
}

/// The outbox pump: sends what the outbox owes, a window of [`RETRY_WINDOW`] publishes in
/// flight, whenever the session comes up and whenever it is kicked (new entries committed,
/// acknowledged ones deleted), so a large backlog streams out pipelined. While entries remain
/// without progress it retries with capped backoff (a publish can be lost with its connection
/// before the correlator learns of it, and entries from before a restart have no one else to
/// send them).
pub(super) async fn retry(
    shared: Arc<Shared>,
    cloud: AppState,
    mut up: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut attempt: u32 = 0;
    loop {
        // Wait for a connected session.
        while !*up.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = up.changed() => if r.is_err() { return },
            }
        }
        let (remaining, sent) = send_owed(&shared, &cloud);
        if remaining == 0 || sent > 0 {
            attempt = 0;
        }
        let delay = if remaining == 0 {
            RETRY_CAP
        } else {
            let d = RETRY.delay(attempt, unit_random(), None);
            attempt = attempt.saturating_add(1);
            d
        };
        // Sleep until kicked, but start over at once if the session drops (and so comes back).
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.kick.notified() => {}
            _ = tokio::time::sleep(delay) => {}
            r = up.wait_for(|u| !*u) => if r.is_err() { return },
        }
    }
}

/// Queues owed messages not already on its way, up to the window; returns how many are
/// owed and how many it queued.
fn send_owed(shared: &Shared, cloud: &AppState) -> (usize, usize) {
    let owed: Vec<Message> = cloud
        .store
        .read(|m| m.outbox.values().filter_map(message).collect());
    if owed.is_empty() {
        return (0, 0);
    }
    let mut st = shared.lock();
    let mut sent = 0usize;
    for m in owed.iter() {
        if st.corr.outstanding() >= RETRY_WINDOW {
            break;
        }
        if st.corr.is_pending(m) {
            continue;
        }
        match shared.enqueue(&mut st, m.clone()) {
            Ok(()) => sent += 1,
            Err(_) => break,
        }
    }
    if sent > 0 {
        tracing::debug!(sent, owed = owed.len(), "sending owed revocations");
    }
    (owed.len(), sent)
}
