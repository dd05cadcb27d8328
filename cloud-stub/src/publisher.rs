//! The seam between the control plane and the revocation transport. `POST
//! /devices/{id}/revoke` records the revocation, seals the envelope, and hands it to a
//! [`RevocationPublisher`]; the MQTT publisher (embedded broker or external) implements it.

use std::future::Future;
use std::pin::Pin;

use octomil_common::DeviceId;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no revocation transport is configured")]
    NotConfigured,
    #[error("broker did not acknowledge: {0}")]
    Broker(String),
}

/// Delivers a sealed revocation envelope to a device's revocation topic. Implementations
/// return only once the transport has taken responsibility for it (PUBACK for MQTT).
pub trait RevocationPublisher: Send + Sync + std::fmt::Debug + 'static {
    fn publish<'a>(
        &'a self,
        device: &'a DeviceId,
        envelope: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), PublishError>>;
}

/// The publisher of a cloud with no broker: the revocation is recorded and every credential
/// of the device is dead, but nothing is pushed, so a daemon learns it at its next refresh.
#[derive(Debug, Default)]
pub struct NoTransport;

impl RevocationPublisher for NoTransport {
    fn publish<'a>(
        &'a self,
        device: &'a DeviceId,
        _envelope: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            tracing::info!(device_id = %device, "no revocation transport configured; the device learns of it at its next refresh");
            Err(PublishError::NotConfigured)
        })
    }
}
