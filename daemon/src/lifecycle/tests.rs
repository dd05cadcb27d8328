//! Table tests of the lifecycle core: fake time that jumps to the next deadline, fixed random
//! draws, no sockets and no sleeps. Each test names the transition it covers.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::answer::CheckedMqtt;
use crate::store::Identity;
use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use tokio::sync::oneshot;

const BUILD: u64 = 1_800_000_000;
const LIFETIME: u64 = 24 * 3600;
const UNIT: f64 = 0.5;

struct H {
    core: Core,
    t0: Instant,
    t: Duration,
    wall: u64,
}

fn identity() -> Identity {
    Identity {
        device_id: "dev-1".into(),
        signing_key_seed: Secret::new([4; 32]),
    }
}

fn registration(epoch: u64) -> Registration {
    Registration {
        api_key: Secret::new(format!("edg_live_key{epoch}")),
        refresh_token: Secret::new(format!("edg_refresh_{epoch}")),
        lifetime_secs: LIFETIME,
        revocation_public_key: [9; 32],
        mqtt: None,
        rate_limits: RateLimits::default(),
        epoch,
    }
}

fn refreshed(n: u32) -> Refreshed {
    Refreshed {
        api_key: Secret::new(format!("edg_live_refreshed{n}")),
        refresh_token: Secret::new(format!("edg_refresh_r{n}")),
        lifetime_secs: LIFETIME,
        rate_limits: RateLimits::default(),
        mqtt: None,
    }
}

/// Broker details with certificate `n` (the core keeps the text; answer.rs parses it).
fn broker(n: u32, cert_lifetime: Option<u64>) -> Box<CheckedMqtt> {
    Box::new(CheckedMqtt {
        url: "mqtts://broker.test:8883".into(),
        topic: "octomil/v1/devices/dev-1/revocation".into(),
        username: "dev-1".into(),
        client_cert: cert_lifetime.map(|lifetime_secs| crate::answer::CheckedCert {
            chain_pem: format!("cert{n}"),
            lifetime_secs,
        }),
    })
}

/// A stable label per effect, so tables can list what they expect.
fn label(e: &Effect) -> String {
    match e {
        Effect::CallRegister => "call_register".into(),
        Effect::CallRefresh(_) => "call_refresh".into(),
        Effect::Persist(p) => format!(
            "persist({})",
            if p.credentials.is_some() {
                "creds"
            } else {
                "no_creds"
            }
        ),
        Effect::WithholdKey { .. } => "withhold".into(),
        Effect::Wipe(_) => "wipe".into(),
        Effect::SetLimits(_) => "set_limits".into(),
        Effect::PauseControlPlane(d) => format!("pause({}s)", d.as_secs()),
        Effect::Reply(_, r) => format!("reply({})", if r.is_ok() { "ok" } else { "err" }),
        Effect::Count(c) => format!("count({c:?})"),
        Effect::Publish => "publish".into(),
        Effect::Stop => "stop".into(),
    }
}

impl H {
    fn new(persisted: Persisted, wall: u64) -> Self {
        Self {
            core: Core::new("dev-1".into(), persisted, BUILD),
            t0: Instant::now(),
            t: Duration::ZERO,
            wall,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.t,
            wall_secs: self.wall,
        }
    }

    /// Feeds one input and returns the labels of the effects it caused (replies are sent).
    fn feed(&mut self, input: Input) -> Vec<String> {
        self.core.handle(self.now(), UNIT, input);
        let mut out = Vec::new();
        while let Some(e) = self.core.poll() {
            out.push(label(&e));
            if let Effect::Reply(tx, r) = e {
                let _ = tx.send(r);
            }
        }
        out
    }

    /// Jumps both clocks to the deadline and feeds the timeout.
    fn jump_to_deadline(&mut self) -> Vec<String> {
        let d = self.core.deadline().expect("a deadline");
        let step = d - self.now().mono;
        self.t += step;
        self.wall += step.as_secs();
        self.feed(Input::Timeout)
    }

    fn in_(&self) -> Option<Duration> {
        self.core.deadline().map(|d| d - self.now().mono)
    }

    fn view(&self) -> View {
        self.core.view(self.now())
    }

    fn registered(&mut self, r: Result<Registration, Failure>) -> Vec<String> {
        self.feed(Input::Registered {
            identity: Some(identity()),
            result: r,
        })
    }

    /// Start, register and save: an active device.
    fn active(wall: u64) -> Self {
        let mut h = H::new(Persisted::default(), wall);
        h.feed(Input::Start);
        h.registered(Ok(registration(5)));
        h.feed(Input::Saved(Ok(())));
        assert_eq!(h.view().phase, Phase::Active);
        h
    }
}

fn has(effects: &[String], what: &str) -> bool {
    effects.iter().any(|e| e == what)
}

#[test]
fn start_registers_persists_before_use_then_serves_and_schedules_the_refresh() {
    let mut h = H::new(Persisted::default(), BUILD + 10);
    assert_eq!(h.feed(Input::Start), ["call_register", "publish"]);
    assert_eq!(h.view().phase, Phase::Registering);
    // The answer is saved first: no key is published before `Saved(Ok)`.
    assert_eq!(h.registered(Ok(registration(5))), ["persist(creds)"]);
    assert!(h.view().key.is_none());
    assert_eq!(
        h.feed(Input::Saved(Ok(()))),
        ["set_limits", "count(RegisterSuccess)", "publish"]
    );
    let v = h.view();
    assert_eq!(v.phase, Phase::Active);
    let key = v.key.unwrap();
    assert_eq!(key.secret.expose(), "edg_live_key5");
    assert_eq!(
        key.valid_until,
        h.now().mono + Duration::from_secs(LIFETIME)
    );
    assert_eq!(
        h.core
            .persisted()
            .credentials
            .as_ref()
            .unwrap()
            .registration_epoch,
        5
    );
    assert_eq!(
        h.in_(),
        Some(schedule::refresh_in(Duration::from_secs(LIFETIME), UNIT))
    );
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
}

/// Clock skew both ways: nothing the machine decides depends on the wall clock once it is
/// past the build, so every offset gives the same schedule on the monotonic clock.
#[test]
fn clock_skew_either_way_changes_no_decision() {
    let real = BUILD + 30 * 86_400;
    let mut schedules = Vec::new();
    for offset in [-3600i64, -600, 0, 240, 3600, 30 * 86_400] {
        let mut h = H::active(real.saturating_add_signed(offset));
        let refresh_in = h.in_().unwrap();
        let valid_for = h.view().key.unwrap().valid_until - h.now().mono;
        assert_eq!(h.jump_to_deadline(), ["call_refresh"], "offset {offset}");
        h.feed(Input::Refreshed(Ok(refreshed(1))));
        h.feed(Input::Saved(Ok(())));
        schedules.push((refresh_in, valid_for, h.in_().unwrap()));
    }
    assert!(schedules.windows(2).all(|w| w[0] == w[1]), "{schedules:?}");
}

#[test]
fn a_lost_register_answer_is_retried_with_backoff_and_the_same_device_key() {
    let mut h = H::new(Persisted::default(), BUILD);
    h.feed(Input::Start);
    let e = h.registered(Err(Failure::Transient("connection reset".into())));
    assert_eq!(e, ["count(RegisterFailure)", "publish"]);
    // The key the driver made for that attempt is kept for the next.
    assert_eq!(
        h.core.persisted().identity.as_ref().unwrap().device_id,
        "dev-1"
    );
    assert!(h.in_().unwrap() <= CLOUD_RETRY.ceiling(0));
    assert!(
        h.view().detail.contains("connection reset"),
        "{}",
        h.view().detail
    );
    assert_eq!(h.jump_to_deadline(), ["call_register", "publish"]);
    // A second failure backs off further (ceiling doubles).
    h.feed(Input::Registered {
        identity: None,
        result: Err(Failure::Transient("timeout".into())),
    });
    assert!(h.in_().unwrap() <= CLOUD_RETRY.ceiling(1));
    assert!(h.core.persisted().identity.is_some());
}

#[test]
fn a_429_with_retry_after_pauses_the_budget_and_waits_at_least_that_long() {
    // (register or refresh, Retry-After s)
    for (refresh, secs) in [(false, 30u64), (true, 30), (true, 3000)] {
        let mut h = if refresh {
            let mut h = H::active(BUILD);
            h.jump_to_deadline();
            h
        } else {
            let mut h = H::new(Persisted::default(), BUILD);
            h.feed(Input::Start);
            h
        };
        let d = Duration::from_secs(secs);
        let e = if refresh {
            h.feed(Input::Refreshed(Err(Failure::RateLimited(d))))
        } else {
            h.registered(Err(Failure::RateLimited(d)))
        };
        assert!(has(&e, &format!("pause({secs}s)")), "{e:?}");
        assert!(h.in_().unwrap() >= d, "{refresh} {secs}");
        if refresh {
            assert!(h.view().key.is_some(), "the key is still served");
            assert_eq!(h.view().phase, Phase::Offline);
        }
    }
}

#[test]
fn the_local_budget_delays_a_call_without_counting_as_the_cloud_refusing() {
    let mut h = H::new(Persisted::default(), BUILD);
    h.feed(Input::Start);
    let e = h.registered(Err(Failure::Budget(Duration::from_secs(2))));
    assert!(!e.iter().any(|x| x.starts_with("pause")));
    assert!(h.in_().unwrap() >= Duration::from_secs(2));
}

#[test]
fn permanent_refusals_are_retried_slowly_and_at_once_on_sighup() {
    let mut h = H::new(Persisted::default(), BUILD);
    h.feed(Input::Start);
    h.registered(Err(Failure::Permanent(
        "the cloud refused: bootstrap token is unknown (invalid_bootstrap_token)".into(),
    )));
    let v = h.view();
    assert_eq!(v.phase, Phase::Unregistered);
    assert!(v.detail.contains("invalid_bootstrap_token"), "{}", v.detail);
    assert!(v.detail.contains("retrying in 3600s"), "{}", v.detail);
    assert_eq!(h.in_(), Some(answer::slow_retry(UNIT)));
    // SIGHUP: at once.
    assert_eq!(
        h.feed(Input::Command(Command::Reload)),
        ["call_register", "publish"]
    );
    h.registered(Err(Failure::Permanent("still refused".into())));
    // Or by itself, an hour later.
    assert_eq!(h.jump_to_deadline(), ["call_register", "publish"]);
}

#[test]
fn cloud_down_during_refresh_keeps_serving_and_retries_before_expiry() {
    let mut h = H::active(BUILD);
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
    for _ in 0..20 {
        let e = h.feed(Input::Refreshed(Err(Failure::Transient("503".into()))));
        assert_eq!(e, ["count(RefreshFailure)", "publish"]);
        let v = h.view();
        assert_eq!(v.phase, Phase::Offline);
        let left = v.key.unwrap().valid_until - h.now().mono;
        // Never wait past a third of the validity left (or a second).
        assert!(h.in_().unwrap() <= (left / 3).max(Duration::from_secs(1)));
        assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
    }
    h.feed(Input::Refreshed(Ok(refreshed(1))));
    h.feed(Input::Saved(Ok(())));
    assert_eq!(h.view().phase, Phase::Active);
}

#[test]
fn a_failed_save_of_a_refreshed_key_keeps_the_old_key_and_retries() {
    let mut h = H::active(BUILD);
    h.jump_to_deadline();
    assert_eq!(
        h.feed(Input::Refreshed(Ok(refreshed(1)))),
        ["persist(creds)"]
    );
    let e = h.feed(Input::Saved(Err("disk full".into())));
    assert!(has(&e, "count(RefreshFailure)"));
    assert_eq!(h.view().key.unwrap().secret.expose(), "edg_live_key5");
    assert!(h.view().detail.contains("disk full"));
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
}

#[test]
fn refresh_token_reuse_drops_the_credentials_and_registers_again() {
    let mut h = H::active(BUILD);
    h.jump_to_deadline();
    let e = h.feed(Input::Refreshed(Err(Failure::CredentialsRejected(
        "refresh_token_reused".into(),
    ))));
    assert_eq!(
        e,
        [
            "count(RefreshFailure)",
            "persist(no_creds)",
            "call_register",
            "publish"
        ]
    );
    assert!(h.view().key.is_none());
    // The fire-and-forget save's answer changes nothing.
    assert_eq!(h.feed(Input::Saved(Ok(()))), Vec::<String>::new());
    h.feed(Input::Registered {
        identity: None,
        result: Ok(registration(6)),
    });
    h.feed(Input::Saved(Ok(())));
    assert_eq!(
        h.core
            .persisted()
            .credentials
            .as_ref()
            .unwrap()
            .registration_epoch,
        6
    );
}

#[test]
fn revoke_during_refresh_wins_and_the_late_answer_is_dropped() {
    let mut h = H::active(BUILD);
    h.jump_to_deadline();
    let e = h.feed(Input::Command(Command::Revoke {
        reason: "stolen".into(),
        seq: Some(9),
    }));
    assert_eq!(e, ["withhold", "wipe", "publish"]);
    assert_eq!(h.view().phase, Phase::Revoked);
    assert!(h.view().key.is_none());
    assert_eq!(
        h.feed(Input::Refreshed(Ok(refreshed(1)))),
        Vec::<String>::new()
    );
    assert_eq!(h.feed(Input::Saved(Ok(()))), Vec::<String>::new());
    assert!(h.view().key.is_none());
    assert_eq!(h.core.persisted().last_revocation_seq, Some(9));
    assert_eq!(
        h.core.deadline(),
        None,
        "a revoked device waits for nothing"
    );
}

#[test]
fn revoke_during_registration_wins_and_the_late_answer_is_never_saved() {
    let mut h = H::new(Persisted::default(), BUILD);
    h.feed(Input::Start);
    h.feed(Input::Command(Command::Revoke {
        reason: "decommissioned".into(),
        seq: None,
    }));
    assert_eq!(h.registered(Ok(registration(5))), Vec::<String>::new());
    assert!(h.core.persisted().credentials.is_none());
    assert_eq!(h.view().phase, Phase::Revoked);
}

#[test]
fn the_cloud_saying_revoked_at_refresh_or_registration_revokes() {
    let mut h = H::active(BUILD);
    h.jump_to_deadline();
    let e = h.feed(Input::Refreshed(Err(Failure::Revoked)));
    assert!(has(&e, "wipe"));
    let mut h = H::new(Persisted::default(), BUILD);
    h.feed(Input::Start);
    let e = h.registered(Err(Failure::Revoked));
    assert!(has(&e, "wipe"));
    assert_eq!(h.view().phase, Phase::Revoked);
    // A revoked device answers forced refreshes at once.
    let (tx, mut rx) = oneshot::channel();
    assert_eq!(h.feed(Input::Command(Command::Refresh(tx))), ["reply(err)"]);
    assert_eq!(rx.try_recv().unwrap(), Err("device revoked".into()));
}

#[test]
fn a_forced_refresh_is_answered_with_the_new_expiry_after_the_save() {
    let mut h = H::active(BUILD);
    let (tx, mut rx) = oneshot::channel();
    assert_eq!(
        h.feed(Input::Command(Command::Refresh(tx))),
        ["call_refresh"]
    );
    h.feed(Input::Refreshed(Ok(refreshed(1))));
    assert!(rx.try_recv().is_err(), "no answer before the save");
    h.feed(Input::Saved(Ok(())));
    assert_eq!(rx.try_recv().unwrap(), Ok(BUILD + LIFETIME));
}

#[test]
fn a_clock_before_the_build_waits_for_the_clock_and_resumes_within_a_second() {
    let mut h = H::new(Persisted::default(), BUILD - 400 * 86_400);
    assert_eq!(h.feed(Input::Start), ["publish"]);
    let v = h.view();
    assert_eq!(v.phase, Phase::WaitingForClock);
    assert!(
        v.detail.contains("waiting for it to be set"),
        "{}",
        v.detail
    );
    assert_eq!(h.in_(), Some(CLOCK_POLL));
    // Still wrong a second later: still waiting, no cloud call.
    assert!(!has(&h.jump_to_deadline(), "call_register"));
    assert_eq!(h.in_(), Some(CLOCK_POLL));
    // The clock is set: the next look registers.
    h.wall = BUILD + 5;
    assert_eq!(h.jump_to_deadline(), ["call_register", "publish"]);
}

#[test]
fn a_stored_key_with_the_clock_unset_is_served_without_an_expiry_then_refreshed() {
    let stored = H::active(BUILD).core.persisted().clone();
    // Reboot into 1970.
    let mut h = H::new(stored, 0);
    let e = h.feed(Input::Start);
    assert_eq!(e, ["set_limits", "publish"]);
    let v = h.view();
    assert_eq!(v.phase, Phase::WaitingForClock);
    let key = v.key.expect("the stored key is still served");
    assert_eq!(key.expires_at, None, "no expiry we could vouch for");
    // NTP answers: the schedule comes from the stored key, on the (now right) wall clock.
    h.wall = BUILD + 2 * 3600;
    h.jump_to_deadline();
    let v = h.view();
    assert_eq!(v.phase, Phase::Active);
    assert_eq!(v.key.unwrap().expires_at, Some(BUILD + LIFETIME));
}

#[test]
fn shutdown_stops_at_once_even_with_a_call_in_flight() {
    let mut h = H::active(BUILD);
    let (tx, mut rx) = oneshot::channel();
    h.feed(Input::Command(Command::Refresh(tx)));
    assert_eq!(h.feed(Input::Shutdown), ["reply(err)", "stop"]);
    assert_eq!(rx.try_recv().unwrap(), Err("shutting down".into()));
    assert_eq!(
        h.feed(Input::Refreshed(Ok(refreshed(1)))),
        Vec::<String>::new()
    );
    assert_eq!(h.core.deadline(), None);
}

#[test]
fn a_broker_refusal_checks_with_the_cloud_now() {
    let mut h = H::active(BUILD);
    assert_eq!(h.feed(Input::Command(Command::Check)), ["call_refresh"]);
    // Not twice while the call is in flight.
    assert_eq!(h.feed(Input::Command(Command::Check)), Vec::<String>::new());
}

#[test]
fn a_restart_with_stored_credentials_serves_and_refreshes_on_the_remaining_time() {
    let stored = H::active(BUILD).core.persisted().clone();
    // Restart 20 h into a 24 h key: refresh point (75 % = 18 h) has passed.
    let mut h = H::new(stored, BUILD + 20 * 3600);
    h.feed(Input::Start);
    assert_eq!(h.view().phase, Phase::Active);
    // Soon, spread over the overdue window (a fleet booting together does not refresh at once).
    assert_eq!(h.in_(), Some(schedule::OVERDUE_SPREAD.mul_f64(UNIT)));
    assert_eq!(
        h.view().key.unwrap().valid_until - h.now().mono,
        Duration::from_secs(4 * 3600)
    );
}

#[test]
fn tls_saying_the_certificate_is_not_yet_valid_waits_for_the_clock_and_resumes_when_it_is_set() {
    // A clock past the build but days behind the cloud: only TLS can tell.
    let mut h = H::new(Persisted::default(), BUILD + 100);
    h.feed(Input::Start);
    h.registered(Err(Failure::ClockBehind(
        "the cloud's TLS certificate is not valid yet".into(),
    )));
    let v = h.view();
    assert_eq!(v.phase, Phase::WaitingForClock);
    assert!(v.detail.contains("not valid yet"), "{}", v.detail);
    assert_eq!(h.in_(), Some(CLOCK_POLL));
    // The clock is looked at every second; unchanged, nothing is called until the backoff
    // (1 s first) ends.
    assert_eq!(h.jump_to_deadline(), ["call_register", "publish"]);
    h.registered(Err(Failure::ClockBehind("still".into())));
    assert_eq!(h.jump_to_deadline(), Vec::<String>::new());
    assert_eq!(h.in_(), Some(CLOCK_POLL));
    // NTP sets the clock 3 days forward: the next look calls at once.
    h.wall += 3 * 86_400;
    assert_eq!(h.jump_to_deadline(), ["call_register", "publish"]);
    h.registered(Ok(registration(7)));
    h.feed(Input::Saved(Ok(())));
    assert_eq!(h.view().phase, Phase::Active);
}

#[test]
fn tls_clock_trouble_at_refresh_keeps_serving_the_key() {
    let mut h = H::active(BUILD);
    h.jump_to_deadline();
    h.feed(Input::Refreshed(Err(Failure::ClockBehind("behind".into()))));
    let v = h.view();
    assert_eq!(v.phase, Phase::WaitingForClock);
    assert!(v.key.is_some());
    h.wall += 86_400 * 2;
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
}

#[test]
fn status_times_read_as_utc() {
    assert_eq!(fmt_secs(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(fmt_secs(1_772_366_400), "2026-03-01 12:00:00 UTC");
    assert_eq!(fmt_secs(951_825_599), "2000-02-29 11:59:59 UTC");
}

// ---- MQTT client certificates (issue 9 point 4) ----

fn held_cert(h: &H) -> Option<(String, u64, u64)> {
    let c = h.core.persisted().credentials.as_ref()?;
    let cert = c.mqtt.as_ref()?.client_cert.as_ref()?;
    Some((cert.chain_pem.clone(), cert.issued_at, cert.expires_at))
}

/// A device registered with certificate 1 of `cert_lifetime` (key lifetime `LIFETIME`).
fn with_cert(cert_lifetime: u64) -> H {
    let mut h = H::new(Persisted::default(), BUILD);
    h.feed(Input::Start);
    let mut reg = registration(5);
    reg.mqtt = Some(broker(1, Some(cert_lifetime)));
    assert_eq!(h.registered(Ok(reg)), ["persist(creds)"]);
    assert!(
        h.view().client_cert.is_none(),
        "no certificate is used before it is saved"
    );
    h.feed(Input::Saved(Ok(())));
    h
}

/// The registration's certificate is persisted with the key and used once saved; the next
/// refresh comes before whichever of the two expires first.
#[test]
fn the_register_answers_certificate_is_saved_with_the_key_and_schedules_the_refresh() {
    // (key lifetime s, certificate lifetime s, first refresh in s)
    let cases: &[(u64, u64, u64)] = &[
        (LIFETIME, LIFETIME, 64_800),     // the same: 75 % of a day
        (LIFETIME, 2 * LIFETIME, 64_800), // a longer certificate changes nothing
        (LIFETIME, 3600, 2_700),          // a short certificate pulls the refresh forward
        (LIFETIME, 10, 8),                // clamped like a key: always before its expiry
        (3600, 600, 450),
    ];
    for &(key, cert, want) in cases {
        let mut h = H::new(Persisted::default(), BUILD);
        h.feed(Input::Start);
        let mut reg = registration(5);
        reg.lifetime_secs = key;
        reg.mqtt = Some(broker(1, Some(cert)));
        h.registered(Ok(reg));
        h.feed(Input::Saved(Ok(())));
        assert_eq!(
            held_cert(&h),
            Some(("cert1".into(), BUILD, BUILD + cert)),
            "{key} {cert}"
        );
        let v = h.view().client_cert.unwrap();
        assert_eq!(v.valid_until - h.now().mono, Duration::from_secs(cert));
        assert_eq!(
            h.in_().unwrap().as_secs_f64().round() as u64,
            want,
            "{key} {cert}"
        );
        assert!(
            h.view()
                .detail
                .contains(&format!("MQTT certificate valid for {cert}s"))
        );
    }
}

/// Every refresh answer's broker details replace the held ones; an answer without them (an
/// older cloud) keeps the certificate and its window, and does not pull refreshes forward.
#[test]
fn refresh_answers_replace_the_certificate_or_keep_it_when_they_carry_none() {
    let mut h = with_cert(3600);
    let first_until = h.view().client_cert.unwrap().valid_until;
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
    let mut r = refreshed(1);
    r.mqtt = Some(broker(2, Some(3600)));
    assert_eq!(h.feed(Input::Refreshed(Ok(r))), ["persist(creds)"]);
    assert_eq!(held_cert(&h).unwrap().0, "cert1", "not before the save");
    h.feed(Input::Saved(Ok(())));
    let (pem, issued, expires) = held_cert(&h).unwrap();
    assert_eq!(pem, "cert2");
    assert_eq!(expires - issued, 3600);
    let v = h.view().client_cert.unwrap();
    assert!(v.valid_until > first_until);
    assert_eq!(v.valid_until - h.now().mono, Duration::from_secs(3600));
    assert_eq!(h.in_(), Some(Duration::from_secs(2700)));

    // An older cloud: no broker details in the answer.
    let until = v.valid_until;
    h.jump_to_deadline();
    h.feed(Input::Refreshed(Ok(refreshed(2))));
    h.feed(Input::Saved(Ok(())));
    assert_eq!(held_cert(&h).unwrap().0, "cert2", "kept");
    assert_eq!(
        h.view().client_cert.unwrap().valid_until,
        until,
        "its window too"
    );
    assert_eq!(
        h.in_(),
        Some(schedule::refresh_in(Duration::from_secs(LIFETIME), UNIT)),
        "the key's schedule: that cloud would not renew the certificate"
    );
    assert_eq!(h.view().key.unwrap().secret.expose(), "edg_live_refreshed2");

    // A newer answer with broker details but no certificate: password login again.
    h.jump_to_deadline();
    let mut r = refreshed(3);
    r.mqtt = Some(broker(0, None));
    h.feed(Input::Refreshed(Ok(r)));
    h.feed(Input::Saved(Ok(())));
    assert_eq!(held_cert(&h), None);
    assert!(h.view().client_cert.is_none());
}

/// A refused certificate (answer.rs says why) is a failed refresh: the key and the held
/// certificate are still served, and the retry comes before the certificate expires.
#[test]
fn a_refused_certificate_keeps_the_key_and_retries_before_the_certificate_expires() {
    let mut h = with_cert(600);
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
    let e = h.feed(Input::Refreshed(Err(Failure::Permanent(
        "refresh answer refused: the cloud's MQTT client certificate is unusable: not PEM certificates"
            .into(),
    ))));
    assert_eq!(e, ["count(RefreshFailure)", "publish"]);
    let v = h.view();
    assert_eq!(v.phase, Phase::Offline);
    assert!(
        v.detail.contains("client certificate is unusable"),
        "{}",
        v.detail
    );
    assert_eq!(v.key.unwrap().secret.expose(), "edg_live_key5");
    let left = v.client_cert.unwrap().valid_until - h.now().mono;
    assert_eq!(left, Duration::from_secs(150));
    assert!(h.in_().unwrap() <= left / 3, "{:?}", h.in_());
    assert_eq!(h.jump_to_deadline(), ["call_refresh"]);
}

/// A restart resumes the certificate's schedule from the stored receipt time (device clock,
/// like the key): past its refresh point, refresh within the overdue spread (a fleet that
/// boots together does not refresh in the same second).
#[test]
fn a_restart_resumes_the_certificates_schedule() {
    let overdue = schedule::OVERDUE_SPREAD.mul_f64(UNIT).as_secs();
    // (seconds since the certificate of 3600 s was received, refresh in s, valid for s)
    for (since, want, left) in [
        (0u64, 2700u64, 3600u64),
        (1800, 900, 1800),
        (3000, overdue, 600),
    ] {
        let stored = with_cert(3600).core.persisted().clone();
        let mut h = H::new(stored, BUILD + since);
        h.feed(Input::Start);
        assert_eq!(h.view().phase, Phase::Active);
        assert_eq!(h.in_(), Some(Duration::from_secs(want)), "{since}");
        let v = h.view().client_cert.unwrap();
        assert_eq!(v.valid_until - h.now().mono, Duration::from_secs(left));
    }
    // A certificate already expired at start, from an older cloud that never renews it:
    // one refresh now, then the key's schedule (no refresh loop).
    let stored = with_cert(3600).core.persisted().clone();
    let mut h = H::new(stored, BUILD + 7200);
    h.feed(Input::Start);
    assert_eq!(h.in_(), Some(Duration::ZERO));
    h.jump_to_deadline();
    h.feed(Input::Refreshed(Ok(refreshed(1))));
    h.feed(Input::Saved(Ok(())));
    assert_eq!(
        h.in_(),
        Some(schedule::refresh_in(Duration::from_secs(LIFETIME), UNIT))
    );
}

/// Persist before use: a renewed certificate whose save failed is not used; the one held
/// stays, and the refresh is retried before it expires.
#[test]
fn a_renewed_certificate_that_was_not_saved_is_not_used() {
    let mut h = with_cert(3600);
    let held = h.view().client_cert.unwrap();
    h.jump_to_deadline();
    let mut r = refreshed(1);
    r.mqtt = Some(broker(2, Some(3600)));
    h.feed(Input::Refreshed(Ok(r)));
    let e = h.feed(Input::Saved(Err("disk full".into())));
    assert!(has(&e, "count(RefreshFailure)"), "{e:?}");
    assert_eq!(held_cert(&h).unwrap().0, "cert1");
    assert_eq!(h.view().client_cert, Some(held.clone()));
    assert!(h.in_().unwrap() <= (held.valid_until - h.now().mono) / 3);
}

/// Revocation and re-registration drop the certificate with the credentials.
#[test]
fn revocation_drops_the_certificate() {
    let mut h = with_cert(3600);
    h.feed(Input::Command(Command::Revoke {
        reason: "stolen".into(),
        seq: Some(1),
    }));
    assert!(h.view().client_cert.is_none());
    assert_eq!(held_cert(&h), None);
}
