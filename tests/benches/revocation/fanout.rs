//! Fan-out: a fleet of device sessions on one broker (simulated rumqttc devices and one real
//! daemon), all revoked over HTTP with bounded concurrency; how long until the last is told.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use octomil_common::envelope;
use octomil_e2e::DaemonProcess;
use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::cloud::{self, Broker, Cloud};
use crate::{daemon_options, ms, print_stats, wait_connected};

/// Registrations in flight while the fleet is set up (not measured).
const REGISTER_CONCURRENCY: usize = 16;
/// How long after the first revoke the benchmark waits for the last device.
const DEADLINE: Duration = Duration::from_secs(60);
/// The daemon's socket is polled this often during the fan-out (back-to-back polling would
/// take a core from the cloud and the broker).
const DAEMON_POLL: Duration = Duration::from_millis(1);

/// What one fan-out run measured.
pub struct Fanout {
    /// Per device: its revoke call started -> its envelope arrived (the daemon: its 403).
    pub per_device: Vec<Duration>,
    /// Devices told (envelope verified, or the daemon's 403), of `fleet`.
    pub told: usize,
    pub fleet: usize,
    /// First revoke call -> last device told.
    pub last_told: Duration,
    /// First revoke call -> last HTTP answer.
    pub http_done: Duration,
    /// First revoke call -> the daemon's first 403.
    pub daemon: Option<Duration>,
    pub failures: usize,
}

impl Fanout {
    pub fn note(&self) -> String {
        let daemon = self
            .daemon
            .map_or("never".into(), |d| format!("{} ms", ms(d)));
        let mut n = format!(
            "{}/{} told; HTTP revokes {:.0}/s, last answer at {} ms; daemon 403 at {daemon}",
            self.told,
            self.fleet,
            (self.fleet as f64) / self.http_done.as_secs_f64(),
            ms(self.http_done),
        );
        if self.failures > 0 {
            n.push_str(&format!("; {} sessions failed", self.failures));
        }
        n
    }
}

/// One simulated device: its registration, as the MQTT session needs it.
struct Sim {
    idx: usize,
    id: String,
    /// Trusts the cloud's CA and presents the answer's certificate with the device key.
    tls: Arc<rustls::ClientConfig>,
    url: String,
}

/// A device was told (`Ok`), or its envelope or session failed (`Err`).
type Told = (usize, Instant, Result<(), String>);

pub async fn run(broker: Broker, fleet: usize, revoke_conc: usize, connect_conc: usize) -> Fanout {
    let sims = fleet - 1;
    println!(
        "\n== fan-out, {} broker: {fleet} sessions ({sims} simulated + 1 octomild), \
         {revoke_conc} revoke calls in flight",
        broker.name()
    );
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path(), broker).await;

    let t = Instant::now();
    let regs = register_fleet(&cloud, sims).await;
    println!(
        "  registered {sims} devices over HTTP in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let (told_tx, mut told_rx) = mpsc::unbounded_channel::<Told>();
    let gate = Arc::new(Semaphore::new(connect_conc));
    let mut sessions = tokio::task::JoinSet::new();
    let mut readies = Vec::with_capacity(sims);
    for sim in regs {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (ready_tx, ready_rx) = oneshot::channel();
        readies.push(ready_rx);
        sessions.spawn(device(
            sim,
            cloud.revocation_key,
            permit,
            ready_tx,
            told_tx.clone(),
        ));
    }
    let mut connected = vec![false; sims];
    let mut failures = 0usize;
    for (i, r) in readies.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), r).await {
            Ok(Ok(Ok(()))) => connected[i] = true,
            other => {
                failures += 1;
                if failures <= 3 {
                    println!("  session fan-{i:04} did not come up: {other:?}");
                }
            }
        }
    }
    let up = connected.iter().filter(|c| **c).count();
    println!(
        "  {up} simulated sessions connected and subscribed (TLS, QoS 1) in {:.1} s, \
         {connect_conc} at a time",
        t.elapsed().as_secs_f64()
    );
    let mib = |m: Option<u64>| m.map_or("?".into(), |m| format!("{m} MiB"));
    println!(
        "  resident memory: this process (the {up} sessions) {}, the cloud {}",
        mib(cloud::rss_mib("/proc/self/status")),
        mib(cloud.rss_mib())
    );

    let daemon_id = "fan-daemon";
    let d = DaemonProcess::start(
        &tmp.path().join(daemon_id),
        &daemon_options(&cloud, daemon_id),
    );
    d.wait_state("active", Duration::from_secs(30)).await;
    wait_connected(&cloud, daemon_id, &d).await;
    // Let the tail of the connect storm (presence, acks) settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The revoke order: every connected simulated device, with the daemon in the middle.
    // Index `sims` stands for the daemon.
    let mut order: Vec<usize> = (0..sims).filter(|i| connected[*i]).collect();
    order.insert(order.len() / 2, sims);
    let total = order.len();
    let id_of = move |i: usize| {
        if i == sims {
            daemon_id.to_owned()
        } else {
            format!("fan-{i:04}")
        }
    };
    let socket = d.client();
    let daemon_told = tokio::spawn(async move {
        let mut conn = socket.connect().await.unwrap();
        loop {
            match conn.request(http::Method::GET, "/v1/token", None).await {
                Ok(r) if r.status == 403 => return Instant::now(),
                Ok(_) => {}
                Err(_) => conn = socket.connect().await.unwrap(),
            }
            tokio::time::sleep(DAEMON_POLL).await;
        }
    });

    let started: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; sims + 1]));
    let next = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(order);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..revoke_conc {
        let (next, order, started) = (next.clone(), order.clone(), started.clone());
        let (http, api, owner) = (cloud.http.clone(), cloud.api.clone(), cloud.owner.clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let at = Instant::now();
                started.lock().unwrap()[i] = Some(at);
                let a = cloud::revoke(&http, &api, &owner, &id_of(i)).await;
                answers.push((at, a));
            }
            answers
        }));
    }

    // Only a device's first report counts: told, or why it was not.
    let mut told_at: Vec<Option<Instant>> = vec![None; sims + 1];
    let mut done = vec![false; sims];
    let (mut told, mut bad) = (0usize, 0usize);
    while told + bad < up {
        let left = DEADLINE.saturating_sub(t0.elapsed());
        let Ok(Some((i, at, verdict))) = tokio::time::timeout(left, told_rx.recv()).await else {
            break;
        };
        if std::mem::replace(&mut done[i], true) {
            continue;
        }
        match verdict {
            Ok(()) => {
                told_at[i] = Some(at);
                told += 1;
            }
            Err(e) => {
                bad += 1;
                if bad <= 3 {
                    println!("  fan-{i:04}: {e}");
                }
            }
        }
    }
    let left = DEADLINE.saturating_sub(t0.elapsed());
    let daemon_at = tokio::time::timeout(left, daemon_told)
        .await
        .ok()
        .and_then(|r| r.ok());
    if let Some(at) = daemon_at {
        told_at[sims] = Some(at);
        told += 1;
    }
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.unwrap());
    }
    let http_done = answers
        .iter()
        .map(|(_, a)| a.done - t0)
        .max()
        .unwrap_or_default();
    let unpublished = answers
        .iter()
        .filter(|(_, a)| a.status != 200 || !a.published)
        .count();
    let http: Vec<Duration> = answers.iter().map(|(at, a)| a.done - *at).collect();
    let acks: Vec<Duration> = answers.iter().filter_map(|(_, a)| a.ack).collect();
    let started = started.lock().unwrap().clone();
    let per_device: Vec<Duration> = told_at
        .iter()
        .zip(&started)
        .filter_map(|(t, s)| Some((*t)? - (*s)?))
        .collect();
    let last_told = told_at
        .iter()
        .flatten()
        .map(|t| *t - t0)
        .max()
        .unwrap_or_default();
    sessions.abort_all();
    drop(d);

    let f = Fanout {
        per_device,
        told,
        fleet: total,
        last_told,
        http_done,
        daemon: daemon_at.map(|t| t - t0),
        failures: failures + bad,
    };
    println!(
        "  first revoke -> last of {told}/{total} told: {} ms; HTTP: {} revokes answered by {} ms \
         ({:.0}/s), {unpublished} not acknowledged",
        ms(last_told),
        answers.len(),
        ms(http_done),
        answers.len() as f64 / http_done.as_secs_f64()
    );
    print_stats("revoke call -> device told", &f.per_device);
    print_stats("revoke call -> HTTP answer", &http);
    print_stats("cloud publish -> PUBACK", &acks);
    if let Some(d) = f.daemon {
        println!(
            "  the daemon answered 403 {} ms after the first revoke",
            ms(d)
        );
    }
    f
}

/// Registers `n` devices `fan-0000...` over HTTP, `REGISTER_CONCURRENCY` at a time.
async fn register_fleet(cloud: &Cloud, n: usize) -> Vec<Sim> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..REGISTER_CONCURRENCY {
        let next = next.clone();
        let (http, api, boot, ca_pem) = (
            cloud.http.clone(),
            cloud.api.clone(),
            cloud.bootstrap.clone(),
            cloud.ca_pem.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                if idx >= n {
                    return out;
                }
                let id = format!("fan-{idx:04}");
                let (r, key) = cloud::register(&http, &api, &boot, &id).await;
                let mqtt = r.mqtt.expect("the cloud has a broker");
                let cert = mqtt
                    .client_cert
                    .expect("the cloud issues MQTT certificates");
                let tls = octomil_common::tls::client_config_with_cert(
                    ca_pem.as_bytes(),
                    cert.as_bytes(),
                    &key.to_bytes(),
                )
                .unwrap();
                out.push(Sim {
                    idx,
                    id,
                    tls,
                    url: mqtt.url,
                });
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort_by_key(|s| s.idx);
    all
}

/// A simulated device: one MQTT session (TLS with the cloud's CA and the device's client
/// certificate, client id = device id, persistent session like the daemon's), subscribed at QoS 1 to
/// its own revocation topic. Reports SUBACK on `ready` (and frees its connect slot), then
/// every envelope it receives, verified, on `told`. Runs until aborted.
async fn device(
    sim: Sim,
    key: VerifyingKey,
    permit: OwnedSemaphorePermit,
    ready: oneshot::Sender<Result<(), String>>,
    told: mpsc::UnboundedSender<Told>,
) {
    let (_, host, port) = octomild::mqtt::parse_url(&sim.url).unwrap();
    let mut o = MqttOptions::new(sim.id.clone(), host, port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(false)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            sim.tls,
        )));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(30);
    eventloop.set_network_options(net);
    let topic = format!("octomil/v1/devices/{}/revocation", sim.id);
    let (mut ready, mut permit) = (Some(ready), Some(permit));
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(a))) => {
                permit.take();
                if let Some(r) = ready.take() {
                    let ok = !a.return_codes.contains(&SubscribeReasonCode::Failure);
                    let _ = r.send(
                        ok.then_some(())
                            .ok_or_else(|| "subscription refused".into()),
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p)))
                if p.topic == topic && !p.payload.is_empty() =>
            {
                let at = Instant::now();
                let verdict = envelope::open(&p.payload, &key)
                    .map_err(|e| format!("envelope rejected: {e}"))
                    .and_then(|rev| {
                        (rev.device_id == sim.id)
                            .then_some(())
                            .ok_or_else(|| "envelope for another device".to_owned())
                    });
                let _ = told.send((sim.idx, at, verdict));
            }
            Ok(_) => {}
            Err(e) => {
                let msg = format!("MQTT session failed: {e}");
                match ready.take() {
                    Some(r) => {
                        let _ = r.send(Err(msg));
                    }
                    None => {
                        let _ = told.send((sim.idx, Instant::now(), Err(msg)));
                    }
                }
                return;
            }
        }
    }
}
