//! Protocol-2 bookkeeping (docs/device-protocol.md) kept in redb tables of its own, so the
//! device records keep their format: the cloud-wide counters (registration epoch, revocation
//! sequence) that never restart, and the epoch of each device's current registration.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition};

use super::StoreError;

pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub(super) const EPOCHS: TableDefinition<&str, u64> = TableDefinition::new("registration_epochs");

/// Incremented at every successful registration; the answer carries it.
pub const REGISTRATION_EPOCH: &str = "registration_epoch";
/// Incremented at every revocation, for every device: an envelope's `seq`.
pub const REVOCATION_SEQ: &str = "revocation_seq";

pub(super) fn load(
    tx: &redb::ReadTransaction,
    table: TableDefinition<&str, u64>,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let t = tx.open_table(table)?;
    let mut out = BTreeMap::new();
    for entry in t.iter()? {
        let (k, v) = entry?;
        out.insert(k.value().to_owned(), v.value());
    }
    Ok(out)
}

pub(super) fn put(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, u64>,
    key: &str,
    value: u64,
) -> Result<(), StoreError> {
    tx.open_table(table)?.insert(key, value)?;
    Ok(())
}
