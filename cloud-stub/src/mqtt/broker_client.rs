//! The cloud's own MQTT client of its broker (embedded or external), as one task: drives rumqttc's event loop, matches PUBACKs to publishes, feeds presence, and reconnects with capped backoff.

use std::time::Duration;

use rumqttc::{Event, Incoming, Outgoing, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::correlate::Message;
use super::outbox;
use super::revocation_sender::BrokerClient;
use crate::app::AppState;
use octomil_common::backoff::{Backoff, Jitter, unit_random};

/// Reconnect delays: quick at first (a broker restart), 50 ms doubling to 2 s, ±25 %.
const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(50),
    cap: Duration::from_secs(2),
    jitter: Jitter::QUARTER,
};

impl BrokerClient {
    /// Starts the session, the outbox retry loop and the acknowledgement writer on `tasks`.
    /// All of them end when `stop` is cancelled. Returns a watch of "connected".
    pub(crate) fn spawn(
        self,
        tasks: &TaskTracker,
        cloud: AppState,
        stop: CancellationToken,
    ) -> watch::Receiver<bool> {
        let (up_tx, up_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        tasks.spawn(outbox::write_acks(
            self.shared.clone(),
            cloud.clone(),
            ack_rx,
        ));
        tasks.spawn(outbox::retry(
            self.shared.clone(),
            cloud.clone(),
            up_rx.clone(),
            stop.clone(),
        ));
        tasks.spawn(run(self, cloud, ack_tx, up_tx, stop));
        up_rx
    }
}

async fn run(
    mut s: BrokerClient,
    cloud: AppState,
    acks: mpsc::UnboundedSender<Message>,
    up: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut attempt: u32 = 0;
    // Log the first failure of a streak at WARN, the rest at debug.
    let mut failing = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = s.eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                s.shared.lock().corr.on_connack();
                attempt = 0;
                failing = false;
                up.send_replace(true);
                tracing::info!(broker = %broker(&s), "MQTT session up");
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                let mut st = s.shared.lock();
                if let Some(m) = st.corr.on_puback(ack.pkid) {
                    s.shared.resolve(&mut st, &m);
                    let _ = acks.send(m);
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let now = cloud.clock.now_secs();
                let _ = cloud.presence.ingest(&p.topic, &p.payload, now, |id| {
                    cloud.store.read(|m| m.devices.contains_key(id))
                });
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    tracing::warn!(
                        filter = super::STATUS_FILTER,
                        "the broker refused the status subscription: presence stays unknown \
                         (does the broker's ACL let the cloud read it?)"
                    );
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                s.shared.lock().corr.on_outgoing_publish(pkid);
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                s.shared.lock().corr.on_await_ack(pkid);
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(_))) => {
                let dropped = s.shared.lock().corr.on_outgoing_subscribe();
                resend(&s, &cloud, dropped);
            }
            Ok(_) => {}
            Err(e) => {
                {
                    let mut st = s.shared.lock();
                    if st.corr.on_error() {
                        s.shared.enqueue_marker(&mut st);
                    }
                }
                up.send_replace(false);
                if failing {
                    tracing::debug!(error = %e, "MQTT broker still unreachable");
                } else {
                    tracing::warn!(broker = %broker(&s), error = %e, "MQTT session down; reconnecting");
                    failing = true;
                }
                let delay = RECONNECT.delay(attempt, unit_random(), None);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    up.send_replace(false);
}

/// Sends again what a lost connection dropped, if the outbox still owes it.
fn resend(s: &BrokerClient, cloud: &AppState, dropped: Vec<Message>) {
    if dropped.is_empty() {
        return;
    }
    let owed: Vec<Message> = cloud.store.read(|model| {
        dropped
            .into_iter()
            .filter(|m| {
                super::device_of_topic(&m.topic, "revocation")
                    .and_then(|id| model.outbox.get(id))
                    .is_some_and(|o| o.payload == m.payload)
            })
            .collect()
    });
    let mut st = s.shared.lock();
    for m in owed {
        if let Err(e) = s.shared.enqueue(&mut st, m) {
            tracing::debug!(error = %e, "resend deferred to the outbox retry");
        }
    }
}

fn broker(s: &BrokerClient) -> String {
    let (host, port) = s.eventloop.mqtt_options.broker_address();
    format!("{host}:{port}")
}
