//! The state's format version and the migrations between versions. A database without a
//! `meta` table but with the `org` table was written by version 1 (the release before
//! versions); a database with neither is new and starts at [`FORMAT_VERSION`]. Each step
//! runs in one redb transaction together with the version bump, so a crash leaves either
//! the old state or the new one.

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::v1::{ApiKeyRecordV1, BootstrapRecordV1, DeviceRecordV1, MemberRecordV1, OrgRecordV1};
use super::v2_env::{BootstrapRecordV2, DeviceRecordV2};
use super::v4_prefix::ApiKeyRecordV4;
use super::{
    API_KEYS, BOOTSTRAP, CloudRateLimits, DEFAULT_BOOTSTRAP_TTL_SECS, DEFAULT_BOOTSTRAP_USES,
    DEVICES, MEMBERS, ORG, OrgRecord, Settings, StoreError,
};
use crate::scope::{Role, Scope};

/// The version this build reads and writes.
pub const FORMAT_VERSION: u64 = 5;

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VERSION_KEY: &str = "format_version";

/// `created_by` of the key made on first start.
pub const PROVISIONING: &str = "provisioning";

/// Brings the database at `db` to [`FORMAT_VERSION`]; returns the version it found.
pub fn run(db: &Database) -> Result<u64, StoreError> {
    let found = version(db)?;
    match found {
        None => {
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert(VERSION_KEY, FORMAT_VERSION)?;
            tx.commit()?;
            return Ok(FORMAT_VERSION);
        }
        Some(v) if v > FORMAT_VERSION => return Err(StoreError::TooNew(v)),
        Some(_) => {}
    }
    let mut v = found.unwrap_or(FORMAT_VERSION);
    let from = v;
    while v < FORMAT_VERSION {
        let tx = db.begin_write()?;
        match v {
            1 => v1_to_v2(&tx)?,
            2 => super::v2_to_v3::migrate(&tx)?,
            3 => super::v2_env::v3_to_v4(&tx)?,
            4 => super::v4_prefix::v4_to_v5(&tx)?,
            _ => return Err(StoreError::Db(format!("no migration from version {v}"))),
        }
        v += 1;
        tx.open_table(META)?.insert(VERSION_KEY, v)?;
        tx.commit()?;
        tracing::info!(from = v - 1, to = v, "state migrated");
    }
    Ok(from)
}

/// The stored version: `None` for a new database, 1 for one written before versions.
fn version(db: &Database) -> Result<Option<u64>, StoreError> {
    let tx = db.begin_read()?;
    let names: Vec<String> = tx
        .list_tables()
        .map_err(|e| StoreError::Db(e.to_string()))?
        .map(|t| t.name().to_owned())
        .collect();
    if names.iter().any(|n| n == META.name()) {
        let t = tx.open_table(META)?;
        let v = t.get(VERSION_KEY)?.map(|g| g.value());
        return Ok(Some(v.unwrap_or(1)));
    }
    Ok(names.iter().any(|n| n == ORG.name()).then_some(1))
}

/// Version 1 -> 2: API keys name the member whose current role bounds them and gain an
/// expiry and a revocation time; the first-start Owner key gains `org:admin` (organisation
/// administration became a scope); members gain the last accepted TOTP step; the rate limits
/// gain the per-address budget of failed authentications (its default); bootstrap tokens gain
/// a revocation time, and an expiry (90 days from the migration) and a use limit (10,000 more
/// uses) where they had none; devices gain the id of the token they registered with (unknown
/// for devices registered before).
fn v1_to_v2(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tokens: Vec<BootstrapRecordV1> = read_all(tx, BOOTSTRAP, "bootstrap_tokens")?;
    {
        let mut t = tx.open_table(BOOTSTRAP)?;
        for b in tokens {
            let rec = BootstrapRecordV2 {
                max_uses: Some(
                    b.max_uses
                        .unwrap_or_else(|| b.uses.saturating_add(DEFAULT_BOOTSTRAP_USES)),
                ),
                expires_at: Some(b.expires_at.unwrap_or(now + DEFAULT_BOOTSTRAP_TTL_SECS)),
                id: b.id,
                hash: b.hash,
                uses: b.uses,
                created_at: b.created_at,
                revoked_at: None,
            };
            t.insert(rec.id.as_str(), encode(&rec)?.as_slice())?;
        }
    }
    let devices: Vec<DeviceRecordV1> = read_all(tx, DEVICES, "devices")?;
    {
        let mut t = tx.open_table(DEVICES)?;
        for d in devices {
            let rec = DeviceRecordV2 {
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
                bootstrap_token_id: None,
            };
            t.insert(rec.device_id.as_str(), encode(&rec)?.as_slice())?;
        }
    }
    let orgs: Vec<OrgRecordV1> = read_all(tx, ORG, "org")?;
    {
        let mut t = tx.open_table(ORG)?;
        for o in orgs {
            let rl = o.settings.rate_limits;
            let rec = OrgRecord {
                id: o.id,
                name: o.name,
                environment: o.environment,
                created_at: o.created_at,
                deleted: o.deleted,
                settings: Settings {
                    device_token_expiry_secs: o.settings.device_token_expiry_secs,
                    compliance_preset: o.settings.compliance_preset,
                    rate_limits: CloudRateLimits {
                        control_plane: rl.control_plane,
                        inference: rl.inference,
                        registration: rl.registration,
                        ..CloudRateLimits::default()
                    },
                },
            };
            t.insert(super::ORG_KEY, encode(&rec)?.as_slice())?;
        }
    }
    let members: Vec<MemberRecordV1> = read_all(tx, MEMBERS, "members")?;
    let keys: Vec<ApiKeyRecordV1> = read_all(tx, API_KEYS, "api_keys")?;
    // The first Owner stands behind the provisioning key and behind keys whose chain of
    // creators is gone (such keys keep at most the role they had).
    let first_owner = members
        .iter()
        .filter(|m| m.role == Role::Owner)
        .min_by_key(|m| m.created_at)
        .map(|m| m.email.clone())
        .unwrap_or_default();
    let by_id: BTreeMap<&str, &ApiKeyRecordV1> = keys.iter().map(|k| (k.id.as_str(), k)).collect();
    {
        let mut t = tx.open_table(API_KEYS)?;
        for k in &keys {
            let mut scopes = k.scopes;
            if k.created_by == PROVISIONING {
                scopes = scopes.with(Scope::OrgAdmin).with(Scope::MetricsRead);
            }
            let rec = ApiKeyRecordV4 {
                id: k.id.clone(),
                name: k.name.clone(),
                hash: k.hash,
                scopes,
                role: k.role,
                owner_email: owner_of(k, &by_id).unwrap_or_else(|| first_owner.clone()),
                environment: k.environment,
                created_at: k.created_at,
                created_by: k.created_by.clone(),
                last_used_at: k.last_used_at,
                expires_at: None,
                revoked_at: None,
            };
            t.insert(k.id.as_str(), encode(&rec)?.as_slice())?;
        }
    }
    let mut t = tx.open_table(MEMBERS)?;
    for m in members {
        let rec = super::v2_to_v3::MemberRecordV2 {
            email: m.email,
            role: m.role,
            password_hash: m.password_hash,
            totp_secret: m.totp_secret,
            created_at: m.created_at,
            last_totp_step: None,
        };
        t.insert(rec.email.as_str(), encode(&rec)?.as_slice())?;
    }
    Ok(())
}

/// Follows `created_by` (`session:EMAIL`, `key:ID`) to the member behind a key.
fn owner_of(k: &ApiKeyRecordV1, by_id: &BTreeMap<&str, &ApiKeyRecordV1>) -> Option<String> {
    let mut cur = k;
    for _ in 0..=by_id.len() {
        if let Some(email) = cur.created_by.strip_prefix("session:") {
            return Some(email.to_owned());
        }
        cur = by_id.get(cur.created_by.strip_prefix("key:")?)?;
    }
    None
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Db(e.to_string()))
}

fn read_all<T: serde::de::DeserializeOwned>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    super::decode_all(&tx.open_table(table)?, name)
}

/// Decodes every row of `table` (called `name` in errors) as `Old` and writes it back as
/// `f(old)`, under the same key: a step that changes one record type.
pub(super) fn rewrite<Old: serde::de::DeserializeOwned, New: serde::Serialize>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    name: &'static str,
    f: impl Fn(Old) -> New,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(table)?;
    let rows: Vec<(String, Old)> = t
        .iter()?
        .map(|e| {
            let (k, v) = e?;
            let r = postcard::from_bytes(v.value()).map_err(|_| StoreError::Corrupt {
                table: name,
                key: k.value().to_owned(),
            })?;
            Ok((k.value().to_owned(), r))
        })
        .collect::<Result<_, StoreError>>()?;
    for (k, old) in rows {
        t.insert(k.as_str(), encode(&f(old))?.as_slice())?;
    }
    Ok(())
}
