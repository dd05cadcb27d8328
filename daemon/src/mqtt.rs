//! The revocation session: one persistent MQTT session (TLS with the pinned CA) subscribed to
//! the device's revocation topic, announcing presence with a Last Will. A verified envelope
//! hands the revocation to the refresh loop; anything else is counted and dropped.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use octomil_common::envelope::{self, EnvelopeError, Expectations};
use octomil_common::wire::Presence;
use octomil_common::{Clock as _, DeviceId};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::Command;
use crate::metrics::Metrics;
use crate::state::{MqttParams, Phase, Snapshot, SnapshotRx, SnapshotTx};
use octomil_common::backoff::{Backoff, Jitter, unit_random};

/// Reconnects back off from 3 s up to a minute, full jitter. The base sets how a fleet that
/// lost its broker at once comes back: the first attempts spread over `FLOOR..FLOOR + base`,
/// so 10,000 devices arrive at about a third per second instead of all within one second
/// (`octomil-fleet-sim jitter`, BENCHMARKS.md "Fleet scale").
pub const RECONNECT: Backoff = Backoff {
    base: Duration::from_secs(3),
    cap: Duration::from_secs(60),
    jitter: Jitter::FULL,
};
/// Every reconnect waits at least this, added to the draw (a floor applied with `max` would
/// pile every draw below it onto the same instant).
pub const RECONNECT_FLOOR: Duration = Duration::from_millis(200);

/// The wait before reconnect attempt `failures` (0 = the first after a session dropped), with
/// `unit` a uniform draw in `[0, 1)`. Public so the fleet simulator and its benchmark use
/// exactly the daemon's spread.
pub fn reconnect_delay(failures: u32, unit: f64) -> Duration {
    RECONNECT_FLOOR + RECONNECT.delay(failures, unit, None)
}
/// After this many failed connects in a row, ask the refresh loop to check with the cloud (a
/// revoked device's key no longer logs in to the broker, and the push cannot reach it)...
const CHECK_AFTER_FAILURES: u32 = 2;
/// ...first after this long, doubling up to `CHECK_MAX` while the broker stays unusable (a
/// broker outage must not turn a fleet into a refresh storm).
const CHECK_EVERY: Duration = Duration::from_secs(30);
const CHECK_MAX: Duration = Duration::from_secs(30 * 60);
/// Envelopes are at most 1 KiB; anything up to this is read and rejected by the decoder (a
/// smaller limit would make rumqttc drop the connection and the broker redeliver a retained
/// oversized message forever).
const MAX_INCOMING: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT URL {0:?} is not mqtts://host:port or mqtt://host:port")]
    BadUrl(String),
}

/// Everything the session task needs.
pub struct Session {
    pub device_id: DeviceId,
    pub tls: Arc<rustls::ClientConfig>,
    pub keepalive: Duration,
    pub snapshot: SnapshotRx,
    pub tx: SnapshotTx,
    pub commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// `mqtts://host:port` or `mqtt://host:port` -> (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), MqttError> {
    let bad = || MqttError::BadUrl(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((tls, host.to_owned(), port))
}

/// Why a session ended.
enum End {
    Shutdown,
    Revoked,
    /// The parameters changed (new registration): start a new session.
    Restart,
}

impl Session {
    pub async fn run(self) {
        loop {
            // Wait for a registered, unrevoked device whose cloud has a broker.
            let Some((params, token)) = self.wait_for_params().await else {
                return;
            };
            match self.session(&params, &token).await {
                End::Shutdown | End::Revoked => return,
                End::Restart => continue,
            }
        }
    }

    async fn wait_for_params(&self) -> Option<(Arc<MqttParams>, String)> {
        let mut rx = self.snapshot.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if s.phase == Phase::Revoked {
                    return None;
                }
                if let (Some(p), Some(t)) = (&s.mqtt, &s.token) {
                    return Some((p.clone(), t.secret.expose().clone()));
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = rx.changed() => if r.is_err() { return None },
            }
        }
    }

    fn options(&self, params: &MqttParams, token: &str) -> Result<MqttOptions, MqttError> {
        let (tls, host, port) = parse_url(&params.url)?;
        let mut o = MqttOptions::new(self.device_id.as_str(), host, port);
        o.set_credentials(params.username.clone(), token.to_owned())
            .set_keep_alive(self.keepalive)
            .set_clean_session(false)
            .set_max_packet_size(MAX_INCOMING, MAX_INCOMING)
            .set_last_will(LastWill::new(
                self.device_id.status_topic(),
                serde_json::to_vec(&Presence::last_will()).unwrap_or_default(),
                QoS::AtLeastOnce,
                true,
            ));
        if tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                self.tls.clone(),
            )));
        }
        Ok(o)
    }

    async fn session(&self, params: &Arc<MqttParams>, token: &str) -> End {
        let options = match self.options(params, token) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the revocation session");
                return self.park_until_change(params).await;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut net = NetworkOptions::new();
        // The first message on a fresh connection otherwise waits on Nagle + delayed ACK.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);
        let key = match VerifyingKey::from_bytes(&params.revocation_public_key) {
            Ok(k) => k,
            Err(_) => {
                tracing::error!("the pinned revocation key is not a valid Ed25519 key");
                return self.park_until_change(params).await;
            }
        };
        let mut rx = self.snapshot.clone();
        let mut current_token = token.to_owned();
        let mut failures = 0u32;
        let mut last_check: Option<tokio::time::Instant> = None;
        let mut check_every = CHECK_EVERY;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.goodbye(&client, &mut eventloop, "stopped").await;
                    return End::Shutdown;
                }
                r = rx.changed() => {
                    if r.is_err() {
                        return End::Shutdown;
                    }
                    let s = rx.borrow_and_update().clone();
                    if s.phase == Phase::Revoked {
                        self.goodbye(&client, &mut eventloop, "revoked").await;
                        return End::Revoked;
                    }
                    if s.mqtt.as_ref() != Some(params) {
                        let _ = client.disconnect().await;
                        self.set_connected(false);
                        return End::Restart;
                    }
                    // Fresh credentials for the next (re)connect; the live connection stays.
                    if let Some(t) = &s.token
                        && *t.secret.expose() != current_token
                    {
                        current_token = t.secret.expose().clone();
                        eventloop.mqtt_options.set_credentials(params.username.clone(), current_token.clone());
                    }
                }
                ev = eventloop.poll() => match ev {
                                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        check_every = CHECK_EVERY;
                                                tracing::info!(topic = %params.topic, "revocation session connected");
                        let _ = client.subscribe(params.topic.clone(), QoS::AtLeastOnce).await;
                        self.announce(&client).await;
                    }
                    // "Connected" means a revocation can reach us: only once subscribed.
                    Ok(Event::Incoming(Packet::SubAck(_))) => self.set_connected(true),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == params.topic && self.handle(&p.payload, &key, params).await {
                            // Revoked: the refresh loop takes over; our snapshot watch ends us.
                        }
                    }
                    Ok(_) => {}
                                        Err(e) => {
                        self.set_connected(false);
                        Metrics::inc(&self.metrics.mqtt_disconnects);
                                                // A broker that is down (refused, unreachable) says nothing about us; one
                        // that accepts the connection and then drops it may be refusing our key.
                        if !broker_down(&e)
                            && failures + 1 >= CHECK_AFTER_FAILURES
                            && last_check.is_none_or(|t| t.elapsed() >= check_every)
                        {
                            if last_check.is_some() {
                                check_every = (check_every * 2).min(CHECK_MAX);
                            }
                            last_check = Some(tokio::time::Instant::now());
                            let _ = self.commands.try_send(Command::Check);
                        }
                        let delay = reconnect_delay(failures, unit_random());
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "revocation session down; reconnecting");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return End::Shutdown,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    /// Checks one message from the revocation topic. True when it was a valid revocation.
    async fn handle(&self, payload: &[u8], key: &VerifyingKey, params: &MqttParams) -> bool {
        if payload.is_empty() {
            // An empty retained message clears the topic (the cloud does this on delete).
            return false;
        }
        let verified = envelope::open(payload, key).and_then(|rev| {
            Expectations {
                device_id: self.device_id.as_str(),
                epoch: params.registration_epoch,
                last_seq: params.last_seq,
            }
            .check(&rev)
            .map(|()| rev)
        });
        match verified {
            Ok(rev) => {
                Metrics::inc(&self.metrics.mqtt_revocations);
                // Withhold the key now; the refresh loop wipes and persists when it gets the
                // command (it may be inside a cloud call for a while).
                // `at` is informational (the device's clock); nothing compares it.
                self.tx
                    .revoke_now(&rev.reason, octomil_common::SystemClock.now_secs());
                let _ = self
                    .commands
                    .send(Command::Revoke {
                        reason: rev.reason,
                        seq: Some(rev.seq),
                    })
                    .await;
                true
            }
            Err(e) => {
                self.metrics.envelope_rejected(e.label());
                tracing::debug!(reason = %e, len = payload.len(), "ignored a message on the revocation topic");
                let _: &EnvelopeError = &e;
                false
            }
        }
    }

    fn presence(&self, online: bool, state: &str) -> Vec<u8> {
        let s: Arc<Snapshot> = self.snapshot.borrow().clone();
        serde_json::to_vec(&Presence {
            online,
            state: state.to_owned(),
            daemon_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            expires_at: s.token.as_ref().and_then(|t| t.expires_at),
        })
        .unwrap_or_default()
    }

    /// Queues a retained presence on the device's status topic.
    async fn publish_presence(&self, client: &AsyncClient, online: bool, state: &str) {
        let payload = self.presence(online, state);
        let _ = client
            .publish(
                self.device_id.status_topic(),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await;
    }

    async fn announce(&self, client: &AsyncClient) {
        let state = self.snapshot.borrow().phase.as_str();
        self.publish_presence(client, true, state).await;
    }

    /// Publishes a final presence and disconnects cleanly (so the Last Will is not sent),
    /// waiting briefly for the broker to take it.
    async fn goodbye(&self, client: &AsyncClient, eventloop: &mut EventLoop, state: &str) {
        self.publish_presence(client, false, state).await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        self.set_connected(false);
    }

    async fn park_until_change(&self, params: &Arc<MqttParams>) -> End {
        let mut rx = self.snapshot.clone();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return End::Shutdown,
                r = rx.changed() => {
                    if r.is_err() {
                        return End::Shutdown;
                    }
                    let s = rx.borrow_and_update().clone();
                    if s.phase == Phase::Revoked {
                        return End::Revoked;
                    }
                    if s.mqtt.as_ref() != Some(params) {
                        return End::Restart;
                    }
                }
            }
        }
    }

    fn set_connected(&self, up: bool) {
        if self.tx.borrow().mqtt_connected != up {
            self.tx.update(|s| s.mqtt_connected = up);
        }
    }
}

/// Errors that mean "no broker there" rather than "the broker turned us away".
fn broker_down(e: &rumqttc::ConnectionError) -> bool {
    use std::io::ErrorKind;
    match e {
        rumqttc::ConnectionError::NetworkTimeout | rumqttc::ConnectionError::FlushTimeout => true,
        rumqttc::ConnectionError::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::TimedOut
                | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtts://127.0.0.1:8883").unwrap(),
            (true, "127.0.0.1".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://broker.lan:1883/").unwrap(),
            (false, "broker.lan".into(), 1883)
        );
        assert_eq!(
            parse_url("mqtts://[::1]:8883").unwrap(),
            (true, "::1".into(), 8883)
        );
        for bad in [
            "",
            "http://x:1",
            "mqtts://x",
            "mqtts://:1",
            "mqtts://x:port",
            "mqtts://x:99999",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
