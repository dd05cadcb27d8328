//! Records as format version 1 (the release before the state carried a version) wrote them.
//! Postcard is not self-describing, so reading an old record needs its exact old shape; these
//! are frozen copies, used only by [`super::migrate`]. Never change them.

use octomil_common::wire::RateLimit;
use serde::Deserialize;

use std::collections::BTreeMap;

use super::{CompliancePreset, DeviceKey, DeviceState, Environment, Hash, RefreshState};
use crate::scope::{Role, ScopeSet};

/// `api_keys` values in version 1.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeyRecordV1 {
    pub id: String,
    pub name: String,
    pub hash: Hash,
    pub scopes: ScopeSet,
    pub role: Role,
    pub environment: Environment,
    pub created_at: u64,
    pub created_by: String,
    pub last_used_at: Option<u64>,
}

/// `members` values in version 1.
#[derive(Debug, Clone, Deserialize)]
pub struct MemberRecordV1 {
    pub email: String,
    pub role: Role,
    pub password_hash: String,
    pub totp_secret: Vec<u8>,
    pub created_at: u64,
}

/// The `org` value in version 1.
#[derive(Debug, Clone, Deserialize)]
pub struct OrgRecordV1 {
    pub id: String,
    pub name: String,
    pub environment: Environment,
    pub created_at: u64,
    pub deleted: bool,
    pub settings: SettingsV1,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SettingsV1 {
    pub device_token_expiry_secs: u64,
    pub compliance_preset: CompliancePreset,
    pub rate_limits: CloudRateLimitsV1,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct CloudRateLimitsV1 {
    pub control_plane: RateLimit,
    pub inference: RateLimit,
    pub registration: RateLimit,
}

/// `bootstrap_tokens` values in version 1.
#[derive(Debug, Clone, Deserialize)]
pub struct BootstrapRecordV1 {
    pub id: String,
    pub hash: Hash,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at: Option<u64>,
    pub created_at: u64,
}

/// `devices` values in version 1. The nested types (`DeviceKey`, `RefreshState`) have not
/// changed since; copy them here before ever changing them.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceRecordV1 {
    pub device_id: String,
    pub public_key: [u8; 32],
    pub state: DeviceState,
    pub registered_at_ms: u64,
    pub last_refresh_at: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    pub keys: Vec<DeviceKey>,
    pub refresh: RefreshState,
    pub revoked_at: Option<u64>,
    pub revoke_reason: Option<String>,
    pub revocation_seq: u64,
}
