//! The shared state every handler sees.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use octomil_common::Clock;

use crate::error::{ApiError, ApiResult};
use crate::limits::{Budget, Limiter, Surface};
use crate::revocation_push::RevocationPublisher;
use crate::session::SessionKeys;
use crate::store::{OrgRecord, Settings, Store};

/// Everything a request may need. Shared as `Arc<Cloud>`.
pub struct Cloud {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub limiter: Limiter,
    /// Login backoff per (account, address) and ceiling per account.
    pub login_throttle: crate::limits::LoginThrottle,
    /// Bounds the password hashes running at once.
    pub hash_gate: crate::limits::HashGate,
    /// Counters for `GET /metrics`.
    pub metrics: crate::api::metrics::Metrics,
    pub sessions: SessionKeys,
    /// Signs revocation envelopes; its public half goes to devices at registration.
    pub revocation_key: SigningKey,
    /// Registration challenges (protocol 2) and the ones already consumed.
    pub challenges: crate::challenge::Challenges,
    pub publisher: Arc<dyn RevocationPublisher>,
    /// MQTT URL devices connect to, if a broker is configured.
    pub mqtt_url: Option<String>,
    /// The name the cloud's own MQTT session logs in with (embedded: `octomil-cloud`;
    /// external: `--mqtt-username`); registration refuses it as a device id.
    pub mqtt_identity: Option<String>,
    /// Issues the devices' MQTT client certificates (register and refresh answers).
    pub mqtt_ca: Arc<crate::mqtt::ca::MqttCa>,
    /// The secret and budget of brokers calling `POST /mqtt/auth` and `/mqtt/acl`.
    pub mqtt_http_auth: crate::api::mqtt_auth::BrokerAuth,
    /// What devices last reported on their status topics.
    pub presence: crate::mqtt::presence::PresenceTable,
    /// Live device events for the dashboard (fed by the store's commits and by presence).
    pub events: crate::events::EventHub,
    /// Peers whose `X-Forwarded-For` names the source address (none by default).
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// Failure switches for tests (all off by default).
    #[cfg(feature = "faults")]
    pub faults: crate::faults::Faults,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("mqtt_url", &self.mqtt_url)
            .finish_non_exhaustive()
    }
}

pub type AppState = Arc<Cloud>;

impl Cloud {
    pub fn org(&self) -> Option<OrgRecord> {
        self.store.read(|m| m.org.clone())
    }

    pub fn settings(&self) -> Settings {
        self.store
            .read(|m| m.org.as_ref().map(|o| o.settings.clone()))
            .unwrap_or_default()
    }

    /// Takes one call from `subject`'s `budget` (a device-facing [`Surface`] or one of the
    /// cloud's own), under the org's current limit; 429 with `Retry-After` when it is spent.
    pub fn take_permit(&self, budget: impl Into<Budget>, subject: &str) -> ApiResult<()> {
        self.take_permit_under(budget, subject, None)
    }

    /// Records a failed authentication from `ip` and turns `failure` into 429 once the
    /// address has failed too often. Only failures are charged: a valid credential from the
    /// same address is never refused for them.
    pub fn charge_failure(&self, ip: Option<&str>, failure: ApiError) -> ApiError {
        match ip {
            Some(ip) => match self.take_permit(Budget::AuthFailure, ip) {
                Ok(()) => failure,
                Err(limited) => limited,
            },
            None => failure,
        }
    }

    /// [`Self::take_permit`] with the limits already read (callers that hold the store's
    /// lock must not read it again).
    pub fn take_permit_under(
        &self,
        budget: impl Into<Budget>,
        subject: &str,
        limits: Option<crate::store::CloudRateLimits>,
    ) -> ApiResult<()> {
        let budget = budget.into();
        let limits = limits.unwrap_or_else(|| {
            self.store
                .read(|m| m.org.as_ref().map(|o| o.settings.rate_limits))
                .unwrap_or_default()
        });
        let limit = match budget {
            Budget::Registration => limits.registration,
            Budget::Challenge => crate::limits::challenge_limit(limits.registration),
            Budget::Device(Surface::ControlPlane) => limits.control_plane,
            Budget::Device(Surface::Inference) => limits.inference,
            Budget::AuthFailure => limits.auth_failures,
        };
        self.limiter
            .check(budget, subject, limit)
            .map_err(ApiError::rate_limited)
    }
}
