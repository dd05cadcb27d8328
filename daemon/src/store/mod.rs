//! The secure credential store: sealed, crash-safe device state in `state_dir/state.redb`.
//!
//! The whole [`Persisted`] state is postcard-encoded and sealed with XChaCha20-Poly1305 under
//! a data key of its own (see [`seal`] for the record format), and kept as one row of one redb
//! table, so a save is a single durable write transaction: after `kill -9` or a power cut the
//! store holds either the previous record or the new one, never a mix. Each record carries a
//! generation that grows by one per save. The data keys live in `state.keys`, wrapped by the
//! [`SealKey`], and each is destroyed once the next record is committed, so the old records
//! redb leaves in its freed pages open with nothing the state directory holds (see
//! `datakey.rs`). Nothing unencrypted ever reaches the disk, a log line, an error or `Debug`
//! output.
//!
//! There is no second copy (an earlier version cached the sealed record in the kernel
//! keyring): the daemon loads the store once per start and keeps its state in memory, so a
//! cache had nothing to save; `docs/security.md` ("No keyring cache") has the measurements.

mod datakey;
mod error;
mod fsx;
pub mod seal;
#[cfg(test)]
mod tests;
mod v1;
mod v3;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable as _, TableDefinition, TableError,
};
use serde::{Deserialize, Serialize};

pub use error::StoreError;
/// Creates a directory 0700 (tightening a looser existing one): the daemon's one way to make a
/// private directory.
pub use fsx::ensure_private_dir;
/// Replaces a file atomically with a 0600 one: the daemon's one atomic private write.
pub use fsx::replace_private_file;
pub use seal::{KeySource, SealKey};

/// Reads a secret file someone else provisioned (the bootstrap token file): opened once
/// without following a symlink, checked through that descriptor (a regular file owned by this
/// process's uid or root, no group/other permission bits: refused, never tightened) and read
/// from it. `Ok(None)` when the file does not exist.
pub fn read_provisioned_secret(path: &Path) -> Result<Option<Secret<String>>, StoreError> {
    read_secret_text(path, fsx::LooseMode::Refuse)
}

/// Reads a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`) through one descriptor: a regular
/// file, no symlink; its mode is systemd's. `Ok(None)` when it does not exist.
pub fn read_credential(path: &Path) -> Result<Option<Secret<String>>, StoreError> {
    read_secret_text(path, fsx::LooseMode::Trust)
}

/// Reads one of the daemon's own private files (the limiter state) through one checked
/// descriptor: a regular file (no symlink followed) owned by us or root, tightened to 0600 if
/// looser. `Ok(None)` when it does not exist.
pub fn read_private_bytes(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fsx::read_private_file(path, fsx::LooseMode::Tighten) {
        Ok(mut bytes) => Ok(Some(std::mem::take(&mut *bytes))),
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn read_secret_text(
    path: &Path,
    loose: fsx::LooseMode,
) -> Result<Option<Secret<String>>, StoreError> {
    match fsx::read_private_file(path, loose) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).map_err(|_| StoreError::NotText {
                path: path.to_path_buf(),
            })?;
            Ok(Some(Secret::new(text.trim().to_owned())))
        }
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub use datakey::KEYS_FILE;
use datakey::{DataKey, KeyFile};
use error::open_error;
use seal::{FIRST_DATA_KEY_FORMAT, Header, OpenError};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.redb";
/// A fresh database is built under this name when a store of an older format is migrated,
/// then renamed over [`DB_FILE`].
const MIGRATE_FILE: &str = ".state.redb.migrate";
/// The one table and the one row that hold the sealed record.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sealed_state");
const ROW: &str = "persisted";
/// redb's page cache; the store is a few KiB and the daemon must idle under 10 MiB.
const DB_CACHE_BYTES: usize = 256 * 1024;

/// Everything the daemon keeps across restarts. Secret fields are [`Secret`]s, so the derived
/// `Debug` prints `***` for them.
///
/// postcard is not self-describing: changing this struct or any type in it (including
/// `RateLimits` from `common`) changes the on-disk format. Bump [`seal::FORMAT_VERSION`] and
/// keep a decoder for the old layout (see `v1.rs`, `v3.rs`); the test
/// `format_v4_layout_is_pinned` fails until you do. Wire types never go in here (postcard
/// cannot carry their `skip_serializing_if` fields): the store has its own records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The device's Ed25519 key, made once before first registration.
    pub identity: Option<Identity>,
    /// The current device key and refresh token.
    pub credentials: Option<Credentials>,
    /// Set once the cloud revoked this device; survives restarts.
    pub revoked: Option<Revoked>,
    /// Highest revocation envelope `seq` acted on (replay protection).
    pub last_revocation_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub device_id: String,
    pub signing_key_seed: Secret<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub api_key: Secret<String>,
    pub refresh_token: Secret<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// Unix seconds when this key was received (lifetime = `expires_at - issued_at`).
    pub issued_at: u64,
    pub registered_at_ms: u64,
    pub last_refresh: Option<u64>,
    /// The cloud's Ed25519 revocation key, pinned at registration.
    pub revocation_public_key: [u8; 32],
    pub mqtt: Option<MqttRecord>,
    pub rate_limits: RateLimits,
    /// The cloud's `registration_epoch` for this registration (format 2; 0 when migrated
    /// from format 1): revocation envelopes for older epochs are stale.
    pub registration_epoch: u64,
}

/// The broker details the cloud gave at registration (replaced by each refresh answer that
/// carries them): the store's own record, not the wire `MqttInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttRecord {
    pub url: String,
    pub topic: String,
    pub username: String,
    /// The MQTT client certificate (format 4; `None` from clouds before client certificates
    /// and in stores migrated from format 3: the device logs in with its key then).
    pub client_cert: Option<ClientCert>,
}

/// An MQTT client certificate, kept with the key it was issued with (persisted before use).
/// Not a secret: it certifies the device's public key; the private half is the identity seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    /// PEM: the device's certificate, then the issuing CA's.
    pub chain_pem: String,
    /// Unix seconds on the device's clock when it was received, and that plus the cloud's
    /// `client_cert_expires_in`: scheduled exactly like the key's `issued_at`/`expires_at`
    /// (the lifetime is their difference), never from the certificate's own dates.
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub device_id: String,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
    pub seq: Option<u64>,
}

/// The open store. Cheap to share behind an `Arc`: redb serialises writers, and every load
/// reads a consistent snapshot.
pub struct Store {
    db: Database,
    key: SealKey,
    /// `state.keys`. The lock is held for a whole save, slots included: two saves must not
    /// interleave their slot writes and destroys.
    keys: Mutex<KeyFile>,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("key", &self.key)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `state_dir/state.redb` (dir 0700 and file 0600 from the start: the file is
    /// created 0600 before redb opens it; looser existing modes are tightened with a warning)
    /// and checks that the record in it opens with `key`, so a wrong key fails start-up
    /// instead of the first request. The key is checked through a read-only handle first, so a
    /// wrong key leaves the file byte for byte as it was (except after a crash, when redb's
    /// writable open must repair the file before anything can be read).
    pub fn open(state_dir: &Path, key: SealKey) -> Result<Store, StoreError> {
        fsx::ensure_private_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let keys_path = state_dir.join(KEYS_FILE);
        fsx::ensure_private_file(&path)?;
        precheck(&path, &keys_path, &key)?;
        let keys = KeyFile::open_or_create(&keys_path)?;
        let db = builder().create(&path).map_err(|e| open_error(&path, e))?;
        let store = Store {
            db,
            key,
            keys: Mutex::new(keys),
            path,
        };
        let store = store.migrate(state_dir)?;
        store.load()?;
        store.destroy_unreferenced_key()?;
        Ok(store)
    }

    /// A store of format 1 or 2 holds records sealed under the seal key alone, in its live
    /// page and in freed ones. It is rewritten as a fresh database holding one record of the
    /// current format (the next generation) and renamed over the old file, so no record sealed
    /// under the seal key alone stays in the state directory. A crash before the rename leaves
    /// the old store (the half-built file is discarded next time); after it, the new one.
    ///
    /// A format-3 record (sealed under a data key, the format-2 layout) is simply saved again
    /// in the current format: one ordinary commit at the next generation, after which its data
    /// key is destroyed like any previous record's.
    fn migrate(self, state_dir: &Path) -> Result<Store, StoreError> {
        let Some(record) = self.read_record()? else {
            return Ok(self);
        };
        let header = Header::parse(&record).map_err(|e| e.into_store_error(&self.path))?;
        if header.version >= seal::FORMAT_VERSION {
            return Ok(self);
        }
        if header.version >= FIRST_DATA_KEY_FORMAT {
            self.commit(|current| current.unwrap_or_else(|| Ok(Persisted::default())))?;
            tracing::info!(
                path = %self.path.display(),
                from = header.version,
                to = seal::FORMAT_VERSION,
                "migrated the store"
            );
            return Ok(self);
        }
        let state = self.unseal(&self.lock_keys(), &record)?;
        let tmp = state_dir.join(MIGRATE_FILE);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    action: "remove",
                    path: tmp,
                    source,
                });
            }
        }
        fsx::ensure_private_file(&tmp)?;
        let generation = next_generation(&self.path, Some(&record))?;
        {
            let fresh = builder().create(&tmp).map_err(|e| open_error(&tmp, e))?;
            let keys = self.lock_keys();
            let mut tx = fresh.begin_write().map_err(|e| db_err(&tmp, e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| db_err(&tmp, e))?;
            {
                let mut table = tx.open_table(TABLE).map_err(|e| db_err(&tmp, e))?;
                let sealed = self.seal_new(&keys, generation, &state)?;
                table
                    .insert(ROW, sealed.as_slice())
                    .map_err(|e| db_err(&tmp, e))?;
            }
            tx.commit().map_err(|e| db_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|source| StoreError::Io {
            action: "replace",
            path: self.path.clone(),
            source,
        })?;
        fsx::sync_dir(state_dir)?;
        tracing::info!(
            path = %self.path.display(),
            from = header.version,
            to = seal::FORMAT_VERSION,
            "migrated the store"
        );
        let Store {
            db,
            key,
            keys,
            path,
        } = self;
        drop(db);
        let db = builder().create(&path).map_err(|e| open_error(&path, e))?;
        Ok(Store {
            db,
            key,
            keys,
            path,
        })
    }

    /// After a crash between a commit and the destruction of the previous data key (or
    /// before a commit that never happened), the slot the current record does not use may
    /// still hold a key: destroy it.
    fn destroy_unreferenced_key(&self) -> Result<(), StoreError> {
        let keys = self.lock_keys();
        let Some(record) = self.read_record()? else {
            // No record: no slot is referenced.
            keys.destroy(0)?;
            return keys.destroy(1);
        };
        let header = Header::parse(&record).map_err(|e| e.into_store_error(&self.path))?;
        keys.destroy(header.generation.wrapping_add(1))
    }

    fn lock_keys(&self) -> MutexGuard<'_, KeyFile> {
        // A panic while the lock was held left the file in one of the states a crash can
        // leave: still usable.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a record with the key its format needs: the seal key (formats 1 and 2) or the
    /// data key of its generation from `state.keys` (format 3).
    fn unseal(&self, keys: &KeyFile, record: &[u8]) -> Result<Persisted, StoreError> {
        unseal(&self.key, keys, record).map_err(|e| e.into_store_error(&self.path))
    }

    /// Seals `state` as `generation` under a fresh data key, which is durably in its slot
    /// before this returns (and so before the record can be committed).
    fn seal_new(
        &self,
        keys: &KeyFile,
        generation: u64,
        state: &Persisted,
    ) -> Result<Vec<u8>, StoreError> {
        let dk = DataKey::generate()?;
        keys.write(&self.key, generation, &dk)?;
        seal::seal(&dk, generation, state).map_err(|e| e.into_store_error(&self.path))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and unseals the record. An empty store is `Persisted::default()`; a record that
    /// does not open is an error, never an empty state.
    pub fn load(&self) -> Result<Persisted, StoreError> {
        let keys = self.lock_keys();
        let Some(disk) = self.read_record()? else {
            return Ok(Persisted::default());
        };
        self.unseal(&keys, &disk)
    }

    /// Durable and atomic: one redb write transaction (`Durability::Immediate`) replaces the
    /// record with `state` sealed at the next generation under a fresh data key; the previous
    /// record's data key is destroyed once the new record is committed.
    pub fn save(&self, state: &Persisted) -> Result<(), StoreError> {
        self.commit(|_| Ok(state.clone()))
    }

    /// Revocation: removes identity and credentials, records `revoked` (and its `seq` as the
    /// last one acted on), in one durable transaction, then destroys the previous record's
    /// data key: once this returns, no earlier record left in `state.redb`'s freed pages opens
    /// with anything the state directory holds, seal key included. A record that no longer
    /// opens is overwritten all the same: the secrets must go either way.
    pub fn wipe_secrets(&self, revoked: Revoked) -> Result<(), StoreError> {
        self.commit(|current| {
            let mut state = match current {
                None => Persisted::default(),
                Some(Ok(state)) => state,
                Some(Err(e)) => {
                    tracing::warn!(
                        error = %e,
                        "revocation overwrites an unreadable store"
                    );
                    Persisted::default()
                }
            };
            state.identity = None;
            state.credentials = None;
            state.last_revocation_seq = state.last_revocation_seq.max(revoked.seq);
            state.revoked = Some(revoked);
            Ok(state)
        })
    }

    fn read_record(&self) -> Result<Option<Vec<u8>>, StoreError> {
        read_record(&self.db).map_err(|e| self.db_err(e))
    }

    /// One durable write transaction: `make` gets the current record (opened, if there is
    /// one) and returns the new state, which is sealed at the next generation under a fresh
    /// data key and replaces the old record on commit. Then the old record's key is destroyed.
    fn commit(
        &self,
        make: impl FnOnce(Option<Result<Persisted, StoreError>>) -> Result<Persisted, StoreError>,
    ) -> Result<(), StoreError> {
        let keys = self.lock_keys();
        let mut tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.db_err(e))?;
        let generation;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| self.db_err(e))?;
            let current = table
                .get(ROW)
                .map_err(|e| self.db_err(e))?
                .map(|guard| guard.value().to_vec());
            generation = next_generation(&self.path, current.as_deref())?;
            let state = make(current.map(|bytes| self.unseal(&keys, &bytes)))?;
            let record = self.seal_new(&keys, generation, &state)?;
            table
                .insert(ROW, record.as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        // The new record is durable: the previous one's key may go. Should this fail, the
        // next open destroys it.
        if let Err(e) = keys.destroy(generation.wrapping_sub(1)) {
            tracing::warn!(error = %e, "cannot destroy the previous record's data key yet");
        }
        Ok(())
    }

    /// Writes `record` as is (tests plant records of other formats this way).
    #[cfg(test)]
    fn put_raw_record(&self, record: &[u8]) {
        let tx = self.db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap().insert(ROW, record).unwrap();
        tx.commit().unwrap();
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_err(&self.path, e)
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The generation after `current`'s. A header we cannot read (say, a newer format) is never
/// overwritten.
fn next_generation(path: &Path, current: Option<&[u8]>) -> Result<u64, StoreError> {
    match current {
        None => Ok(1),
        Some(bytes) => Header::parse(bytes)
            .map_err(|e| e.into_store_error(path))?
            .generation
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: "the generation counter is exhausted",
            }),
    }
}

fn unseal(key: &SealKey, keys: &KeyFile, record: &[u8]) -> Result<Persisted, OpenError> {
    let header = Header::parse(record)?;
    if header.version < FIRST_DATA_KEY_FORMAT {
        return seal::open(key, record);
    }
    let dk = keys.read(key, header.generation)?;
    seal::open(&dk, record)
}

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(DB_CACHE_BYTES);
    builder
}

fn read_record(db: &impl ReadableDatabase) -> Result<Option<Vec<u8>>, redb::Error> {
    let tx = db.begin_read()?;
    let table = match tx.open_table(TABLE) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(ROW)?.map(|guard| guard.value().to_vec()))
}

/// Checks an existing file through a read-only handle before the writable open, because a
/// writable redb handle rewrites parts of the file when it opens and closes: a daemon started
/// with the wrong key must leave the store exactly as it found it. A file that needs redb's
/// crash recovery cannot be opened read-only; it is checked after the (repairing) writable
/// open instead.
fn precheck(path: &Path, keys_path: &Path, key: &SealKey) -> Result<(), StoreError> {
    let empty = std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .unwrap_or(false);
    if empty {
        return Ok(());
    }
    let db = match builder().open_read_only(path) {
        Ok(db) => db,
        Err(e) => {
            let err = open_error(path, e);
            return match err {
                StoreError::Locked { .. } | StoreError::NotAStore { .. } => Err(err),
                other => {
                    tracing::debug!(error = %other, "read-only check unavailable; checking after open");
                    Ok(())
                }
            };
        }
    };
    let record = match read_record(&db) {
        Ok(record) => record,
        Err(e) => {
            tracing::debug!(error = %e, "read-only check failed; checking after open");
            return Ok(());
        }
    };
    let Some(bytes) = record else {
        return Ok(());
    };
    let header = Header::parse(&bytes).map_err(|e| e.into_store_error(path))?;
    if header.version < FIRST_DATA_KEY_FORMAT {
        return seal::open(key, &bytes)
            .map(drop)
            .map_err(|e| e.into_store_error(path));
    }
    let Some(keys) = KeyFile::open_read_only(keys_path)? else {
        return Err(OpenError::DataKeyMissing.into_store_error(path));
    };
    unseal(key, &keys, &bytes)
        .map(drop)
        .map_err(|e| e.into_store_error(path))
}
