//! The revocation session: one persistent MQTT session (TLS with the pinned CA) subscribed to
//! the device's revocation topic, announcing presence with a Last Will. A verified envelope
//! hands the revocation to the refresh loop; anything else is counted and dropped.
//!
//! Login: with an MQTT client certificate from the cloud, TLS client authentication (the
//! certificate chain and the device's Ed25519 identity key) and no password; without one (an
//! older cloud), the device key as the password. A renewed certificate is used from the next
//! (re)connect; a live session keeps running (brokers check the certificate at the handshake
//! only), but is reconnected on our own with the renewed certificate before the one it
//! connected with expires, so it never depends on an expired certificate.

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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::Command;
use crate::client_tls::ClientTls;
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
/// A live session connected with a client certificate reconnects with the renewed one once
/// this fraction of the old one's lifetime has passed.
const RECONNECT_AT: f64 = 0.9;

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
            let Some((params, token, tls)) = self.wait_for_params().await else {
                return;
            };
            match self.session(&params, &token, tls).await {
                End::Shutdown | End::Revoked => return,
                End::Restart => continue,
            }
        }
    }

    async fn wait_for_params(&self) -> Option<(Arc<MqttParams>, String, Option<Arc<ClientTls>>)> {
        let mut rx = self.snapshot.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if s.phase == Phase::Revoked {
                    return None;
                }
                if let (Some(p), Some(t)) = (&s.mqtt, &s.token) {
                    return Some((p.clone(), t.secret.expose().clone(), s.mqtt_tls.clone()));
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = rx.changed() => if r.is_err() { return None },
            }
        }
    }

    /// The connect options: a client certificate when there is one and the URL is TLS (no
    /// password then), else the device key as the password.
    fn options(
        &self,
        params: &MqttParams,
        token: &str,
        cert: Option<&ClientTls>,
    ) -> Result<MqttOptions, MqttError> {
        let (tls, host, port) = parse_url(&params.url)?;
        let mut o = MqttOptions::new(self.device_id.as_str(), host, port);
        let cert = cert.filter(|_| tls);
        if cert.is_none() {
            o.set_credentials(params.username.clone(), token.to_owned());
        }
        o.set_keep_alive(self.keepalive)
            .set_clean_session(false)
            .set_max_packet_size(MAX_INCOMING, MAX_INCOMING)
            .set_last_will(LastWill::new(
                self.device_id.status_topic(),
                serde_json::to_vec(&Presence::last_will()).unwrap_or_default(),
                QoS::AtLeastOnce,
                true,
            ));
        if tls {
            let config = cert.map_or_else(|| self.tls.clone(), |c| c.config.clone());
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        Ok(o)
    }

    async fn session(
        &self,
        params: &Arc<MqttParams>,
        token: &str,
        mut cert: Option<Arc<ClientTls>>,
    ) -> End {
        let options = match self.options(params, token, cert.as_deref()) {
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
        // The certificate the live connection was made with (None: password, or down).
        let mut connected_with: Option<Arc<ClientTls>> = None;
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
                    // Fresh credentials (key or certificate) for the next (re)connect; the live
                    // connection stays.
                    let new_token = s
                        .token
                        .as_ref()
                        .filter(|t| *t.secret.expose() != current_token);
                    let new_cert = !same_cert(s.mqtt_tls.as_ref(), cert.as_ref());
                    if new_token.is_some() || new_cert {
                        if let Some(t) = new_token {
                            current_token = t.secret.expose().clone();
                        }
                        if new_cert {
                            cert = s.mqtt_tls.clone();
                            tracing::info!(
                                client_certificate = cert.is_some(),
                                "new MQTT login for the next connect"
                            );
                        }
                        if let Ok(o) = self.options(params, &current_token, cert.as_deref()) {
                            eventloop.mqtt_options = o;
                        }
                    }
                }
                // Connected with a certificate that nears its end, and a renewed one is
                // here: reconnect with it now rather than depend on the old one.
                () = renew_sleep(connected_with.as_deref(), cert.as_deref()) => {
                    tracing::info!("reconnecting with the renewed MQTT client certificate before the current one expires");
                    self.reconnect(&client, &mut eventloop).await;
                    connected_with = None;
                }
                ev = eventloop.poll() => match ev {
                                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        check_every = CHECK_EVERY;
                        connected_with = cert.clone().filter(|_| params.url.starts_with("mqtts://"));
                        tracing::info!(
                            topic = %params.topic,
                            client_certificate = connected_with.is_some(),
                            "revocation session connected"
                        );
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
                        connected_with = None;
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

    /// Ends the live connection cleanly (a DISCONNECT, so no Last Will) and lets the next
    /// poll connect again with the current options.
    async fn reconnect(&self, client: &AsyncClient, eventloop: &mut EventLoop) {
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
        eventloop.clean();
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

/// The same certificate (by the config built for it)?
fn same_cert(a: Option<&Arc<ClientTls>>, b: Option<&Arc<ClientTls>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
        _ => false,
    }
}

/// When a connection made with `connected` should move to the renewed `next`: once
/// [`RECONNECT_AT`] of `connected`'s lifetime has passed, if `next` is a different
/// certificate valid for longer. `None`: never (no certificate, or nothing better to move to:
/// a reconnect with the same certificate would gain nothing, and after its expiry would fail).
fn renew_at(connected: Option<&ClientTls>, next: Option<&ClientTls>) -> Option<Instant> {
    let (c, n) = (connected?, next?);
    if n.valid_until <= c.valid_until || n.chain_pem == c.chain_pem {
        return None;
    }
    let lifetime = c.valid_until.saturating_duration_since(c.received);
    Some(c.received + lifetime.mul_f64(RECONNECT_AT))
}

/// Sleeps until [`renew_at`], or forever.
async fn renew_sleep(connected: Option<&ClientTls>, next: Option<&ClientTls>) {
    match renew_at(connected, next) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

    fn cert(pem: &str, received: Instant, valid_for: u64) -> ClientTls {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
            chain_pem: pem.into(),
            received,
            valid_until: received + Duration::from_secs(valid_for),
        }
    }

    /// A live session moves to a renewed certificate at 90 % of the old one's lifetime, and
    /// only to a different one valid for longer.
    #[test]
    fn when_a_live_session_moves_to_the_renewed_certificate() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let old = cert("a", t0, 1000);
        // (connected with, next connect's, reconnect at)
        let cases = [
            (None, None, None),
            (None, Some(cert("b", t0 + s(10), 1000)), None),
            (Some(cert("a", t0, 1000)), None, None),
            (Some(cert("a", t0, 1000)), Some(cert("a", t0, 1000)), None),
            (Some(cert("a", t0, 1000)), Some(cert("b", t0, 500)), None),
            (
                Some(cert("a", t0, 1000)),
                Some(cert("b", t0 + s(700), 1000)),
                Some(t0 + s(900)),
            ),
        ];
        for (i, (connected, next, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                renew_at(connected.as_ref(), next.as_ref()),
                want,
                "case {i}"
            );
        }
        let next = Arc::new(cert("b", t0, 2000));
        assert!(same_cert(Some(&next), Some(&next.clone())));
        assert!(!same_cert(Some(&Arc::new(old)), Some(&next)));
        assert!(!same_cert(None, Some(&next)));
    }

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
