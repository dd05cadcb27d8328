//! Durable state: an in-memory model for reads, written through to redb (postcard values) for
//! every change. A change is applied to memory only after its redb transaction committed, so
//! what a caller was told always survives a restart.

pub mod audit;
mod counters;
pub mod migrate;
pub mod records;
mod v1;
mod v2_to_v3;
mod v2_env;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit::{AuditRecord, Checkpoint};
pub use counters::{REGISTRATION_EPOCH, REVOCATION_SEQ};
pub use migrate::FORMAT_VERSION;
pub use records::*;

const ORG: TableDefinition<&str, &[u8]> = TableDefinition::new("org");
const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const BOOTSTRAP: TableDefinition<&str, &[u8]> = TableDefinition::new("bootstrap_tokens");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// Dashboard sessions by `jti` (format version 2).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Pending invitations by id (format version 3).
const INVITATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("invitations");
/// Retained MQTT messages not yet acknowledged by the broker, keyed by device id.
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("mqtt_outbox");
const ORG_KEY: &str = "org";
/// The audit log by sequence number (format version 2).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// The audit checkpoint left by retention pruning, under [`CHECKPOINT_KEY`].
const AUDIT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");
const CHECKPOINT_KEY: &str = "checkpoint";
/// Pruning runs once the oldest record is this far past the retention.
const PRUNE_SLACK_MS: u64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(String),
    #[error("state database record {table}/{key} is corrupt")]
    Corrupt { table: &'static str, key: String },
    #[error(
        "the state was written by a newer octomil-cloud (format version {0}; this build knows {FORMAT_VERSION})"
    )]
    TooNew(u64),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One durable change. Handlers compute a list of these from the current model; the store
/// commits them in one transaction and then applies them to memory.
#[derive(Debug, Clone)]
pub enum Change {
    Org(OrgRecord),
    ApiKey(ApiKeyRecord),
    DeleteApiKey(String),
    Device(DeviceRecord),
    DeleteDevice(String),
    Bootstrap(BootstrapRecord),
    Member(MemberRecord),
    DeleteMember(String),
    Resource(ResourceRecord),
    OutboxPut(OutboxRecord),
    DeleteOutbox(String),
    /// A cloud-wide counter's new value (see [`counters`]).
    Counter(&'static str, u64),
    /// The registration epoch of a device's current registration.
    Epoch(String, u64),
    Session(SessionRecord),
    DeleteSession(String),
    Invitation(InvitationRecord),
    DeleteInvitation(String),
    /// Appended to the audit log; the store links it into the chain at commit.
    Audit(AuditRecord),
}

/// Everything the cloud knows, with the hash indexes that make bearer lookups O(1).
#[derive(Debug, Default)]
pub struct Model {
    pub org: Option<OrgRecord>,
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    pub devices: BTreeMap<String, DeviceRecord>,
    pub bootstrap: BTreeMap<String, BootstrapRecord>,
    pub members: BTreeMap<String, MemberRecord>,
    /// Keyed by `kind/parent/id`, so listing a kind is a range scan.
    pub resources: BTreeMap<String, ResourceRecord>,
    /// Retained messages owed to the broker, by device id (one per device: the newest wins).
    pub outbox: BTreeMap<String, OutboxRecord>,
    /// Cloud-wide counters that never restart, by name.
    pub counters: BTreeMap<String, u64>,
    /// Registration epoch by device id (absent: registered before protocol 2, epoch 0).
    pub epochs: BTreeMap<String, u64>,
    /// Live dashboard sessions by `jti`.
    pub sessions: BTreeMap<String, SessionRecord>,
    /// Pending invitations by id.
    pub invitations: BTreeMap<String, InvitationRecord>,
    /// The newest audit record (sequence and hash).
    pub audit_head: Checkpoint,
    /// Unix ms of the oldest audit record kept, if any.
    pub audit_oldest_ms: Option<u64>,
    api_key_by_hash: HashMap<Hash, String>,
    device_by_key_hash: HashMap<Hash, String>,
    bootstrap_by_hash: HashMap<Hash, String>,
}

impl Model {
    pub fn api_key_by_hash(&self, h: &Hash) -> Option<&ApiKeyRecord> {
        self.api_key_by_hash
            .get(h)
            .and_then(|id| self.api_keys.get(id))
    }

    pub fn device_by_key_hash(&self, h: &Hash) -> Option<&DeviceRecord> {
        self.device_by_key_hash
            .get(h)
            .and_then(|id| self.devices.get(id))
    }

    pub fn bootstrap_by_hash(&self, h: &Hash) -> Option<&BootstrapRecord> {
        self.bootstrap_by_hash
            .get(h)
            .and_then(|id| self.bootstrap.get(id))
    }

    /// Keys and device keys take the organization's environment prefix.
    pub fn environment(&self) -> Environment {
        self.org
            .as_ref()
            .map_or(Environment::Live, |o| o.environment)
    }

    /// The current value of a cloud-wide counter (0 before its first use).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// The registration epoch of `device_id`'s current registration.
    pub fn epoch_of(&self, device_id: &str) -> u64 {
        self.epochs.get(device_id).copied().unwrap_or(0)
    }

    pub fn resource_key(kind: &str, parent: Option<&str>, id: &str) -> String {
        format!("{kind}/{}/{id}", parent.unwrap_or(""))
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Org(o) => self.org = Some(o),
            Change::ApiKey(k) => {
                self.api_key_by_hash.insert(k.hash, k.id.clone());
                self.api_keys.insert(k.id.clone(), k);
            }
            Change::DeleteApiKey(id) => {
                if let Some(k) = self.api_keys.remove(&id) {
                    self.api_key_by_hash.remove(&k.hash);
                }
            }
            Change::Device(d) => {
                self.unindex_device(&d.device_id);
                for k in &d.keys {
                    self.device_by_key_hash.insert(k.hash, d.device_id.clone());
                }
                self.devices.insert(d.device_id.clone(), d);
            }
            Change::DeleteDevice(id) => {
                self.unindex_device(&id);
                self.devices.remove(&id);
            }
            Change::Bootstrap(b) => {
                self.bootstrap_by_hash.insert(b.hash, b.id.clone());
                self.bootstrap.insert(b.id.clone(), b);
            }
            Change::Member(m) => {
                self.members.insert(m.email.clone(), m);
            }
            Change::DeleteMember(email) => {
                self.members.remove(&email);
            }
            Change::Resource(r) => {
                let key = Self::resource_key(&r.kind, r.parent.as_deref(), &r.id);
                self.resources.insert(key, r);
            }
            Change::OutboxPut(o) => {
                self.outbox.insert(o.device_id.clone(), o);
            }
            Change::DeleteOutbox(id) => {
                self.outbox.remove(&id);
            }
            Change::Counter(name, v) => {
                self.counters.insert(name.to_owned(), v);
            }
            Change::Epoch(id, v) => {
                self.epochs.insert(id, v);
            }
            Change::Session(r) => {
                self.sessions.insert(r.jti.clone(), r);
            }
            Change::DeleteSession(jti) => {
                self.sessions.remove(&jti);
            }
            Change::Invitation(r) => {
                self.invitations.insert(r.id.clone(), r);
            }
            Change::DeleteInvitation(id) => {
                self.invitations.remove(&id);
            }
            Change::Audit(r) => {
                self.audit_head = Checkpoint {
                    seq: r.seq,
                    hash: r.hash,
                };
                self.audit_oldest_ms.get_or_insert(r.at_ms);
            }
        }
    }

    /// Changes that end every session of `email` (logout everywhere).
    pub fn end_sessions_of(&self, email: &str) -> Vec<Change> {
        self.sessions
            .values()
            .filter(|r| r.email == email)
            .map(|r| Change::DeleteSession(r.jti.clone()))
            .collect()
    }

    fn unindex_device(&mut self, id: &str) {
        if let Some(old) = self.devices.get(id) {
            for k in &old.keys {
                self.device_by_key_hash.remove(&k.hash);
            }
        }
    }
}

/// The cloud's state: one redb file plus its in-memory mirror.
#[derive(Debug)]
pub struct Store {
    db: Database,
    model: Mutex<Model>,
}

impl Store {
    /// Opens (or creates) `path`, migrates it to [`FORMAT_VERSION`], and loads every record.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        restrict(path)?;
        let db = Database::create(path)?;
        migrate::run(&db)?;
        {
            // Create the tables so read transactions on a fresh file find them.
            let tx = db.begin_write()?;
            for t in [
                ORG,
                API_KEYS,
                DEVICES,
                BOOTSTRAP,
                MEMBERS,
                RESOURCES,
                OUTBOX,
                SESSIONS,
                AUDIT_META,
                INVITATIONS,
            ] {
                tx.open_table(t)?;
            }
            tx.open_table(counters::COUNTERS)?;
            tx.open_table(counters::EPOCHS)?;
            tx.open_table(AUDIT)?;
            tx.commit()?;
        }
        let mut model = Model::default();
        let tx = db.begin_read()?;
        let org: Vec<OrgRecord> = load(&tx, ORG, "org")?;
        model.org = org.into_iter().next();
        for r in load(&tx, API_KEYS, "api_keys")? {
            model.apply(Change::ApiKey(r));
        }
        for r in load(&tx, DEVICES, "devices")? {
            model.apply(Change::Device(r));
        }
        for r in load(&tx, BOOTSTRAP, "bootstrap_tokens")? {
            model.apply(Change::Bootstrap(r));
        }
        for r in load(&tx, MEMBERS, "members")? {
            model.apply(Change::Member(r));
        }
        for r in load(&tx, RESOURCES, "resources")? {
            model.apply(Change::Resource(r));
        }
        for r in load(&tx, OUTBOX, "mqtt_outbox")? {
            model.apply(Change::OutboxPut(r));
        }
        model.counters = counters::load(&tx, counters::COUNTERS)?;
        model.epochs = counters::load(&tx, counters::EPOCHS)?;
        for r in load(&tx, SESSIONS, "sessions")? {
            model.apply(Change::Session(r));
        }
        for r in load(&tx, INVITATIONS, "invitations")? {
            model.apply(Change::Invitation(r));
        }
        {
            let t = tx.open_table(AUDIT)?;
            let first = t
                .first()?
                .map(|(_, v)| decode_audit(v.value()))
                .transpose()?;
            let last = t
                .last()?
                .map(|(_, v)| decode_audit(v.value()))
                .transpose()?;
            model.audit_oldest_ms = first.map(|r| r.at_ms);
            model.audit_head = match last {
                Some(r) => Checkpoint {
                    seq: r.seq,
                    hash: r.hash,
                },
                None => read_checkpoint(&tx)?,
            };
        }
        Ok(Self {
            db,
            model: Mutex::new(model),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        // A panic while holding the lock cannot leave the model half-changed: changes are
        // applied only after commit, one whole record at a time.
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.lock())
    }

    /// Computes changes from the model, commits them durably, then applies them. `f` runs
    /// under the store's lock, so read-check-write sequences are atomic.
    pub fn write<R, E>(&self, f: impl FnOnce(&Model) -> Result<(R, Vec<Change>), E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let mut model = self.lock();
        let (out, mut changes) = f(&model)?;
        if !changes.is_empty() {
            // Link audit records into the chain, in order, after the current head.
            let mut head = model.audit_head;
            let mut audited = None;
            for c in &mut changes {
                if let Change::Audit(r) = c {
                    r.seal(head);
                    head = Checkpoint {
                        seq: r.seq,
                        hash: r.hash,
                    };
                    audited = Some(r.at_ms);
                }
            }
            self.commit(&changes)?;
            for c in changes {
                model.apply(c);
            }
            if let Some(now_ms) = audited {
                self.prune_if_due(&mut model, now_ms)?;
            }
        }
        Ok(out)
    }

    /// Drops audit records past the compliance preset's retention, leaving a checkpoint, once
    /// the oldest record is a day past it (so this runs about once a day at most).
    fn prune_if_due(&self, model: &mut Model, now_ms: u64) -> Result<(), StoreError> {
        let preset = model
            .org
            .as_ref()
            .map_or(CompliancePreset::None, |o| o.settings.compliance_preset);
        let keep_ms = audit::retention_days(preset) * 86_400_000;
        let cutoff = now_ms.saturating_sub(keep_ms);
        if model
            .audit_oldest_ms
            .is_none_or(|oldest| oldest.saturating_add(PRUNE_SLACK_MS) > cutoff)
        {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        let oldest = {
            let mut t = tx.open_table(AUDIT)?;
            let mut checkpoint = None;
            loop {
                let Some((_, v)) = t.first()? else { break };
                let r = decode_audit(v.value())?;
                if r.at_ms >= cutoff {
                    break;
                }
                drop(v);
                t.remove(r.seq)?;
                checkpoint = Some(Checkpoint {
                    seq: r.seq,
                    hash: r.hash,
                });
            }
            if let Some(cp) = checkpoint {
                let bytes = postcard::to_stdvec(&cp).map_err(|e| StoreError::Db(e.to_string()))?;
                tx.open_table(AUDIT_META)?
                    .insert(CHECKPOINT_KEY, bytes.as_slice())?;
            }
            t.first()?
                .map(|(_, v)| decode_audit(v.value()))
                .transpose()?
        };
        tx.commit()?;
        model.audit_oldest_ms = oldest.map(|r| r.at_ms);
        Ok(())
    }

    /// Audit records after `after_seq` that `keep` accepts, at most `limit`, oldest first;
    /// also whether more follow, and the pruning checkpoint.
    pub fn audit_page(
        &self,
        after_seq: u64,
        limit: usize,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Result<(Vec<AuditRecord>, bool, Checkpoint), StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(AUDIT)?;
        let mut out = Vec::new();
        let mut more = false;
        for entry in t.range(after_seq.saturating_add(1)..)? {
            let (_, v) = entry?;
            let r = decode_audit(v.value())?;
            if !keep(&r) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(r);
        }
        Ok((out, more, read_checkpoint(&tx)?))
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        for c in changes {
            match c {
                Change::Org(o) => put(&tx, ORG, ORG_KEY, o)?,
                Change::ApiKey(k) => put(&tx, API_KEYS, &k.id, k)?,
                Change::DeleteApiKey(id) => del(&tx, API_KEYS, id)?,
                Change::Device(d) => put(&tx, DEVICES, &d.device_id, d)?,
                Change::DeleteDevice(id) => del(&tx, DEVICES, id)?,
                Change::Bootstrap(b) => put(&tx, BOOTSTRAP, &b.id, b)?,
                Change::Member(m) => put(&tx, MEMBERS, &m.email, m)?,
                Change::DeleteMember(e) => del(&tx, MEMBERS, e)?,
                Change::Resource(r) => put(
                    &tx,
                    RESOURCES,
                    &Model::resource_key(&r.kind, r.parent.as_deref(), &r.id),
                    r,
                )?,
                Change::OutboxPut(o) => put(&tx, OUTBOX, &o.device_id, o)?,
                Change::DeleteOutbox(id) => del(&tx, OUTBOX, id)?,
                Change::Counter(name, v) => counters::put(&tx, counters::COUNTERS, name, *v)?,
                Change::Epoch(id, v) => counters::put(&tx, counters::EPOCHS, id, *v)?,
                Change::Session(r) => put(&tx, SESSIONS, &r.jti, r)?,
                Change::DeleteSession(jti) => del(&tx, SESSIONS, jti)?,
                Change::Invitation(r) => put(&tx, INVITATIONS, &r.id, r)?,
                Change::DeleteInvitation(id) => del(&tx, INVITATIONS, id)?,
                Change::Audit(r) => {
                    let bytes =
                        postcard::to_stdvec(r).map_err(|e| StoreError::Db(e.to_string()))?;
                    tx.open_table(AUDIT)?.insert(r.seq, bytes.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Creates the database file 0600 before redb opens it (redb would honour the umask), and
/// tightens an existing one.
fn restrict(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Db(format!("{}: {e}", path.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)
}

fn put<T: Serialize>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| StoreError::Db(e.to_string()))?;
    tx.open_table(table)?.insert(key, bytes.as_slice())?;
    Ok(())
}

fn del(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<(), StoreError> {
    tx.open_table(table)?.remove(key)?;
    Ok(())
}

fn decode_audit(bytes: &[u8]) -> Result<AuditRecord, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt {
        table: "audit",
        key: String::new(),
    })
}

fn read_checkpoint(tx: &redb::ReadTransaction) -> Result<Checkpoint, StoreError> {
    let t = tx.open_table(AUDIT_META)?;
    let v = t.get(CHECKPOINT_KEY)?;
    match v {
        None => Ok(Checkpoint::default()),
        Some(v) => postcard::from_bytes(v.value()).map_err(|_| StoreError::Corrupt {
            table: "audit_meta",
            key: CHECKPOINT_KEY.into(),
        }),
    }
}

fn load<T: DeserializeOwned>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    decode_all(&tx.open_table(table)?, name)
}

/// Every row of `table` (called `name` in errors) decoded from postcard, in key order; a row
/// that does not decode is [`StoreError::Corrupt`]. Read and write transactions (the
/// migrations) both go through here.
fn decode_all<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let rec = postcard::from_bytes(v.value()).map_err(|_| StoreError::Corrupt {
            table: name,
            key: k.value().to_owned(),
        })?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Role, ScopeSet};

    fn key(id: &str, hash: u8) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: "k".into(),
            hash: [hash; 32],
            scopes: ScopeSet::all(),
            role: Role::Owner,
            owner_email: "owner@example.com".into(),
            environment: Environment::Live,
            created_at: 1,
            created_by: "owner".into(),
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn changes_survive_reopen_and_indexes_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|_| {
                    Ok::<_, StoreError>((
                        (),
                        vec![Change::ApiKey(key("a", 1)), Change::ApiKey(key("b", 2))],
                    ))
                })
                .unwrap();
            store
                .write(|_| Ok::<_, StoreError>(((), vec![Change::DeleteApiKey("a".into())])))
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        store.read(|m| {
            assert!(m.api_key_by_hash(&[1; 32]).is_none());
            assert_eq!(
                m.api_key_by_hash(&[2; 32]).map(|k| k.id.as_str()),
                Some("b")
            );
        });
    }

    #[test]
    fn a_failed_computation_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let r: Result<(), StoreError> = store.write(|_| Err(StoreError::Db("nope".into())));
        assert!(r.is_err());
        store.read(|m| assert!(m.api_keys.is_empty()));
    }
}
