//! The dashboard's live updates over real HTTPS: `GET /dashboard/events` needs a session; it
//! sends a device's change after the commit (revoke) and after a presence change (a real
//! MQTT login and status message), never another environment's; streams are capped per
//! session (429); the stream does not keep an idle session alive. And the device page's
//! rate-limit state.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use octomil_cloud::MqttMode;
use octomil_cloud::events::MAX_STREAMS_PER_SESSION;
use octomil_common::wire::Presence;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Device, Env};

/// How long any one wait for an event may take.
const WAIT: Duration = Duration::from_secs(5);

/// A browser-like client of the dashboard: its own cookie jar, no redirect following.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Browser {
    fn new(env: &Env) -> Self {
        let ca = reqwest::Certificate::from_pem(env.handle.ca_pem.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            client,
            base: env.handle.http_url.clone(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("cookie", self.cookie_header());
        if let Some(form) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(form).unwrap());
        }
        let resp = req.send().await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        resp
    }

    async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let resp = self.request(method, path, form).await;
        Page {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    /// Opens the events stream at `path`; the answer's status and headers, and the stream if
    /// it is one.
    async fn events(&mut self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Events) {
        let resp = self.request(Method::GET, path, None).await;
        (
            resp.status(),
            resp.headers().clone(),
            Events {
                resp,
                buf: String::new(),
            },
        )
    }

    async fn sign_in(&mut self, email: &str, password: &str, code: &str) -> Page {
        let login = self.get("/dashboard/login").await;
        assert_eq!(login.status, StatusCode::OK);
        let csrf = login.csrf();
        let form: &[(&str, &str)] = &[
            ("csrf", &csrf),
            ("email", email),
            ("password", password),
            ("mfa_code", code),
        ];
        self.send(Method::POST, "/dashboard/login", Some(form))
            .await
    }
}

/// A server-sent events stream read a chunk at a time.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct Sse {
    event: String,
    data: String,
}

impl Events {
    /// The next event (keep-alive comments skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..at + 2).collect();
                let mut e = Sse {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        e.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(e);
                }
                continue;
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event within [`WAIT`], failing the test otherwise.
    async fn expect(&mut self, what: &str) -> Sse {
        tokio::time::timeout(WAIT, self.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {WAIT:?}: waited for {what}"))
            .unwrap_or_else(|| panic!("the stream ended: waited for {what}"))
    }

    /// The next `device` event's data, skipping others.
    async fn device(&mut self, what: &str) -> Value {
        loop {
            let e = self.expect(what).await;
            if e.event == "device" {
                return serde_json::from_str(&e.data).unwrap();
            }
        }
    }
}

async fn owner_browser(env: &Env) -> Browser {
    let mut b = Browser::new(env);
    let secret = env.handle.owner_totp_secret().unwrap();
    let password = env.handle.owner_password().unwrap();
    let answer = b
        .sign_in(
            &env.handle.info.owner_email,
            password.expose(),
            &env.totp_code(&secret),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    b
}

async fn register(env: &Env, id: &str, bootstrap: &str) -> Value {
    let d = Device::new(id);
    let body = d.register_body(env, bootstrap).await;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body
}

/// A sandbox key and a sandbox bootstrap token made with it.
async fn sandbox(env: &Env) -> (String, String) {
    let a = env
        .owner(
            Method::POST,
            "/api-keys",
            Some(json!({"name": "sandbox", "scopes": ["devices:read", "devices:write", "org:admin"], "environment": "test"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let key = a.body["key"].as_str().unwrap().to_owned();
    let a = env
        .call(Method::POST, "/bootstrap-tokens", Some(&key), None)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    (key, a.body["token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn without_a_session_the_stream_sends_to_sign_in() {
    let env = support::start().await;
    let mut anon = Browser::new(&env);
    let (status, headers, _) = anon.events("/dashboard/events").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/dashboard/login");
    // A forged cookie is no better.
    anon.cookies.insert(
        octomil_cloud::dashboard::SESSION_COOKIE.into(),
        "eyJhbGciOiJIUzI1NiJ9.e30.x".into(),
    );
    let (status, _, _) = anon.events("/dashboard/events").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(env.handle.cloud.events.open_streams(), 0);
}

#[tokio::test]
async fn a_revoke_arrives_after_its_commit_and_another_environments_do_not() {
    let env = support::start().await;
    env.relax_limits().await;
    let (test_key, sandbox_token) = sandbox(&env).await;
    register(&env, "sbx-1", &sandbox_token).await;
    register(&env, "live-1", &env.bootstrap_token()).await;
    let mut b = owner_browser(&env).await;

    let (status, headers, mut live_only) = b.events("/dashboard/events?environment=live").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(
        headers["content-security-policy"],
        octomil_cloud::dashboard::CSP
    );
    let hello = live_only.expect("hello").await;
    assert_eq!(hello.event, "hello");
    let (_, _, mut both) = b.events("/dashboard/events").await;
    assert_eq!(both.expect("hello").await.event, "hello");

    // The sandbox device first, then the live one.
    let a = env
        .call(
            Method::POST,
            "/devices/sbx-1/revoke",
            Some(&test_key),
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(env.revoke("live-1").await.status, StatusCode::OK);

    // A session sees both environments unless it narrows: the unnarrowed stream gets both, in
    // commit order, each already durable (the API answered after them).
    let first = both.device("sbx-1 revoked").await;
    assert_eq!(
        (first["id"].as_str(), first["state"].as_str()),
        (Some("sbx-1"), Some("revoked"))
    );
    let second = both.device("live-1 revoked").await;
    assert_eq!(second["id"], "live-1");
    assert_eq!(second["state"], "revoked");
    assert_eq!(second["online"], false);
    assert_eq!(second["last_seen"], "never");
    // The live stream never hears of the sandbox device.
    let only = live_only.device("live-1 revoked").await;
    assert_eq!(
        only["id"], "live-1",
        "the sandbox device's event was sent: {only}"
    );
    assert_eq!(only["state"], "revoked");

    // The device page's stream hears of its one device only; a delete reads "deleted".
    register(&env, "live-2", &env.bootstrap_token()).await;
    let (_, _, mut one) = b.events("/dashboard/events?device=live-1").await;
    one.expect("hello").await;
    assert_eq!(env.revoke("live-2").await.status, StatusCode::OK);
    let a = env.owner(Method::DELETE, "/devices/live-1", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    let gone = one.device("live-1 deleted").await;
    assert_eq!(gone["id"], "live-1", "{gone}");
    assert_eq!(gone["state"], "deleted");

    // A query naming something else is refused.
    let (status, _, _) = b.events("/dashboard/events?environment=moon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = b.events("/dashboard/events?device=..%2F..").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_bulk_revocation_sends_one_resync_and_small_ones_each_device() {
    let env = support::start().await;
    env.relax_limits().await;
    let burst = octomil_cloud::events::BURST;
    let ids: Vec<String> = (0..burst + 3).map(|i| format!("bulk-{i:03}")).collect();
    for id in &ids {
        register(&env, id, &env.bootstrap_token()).await;
    }
    let mut b = owner_browser(&env).await;
    let (_, _, mut stream) = b.events("/dashboard/events").await;
    stream.expect("hello").await;

    // Two devices: an event each.
    let a = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"device_ids": &ids[..2], "reason": "leaked"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    for want in &ids[..2] {
        let e = stream.device(want).await;
        assert_eq!(
            (e["id"].as_str(), e["state"].as_str()),
            (Some(want.as_str()), Some("revoked"))
        );
    }
    // The rest, more than a burst's worth in one commit: one resync, not an event each.
    let a = env
        .owner(
            Method::POST,
            "/revocations",
            Some(json!({"device_ids": &ids[2..], "reason": "leaked"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let e = stream.expect("a resync").await;
    assert_eq!(e.event, "resync", "{e:?}");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_device_going_online_over_mqtt_arrives() {
    let env = support::mqtt::start_with(tempfile::tempdir().unwrap(), |b| {
        b.mqtt(MqttMode::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        })
    })
    .await;
    let d = Device::new("edge-live-1");
    let reg = d.register(&env).await;
    let mut b = owner_browser(&env).await;
    let (_, _, mut stream) = b.events("/dashboard/events").await;
    stream.expect("hello").await;

    let tls = support::mqtt::tls_of(&env, &d, &reg);
    let mut dev = support::mqtt::device_session(&env, &d.id, tls, None, false)
        .await
        .unwrap();
    // The broker login is a presence change (last seen), then the status message says
    // online.
    let online = loop {
        let e = stream.device("the device online").await;
        assert_eq!(e["id"], "edge-live-1");
        if e["online"] == true {
            break e;
        }
        dev.publish_retained(
            "octomil/v1/devices/edge-live-1/status",
            serde_json::to_vec(&Presence {
                online: true,
                state: "active".into(),
                daemon_version: Some("7.7.7".into()),
                expires_at: Some(reg.expires_at),
            })
            .unwrap(),
        )
        .await;
    };
    assert_eq!(online["version"], "7.7.7");
    assert_eq!(online["state"], "active");
    assert_ne!(online["last_seen"], "never");
    dev.kill();
    env.handle.shutdown().await;
}

#[tokio::test]
async fn streams_per_session_are_capped_with_429() {
    let env = support::start().await;
    let mut b = owner_browser(&env).await;
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_SESSION {
        let (status, _, mut s) = b.events("/dashboard/events").await;
        assert_eq!(status, StatusCode::OK);
        s.expect("hello").await;
        open.push(s);
    }
    let (status, headers, refused) = b.events("/dashboard/events").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    let body = refused.resp.text().await.unwrap();
    assert!(body.contains("live streams"), "{body}");
    assert_eq!(
        env.handle.cloud.events.open_streams(),
        MAX_STREAMS_PER_SESSION
    );
    // Another session is not affected (a TOTP step later: a code is accepted once).
    env.clock.advance(Duration::from_secs(30));
    let mut other = owner_browser(&env).await;
    let (status, _, mut s) = other.events("/dashboard/events").await;
    assert_eq!(status, StatusCode::OK);
    s.expect("hello").await;
    // Streams end at shutdown: the drain does not wait for them.
    let started = std::time::Instant::now();
    env.handle.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the streams"
    );
    drop(open);
}

#[tokio::test]
async fn the_stream_does_not_keep_an_idle_session_alive() {
    let env = support::start().await;
    env.relax_limits().await;
    register(&env, "idle-1", &env.bootstrap_token()).await;
    register(&env, "idle-2", &env.bootstrap_token()).await;
    let mut b = owner_browser(&env).await;
    let (_, _, mut stream) = b.events("/dashboard/events").await;
    stream.expect("hello").await;
    // 20 minutes on, an event still arrives (the session is 20 minutes idle)...
    env.clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(env.revoke("idle-1").await.status, StatusCode::OK);
    assert_eq!(stream.device("idle-1 revoked").await["id"], "idle-1");
    // ...and delivering it did not count as activity: 11 minutes later the session is past
    // its 30 idle minutes, and the next change ends the stream instead.
    env.clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(env.revoke("idle-2").await.status, StatusCode::OK);
    let next = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(next.is_none(), "the stream went on: {next:?}");
    // The browser's reconnect meets the sign-in redirect.
    let (status, headers, _) = b.events("/dashboard/events").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/dashboard/login");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn pages_carry_the_live_markers_and_the_device_page_its_rate_limits() {
    let env = support::start().await;
    let d = Device::new("limits-1");
    let reg = d.register(&env).await;
    // Registration took one control-plane call; a refresh takes another.
    d.refresh(&env, reg.refresh_token.expose()).await;
    let mut b = owner_browser(&env).await;

    let list = b.get("/dashboard/devices").await;
    assert!(
        list.body.contains("data-live-device=\"limits-1\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("data-live-source=\"/dashboard/events\""));
    assert!(list.body.contains("/dashboard/assets/live.js"));

    let page = b.get("/dashboard/devices/limits-1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("data-live-source=\"/dashboard/events?device=limits-1\"")
    );
    assert!(page.body.contains("id=\"rate-limits\""), "{}", page.body);
    // The default limits: 100 control-plane calls and 1000 inference calls a minute; two
    // control-plane calls taken, each refilled in 0.6 s.
    assert!(page.body.contains("100 per 60 s"), "{}", page.body);
    assert!(page.body.contains("98 of 100"), "{}", page.body);
    assert!(page.body.contains("1000 of 1000"), "{}", page.body);
    assert!(page.body.contains("in 2 s"), "{}", page.body);
    // Reading the page took nothing from the device's budget.
    let again = b.get("/dashboard/devices/limits-1").await;
    assert!(again.body.contains("98 of 100"));

    let js = b.get("/dashboard/assets/live.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.body.contains("textContent") && !js.body.contains("innerHTML"));
    env.handle.shutdown().await;
}
