//! The records the cloud persists. Plain data with postcard encodings; behaviour lives in the
//! handlers and in [`super::Model`].

use std::collections::BTreeMap;

use octomil_common::wire::RateLimit;
use serde::{Deserialize, Serialize};

use crate::scope::{Role, ScopeSet};

pub type Hash = [u8; 32];

/// Live is production, test is the sandbox (`edg_live_` / `edg_test_` keys).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }

    pub fn token_kind(self) -> octomil_common::TokenKind {
        match self {
            Self::Live => octomil_common::TokenKind::Live,
            Self::Test => octomil_common::TokenKind::Test,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompliancePreset {
    None,
    Hipaa,
    Pci,
    Gdpr,
    Soc2,
}

impl CompliancePreset {
    /// Whether a member with `role` must give a TOTP code to log in.
    pub fn requires_mfa(self, role: Role) -> bool {
        match self {
            Self::None => false,
            Self::Hipaa | Self::Pci => true,
            Self::Gdpr | Self::Soc2 => role >= Role::Admin,
        }
    }
}

/// The cloud-side limits an operator can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudRateLimits {
    pub control_plane: RateLimit,
    pub inference: RateLimit,
    pub registration: RateLimit,
    /// Failed authentications (unknown bearer, refresh token that does not verify) per
    /// source address (format version 2). Only failures spend it, so a valid credential is
    /// never refused because of other clients behind the same address.
    pub auth_failures: RateLimit,
}

impl Default for CloudRateLimits {
    fn default() -> Self {
        let device = octomil_common::wire::RateLimits::default();
        Self {
            control_plane: device.control_plane,
            inference: device.inference,
            registration: RateLimit::per_minute(10),
            auth_failures: RateLimit::per_minute(60),
        }
    }
}

impl CloudRateLimits {
    /// The part a device mirrors.
    pub fn device_view(&self) -> octomil_common::wire::RateLimits {
        octomil_common::wire::RateLimits {
            control_plane: self.control_plane,
            inference: self.inference,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub device_token_expiry_secs: u64,
    pub compliance_preset: CompliancePreset,
    pub rate_limits: CloudRateLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            device_token_expiry_secs: 24 * 3600,
            compliance_preset: CompliancePreset::None,
            rate_limits: CloudRateLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgRecord {
    pub id: String,
    pub name: String,
    pub environment: Environment,
    pub created_at: u64,
    /// Set by `DELETE /org`: every credential stops working.
    pub deleted: bool,
    pub settings: Settings,
}

/// An API key (format version 2; `prefix` since version 5). Its effective rights are the
/// smaller of `scopes` and the current role of `owner_email` (capped at `role`); it stops
/// working when that member is removed, when it expires, or when it is revoked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub hash: Hash,
    pub scopes: ScopeSet,
    /// Role of the creator when the key was made: a key never outranks it, even if the
    /// member is later promoted.
    pub role: Role,
    /// The member whose current role bounds the key (the session that made it, or the
    /// member behind the key that made it).
    pub owner_email: String,
    pub environment: Environment,
    pub created_at: u64,
    /// Who made it, for the record: `session:EMAIL`, `key:ID` or `provisioning`.
    pub created_by: String,
    /// Persisted at most once a minute per key.
    pub last_used_at: Option<u64>,
    /// Unix seconds after which the key is refused; `None` never expires.
    pub expires_at: Option<u64>,
    /// Set by `DELETE /api-keys/{id}`; the record stays listed for [`KEY_RETENTION_SECS`].
    pub revoked_at: Option<u64>,
    /// What lists show of the key (format version 5): its environment prefix and the first
    /// [`KEY_PREFIX_CHARS`] random characters, e.g. `edg_live_a1B2c3`, so that keys can be
    /// told apart. Not a secret: the 26 characters it leaves out still carry about 155 bits.
    /// `None` for keys made before format 5 (only their hash was kept).
    pub prefix: Option<String>,
}

/// Random characters of a key its listed prefix shows: 6 base62 characters (about 36 bits)
/// tell an organisation's keys apart (two of 1,000 keys share one with odds of about 1 in
/// 100,000) and leave 26 of its 32 characters (about 155 bits) unknown.
pub const KEY_PREFIX_CHARS: usize = 6;

/// The listed prefix of `key`, a key of `environment` (see [`ApiKeyRecord::prefix`]).
pub fn key_prefix(environment: Environment, key: &str) -> String {
    let fixed = environment.token_kind().prefix().len();
    key.chars().take(fixed + KEY_PREFIX_CHARS).collect()
}

/// Revoked and expired API keys stay listed this long, then are dropped.
pub const KEY_RETENTION_SECS: u64 = 90 * 86_400;

impl ApiKeyRecord {
    /// Whether the key may authenticate at `now`.
    pub fn usable(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }

    /// Whether a dead key has been listed long enough to be dropped.
    pub fn prunable(&self, now: u64) -> bool {
        let dead_since = match (self.revoked_at, self.expires_at) {
            (Some(r), _) => Some(r),
            (None, Some(e)) if e <= now => Some(e),
            _ => None,
        };
        dead_since.is_some_and(|t| now >= t.saturating_add(KEY_RETENTION_SECS))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Active,
    Revoked,
}

/// A device key the cloud accepts until `expires_at` (Unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceKey {
    pub hash: Hash,
    pub expires_at: u64,
}

/// The newest credential pair handed out, and whether the device has shown it holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub refresh_hash: Hash,
    pub key_hash: Hash,
    /// True once the device used this refresh token or this key: from then on the previous
    /// refresh token is dead.
    pub confirmed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshState {
    pub current: Option<Issued>,
    /// The refresh token `current` replaced; valid while `current` is unconfirmed.
    pub previous: Option<Hash>,
    /// Recently retired refresh tokens, so a reuse is recognised as such (bounded).
    pub retired: Vec<Hash>,
}

pub const MAX_RETIRED: usize = 8;
pub const MAX_LIVE_KEYS: usize = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub public_key: [u8; 32],
    pub state: DeviceState,
    /// Unix milliseconds of the latest (re-)registration.
    pub registered_at_ms: u64,
    pub last_refresh_at: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    pub keys: Vec<DeviceKey>,
    pub refresh: RefreshState,
    pub revoked_at: Option<u64>,
    pub revoke_reason: Option<String>,
    /// Sequence of the latest revocation envelope; strictly increasing per device.
    pub revocation_seq: u64,
    /// The bootstrap token the device last registered with (format version 2; `None` for
    /// devices registered before), so a leaked token's devices can be revoked in one call.
    pub bootstrap_token_id: Option<String>,
    /// Sandbox or live (format version 4): the environment of the bootstrap token of its
    /// latest registration. Only keys of this environment (and sessions) see the device.
    pub environment: Environment,
}

impl DeviceRecord {
    /// Forgets every key and refresh token (revocation, refresh-token reuse).
    pub fn kill_credentials(&mut self) {
        self.keys.clear();
        self.refresh = RefreshState::default();
    }

    pub fn key_expires_at(&self) -> Option<u64> {
        self.keys.iter().map(|k| k.expires_at).max()
    }
}

/// A bootstrap token (format version 2). `max_uses` and `expires_at` are always set since
/// version 2 (defaults [`DEFAULT_BOOTSTRAP_USES`], [`DEFAULT_BOOTSTRAP_TTL_SECS`]); they stay
/// optional in the record so version-1 readers of the type need not change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub id: String,
    pub hash: Hash,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at: Option<u64>,
    pub created_at: u64,
    /// Set by `DELETE /bootstrap-tokens/{id}` (which also sets `expires_at` to that time).
    pub revoked_at: Option<u64>,
    /// Sandbox or live (format version 4): that of the key or session that made it. Devices
    /// registering with the token take it.
    pub environment: Environment,
}

/// Registrations a bootstrap token allows when none is given.
pub const DEFAULT_BOOTSTRAP_USES: u32 = 10_000;
/// How long a bootstrap token lives when no expiry is given: 90 days.
pub const DEFAULT_BOOTSTRAP_TTL_SECS: u64 = 90 * 86_400;

/// A dashboard member (format version 3). A member enrols their own password and TOTP
/// through an invitation ([`InvitationRecord`]); nobody else ever sees them. `Debug` shows
/// no secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub email: String,
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Raw TOTP secret once enrolled; `None` before enrolment and after an MFA reset. It must
    /// be readable to check codes, so it cannot be hashed; it lives only in the 0600 store in
    /// the 0700 state dir.
    pub totp_secret: Option<Vec<u8>>,
    pub created_at: u64,
    /// The newest TOTP time step accepted for this member: a code is accepted once only.
    pub last_totp_step: Option<u64>,
    /// A secret handed out by the first step of enrolment, waiting for a code that proves
    /// the authenticator holds it (format version 3).
    pub pending_totp: Option<Vec<u8>>,
    /// SHA-256 of each unused recovery code (format version 3). Codes are random and long,
    /// so a fast hash suffices, as for API keys; each one is removed when used.
    pub recovery_codes: Vec<Hash>,
}

impl std::fmt::Debug for MemberRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberRecord")
            .field("email", &self.email)
            .field("role", &self.role)
            .field("totp", &self.has_mfa())
            .field("pending_totp", &self.pending_totp.is_some())
            .field("recovery_codes", &self.recovery_codes.len())
            .field("created_at", &self.created_at)
            .field("last_totp_step", &self.last_totp_step)
            .finish_non_exhaustive()
    }
}

impl MemberRecord {
    /// Whether the member has a second factor enrolled.
    pub fn has_mfa(&self) -> bool {
        self.totp_secret.is_some()
    }
}

/// A dashboard session (format version 3): the server-side half of a session JWT, keyed by
/// its `jti`. A JWT whose session is gone is refused, so deleting these logs a member out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub jti: String,
    pub email: String,
    pub created_at: u64,
    pub expires_at: u64,
    /// Whether the session was opened (or completed) with a second factor.
    pub mfa: bool,
    /// Unix seconds of the latest second factor given in this session (a TOTP login or
    /// recovery code, an enrolment, a step-up); destructive calls need it recent
    /// (format version 3).
    pub second_factor_at: Option<u64>,
    /// The session may only enrol TOTP: the preset requires MFA of a member who has none
    /// (format version 3).
    pub enrolment_only: bool,
}

/// An invitation to join the organization (format version 3), keyed by `id`. Only the
/// SHA-256 of its token is kept; accepting deletes it, so it works once. `Debug` shows no
/// secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationRecord {
    pub id: String,
    pub hash: Hash,
    pub email: String,
    pub role: Role,
    pub created_at: u64,
    pub expires_at: u64,
    /// Who invited: `session:EMAIL` or `key:ID`.
    pub created_by: String,
    /// The TOTP secret the invitee's authenticator was given, until they confirm it.
    pub pending_totp: Option<Vec<u8>>,
}

impl std::fmt::Debug for InvitationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvitationRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("created_by", &self.created_by)
            .field("pending_totp", &self.pending_totp.is_some())
            .finish_non_exhaustive()
    }
}

/// How long an invitation lives when no expiry is given: 72 hours.
pub const DEFAULT_INVITATION_TTL_SECS: u64 = 72 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub id: String,
    pub kind: String,
    /// For nested kinds (model versions): the parent's id.
    pub parent: Option<String>,
    pub name: String,
    /// The caller's `spec` object, kept as JSON text.
    pub spec_json: String,
    pub created_at: u64,
    /// Sandbox or live (format version 4): that of the key or session that made it.
    pub environment: Environment,
}

/// A retained message the cloud owes the broker: the latest revocation envelope of a device,
/// or an empty payload that clears it (after `DELETE /devices/{id}`). Written in the same
/// commit as the state change it announces and deleted once the broker acknowledged exactly
/// this payload, so neither a broker outage nor a cloud restart loses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub device_id: String,
    /// The sealed envelope, or empty to clear the retained revocation.
    pub payload: Vec<u8>,
    /// Unix milliseconds at which the entry was queued.
    pub queued_at_ms: u64,
}
