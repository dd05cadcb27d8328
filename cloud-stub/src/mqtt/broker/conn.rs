//! One client connection, start to end: TLS handshake and CONNECT under deadlines, login, then the session (publish, subscribe, keep-alive) until the client leaves, is taken over, or the broker stops.
//!
//! Cleanup lives in guards ([`super::Slot`], [`Attachment`]) so it also runs when the task
//! ends early or panics: the caps are released, the session is detached, the will is sent.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{
    ConnAck, Connect, ConnectReturnCode, Packet, Protocol, PubAck, Publish, QoS, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::acl::{self, Identity, PublishRule};
use super::router::{AttachError, Link, Routed};
use super::{Shared, Slot};
use crate::mqtt::auth::Login;

/// Messages waiting for one subscriber; past this a delivery to it is dropped (counted).
const QUEUE: usize = 256;
/// QoS 1 messages sent to a client and not yet acknowledged; past this the oldest is given up.
const MAX_INFLIGHT: usize = 64;
/// A client that does not take our bytes for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection ended early (logged at debug; clients never see these).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Codec(#[from] CodecError),
    #[error("the client closed the connection")]
    Closed,
    #[error("write timed out")]
    WriteTimeout,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// Serves one accepted connection; a panic inside (a bug) ends only this connection.
pub(super) async fn run(stream: TcpStream, peer: SocketAddr, slot: Slot) {
    let shared = slot.shared.clone();
    if CatchUnwind(Box::pin(serve(stream, peer, slot)))
        .await
        .is_err()
    {
        shared.stats.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%peer, "MQTT connection task panicked; that connection is closed, the broker carries on");
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, mut slot: Slot) {
    let shared = slot.shared.clone();
    let limits = &shared.limits;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    // The client certificate rustls verified against the MQTT CA (a certificate from any
    // other CA, or expired, already failed the handshake).
    let mut cert = None;
    let io: Box<dyn Io> = match &shared.tls {
        None => Box::new(stream),
        Some(acceptor) => {
            let handshake = tokio::select! {
                () = shared.stop.cancelled() => return,
                r = timeout(limits.handshake_timeout, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(tls)) => {
                    cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(crate::mqtt::ca::cert_identity);
                    Box::new(tls)
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "MQTT TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let mut c = Conn {
        io,
        buf: BytesMut::with_capacity(1024),
        max: limits.max_packet_bytes,
        inflight: VecDeque::new(),
        next_pkid: 0,
        shared: shared.clone(),
    };
    let first = tokio::select! {
        () = shared.stop.cancelled() => return,
        r = timeout(limits.connect_timeout, c.read_packet()) => r,
    };
    let mut connect = match first {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(_)) => {
            tracing::debug!(%peer, "MQTT: the first packet is not CONNECT");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT: no valid CONNECT");
            return;
        }
        Err(_) => {
            shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "MQTT: no CONNECT in time");
            return;
        }
    };
    let identity = match login(&shared, &mut connect, peer, cert.as_ref()) {
        Ok(identity) => identity,
        Err(code) => {
            shared.stats.refused_logins.fetch_add(1, Ordering::Relaxed);
            let _ = c.write(Packet::ConnAck(ConnAck::new(code, false))).await;
            return;
        }
    };
    if !slot.authenticated(&identity) {
        shared
            .stats
            .refused_at_accept
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "MQTT: over the device connection cap");
        let ack = ConnAck::new(ConnectReturnCode::ServiceUnavailable, false);
        let _ = c.write(Packet::ConnAck(ack)).await;
        return;
    }
    session(c, connect, identity, peer).await;
}

/// Checks a CONNECT: protocol, credentials (the [`crate::mqtt::auth::Authenticator`]), the
/// client id (a device's must be its own id), and the will (only where it may publish).
fn login(
    shared: &Shared,
    c: &mut Connect,
    peer: SocketAddr,
    cert: Option<&crate::mqtt::ca::CertIdentity>,
) -> Result<Identity, ConnectReturnCode> {
    if c.protocol != Protocol::V4 {
        return Err(ConnectReturnCode::RefusedProtocolVersion);
    }
    let identity = shared
        .auth
        .authenticate(&Login {
            client_id: &c.client_id,
            username: c.login.as_ref().map(|l| l.username.as_str()),
            password: c.login.as_ref().map(|l| l.password.as_str()),
            peer,
            cert,
        })
        .map_err(|reason| {
            tracing::debug!(%peer, client_id = %c.client_id, %reason, "MQTT login refused");
            ConnectReturnCode::NotAuthorized
        })?;
    let id_ok = match identity.device_id() {
        Some(id) => id.as_str() == c.client_id,
        None => !c.client_id.is_empty(),
    };
    if !id_ok {
        tracing::debug!(%peer, client_id = %c.client_id, "MQTT login refused: client id is not the identity");
        return Err(ConnectReturnCode::BadClientId);
    }
    if matches!(identity, Identity::Revoked(_)) {
        // A revoked device may publish nothing, its will included; the daemon sends one
        // with every CONNECT, so it is dropped rather than refused.
        c.last_will = None;
    }
    if let Some(w) = &c.last_will {
        let allowed = match acl::publish_rule(&identity, &w.topic) {
            PublishRule::Denied => false,
            PublishRule::Status => w.message.len() <= acl::STATUS_MAX_BYTES,
            PublishRule::Revocation => true,
        };
        if !allowed || w.qos == QoS::ExactlyOnce {
            tracing::debug!(%peer, client_id = %c.client_id, "MQTT login refused: will on a topic it may not publish to");
            return Err(ConnectReturnCode::NotAuthorized);
        }
    }
    Ok(identity)
}

/// The session after a successful login.
async fn session(mut c: Conn, connect: Connect, identity: Identity, peer: SocketAddr) {
    let shared = c.shared.clone();
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let kick = CancellationToken::new();
    let attached = shared.router.attach(
        &connect.client_id,
        &identity,
        connect.clean_session,
        Link {
            conn: conn_id,
            tx,
            kick: kick.clone(),
        },
    );
    let attached = match attached {
        Ok(a) => a,
        Err(AttachError::OtherIdentity) => {
            shared.stats.refused_logins.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, client_id = %connect.client_id, "MQTT login refused: client id held by another identity");
            let ack = ConnAck::new(ConnectReturnCode::BadClientId, false);
            let _ = c.write(Packet::ConnAck(ack)).await;
            return;
        }
    };
    let mut guard = Attachment {
        shared: shared.clone(),
        client_id: connect.client_id.clone(),
        identity: identity.clone(),
        conn: conn_id,
        will: connect.last_will.map(|w| Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic,
            pkid: 0,
            payload: w.message,
        }),
        unacked: Vec::new(),
    };
    let keep_alive = match connect.keep_alive {
        0 => shared.limits.max_keep_alive,
        s => Duration::from_secs(u64::from(s)).min(shared.limits.max_keep_alive),
    };
    // MQTT 3.1.1 §3.1.2.10: one and a half keep-alives without a packet and the client is gone.
    let idle = keep_alive + keep_alive / 2;
    let ended = async {
        let ack = ConnAck::new(ConnectReturnCode::Success, attached.session_present);
        c.write(Packet::ConnAck(ack)).await?;
        for p in attached.owed {
            c.send_publish(p).await?;
        }
        let mut deadline = Instant::now() + idle;
        loop {
            // Reads come before deliveries: a busy outgoing queue (the cloud's, with every
            // device's status) must not delay reading the client's own PUBLISH and PINGREQ.
            tokio::select! {
                biased;
                () = kick.cancelled() => return Err(ConnError::Protocol("taken over by a new connection")),
                () = shared.stop.cancelled() => return Ok(()),
                n = c.io.read_buf(&mut c.buf) => {
                    if n? == 0 {
                        return Err(ConnError::Closed);
                    }
                    deadline = Instant::now() + idle;
                    while let Some(packet) = c.parse()? {
                        if c.handle(packet, &identity, &mut guard).await? == Flow::Disconnect {
                            return Ok(());
                        }
                    }
                }
                p = rx.recv() => match p {
                    Some(p) => c.send_publish(p).await?,
                    None => return Ok(()),
                },
                () = sleep_until(deadline) => return Err(ConnError::Protocol("keep-alive expired")),
            }
        }
    }
    .await;
    if let Err(e) = ended {
        tracing::debug!(%peer, client_id = %connect.client_id, error = %e, "MQTT session ended");
    }
    guard.unacked = c.inflight.drain(..).map(|(_, p)| p).collect();
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Disconnect,
}

/// A connection's socket, read buffer and QoS 1 deliveries awaiting PUBACK.
struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    max: usize,
    inflight: VecDeque<(u16, Publish)>,
    next_pkid: u16,
    shared: Arc<Shared>,
}

impl Conn {
    /// The next complete packet in the buffer, if any (never more than `max` bytes).
    fn parse(&mut self) -> Result<Option<Packet>, ConnError> {
        match Packet::read(&mut self.buf, self.max) {
            Ok(p) => Ok(Some(p)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_packet(&mut self) -> Result<Packet, ConnError> {
        loop {
            if let Some(p) = self.parse()? {
                return Ok(p);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    async fn write(&mut self, packet: Packet) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        packet.write(&mut out, self.max)?;
        let io = &mut self.io;
        timeout(WRITE_TIMEOUT, async {
            io.write_all(&out).await?;
            io.flush().await
        })
        .await
        .map_err(|_| ConnError::WriteTimeout)??;
        Ok(())
    }

    /// Sends a message to the client; QoS 1 ones get a packet id and wait for a PUBACK.
    async fn send_publish(&mut self, mut p: Publish) -> Result<(), ConnError> {
        if p.qos != QoS::AtMostOnce {
            p.qos = QoS::AtLeastOnce;
            p.pkid = self.pkid();
            if self.inflight.len() >= MAX_INFLIGHT {
                self.inflight.pop_front();
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.inflight.push_back((p.pkid, p.clone()));
        }
        match self.write(Packet::Publish(p)).await {
            // Too large for the packet cap: that message is dropped, the session goes on.
            Err(ConnError::Codec(_)) => {
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            r => r,
        }
    }

    /// A packet id not in flight (ids run 1..=65535; at most `MAX_INFLIGHT` are taken).
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    async fn handle(
        &mut self,
        packet: Packet,
        identity: &Identity,
        guard: &mut Attachment,
    ) -> Result<Flow, ConnError> {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        match packet {
            Packet::Publish(p) => {
                if p.qos == QoS::ExactlyOnce {
                    return Err(ConnError::Protocol("QoS 2 is not supported"));
                }
                match shared.router.publish(identity, &guard.client_id, &p, stats) {
                    Routed::Delivered => {}
                    Routed::Denied => {
                        stats.denied_publishes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client_id = %guard.client_id, topic = %p.topic, "MQTT publish denied");
                    }
                    Routed::TooLarge | Routed::RateLimited => {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // MQTT 3.1.1 has no negative PUBACK: a refused message is acknowledged and
                // dropped, as Mosquitto does.
                if p.qos == QoS::AtLeastOnce {
                    self.write(Packet::PubAck(PubAck::new(p.pkid))).await?;
                }
            }
            Packet::PubAck(ack) => self.inflight.retain(|(id, _)| *id != ack.pkid),
            Packet::Subscribe(sub) => {
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut retained = Vec::new();
                for f in &sub.filters {
                    if acl::may_subscribe(identity, &f.path) {
                        let qos = match f.qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        };
                        retained.extend(shared.router.subscribe(&guard.client_id, &f.path, qos));
                        codes.push(SubscribeReasonCode::Success(qos));
                    } else {
                        stats.denied_subscriptions.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client_id = %guard.client_id, filter = %f.path, "MQTT subscription denied");
                        codes.push(SubscribeReasonCode::Failure);
                    }
                }
                self.write(Packet::SubAck(SubAck::new(sub.pkid, codes)))
                    .await?;
                for p in retained {
                    self.send_publish(p).await?;
                }
            }
            Packet::Unsubscribe(u) => {
                for filter in &u.topics {
                    shared.router.unsubscribe(&guard.client_id, filter);
                }
                self.write(Packet::UnsubAck(UnsubAck::new(u.pkid))).await?;
            }
            Packet::PingReq => self.write(Packet::PingResp).await?,
            Packet::Disconnect => {
                // A clean goodbye: no will.
                guard.will = None;
                return Ok(Flow::Disconnect);
            }
            _ => return Err(ConnError::Protocol("unexpected packet")),
        }
        Ok(Flow::Continue)
    }
}

/// A session's hold on its client id: on drop (also after a panic) it detaches the session
/// and, unless the client said DISCONNECT or was taken over, publishes its will.
struct Attachment {
    shared: Arc<Shared>,
    client_id: String,
    identity: Identity,
    conn: u64,
    will: Option<Publish>,
    unacked: Vec<Publish>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let unacked = std::mem::take(&mut self.unacked);
        let will = self.will.take();
        self.shared.router.end(
            &self.client_id,
            self.conn,
            unacked,
            will.as_ref().map(|w| (&self.identity, w)),
            &self.shared.stats,
        );
    }
}

/// Turns a panic while polling the inner future into `Err(())`, so the connection's guards
/// run and the panic is counted (only under `panic = "unwind"`; under abort there is nothing
/// to catch).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_connection_is_caught_and_its_guards_run() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let r = CatchUnwind(Box::pin(async move {
            let _flag = flag;
            tokio::task::yield_now().await;
            panic!("a bug");
        }))
        .await;
        assert!(r.is_err());
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(CatchUnwind(Box::pin(async { 7 })).await, Ok(7));
    }

    use proptest::prelude::*;

    proptest! {
        /// Any bytes a client sends, framed as one packet of any type with any flags, or
        /// not framed at all, parse to a packet or an error: never a panic.
        #[test]
        fn the_codec_never_panics_on_client_bytes(
            first in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut framed = BytesMut::new();
            framed.extend_from_slice(&[first]);
            let mut len = body.len();
            loop {
                let mut byte = (len % 128) as u8;
                len /= 128;
                if len > 0 {
                    byte |= 0x80;
                }
                framed.extend_from_slice(&[byte]);
                if len == 0 {
                    break;
                }
            }
            framed.extend_from_slice(&body);
            framed.extend_from_slice(&raw);
            for _ in 0..8 {
                if Packet::read(&mut framed, 256).is_err() {
                    break;
                }
            }
        }
    }
}
