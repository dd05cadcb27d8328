//! Sending revocations over MQTT: [`MqttPublisher`] (the cloud's [`RevocationPublisher`]) hands
//! retained QoS 1 publishes to rumqttc and answers each caller when the broker's PUBACK for
//! exactly that message arrives. The [`BrokerClient`] it returns is driven in `broker_client.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use octomil_common::DeviceId;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions, QoS};
use tokio::sync::oneshot;

use super::STATUS_FILTER;
use super::correlate::{Correlator, Message};
use crate::revocation_push::{BoxFuture, PublishError, RevocationPublisher};

/// Capacity of rumqttc's request queue. Requests wait there while the broker is away; when
/// it is full, publishing fails fast and the outbox retries later.
const QUEUE: usize = 4096;

/// A caller waiting for one message's PUBACK.
#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

/// Everything behind the publisher's lock: handing a request to rumqttc and recording it in
/// the correlator happen under it, so the two queues cannot disagree on order.
#[derive(Debug, Default)]
pub(super) struct State {
    pub corr: Correlator,
    waiters: HashMap<Message, Vec<Waiter>>,
    next_id: u64,
}

/// What the publisher and the session task share.
#[derive(Debug)]
pub(super) struct Shared {
    client: AsyncClient,
    state: Mutex<State>,
    ack_timeout: Duration,
    /// Wakes the outbox pump (`outbox::retry`): new entries were committed, or acknowledged
    /// ones deleted, so the window can be refilled at once.
    pub kick: tokio::sync::Notify,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `m` to rumqttc unless an identical publish is already on its way.
    pub fn enqueue(&self, st: &mut State, m: Message) -> Result<(), PublishError> {
        if st.corr.is_pending(&m) {
            return Ok(());
        }
        self.client
            .try_publish(m.topic.as_str(), QoS::AtLeastOnce, true, m.payload.clone())
            .map_err(|_| PublishError::Broker("the MQTT request queue is full".into()))?;
        st.corr.enqueued(m);
        Ok(())
    }

    /// Queues the status subscription, which doubles as the correlator's marker.
    pub fn enqueue_marker(&self, st: &mut State) {
        if self
            .client
            .try_subscribe(STATUS_FILTER, QoS::AtLeastOnce)
            .is_ok()
        {
            st.corr.marker_enqueued();
        }
    }

    /// The broker acknowledged `m`: wake everyone waiting for it.
    pub fn resolve(&self, st: &mut State, m: &Message) {
        for w in st.waiters.remove(m).unwrap_or_default() {
            let _ = w.tx.send(());
        }
    }

    fn forget_waiter(&self, m: &Message, id: u64) {
        self.lock().forget_waiter(m, id);
    }
}

impl State {
    fn forget_waiter(&mut self, m: &Message, id: u64) {
        if let Some(ws) = self.waiters.get_mut(m) {
            ws.retain(|w| w.id != id);
            if ws.is_empty() {
                self.waiters.remove(m);
            }
        }
    }
}

/// The cloud's [`RevocationPublisher`] over MQTT. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MqttPublisher {
    shared: Arc<Shared>,
}

/// The half that must be driven: rumqttc's event loop plus the shared state.
pub(crate) struct BrokerClient {
    pub(super) shared: Arc<Shared>,
    pub(super) eventloop: EventLoop,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient").finish_non_exhaustive()
    }
}

impl MqttPublisher {
    /// A publisher and the session that drives it (see [`BrokerClient::spawn`]).
    pub(crate) fn new(options: MqttOptions, ack_timeout: Duration) -> (Self, BrokerClient) {
        let (client, mut eventloop) = AsyncClient::new(options, QUEUE);
        let mut net = NetworkOptions::new();
        // Revocations are single small packets: do not let Nagle hold them back.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(5);
        eventloop.set_network_options(net);
        let shared = Arc::new(Shared {
            client,
            state: Mutex::new(State::default()),
            ack_timeout,
            kick: tokio::sync::Notify::new(),
        });
        // The first request in the queue: the subscription (and first marker).
        shared.enqueue_marker(&mut shared.lock());
        (
            Self {
                shared: shared.clone(),
            },
            BrokerClient { shared, eventloop },
        )
    }

    /// Publishes `payload` retained on `topic` and waits (bounded) for its PUBACK.
    pub async fn publish_retained(
        &self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<Duration, PublishError> {
        let started = Instant::now();
        let m = Message { topic, payload };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            let id = st.next_id;
            st.next_id += 1;
            // Wait first, then send: a fast PUBACK cannot slip past.
            st.waiters
                .entry(m.clone())
                .or_default()
                .push(Waiter { id, tx });
            if let Err(e) = self.shared.enqueue(&mut st, m.clone()) {
                drop(st);
                self.shared.forget_waiter(&m, id);
                return Err(e);
            }
            id
        };
        match tokio::time::timeout(self.shared.ack_timeout, rx).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            _ => {
                self.shared.forget_waiter(&m, id);
                Err(PublishError::Timeout(self.shared.ack_timeout))
            }
        }
    }

    /// Announces envelopes already committed to the outbox: the outbox pump sends them
    /// pipelined (a window of publishes in flight, not one at a time), and this waits only
    /// while the session is up, at most one ack timeout for the whole batch. Returns how many
    /// the broker acknowledged by then; the outbox delivers the rest.
    pub async fn publish_committed(&self, items: Vec<(DeviceId, Vec<u8>)>) -> usize {
        let mut rxs = Vec::with_capacity(items.len());
        let connected = {
            let mut st = self.shared.lock();
            for (device, payload) in items {
                let m = Message {
                    topic: device.revocation_topic(),
                    payload,
                };
                let (tx, rx) = oneshot::channel();
                let id = st.next_id;
                st.next_id += 1;
                st.waiters
                    .entry(m.clone())
                    .or_default()
                    .push(Waiter { id, tx });
                rxs.push((m, id, rx));
            }
            st.corr.is_connected()
        };
        // Waiters first, then the pump: a fast PUBACK cannot slip past.
        self.shared.kick.notify_one();
        let deadline = if connected {
            tokio::time::Instant::now() + self.shared.ack_timeout
        } else {
            // The broker is away: the commit is the guarantee, answer now.
            tokio::time::Instant::now()
        };
        let mut acked = 0;
        let mut late = Vec::new();
        for (m, id, rx) in rxs {
            // Past the deadline this still sees a PUBACK that already arrived.
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => acked += 1,
                _ => late.push((m, id)),
            }
        }
        if !late.is_empty() {
            let mut st = self.shared.lock();
            for (m, id) in late {
                st.forget_waiter(&m, id);
            }
        }
        acked
    }

    /// Whether the cloud's session is connected to the broker right now.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().corr.is_connected()
    }
}

impl RevocationPublisher for MqttPublisher {
    fn durable(&self) -> bool {
        true
    }

    fn publish<'a>(
        &'a self,
        device: &'a DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Duration, PublishError>> {
        Box::pin(self.publish_retained(device.revocation_topic(), payload))
    }

    fn publish_committed<'a>(&'a self, items: Vec<(DeviceId, Vec<u8>)>) -> BoxFuture<'a, usize> {
        Box::pin(MqttPublisher::publish_committed(self, items))
    }
}
