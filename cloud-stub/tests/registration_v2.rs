//! Device protocol 2 at the cloud (docs/device-protocol.md): challenge registration, the
//! registration epoch, and version-2 envelopes with a cloud-wide sequence. No test here
//! depends on the device's clock; the cloud's clock is a manual one.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use octomil_cloud::revocation_push::{BoxFuture, PublishError, RevocationPublisher};
use octomil_common::envelope::{self, Revocation};
use octomil_common::wire::codes;
use octomil_common::{DeviceId, proof};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Device, Env};

/// Keeps every envelope the cloud publishes.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(String, Vec<u8>)>>);

impl RevocationPublisher for Recorder {
    fn publish<'a>(
        &'a self,
        device: &'a DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Duration, PublishError>> {
        self.0
            .lock()
            .unwrap()
            .push((device.as_str().to_owned(), payload));
        Box::pin(async { Ok(Duration::ZERO) })
    }
}

async fn start_recording() -> (Env, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let r = rec.clone();
    let dir = tempfile::tempdir().unwrap();
    let env = support::mqtt::start_with(dir, move |b| b.publisher(r, None)).await;
    (env, rec)
}

impl Recorder {
    /// The last non-empty envelope published for `id`, opened with the cloud's key.
    fn last_for(&self, env: &Env, id: &str) -> Revocation {
        let key = proof::decode_public_key(&env.handle.info.revocation_public_key).unwrap();
        let all = self.0.lock().unwrap();
        let (_, bytes) = all
            .iter()
            .rev()
            .find(|(d, p)| d == id && !p.is_empty())
            .expect("an envelope for the device");
        envelope::open(bytes, &key).unwrap()
    }
}

async fn register(env: &Env, d: &Device, body: serde_json::Value) -> support::Answer {
    let _ = d;
    env.call(Method::POST, "/devices/register", None, Some(body))
        .await
}

#[tokio::test]
async fn a_captured_registration_replayed_later_is_refused() {
    let env = support::start().await;
    let d = Device::new("replay-1");
    let body = d.register_body(&env, &env.bootstrap_token()).await;
    let a = register(&env, &d, body.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // Same bytes again, at once and later: the challenge is spent, then expired.
    let a = register(&env, &d, body.clone()).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, codes::CHALLENGE_USED)
    );
    env.clock.advance(Duration::from_secs(121));
    let a = register(&env, &d, body).await;
    assert_eq!(a.code(), codes::CHALLENGE_EXPIRED);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_challenge_is_bound_to_its_device_and_the_proof_to_the_bootstrap_token() {
    let env = support::start().await;
    let d = Device::new("bound-1");
    let other = Device::new("bound-2");
    // A challenge minted for another device id does not verify.
    let theirs = other.challenge(&env).await;
    let a = register(
        &env,
        &d,
        d.register_body_with(&env.bootstrap_token(), &theirs),
    )
    .await;
    assert_eq!(a.code(), codes::INVALID_CHALLENGE);
    // A proof made over another bootstrap token's hash does not verify with this token.
    let c = d.challenge(&env).await;
    let mut body = d.register_body_with("edg_bootstrap_0000000000000000000000000000000A", &c);
    body["bootstrap_token"] = json!(env.bootstrap_token());
    let a = register(&env, &d, body).await;
    assert_eq!(a.code(), codes::INVALID_PROOF);
    // A forged challenge (not minted with the cloud's key) is refused too.
    let a = register(
        &env,
        &d,
        d.register_body_with(&env.bootstrap_token(), "AQAAAAAAAAAAAAAA"),
    )
    .await;
    assert_eq!(a.code(), codes::INVALID_CHALLENGE);
    // None of these consumed the real challenge: it still works.
    let a = register(&env, &d, d.register_body_with(&env.bootstrap_token(), &c)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_protocol_1_registration_gets_a_clear_error_naming_the_protocol() {
    let env = support::start().await;
    let d = Device::new("old-1");
    let key = proof::encode_public_key(&d.key.verifying_key());
    let a = register(
        &env,
        &d,
        json!({
            "bootstrap_token": env.bootstrap_token(),
            "device_id": d.id,
            "device_public_key": key,
            "proof": {"timestamp": env.clock_secs(), "signature": "AAAA"},
        }),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, codes::CHALLENGE_REQUIRED)
    );
    let msg = a.body["message"].as_str().unwrap();
    assert!(msg.contains("protocol 2"), "{msg}");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn challenges_have_their_own_budget_and_do_not_spend_the_registration_limit() {
    let env = support::start().await;
    let d = Device::new("budget-1");
    // 30 challenges: far past the 10 registrations/min per address.
    for _ in 0..30 {
        d.challenge(&env).await;
    }
    let a = d.try_register(&env).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // The challenge budget itself is finite (60/min per address).
    let mut refused = None;
    for _ in 0..40 {
        let a = env
            .call(
                Method::POST,
                "/devices/register/challenge",
                None,
                Some(json!({"device_id": d.id})),
            )
            .await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(a);
            break;
        }
    }
    let a = refused.expect("the challenge endpoint is rate limited");
    assert!(a.headers.contains_key("retry-after"));
    env.handle.shutdown().await;
}

#[tokio::test]
async fn epochs_and_sequences_are_cloud_wide_and_never_repeat_after_delete() {
    let (env, rec) = start_recording().await;
    let d = Device::new("epoch-1");
    let first = d.register(&env).await.registration_epoch;
    let again = d.register(&env).await.registration_epoch;
    assert!(again > first, "re-registration gets a new epoch");
    let other = Device::new("epoch-2");
    let theirs = other.register(&env).await.registration_epoch;
    assert!(theirs > again);

    let revoke = |id: &str| {
        let path = format!("/devices/{id}/revoke");
        let env = &env;
        async move { env.owner(Method::POST, &path, None).await }
    };
    assert_eq!(revoke(&d.id).await.status, StatusCode::OK);
    let r1 = rec.last_for(&env, &d.id);
    assert_eq!(
        r1.epoch, again,
        "the envelope names the revoked registration"
    );
    assert_eq!(revoke(&other.id).await.status, StatusCode::OK);
    let r2 = rec.last_for(&env, &other.id);
    assert!(r2.seq > r1.seq, "one sequence for the whole cloud");

    // Delete and provision the same id again: a new epoch, and its revocation a new seq,
    // so no envelope of the old registration can pass for one of the new.
    let a = env
        .owner(Method::DELETE, &format!("/devices/{}", d.id), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let reborn = Device::new(&d.id);
    let epoch = reborn.register(&env).await.registration_epoch;
    assert!(epoch > theirs);
    assert_eq!(revoke(&d.id).await.status, StatusCode::OK);
    let r3 = rec.last_for(&env, &d.id);
    assert_eq!(r3.epoch, epoch);
    assert!(r3.seq > r2.seq);

    // The counters survive a restart.
    let dir = env.dir;
    env.handle.shutdown().await;
    let env = support::start_in(dir).await;
    let late = Device::new("epoch-3");
    assert!(late.register(&env).await.registration_epoch > epoch);
    env.handle.shutdown().await;
}
