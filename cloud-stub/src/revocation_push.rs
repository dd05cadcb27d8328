//! The seam between the control plane and the revocation transport. `POST
//! /devices/{id}/revoke` records the revocation, seals the envelope, and hands it to a
//! [`RevocationPublisher`]; the MQTT publisher (embedded broker or external) implements it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use octomil_common::DeviceId;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no revocation transport is configured")]
    NotConfigured,
    #[error("the broker did not acknowledge within {0:?}; the outbox keeps retrying")]
    Timeout(Duration),
    #[error("broker: {0}")]
    Broker(String),
}

/// Delivers a retained payload on a device's revocation topic: a sealed envelope, or an empty
/// payload that clears the retained revocation. Implementations resolve only once the
/// transport has taken responsibility for it (PUBACK for MQTT), with how long that took.
pub trait RevocationPublisher: Send + Sync + std::fmt::Debug + 'static {
    /// Whether payloads go through the persisted outbox first (a transport will deliver them
    /// even if this call times out or the cloud restarts).
    fn durable(&self) -> bool {
        false
    }

    fn publish<'a>(
        &'a self,
        device: &'a DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Duration, PublishError>>;

    /// Delivers many payloads whose outbox entries are already committed (a durable
    /// transport) and answers how many the transport acknowledged before it stopped
    /// waiting. A durable transport pipelines them and does not wait for ones it cannot
    /// deliver now (the outbox will); the default publishes them one after another.
    fn publish_committed<'a>(&'a self, items: Vec<(DeviceId, Vec<u8>)>) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let mut acked = 0;
            for (device, payload) in items {
                if self.publish(&device, payload).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        })
    }
}

/// The publisher of a cloud with no broker: the revocation is recorded and every credential
/// of the device is dead, but nothing is pushed, so a daemon learns it at its next refresh.
#[derive(Debug, Default)]
pub struct NoTransport;

impl RevocationPublisher for NoTransport {
    fn publish<'a>(
        &'a self,
        device: &'a DeviceId,
        _payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Duration, PublishError>> {
        Box::pin(async move {
            tracing::debug!(device_id = %device, "no revocation transport configured; the device learns of it at its next refresh");
            Err(PublishError::NotConfigured)
        })
    }
}
