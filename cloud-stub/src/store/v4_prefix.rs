//! Format 4 -> 5: API keys gain the prefix lists show (`ApiKeyRecord::prefix`). Touches only
//! the `api_keys` table, so it chains with other steps in any order.
//!
//! A key made before knows only its hash, so it takes no prefix (`None`): lists show its
//! environment prefix alone (the API answers `prefix: null`). Every other field is kept as
//! it was, so old keys authenticate, keep their scopes, owner, expiry and revocation.
//!
//! [`ApiKeyRecordV4`] is a frozen copy of the format-2 to format-4 record (postcard is not
//! self-describing). Never change it.

use serde::{Deserialize, Serialize};

use super::{API_KEYS, ApiKeyRecord, Environment, Hash, StoreError};
use crate::scope::{Role, ScopeSet};

/// `api_keys` values in formats 2 to 4.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecordV4 {
    pub id: String,
    pub name: String,
    pub hash: Hash,
    pub scopes: ScopeSet,
    pub role: Role,
    pub owner_email: String,
    pub environment: Environment,
    pub created_at: u64,
    pub created_by: String,
    pub last_used_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

/// Gives every API key an unknown prefix.
pub(super) fn v4_to_v5(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    super::migrate::rewrite(tx, API_KEYS, "api_keys", |k: ApiKeyRecordV4| ApiKeyRecord {
        id: k.id,
        name: k.name,
        hash: k.hash,
        scopes: k.scopes,
        role: k.role,
        owner_email: k.owner_email,
        environment: k.environment,
        created_at: k.created_at,
        created_by: k.created_by,
        last_used_at: k.last_used_at,
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
        prefix: None,
    })
}
