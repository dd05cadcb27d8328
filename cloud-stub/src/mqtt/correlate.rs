//! Which PUBACK belongs to which publish. rumqttc assigns packet ids inside its event loop,
//! so the cloud mirrors the order in which it hands publishes to rumqttc's request queue and
//! reads the ids back from `Outgoing::Publish` events. Pure state, no I/O: unit-tested here.
//!
//! The one hard case is a lost connection. rumqttc then moves whatever sits in its request
//! queue into its pending list, which a clean-session reconnect discards; a publish handed
//! over between that drain and our handling of the error survives. The cloud cannot see the
//! boundary, so after such an error it queues a *marker* (its status-topic subscribe, which a
//! clean session needs anyway): every `Outgoing::Publish` seen before the marker's
//! `Outgoing::Subscribe` belongs to the survivors, which are the newest of the publishes
//! whose fate was unknown (`limbo`); the others were dropped and are sent again.

use std::collections::{HashMap, VecDeque};

/// One retained publish: the topic and its payload (an envelope, or empty to clear).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What rumqttc did with a request taken from its queue before the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Written with this packet id.
    Sent(u16),
    /// Parked because the packet id was still in flight (a collision); sent on its PUBACK.
    Parked(u16),
}

/// The mirror of rumqttc's outgoing queue and in-flight window.
#[derive(Debug, Default)]
pub struct Correlator {
    /// Publishes in rumqttc's request queue, oldest first, without a packet id yet.
    queued: VecDeque<Message>,
    /// After a lost connection: publishes that were either drained or survived.
    limbo: Vec<Message>,
    /// What the survivors got before the marker showed, in order.
    pre_marker: Vec<Slot>,
    /// A marker sits in rumqttc's queue.
    awaiting_marker: bool,
    /// Publishes on the wire, by packet id, waiting for their PUBACK.
    inflight: HashMap<u16, Message>,
    /// A publish rumqttc parked on a packet-id collision.
    parked: Option<(u16, Message)>,
    /// ConnAck seen and no error since: an error now means rumqttc drained its queue.
    connected: bool,
}

impl Correlator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A publish was just handed to rumqttc's queue (under the same lock as this call).
    pub fn enqueued(&mut self, m: Message) {
        self.queued.push_back(m);
    }

    /// A marker (subscribe) was just handed to rumqttc's queue.
    pub fn marker_enqueued(&mut self) {
        self.awaiting_marker = true;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether `m` is queued, in limbo or in flight: sending it again would only duplicate it.
    pub fn is_pending(&self, m: &Message) -> bool {
        self.queued.contains(m)
            || self.limbo.contains(m)
            || self.inflight.values().any(|x| x == m)
            || self.parked.as_ref().is_some_and(|(_, x)| x == m)
    }

    /// How many publishes are queued or on the wire.
    pub fn outstanding(&self) -> usize {
        self.queued.len()
            + self.limbo.len()
            + self.inflight.len()
            + usize::from(self.parked.is_some())
    }

    pub fn on_connack(&mut self) {
        self.connected = true;
    }

    /// `Outgoing::Publish(pkid)`.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 {
            return; // QoS 0: never ours.
        }
        if self.parked.as_ref().is_some_and(|(p, _)| *p == pkid) {
            // The parked publish went out on the PUBACK that freed its id.
            if let Some((p, m)) = self.parked.take() {
                self.inflight.insert(p, m);
            }
        } else if self.awaiting_marker {
            self.pre_marker.push(Slot::Sent(pkid));
        } else if let Some(m) = self.queued.pop_front() {
            self.inflight.insert(pkid, m);
        } else {
            tracing::debug!(pkid, "publish not issued by the cloud's queue; ignored");
        }
    }

    /// `Outgoing::AwaitAck(pkid)`: rumqttc took a publish but parked it (id collision).
    pub fn on_await_ack(&mut self, pkid: u16) {
        if self.awaiting_marker {
            self.pre_marker.push(Slot::Parked(pkid));
        } else if let Some(m) = self.queued.pop_front() {
            self.parked = Some((pkid, m));
        }
    }

    /// `Incoming::PubAck(pkid)`: the broker has the publish; returns which one.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Message> {
        self.inflight.remove(&pkid)
    }

    /// `Outgoing::Subscribe`: if it is the awaited marker, settles limbo and returns the
    /// publishes rumqttc dropped, to be queued again.
    pub fn on_outgoing_subscribe(&mut self) -> Vec<Message> {
        if !self.awaiting_marker {
            return Vec::new();
        }
        self.awaiting_marker = false;
        let slots = std::mem::take(&mut self.pre_marker);
        let mut limbo = std::mem::take(&mut self.limbo);
        let survivors = limbo.split_off(limbo.len().saturating_sub(slots.len()));
        for (slot, m) in slots.into_iter().zip(survivors) {
            match slot {
                Slot::Sent(p) => {
                    self.inflight.insert(p, m);
                }
                Slot::Parked(p) => self.parked = Some((p, m)),
            }
        }
        limbo
    }

    /// The event loop returned an error. Returns true when the caller must queue a marker:
    /// the connection had been up, so rumqttc drained its queue and will drop what it held.
    pub fn on_error(&mut self) -> bool {
        if !std::mem::take(&mut self.connected) {
            // A failed connect attempt: rumqttc's queue is untouched.
            return false;
        }
        // In flight or parked: lost with the session (clean session, nothing resent).
        self.limbo.extend(self.inflight.drain().map(|(_, m)| m));
        self.limbo.extend(self.parked.take().map(|(_, m)| m));
        // Anything seen before the old marker was either acked or is in limbo already; the
        // old marker itself was drained with the rest.
        self.pre_marker.clear();
        self.awaiting_marker = false;
        self.limbo.extend(self.queued.drain(..));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> Message {
        Message {
            topic: format!("t/{n}"),
            payload: vec![n],
        }
    }

    #[test]
    fn acks_map_to_publishes_in_queue_order() {
        let mut c = Correlator::new();
        c.on_connack();
        c.enqueued(m(1));
        c.enqueued(m(2));
        c.on_outgoing_publish(1);
        c.on_outgoing_publish(2);
        assert_eq!(c.on_puback(2), Some(m(2)));
        assert_eq!(c.on_puback(1), Some(m(1)));
        assert_eq!(c.on_puback(1), None);
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn a_failed_connect_keeps_the_queue() {
        let mut c = Correlator::new();
        c.enqueued(m(1));
        assert!(!c.on_error());
        c.on_connack();
        c.on_outgoing_publish(7);
        assert_eq!(c.on_puback(7), Some(m(1)));
    }

    #[test]
    fn after_a_drain_the_marker_separates_survivors_from_the_dropped() {
        let mut c = Correlator::new();
        c.on_connack();
        c.enqueued(m(1));
        c.on_outgoing_publish(1); // in flight, lost with the session
        c.enqueued(m(2)); // drained
        c.enqueued(m(3)); // handed over after the drain: survives
        assert!(c.on_error());
        c.marker_enqueued();
        c.enqueued(m(4)); // after the marker
        c.on_connack();
        c.on_outgoing_publish(1); // m(3)
        let dropped = c.on_outgoing_subscribe();
        assert_eq!(dropped, vec![m(1), m(2)]);
        c.on_outgoing_publish(2); // m(4)
        assert_eq!(c.on_puback(1), Some(m(3)));
        assert_eq!(c.on_puback(2), Some(m(4)));
    }

    #[test]
    fn parked_publishes_follow_the_ack_that_frees_their_id() {
        let mut c = Correlator::new();
        c.on_connack();
        c.enqueued(m(1));
        c.enqueued(m(2));
        c.on_outgoing_publish(1);
        c.on_await_ack(1);
        assert!(c.is_pending(&m(2)));
        assert_eq!(c.on_puback(1), Some(m(1)));
        c.on_outgoing_publish(1);
        assert_eq!(c.on_puback(1), Some(m(2)));
    }

    #[test]
    fn pending_covers_every_stage() {
        let mut c = Correlator::new();
        c.enqueued(m(1));
        assert!(c.is_pending(&m(1)));
        c.on_connack();
        c.on_outgoing_publish(3);
        assert!(c.is_pending(&m(1)));
        assert!(c.on_error());
        assert!(c.is_pending(&m(1)));
        c.marker_enqueued();
        c.on_connack();
        assert_eq!(c.on_outgoing_subscribe(), vec![m(1)]);
        assert!(!c.is_pending(&m(1)));
    }
}
