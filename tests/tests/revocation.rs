//! Revocation push end to end: the real daemon, the real cloud with its embedded broker (and a
//! real Mosquitto for interop), signed envelopes on the device's topic.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use octomil_common::envelope::{self, Revocation};
use octomil_e2e::mosquitto;
use octomil_e2e::proxy::Proxy;
use octomil_e2e::push::{
    device, embedded, mosquitto_cloud, opts, revoke, until_refused, wait_mqtt,
};
use octomil_e2e::{DaemonProcess, TestCloud};
use octomil_testkit::poll::eventually_or;
use octomil_testkit::skip;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

fn install() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_revocation_stops_the_key_within_a_second_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let c = embedded(tmp.path(), None).await;
    let dir = tmp.path().join("d");
    let d = DaemonProcess::start(&dir, &opts(&c, "push-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    let t0 = Instant::now();
    let (code, body) = revoke(&c, "push-1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["revocation_published"], true);
    let took = until_refused(&d, t0, Duration::from_secs(1)).await;
    eprintln!("revoke-to-refusal: {took:?}");
    let s = d.wait_state("revoked", Duration::from_secs(5)).await;
    assert_eq!(s["revoked"]["reason"], "test revocation");
    d.kill9();
    let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
    d.wait_state("revoked", Duration::from_secs(5)).await;
    assert_eq!(d.get("/v1/token").await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stopped_while_revoked_ends_revoked_when_started() {
    let tmp = tempfile::tempdir().unwrap();
    let c = embedded(tmp.path(), None).await;
    let dir = tmp.path().join("d");
    let d = DaemonProcess::start(&dir, &opts(&c, "stopped-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    assert!(d.terminate().success());
    revoke(&c, "stopped-1").await;
    let d = DaemonProcess::start_with_config(&dir, &dir.join("octomild.toml"), &[]);
    d.wait_state("revoked", Duration::from_secs(10)).await;
    assert_eq!(d.get("/v1/token").await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_broker_link_was_cut_during_the_revoke_ends_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    install();
    let broker: SocketAddr = format!("127.0.0.1:{}", mosquitto::free_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(broker).await;
    let c = embedded(
        tmp.path(),
        Some((broker, format!("mqtts://127.0.0.1:{}", proxy.addr.port()))),
    )
    .await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts(&c, "cut-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    proxy.cut();
    let (code, _) = revoke(&c, "cut-1").await;
    assert_eq!(code, 200, "the cloud's own session is not behind the proxy");
    // The link comes back; the daemon reconnects, the broker turns its dead key away, and the
    // daemon asks the cloud, which says revoked.
    proxy.restore();
    d.wait_state("revoked", Duration::from_secs(15)).await;
    assert_eq!(d.get("/v1/token").await.0, 403);
}

/// Publishes raw payloads on a device's revocation topic as the cloud's own broker identity:
/// a certificate for its CN from the cloud's MQTT CA, under a client id of its own (the
/// embedded broker admits `octomil-cloud:{suffix}`, so the cloud's session is not kicked).
async fn publish_raw(c: &TestCloud, device: &str, payloads: Vec<Vec<u8>>) {
    let state = &c.handle.state_dir;
    let url = c.handle.info.mqtt_url.clone().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut o = MqttOptions::new("octomil-cloud:test-forger", "127.0.0.1", port);
    let cert = octomil_cloud::mqtt::ca::MqttCa::load_or_create(state)
        .unwrap()
        .issue_cloud("octomil-cloud")
        .unwrap();
    let tls = octomil_cloud::tls::client_config_with_cert(
        c.handle.ca_pem.as_bytes(),
        cert.chain,
        cert.key,
    )
    .unwrap();
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut ev) = AsyncClient::new(o, 64);
    let n = payloads.len();
    for p in payloads {
        client
            .publish(
                format!("octomil/v1/devices/{device}/revocation"),
                QoS::AtLeastOnce,
                true,
                p,
            )
            .await
            .unwrap();
    }
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks < n {
        assert!(
            Instant::now() < deadline,
            "broker did not ack the test publishes"
        );
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(10), ev.poll()).await
        {
            acks += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_cross_device_and_garbage_envelopes_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = embedded(tmp.path(), None).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts(&c, "target-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    let key = d.token().await;
    let raw = std::fs::read_to_string(c.handle.state_dir.join("revocation.key")).unwrap();
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .unwrap()
        .try_into()
        .unwrap();
    let cloud_key = ed25519_dalek::SigningKey::from_bytes(&seed);
    // The device's registration is the cloud's first: epoch 1. Epoch 0 is an older one.
    let current = 1_000;
    let rev = |id: &str, epoch: u64| Revocation {
        device_id: id.into(),
        epoch,
        seq: 1,
        reason: "forged".into(),
    };
    let forger = octomil_common::proof::generate_signing_key();
    let valid = envelope::seal(&rev("target-1", current), &cloud_key).unwrap();
    let mut wrong_version = valid.clone();
    wrong_version[0] = 9;
    let payloads = vec![
        envelope::seal(&rev("target-1", current), &forger).unwrap(), // wrong key
        envelope::seal(&rev("someone-else", current), &cloud_key).unwrap(), // cross-device
        envelope::seal(&rev("target-1", 0), &cloud_key).unwrap(), // an earlier registration (stale)
        valid[..valid.len() - 10].to_vec(), // cut into the signature: does not verify
        valid[..20].to_vec(),               // shorter than any envelope
        wrong_version,                      // unknown version
        (0..300).map(|i| (i * 7 + 3) as u8).collect(), // random bytes
        vec![1u8; 5000],                    // oversized
        b"{\"revoked\": true}".to_vec(),    // not even an envelope
    ];
    publish_raw(&c, "target-1", payloads).await;
    // Every one of them is counted as rejected; none changed anything.
    let metrics = eventually_or(Duration::from_secs(10), "9 rejections counted", || async {
        let text = d.metrics().await;
        let total: u64 = text
            .lines()
            .filter(|l| l.starts_with("octomild_mqtt_rejected_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if total >= 9 {
            return Ok(text);
        }
        Err(format!("only {total}:\n{text}"))
    })
    .await;
    for reason in [
        "bad_signature",
        "wrong_device",
        "stale",
        "truncated",
        "unknown_version",
        "oversized",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted:\n{metrics}"
        );
    }
    let (_, s) = d.get("/v1/status").await;
    assert_eq!(s["state"], "active");
    assert_eq!(d.token().await, key);
    // The session survived the garbage: a real revocation still gets through.
    let t0 = Instant::now();
    revoke(&c, "target-1").await;
    until_refused(&d, t0, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_shows_online_and_a_killed_daemon_offline_within_its_keepalive() {
    let tmp = tempfile::tempdir().unwrap();
    let c = embedded(tmp.path(), None).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts(&c, "presence-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    wait_mqtt(&d, String::new).await;
    let v = eventually_or(Duration::from_secs(10), "online", || async {
        let v = device(&c, "presence-1").await;
        if v["online"] == true {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(v["reported_state"], "active");
    assert_eq!(v["daemon_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["last_seen"].as_u64().is_some());
    // The CLI shows the same.
    let cli = std::process::Command::new(octomil_e2e::bin("octomil"))
        .env("OCTOMIL_API_URL", &c.handle.http_url)
        .env("OCTOMIL_CA_FILE", &c.handle.info.ca_file)
        .env("OCTOMIL_API_KEY", &c.owner)
        .args(["devices", "list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(list["devices"][0]["online"], true, "{list}");
    let killed = Instant::now();
    d.kill9();
    loop {
        let v = device(&c, "presence-1").await;
        if v["online"] == false {
            break;
        }
        // keep-alive 2 s: offline within 1.5 x 2 s.
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "still online {:?} after kill -9",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("offline after {:?}", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_revocation_flows_through_a_real_mosquitto() {
    if !mosquitto::available() {
        skip::missing_dependency(
            "the_same_revocation_flows_through_a_real_mosquitto",
            "mosquitto is not installed (apt-get install mosquitto)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, c) = mosquitto_cloud(tmp.path(), None).await;
    let d = DaemonProcess::start(&tmp.path().join("d"), &opts(&c, "mosq-1"));
    d.wait_state("active", Duration::from_secs(20)).await;
    // The daemon logs in with the certificate its registration answer carried.
    wait_mqtt(&d, String::new).await;
    let t0 = Instant::now();
    let (code, body) = revoke(&c, "mosq-1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["revocation_published"], true);
    let took = until_refused(&d, t0, Duration::from_secs(1)).await;
    eprintln!("revoke-to-refusal through Mosquitto: {took:?}");
    d.wait_state("revoked", Duration::from_secs(5)).await;
}
