//! The broker's shared state: sessions by client id, the subscription index, retained messages, and the routing of one PUBLISH to its subscribers.
//!
//! Every method takes one short lock and never blocks inside it: deliveries are `try_send`s
//! into each connection's bounded queue, so a slow or stuck subscriber loses messages (counted)
//! instead of delaying the publisher or anyone else. A poisoned lock is taken over rather than
//! propagated: a bug in one connection must not stop every other one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Stats;
use super::acl::{self, Identity, PublishRule};

/// A device's status messages: this many at once, then one per [`STATUS_REFILL`].
const STATUS_BURST: f64 = 10.0;
const STATUS_REFILL: std::time::Duration = std::time::Duration::from_millis(500);
/// QoS 1 messages kept for a persistent session while it is offline (oldest dropped first).
const OFFLINE_QUEUE: usize = 32;

/// A connected session's way in: its outgoing queue and the token that ends it when another
/// connection takes the client id over.
#[derive(Debug)]
pub struct Link {
    pub conn: u64,
    pub tx: mpsc::Sender<Publish>,
    pub kick: CancellationToken,
}

#[derive(Debug)]
struct Session {
    identity: Identity,
    persistent: bool,
    /// Filters and their granted QoS (a handful per session).
    subs: Vec<(String, QoS)>,
    link: Option<Link>,
    /// QoS 1 messages owed to an offline persistent session.
    pending: VecDeque<Publish>,
    status: Bucket,
}

/// A token bucket (GCRA would do as well; this is the whole of it).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: STATUS_BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.at).as_secs_f64() / STATUS_REFILL.as_secs_f64();
        self.tokens = (self.tokens + refill).min(STATUS_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// Exact-topic subscriptions (every device's): topic -> client ids.
    exact: HashMap<String, Vec<String>>,
    /// Wildcard subscriptions (the cloud's): (filter, client id).
    wild: Vec<(String, String)>,
    retained: HashMap<String, bytes::Bytes>,
}

/// Why a CONNECT could not take its client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// The id is held by a session of another identity: no takeover across identities.
    OtherIdentity,
}

/// A successful attach.
#[derive(Debug)]
pub struct Attached {
    pub session_present: bool,
    /// What the session was owed while offline, to send right after the CONNACK.
    pub owed: Vec<Publish>,
}

/// What became of a client's PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Delivered,
    Denied,
    TooLarge,
    RateLimited,
}

#[derive(Debug)]
pub struct Router {
    state: Mutex<State>,
    max_retained: usize,
}

impl Router {
    pub fn new(max_retained: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_retained,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `client_id` to a new connection. A live connection with the same id and the
    /// same identity is kicked (takeover); another identity's is refused.
    pub fn attach(
        &self,
        client_id: &str,
        identity: &Identity,
        clean: bool,
        link: Link,
    ) -> Result<Attached, AttachError> {
        let mut st = self.lock();
        if let Some(old) = st.sessions.get(client_id)
            && !old.identity.same_principal(identity)
        {
            return Err(AttachError::OtherIdentity);
        }
        if let Some(old) = st.sessions.get_mut(client_id)
            && let Some(l) = old.link.take()
        {
            l.kick.cancel();
        }
        let resumed = if clean {
            st.remove_session(client_id);
            None
        } else {
            st.sessions.get_mut(client_id).map(|s| {
                // The same principal, perhaps revoked since: the session takes its rights now.
                s.identity = identity.clone();
                s.persistent = true;
                s.link = Some(Link {
                    conn: link.conn,
                    tx: link.tx.clone(),
                    kick: link.kick.clone(),
                });
                s.pending.drain(..).collect::<Vec<_>>()
            })
        };
        let session_present = resumed.is_some();
        let owed = match resumed {
            Some(owed) => owed,
            None => {
                st.sessions.insert(
                    client_id.to_owned(),
                    Session {
                        identity: identity.clone(),
                        persistent: !clean,
                        subs: Vec::new(),
                        link: Some(link),
                        pending: VecDeque::new(),
                        status: Bucket::full(Instant::now()),
                    },
                );
                Vec::new()
            }
        };
        Ok(Attached {
            session_present,
            owed,
        })
    }

    /// The connection `conn` of `client_id` ended. A clean session is forgotten; a persistent
    /// one keeps its subscriptions and is owed `unacked`. Returns false if another connection
    /// had already taken the id over (then nothing changes here).
    pub fn detach(&self, client_id: &str, conn: u64, unacked: Vec<Publish>) -> bool {
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(client_id) else {
            return false;
        };
        if s.link.as_ref().is_none_or(|l| l.conn != conn) {
            return false;
        }
        s.link = None;
        if s.persistent {
            for mut p in unacked.into_iter().rev() {
                p.dup = true;
                s.pending.push_front(p);
            }
            s.pending.truncate(OFFLINE_QUEUE);
        } else {
            st.remove_session(client_id);
        }
        true
    }

    /// Adds (or replaces) a subscription the ACL allowed; returns the retained messages it
    /// matches, to send after the SUBACK.
    pub fn subscribe(&self, client_id: &str, filter: &str, qos: QoS) -> Vec<Publish> {
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(client_id) else {
            return Vec::new();
        };
        match s.subs.iter_mut().find(|(f, _)| f == filter) {
            Some(existing) => existing.1 = qos,
            None => {
                s.subs.push((filter.to_owned(), qos));
                if acl::is_exact(filter) {
                    st.exact
                        .entry(filter.to_owned())
                        .or_default()
                        .push(client_id.to_owned());
                } else {
                    st.wild.push((filter.to_owned(), client_id.to_owned()));
                }
            }
        }
        st.retained
            .iter()
            .filter(|(topic, _)| acl::matches(topic, filter))
            .map(|(topic, payload)| Publish {
                dup: false,
                qos,
                retain: true,
                topic: topic.clone(),
                pkid: 0,
                payload: payload.clone(),
            })
            .collect()
    }

    pub fn unsubscribe(&self, client_id: &str, filter: &str) {
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(client_id) else {
            return;
        };
        s.subs.retain(|(f, _)| f != filter);
        st.unindex(client_id, filter);
    }

    /// Routes a PUBLISH from `who` (session `client_id`): the ACL, the status quota, the
    /// retained store, then every matching subscriber.
    pub fn publish(&self, who: &Identity, client_id: &str, p: &Publish, stats: &Stats) -> Routed {
        self.lock()
            .publish(who, client_id, p, stats, self.max_retained, true)
    }

    /// The connection `conn` of `client_id` ended without a DISCONNECT if `will` is given:
    /// under one lock, unless another connection has taken the id over, the will is published
    /// (not rate-limited) and the session detached (see [`Router::detach`]).
    pub fn end(
        &self,
        client_id: &str,
        conn: u64,
        unacked: Vec<Publish>,
        will: Option<(&Identity, &Publish)>,
        stats: &Stats,
    ) {
        let mut st = self.lock();
        let current = st
            .sessions
            .get(client_id)
            .and_then(|s| s.link.as_ref())
            .is_some_and(|l| l.conn == conn);
        if !current {
            return;
        }
        if let Some((who, w)) = will {
            st.publish(who, client_id, w, stats, self.max_retained, false);
        }
        drop(st);
        self.detach(client_id, conn, unacked);
    }

    /// Number of retained messages held (tests and metrics).
    pub fn retained_len(&self) -> usize {
        self.lock().retained.len()
    }

    /// The retained payload on `topic`, if any.
    pub fn retained(&self, topic: &str) -> Option<bytes::Bytes> {
        self.lock().retained.get(topic).cloned()
    }

    /// Sessions held, connected or not.
    pub fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }
}

impl State {
    fn publish(
        &mut self,
        who: &Identity,
        client_id: &str,
        p: &Publish,
        stats: &Stats,
        max_retained: usize,
        quota: bool,
    ) -> Routed {
        match acl::publish_rule(who, &p.topic) {
            PublishRule::Denied => return Routed::Denied,
            PublishRule::Status => {
                if p.payload.len() > acl::STATUS_MAX_BYTES {
                    return Routed::TooLarge;
                }
                let allowed = !quota
                    || self
                        .sessions
                        .get_mut(client_id)
                        .is_some_and(|s| s.status.take(Instant::now()));
                if !allowed {
                    return Routed::RateLimited;
                }
            }
            PublishRule::Revocation => {}
        }
        if p.retain {
            if p.payload.is_empty() {
                self.retained.remove(&p.topic);
            } else if self.retained.len() < max_retained || self.retained.contains_key(&p.topic) {
                self.retained.insert(p.topic.clone(), p.payload.clone());
            } else {
                stats.retained_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.deliver(p, stats);
        Routed::Delivered
    }

    fn remove_session(&mut self, client_id: &str) {
        if let Some(s) = self.sessions.remove(client_id) {
            for (filter, _) in &s.subs {
                self.unindex(client_id, filter);
            }
            if let Some(l) = s.link {
                l.kick.cancel();
            }
        }
    }

    fn unindex(&mut self, client_id: &str, filter: &str) {
        if acl::is_exact(filter) {
            if let Some(ids) = self.exact.get_mut(filter) {
                ids.retain(|c| c != client_id);
                if ids.is_empty() {
                    self.exact.remove(filter);
                }
            }
        } else {
            self.wild.retain(|(f, c)| !(f == filter && c == client_id));
        }
    }

    fn deliver(&mut self, p: &Publish, stats: &Stats) {
        let mut targets: Vec<&str> = Vec::new();
        if let Some(ids) = self.exact.get(&p.topic) {
            targets.extend(ids.iter().map(String::as_str));
        }
        targets.extend(
            self.wild
                .iter()
                .filter(|(f, _)| acl::matches(&p.topic, f))
                .map(|(_, c)| c.as_str()),
        );
        targets.sort_unstable();
        targets.dedup();
        let targets: Vec<String> = targets.into_iter().map(str::to_owned).collect();
        for id in targets {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            // The best QoS among this session's matching filters, capped by the message's.
            let granted = s
                .subs
                .iter()
                .filter(|(f, _)| acl::matches(&p.topic, f))
                .map(|(_, q)| *q)
                .fold(QoS::AtMostOnce, |a, b| if b > a { b } else { a });
            let qos = if p.qos < granted { p.qos } else { granted };
            let out = Publish {
                dup: false,
                qos,
                retain: false,
                topic: p.topic.clone(),
                pkid: 0,
                payload: p.payload.clone(),
            };
            if let Some(l) = &s.link {
                let sent = l.tx.try_send(out).is_ok();
                if !sent {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            } else if s.persistent && qos == QoS::AtLeastOnce {
                if s.pending.len() >= OFFLINE_QUEUE {
                    s.pending.pop_front();
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                s.pending.push_back(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use octomil_common::DeviceId;

    fn dev(id: &str) -> Identity {
        Identity::Device(DeviceId::parse(id).unwrap())
    }

    fn link(conn: u64) -> (Link, mpsc::Receiver<Publish>) {
        let (tx, rx) = mpsc::channel(8);
        (
            Link {
                conn,
                tx,
                kick: CancellationToken::new(),
            },
            rx,
        )
    }

    fn publish(topic: &str, payload: &[u8], retain: bool) -> Publish {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        p.retain = retain;
        p
    }

    #[tokio::test]
    async fn takeover_only_for_the_same_identity_and_persistent_sessions_keep_subscriptions() {
        let r = Router::new(10);
        let stats = Stats::default();
        let (l1, _rx1) = link(1);
        let kick1 = l1.kick.clone();
        let a = dev("edge-a");
        assert!(!r.attach("edge-a", &a, false, l1).unwrap().session_present);
        r.subscribe(
            "edge-a",
            "octomil/v1/devices/edge-a/revocation",
            QoS::AtLeastOnce,
        );
        let (l2, _) = link(2);
        assert_eq!(
            r.attach("edge-a", &Identity::Cloud, true, l2).unwrap_err(),
            AttachError::OtherIdentity
        );
        assert!(!kick1.is_cancelled());
        let (l3, _rx3) = link(3);
        assert!(r.attach("edge-a", &a, false, l3).unwrap().session_present);
        assert!(kick1.is_cancelled(), "the old connection is told to go");
        // The kicked connection's end changes nothing.
        assert!(!r.detach("edge-a", 1, Vec::new()));
        assert!(r.detach("edge-a", 3, Vec::new()));
        // Offline: a revocation is queued for the persistent session.
        let rev = publish("octomil/v1/devices/edge-a/revocation", b"x", true);
        assert_eq!(
            r.publish(&Identity::Cloud, "cloud", &rev, &stats),
            Routed::Delivered
        );
        let (l4, _rx4) = link(4);
        let back = r.attach("edge-a", &a, false, l4).unwrap();
        assert!(back.session_present);
        assert_eq!(back.owed.len(), 1);
    }

    #[tokio::test]
    async fn status_is_rate_limited_per_device_and_retained_is_bounded() {
        let r = Router::new(1);
        let stats = Stats::default();
        let (l, _rx) = link(1);
        let a = dev("edge-a");
        r.attach("edge-a", &a, true, l).unwrap();
        let status = publish("octomil/v1/devices/edge-a/status", b"{}", true);
        let outcomes: Vec<Routed> = (0..20)
            .map(|_| r.publish(&a, "edge-a", &status, &stats))
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == Routed::Delivered).count(),
            STATUS_BURST as usize
        );
        assert_eq!(r.retained_len(), 1);
        let other = publish("octomil/v1/devices/edge-b/revocation", b"x", true);
        r.publish(&Identity::Cloud, "c", &other, &stats);
        assert_eq!(r.retained_len(), 1, "the store is full");
        assert_eq!(stats.retained_full.load(Ordering::Relaxed), 1);
        let big = publish(
            "octomil/v1/devices/edge-a/status",
            &[b' '; acl::STATUS_MAX_BYTES + 1],
            true,
        );
        assert_eq!(r.publish(&a, "edge-a", &big, &stats), Routed::TooLarge);
    }
}
