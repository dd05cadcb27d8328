//! The fleet's MQTT side: one rumqttc event loop per device, each on its own task, logged in
//! as the daemon logs in, subscribed to its revocation topic, reconnecting with the daemon's
//! own backoff (`octomild::mqtt::reconnect_delay`), and checking every envelope with the
//! daemon's code (`envelope::open` + `Expectations::check`). Each session reports what
//! happened to it, with the instant, on one channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use octomil_common::backoff::unit_random;
use octomil_common::envelope::{self, Expectations};
use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::cloud::Device;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Url(#[from] octomild::mqtt::MqttError),
    #[error("the broker URL is not mqtts://: the simulator only speaks TLS")]
    NotTls,
    #[error("the MQTT client certificate: {0}")]
    Certificate(#[from] octomil_common::tls::CaError),
    #[error("the MQTT client certificate: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the pinned revocation key in the register answer is not an Ed25519 key")]
    RevocationKey,
}

/// What a session reports, with the instant it happened.
#[derive(Debug, Clone)]
pub enum Report {
    /// Subscribed (SUBACK granted): a revocation can reach the device now.
    Up(usize, Instant),
    /// The live session ended (the broker went away or closed it).
    Down(usize, Instant),
    /// A reconnect attempt starts now (after the daemon's backoff).
    Attempt(usize, Instant),
    /// A revocation envelope arrived and verified for this device.
    Verified(usize, Instant),
    /// Something a device would refuse or fail on: a bad envelope, a refused subscription,
    /// a connect that failed before the session was ever up.
    Problem(usize, String),
}

/// How a device logs in to the broker: the one place that decides. Over TLS trusting the
/// cloud's CA, username = what the cloud said, password = the device key; and when the
/// register answer carried a client certificate, the device also presents it (TLS client
/// auth with its Ed25519 identity key).
pub fn login(
    device: &Device,
    ca_pem: &[u8],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<MqttOptions, LoginError> {
    let (is_tls, host, port) = octomild::mqtt::parse_url(&device.mqtt.url)?;
    if !is_tls {
        return Err(LoginError::NotTls);
    }
    let mut o = MqttOptions::new(device.id.as_str(), host, port);
    // By certificate when the cloud issued one (the device key then never reaches the
    // broker); by password only against a cloud from before client certificates.
    let tls = match &device.mqtt.client_cert {
        Some(cert) => octomil_common::tls::client_config_with_cert(
            ca_pem,
            cert.as_bytes(),
            &device.key.to_bytes(),
        )?,
        None => {
            o.set_credentials(device.mqtt.username.clone(), device.api_key());
            tls.clone()
        }
    };
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok(o)
}

/// The options every session shares with the daemon's: persistent session, keep-alive, and
/// (to keep 10,000 sessions small) a short in-flight window: a device only receives.
fn tune(o: &mut MqttOptions, keep_alive: Duration) {
    o.set_keep_alive(keep_alive)
        .set_clean_session(false)
        .set_inflight(4)
        .set_max_packet_size(8 * 1024, 8 * 1024);
}

/// One device's session. Runs until aborted. `permit` (the setup's connect slot) is given up
/// at the first SUBACK.
pub async fn session(
    device: Arc<Device>,
    ca_pem: Arc<[u8]>,
    tls: Arc<rustls::ClientConfig>,
    keep_alive: Duration,
    permit: Option<OwnedSemaphorePermit>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let idx = device.idx;
    let problem = |why: String| {
        let _ = reports.send(Report::Problem(idx, why));
    };
    let mut options = match login(&device, &ca_pem, &tls) {
        Ok(o) => o,
        Err(e) => return problem(e.to_string()),
    };
    let key = match octomil_common::proof::decode_public_key(&device.revocation_key) {
        Ok(k) => k,
        Err(_) => return problem(LoginError::RevocationKey.to_string()),
    };
    tune(&mut options, keep_alive);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    let topic = device.mqtt.topic.clone();
    let mut permit = permit;
    let (mut live, mut ever_up, mut verified) = (false, false, false);
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                live = true;
                // As the daemon: subscribe on every CONNACK (a broker without persistence
                // forgot the subscription).
                let _ = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(a))) => {
                if a.return_codes.contains(&SubscribeReasonCode::Failure) {
                    problem("the broker refused the subscription".into());
                    continue;
                }
                permit.take();
                ever_up = true;
                let _ = reports.send(Report::Up(idx, Instant::now()));
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                if p.payload.is_empty() || verified {
                    continue;
                }
                let at = Instant::now();
                match verify(&device, &key, &p.payload) {
                    Ok(()) => {
                        verified = true;
                        let _ = reports.send(Report::Verified(idx, at));
                    }
                    Err(e) => problem(format!("envelope refused: {e}")),
                }
            }
            Ok(_) => {}
            Err(e) => {
                if std::mem::replace(&mut live, false) {
                    let _ = reports.send(Report::Down(idx, Instant::now()));
                } else if !ever_up && failures < 2 {
                    problem(format!("connect failed: {e}"));
                }
                let delay = octomild::mqtt::reconnect_delay(failures, unit_random());
                failures = failures.saturating_add(1);
                tokio::time::sleep(delay).await;
                // A refresh may have replaced the key since the last login.
                if let Some(login) = eventloop.mqtt_options.credentials() {
                    eventloop
                        .mqtt_options
                        .set_credentials(login.username, device.api_key());
                }
                let _ = reports.send(Report::Attempt(idx, Instant::now()));
            }
        }
    }
}

/// The daemon's check of a revocation message, with what this device knows.
fn verify(
    device: &Device,
    key: &VerifyingKey,
    payload: &[u8],
) -> Result<(), envelope::EnvelopeError> {
    let rev = envelope::open(payload, key)?;
    Expectations {
        device_id: &device.id,
        epoch: device.epoch,
        last_seq: None,
    }
    .check(&rev)
}
