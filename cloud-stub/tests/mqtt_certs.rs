//! MQTT client certificates in the register and refresh answers: issued by the cloud's MQTT CA
//! for the device's own Ed25519 key, CN = device id, as long-lived as the device key (org
//! setting), renewed at every refresh, none for a revoked device; the CA survives a restart.

#![cfg(feature = "embedded-broker")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use octomil_cloud::MqttMode;
use octomil_common::wire::MqttInfo;
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;

use support::mqtt::start_with;
use support::{Device, Env};

fn embedded() -> MqttMode {
    MqttMode::Embedded {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

async fn cloud(dir: tempfile::TempDir) -> Env {
    start_with(dir, |b| b.mqtt(embedded())).await
}

fn mqtt_ca_pem(env: &Env) -> Vec<u8> {
    std::fs::read(env.handle.state_dir.join("mqtt_ca.pem")).unwrap()
}

/// Checks `info`'s certificate against `ca_pem` and `device`; returns its validity in seconds.
fn check_cert(info: &MqttInfo, ca_pem: &[u8], device: &Device) -> u64 {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(info.client_cert.as_ref().unwrap().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain.len(), 2, "the device certificate, then the CA's");
    let ca = CertificateDer::from_pem_slice(ca_pem).unwrap();
    assert_eq!(chain[1], ca);

    // Chains to the MQTT CA as a TLS client certificate, right now.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&chain[0], &[], UnixTime::now())
        .unwrap();

    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let cn = leaf.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), device.id);
    // The device's own identity key, not one the cloud made.
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        device.key.verifying_key().as_bytes()
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        format!("{:?}", san.value).contains(&format!("urn:octomil:device:{}", device.id)),
        "{san:?}"
    );
    let validity = leaf.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    // Valid from five minutes back (broker clock skew) for the device key's lifetime.
    let lifetime = u64::try_from(lifetime).unwrap() - 300;
    assert_eq!(info.client_cert_expires_in, Some(lifetime));
    lifetime
}

#[tokio::test]
async fn register_and_refresh_answers_carry_a_certificate_for_the_device_key() {
    let env = cloud(tempfile::tempdir().unwrap()).await;
    let d = Device::new("edge-cert-1");
    let reg = d.register(&env).await;
    let ca = mqtt_ca_pem(&env);
    let info = reg.mqtt.as_ref().unwrap();
    assert_eq!(check_cert(info, &ca, &d), reg.expires_in.unwrap());
    assert_eq!(reg.expires_in, Some(24 * 60 * 60));

    // A short lifetime set through the org settings applies to the next certificate.
    let a = env
        .owner(
            Method::PATCH,
            "/org/settings",
            Some(json!({"device_token_expiry": "30s"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let refreshed = d.refresh(&env, reg.refresh_token.expose()).await;
    let info2 = refreshed.mqtt.as_ref().unwrap();
    assert_eq!(check_cert(info2, &ca, &d), 30);
    assert_ne!(info2.client_cert, info.client_cert, "renewed, not repeated");
    assert_eq!(info2.topic, info.topic);
    assert_eq!(info2.url, info.url);

    // A revoked device gets no certificate: its refresh is refused outright.
    assert_eq!(env.revoke(&d.id).await.status, StatusCode::OK);
    let a = d.try_refresh(&env, refreshed.refresh_token.expose()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    assert!(a.body.get("mqtt").is_none());
}

#[tokio::test]
async fn the_mqtt_ca_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let env = cloud(dir).await;
    let first_ca = mqtt_ca_pem(&env);
    let Env { handle, dir, .. } = env;
    handle.shutdown().await;
    let env = cloud(dir).await;
    assert_eq!(mqtt_ca_pem(&env), first_ca);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("mqtt_ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let d = Device::new("edge-cert-2");
    let reg = d.register(&env).await;
    check_cert(reg.mqtt.as_ref().unwrap(), &first_ca, &d);
}
