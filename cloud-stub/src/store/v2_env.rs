//! Format 3 -> 4: sandbox vs live. Devices, bootstrap tokens, resources and audit records
//! gain an environment. This step touches only those four tables (never members, keys or
//! sessions), so it chains with other steps in any order.
//!
//! Existing records take the **organization's environment** (`OrgRecord::environment`, what
//! `Model::environment()` answers): every record a format-2 cloud wrote was made in that
//! environment, since a key of the other one was refused on every route that wrote data. A
//! live organization's data stays live, a sandbox organization's (`--sandbox`) stays sandbox.
//! Audit records keep hash version 1, whose hash does not cover the environment, so the
//! chain verifies across the migration.
//!
//! The `*V2` types are frozen copies of the format-2 records (postcard is not
//! self-describing). Never change them.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{
    AUDIT, AuditRecord, BOOTSTRAP, BootstrapRecord, DEVICES, DeviceKey, DeviceRecord, DeviceState,
    Environment, Hash, ORG, ORG_KEY, RESOURCES, RefreshState, ResourceRecord, StoreError,
};

/// `devices` values in format 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecordV2 {
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
    pub bootstrap_token_id: Option<String>,
}

/// `bootstrap_tokens` values in format 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapRecordV2 {
    pub id: String,
    pub hash: Hash,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at: Option<u64>,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// `resources` values in format 2 (unchanged since format 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceRecordV2 {
    pub id: String,
    pub kind: String,
    pub parent: Option<String>,
    pub name: String,
    pub spec_json: String,
    pub created_at: u64,
}

/// `audit` values in format 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecordV2 {
    pub seq: u64,
    pub at_ms: u64,
    pub actor: String,
    pub origin: String,
    pub action: String,
    pub target: String,
    pub reason: Option<String>,
    pub result: String,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// The leading fields of the `org` value, stable since format 1: all this step reads of it.
#[derive(Debug, Deserialize)]
struct OrgPrefix {
    _id: String,
    _name: String,
    environment: Environment,
}

/// Gives every device, bootstrap token, resource and audit record the organization's
/// environment (live when there is no organization yet).
pub(super) fn v3_to_v4(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let environment = {
        let t = tx.open_table(ORG)?;
        let v = t.get(ORG_KEY)?;
        match v {
            None => Environment::Live,
            // `from_bytes` reads the prefix and ignores the fields after it.
            Some(v) => {
                postcard::from_bytes::<OrgPrefix>(v.value())
                    .map_err(|_| StoreError::Corrupt {
                        table: "org",
                        key: ORG_KEY.into(),
                    })?
                    .environment
            }
        }
    };
    super::migrate::rewrite(tx, BOOTSTRAP, "bootstrap_tokens", |b: BootstrapRecordV2| {
        BootstrapRecord {
            id: b.id,
            hash: b.hash,
            max_uses: b.max_uses,
            uses: b.uses,
            expires_at: b.expires_at,
            created_at: b.created_at,
            revoked_at: b.revoked_at,
            environment,
        }
    })?;
    super::migrate::rewrite(tx, DEVICES, "devices", |d: DeviceRecordV2| DeviceRecord {
        device_id: d.device_id,
        public_key: d.public_key,
        state: d.state,
        registered_at_ms: d.registered_at_ms,
        last_refresh_at: d.last_refresh_at,
        metadata: d.metadata,
        keys: d.keys,
        refresh: d.refresh,
        revoked_at: d.revoked_at,
        revoke_reason: d.revoke_reason,
        revocation_seq: d.revocation_seq,
        bootstrap_token_id: d.bootstrap_token_id,
        environment,
    })?;
    super::migrate::rewrite(tx, RESOURCES, "resources", |r: ResourceRecordV2| {
        ResourceRecord {
            id: r.id,
            kind: r.kind,
            parent: r.parent,
            name: r.name,
            spec_json: r.spec_json,
            created_at: r.created_at,
            environment,
        }
    })?;
    let mut audit = tx.open_table(AUDIT)?;
    let old: Vec<(u64, AuditRecordV2)> = audit
        .iter()?
        .map(|e| {
            let (k, v) = e?;
            let r = postcard::from_bytes(v.value()).map_err(|_| StoreError::Corrupt {
                table: "audit",
                key: k.value().to_string(),
            })?;
            Ok((k.value(), r))
        })
        .collect::<Result<_, StoreError>>()?;
    for (seq, r) in old {
        let rec = AuditRecord {
            seq: r.seq,
            at_ms: r.at_ms,
            actor: r.actor,
            origin: r.origin,
            action: r.action,
            target: r.target,
            reason: r.reason,
            result: r.result,
            source: r.source,
            request_id: r.request_id,
            environment,
            // The hash was computed without the environment: keep saying so.
            version: 1,
            prev_hash: r.prev_hash,
            hash: r.hash,
        };
        audit.insert(seq, encode(&rec)?.as_slice())?;
    }
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Db(e.to_string()))
}
