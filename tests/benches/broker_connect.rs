//! Connect time of a device on the embedded broker while 100 idle TCP connections and 100
//! half TLS hellos (from 127.0.0.2 and up) are held open (issue 9, point 2): TCP connect, TLS
//! handshake with the device's client certificate, CONNECT, CONNACK, measured against the real
//! `octomil-cloud` process, first with no load and then under it.
//!
//! ```text
//! cargo build --profile ci-release -p octomil-cloud
//! cargo bench --profile ci-release -p octomil-e2e --bench broker_connect
//! ```
//!
//! Any release-like profile works if the cloud binary is built with the same one (it is looked
//! up next to this bench). `BENCH_CONNECTS` (50 per phase). Figures are printed, never
//! asserted; BENCHMARKS.md has them.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use octomil_e2e::CloudProcess;
use rumqttc::{Connect, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// One device connect, start to CONNACK.
async fn connect_once(addr: SocketAddr, tls: &TlsConnector, packet: &[u8]) -> Duration {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut s = tls
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    s.write_all(packet).await.unwrap();
    s.flush().await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    let took = start.elapsed();
    assert_eq!(ack[..2], [0x20, 0x02], "a CONNACK");
    assert_eq!(ack[3], 0, "connection accepted");
    // DISCONNECT, so the next connect finds no session to take over.
    let _ = s.write_all(&[0xe0, 0x00]).await;
    let _ = s.shutdown().await;
    took
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<44} n={:<3} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        v.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("BENCH_CONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProcess::start(&dir.path().join("cloud"));
    let ca_pem = std::fs::read(&cloud.info.ca_file).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
        .build()
        .unwrap();
    let id = "bench-connect-1";
    let api = format!("{}/api/v1", cloud.info.http_url);
    let challenge = octomil_e2e::fetch_challenge(&http, &api, id).await;
    let key = octomil_common::proof::generate_signing_key();
    let reg: serde_json::Value = http
        .post(format!("{api}/devices/register"))
        .json(&octomil_e2e::register_request_with_key(
            &cloud.bootstrap_token(),
            id,
            &challenge,
            &key,
        ))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut c = Connect::new(id);
    c.keep_alive = 60;
    let mut packet = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut packet, 64 * 1024).unwrap();
    let url = cloud.info.mqtt_url.clone().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cert = reg["mqtt"]["client_cert"].as_str().unwrap();
    let tls = TlsConnector::from(
        octomil_common::tls::client_config_with_cert(&ca_pem, cert.as_bytes(), &key.to_bytes())
            .unwrap(),
    );

    let mut quiet = Vec::with_capacity(n);
    for _ in 0..n {
        quiet.push(connect_once(addr, &tls, &packet).await);
    }
    summary("connect, nothing else open", quiet);

    // The stalled sockets are reopened for every batch of ten connects, so each connect runs
    // well inside the broker's 5 s handshake timeout, with all 200 held.
    let mut loaded = Vec::with_capacity(n);
    let mut opened = Duration::ZERO;
    while loaded.len() < n {
        let t = Instant::now();
        let mut held = Vec::with_capacity(200);
        for i in 0..100u8 {
            held.push(tcp_from(Ipv4Addr::new(127, 0, 0, 2 + i), addr).await);
        }
        for i in 0..100u8 {
            let mut s = tcp_from(Ipv4Addr::new(127, 0, 1, 2 + i), addr).await;
            let mut hello = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            hello.resize(60, 0x42);
            s.write_all(&hello).await.unwrap();
            held.push(s);
        }
        opened = opened.max(t.elapsed());
        for _ in 0..10.min(n - loaded.len()) {
            loaded.push(connect_once(addr, &tls, &packet).await);
        }
        drop(held);
    }
    summary("connect, 100 idle + 100 half hellos held", loaded);
    println!(
        "(opening the 200 stalled sockets took at most {:.1} ms per batch)",
        opened.as_secs_f64() * 1e3
    );
    drop(cloud);
}
