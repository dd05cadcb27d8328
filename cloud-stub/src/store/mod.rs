//! Durable state: an in-memory model for reads, written through to redb (postcard values) for
//! every change. A change is applied to memory only after its redb transaction committed, so
//! what a caller was told always survives a restart.
//!
//! Writes go through one writer thread with group commit (see [`writer`]): callers queue a
//! check-and-change step, the writer runs every queued step in order against its working copy
//! of the model, commits the whole batch in one redb transaction (one fsync), applies it to
//! the read model and answers each caller. Reads never wait on a commit.

pub mod audit;
mod counters;
pub mod migrate;
pub mod records;
mod v1;
mod v2_env;
mod v2_to_v3;
mod v4_prefix;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit::{AuditRecord, Checkpoint};
pub use counters::{REGISTRATION_EPOCH, REVOCATION_SEQ};
pub use migrate::FORMAT_VERSION;
pub use records::*;
pub use writer::{MAX_BATCH, QUEUE_CAP, WriteStats};

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(String),
    #[error("state database record {table}/{key} is corrupt")]
    Corrupt { table: &'static str, key: String },
    #[error(
        "the state was written by a newer octomil-cloud (format version {0}; this build knows {FORMAT_VERSION})"
    )]
    TooNew(u64),
    /// The writer's queue is full: the caller should retry shortly (HTTP 503, Retry-After).
    #[error("the state writer is busy; retry shortly")]
    Busy,
    /// The writer stopped (the store is shutting down, or a step panicked).
    #[error("the state writer stopped")]
    WriterGone,
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
#[derive(Debug, Default, Clone)]
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

    pub(crate) fn apply(&mut self, change: Change) {
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

/// Told, on the writer thread, after each durable commit (and after the read model shows
/// it), which devices it changed or deleted, with their environment: what the live event hub
/// ([`crate::events`]) listens to. It must be quick and must not write to the store.
pub type DeviceHook = Box<dyn Fn(&[(String, Environment)]) + Send + Sync>;

/// Where [`Store::on_device_commit`] keeps its hook (shared with the writer thread).
#[derive(Default)]
pub(crate) struct HookSlot(OnceLock<DeviceHook>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "HookSlot(set)"
        } else {
            "HookSlot(unset)"
        })
    }
}

/// The cloud's state: one redb file plus its in-memory mirror, written by one writer thread.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    /// The committed model: what reads see. Only the writer changes it, after a commit.
    model: Arc<RwLock<Model>>,
    writer: writer::Handle,
    /// Set once by [`Store::on_device_commit`].
    device_hook: Arc<HookSlot>,
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
        let db = Arc::new(db);
        let working = model.clone();
        let model = Arc::new(RwLock::new(model));
        let device_hook = Arc::new(HookSlot::default());
        let writer =
            writer::Handle::start(db.clone(), model.clone(), working, device_hook.clone())?;
        Ok(Self {
            db,
            model,
            writer,
            device_hook,
        })
    }

    /// Calls `hook` after every commit that changed or deleted a device (see [`DeviceHook`]).
    /// Only the first hook set counts; returns false if one was already set.
    pub fn on_device_commit(&self, hook: DeviceHook) -> bool {
        self.device_hook.0.set(hook).is_ok()
    }

    fn lock(&self) -> RwLockReadGuard<'_, Model> {
        // A panic while holding the lock cannot leave the model half-changed: changes are
        // applied only after commit, one whole record at a time.
        self.model.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the committed model. Never waits on a commit: the writer holds this lock only
    /// to apply an already committed batch in memory.
    pub fn read<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.lock())
    }

    /// Counters of the write path (commits, steps, queue refusals), for metrics and benches.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Queues `f` to the writer, which runs it against the model as it stands after every
    /// write queued before it (including those in the same batch), commits its changes with
    /// the rest of its batch in one durable transaction, applies them to the read model, and
    /// only then answers. A step that fails changes nothing; a commit that fails fails every
    /// step of its batch and changes nothing. A full queue answers [`StoreError::Busy`] at
    /// once. `f` runs on the writer thread (no async runtime there) and must be quick.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Model) -> Result<(R, Vec<Change>), E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let rx = self.writer.submit(f).map_err(E::from)?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(E::from(StoreError::WriterGone)),
        }
    }

    /// Drops audit records past the compliance preset's retention, leaving a checkpoint, once
    /// the oldest record is a day past it (so this runs about once a day at most).
    fn prune_if_due(db: &Database, model: &mut Model, now_ms: u64) -> Result<(), StoreError> {
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
        let tx = db.begin_write()?;
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

    /// Writes `changes` (in order) in one durable transaction.
    fn commit(db: &Database, changes: &[Change]) -> Result<(), StoreError> {
        let tx = db.begin_write()?;
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
            prefix: None,
        }
    }

    #[tokio::test]
    async fn changes_survive_reopen_and_indexes_are_rebuilt() {
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
                .await
                .unwrap();
            store
                .write(|_| Ok::<_, StoreError>(((), vec![Change::DeleteApiKey("a".into())])))
                .await
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

    #[tokio::test]
    async fn a_failed_computation_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let r: Result<(), StoreError> = store.write(|_| Err(StoreError::Db("nope".into()))).await;
        assert!(r.is_err());
        store.read(|m| assert!(m.api_keys.is_empty()));
    }

    #[derive(Debug, PartialEq)]
    enum Refused {
        Taken,
        Failed,
        Store(String),
    }

    impl From<StoreError> for Refused {
        fn from(e: StoreError) -> Self {
            Self::Store(e.to_string())
        }
    }

    /// A registration step as the handler does it: refused if the id is taken.
    fn register(
        id: &'static str,
        hash: u8,
    ) -> impl FnOnce(&Model) -> Result<((), Vec<Change>), Refused> + Send + 'static {
        move |m| {
            if m.api_keys.contains_key(id) {
                return Err(Refused::Taken);
            }
            let mut audit = AuditRecord::new(1, "system".into(), "system", "key.create", id);
            audit.source = Some(format!("{hash}"));
            Ok((
                (),
                vec![Change::ApiKey(key(id, hash)), Change::Audit(audit)],
            ))
        }
    }

    /// Holds the writer inside a step until the returned sender is dropped, so the steps
    /// queued meanwhile form one batch.
    async fn hold_writer(
        store: &Arc<Store>,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let s = store.clone();
        let task = tokio::spawn(async move {
            s.write(move |_| {
                let _ = entered_tx.send(());
                let _ = held.recv();
                Ok::<_, StoreError>(((), vec![]))
            })
            .await
            .unwrap();
        });
        entered.await.unwrap();
        (release, task)
    }

    /// Spawns each step as its own caller and waits until all are queued behind the held
    /// writer.
    async fn queue_all<F>(
        store: &Arc<Store>,
        steps: Vec<F>,
    ) -> Vec<tokio::task::JoinHandle<Result<(), Refused>>>
    where
        F: FnOnce(&Model) -> Result<((), Vec<Change>), Refused> + Send + 'static,
    {
        let mut tasks = Vec::new();
        for (n, step) in steps.into_iter().enumerate() {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { s.write(step).await }));
            // Queue in order: wait for this one to be in before the next.
            octomil_testkit::poll::eventually(
                std::time::Duration::from_secs(5),
                "step queued",
                || {
                    let s = store.clone();
                    async move { (s.writer.queued() > n).then_some(()) }
                },
            )
            .await;
        }
        tasks
    }

    async fn results(
        tasks: Vec<tokio::task::JoinHandle<Result<(), Refused>>>,
    ) -> Vec<Result<(), Refused>> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    fn audit_chain(store: &Store) -> Vec<AuditRecord> {
        let (records, more, checkpoint) = store.audit_page(0, 1000, |_| true).unwrap();
        assert!(!more);
        audit::verify(checkpoint, &records).unwrap();
        records
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_sees_its_earlier_steps_so_one_of_two_registrations_of_an_id_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Arc::new(Store::open(&path).unwrap());
        let (release, held) = hold_writer(&store).await;
        let commits_before = store.write_stats().commits;
        let tasks = queue_all(&store, vec![register("dup", 1), register("dup", 2)]).await;
        drop(release);
        held.await.unwrap();
        assert_eq!(results(tasks).await, vec![Ok(()), Err(Refused::Taken)]);
        // Both ran in one batch, committed once.
        assert_eq!(store.write_stats().commits, commits_before + 1);
        store.read(|m| assert_eq!(m.api_keys["dup"].hash, [1; 32]));
        let chain = audit_chain(&store);
        assert_eq!(chain.len(), 1);
        drop(store);
        let store = Store::open(&path).unwrap();
        store.read(|m| assert_eq!(m.api_keys["dup"].hash, [1; 32]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_step_in_a_batch_changes_nothing_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Arc::new(Store::open(&path).unwrap());
        let (release, held) = hold_writer(&store).await;
        type Step = Box<dyn FnOnce(&Model) -> Result<((), Vec<Change>), Refused> + Send>;
        let steps: Vec<Step> = vec![
            Box::new(register("a", 1)),
            // Fails after "looking": its changes must not land, and "c" must not see them.
            Box::new(|m: &Model| {
                assert!(
                    m.api_keys.contains_key("a"),
                    "a later step sees an earlier one"
                );
                Err(Refused::Failed)
            }),
            Box::new(|m: &Model| -> Result<((), Vec<Change>), Refused> {
                assert!(m.api_keys.contains_key("a"));
                panic!("a step that panics changes nothing either");
            }),
            Box::new(register("c", 3)),
        ];
        let tasks = queue_all(&store, steps).await;
        drop(release);
        held.await.unwrap();
        let r = results(tasks).await;
        assert_eq!(r[0], Ok(()));
        assert_eq!(r[1], Err(Refused::Failed));
        assert!(matches!(r[2], Err(Refused::Store(_))), "{:?}", r[2]);
        assert_eq!(r[3], Ok(()));
        store.read(|m| {
            assert_eq!(m.api_keys.keys().collect::<Vec<_>>(), ["a", "c"]);
        });
        // The audit chain links a and c in order, with nothing of the failed steps.
        let chain = audit_chain(&store);
        assert_eq!(
            chain.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        store.read(|m| assert_eq!(m.api_keys.len(), 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_every_step_of_the_batch_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Arc::new(Store::open(&path).unwrap());
        store.write(register("before", 9)).await.unwrap();
        let head = store.read(|m| m.audit_head);
        let (release, held) = hold_writer(&store).await;
        store.writer.fail_next_commits(1);
        let tasks = queue_all(
            &store,
            vec![register("x", 1), register("y", 2), register("x", 3)],
        )
        .await;
        drop(release);
        held.await.unwrap();
        let r = results(tasks).await;
        assert!(matches!(r[0], Err(Refused::Store(_))), "{r:?}");
        assert!(matches!(r[1], Err(Refused::Store(_))), "{r:?}");
        // Refused by its own check (x was taken earlier in the batch): its own answer.
        assert_eq!(r[2], Err(Refused::Taken));
        store.read(|m| {
            assert_eq!(m.api_keys.keys().collect::<Vec<_>>(), ["before"]);
            assert!(m.api_key_by_hash(&[1; 32]).is_none());
            assert_eq!(m.audit_head, head);
        });
        assert_eq!(store.write_stats().failed_commits, 1);
        // The writer's working copy was rolled back too: x registers now, and the chain
        // continues from the committed head.
        store.write(register("x", 4)).await.unwrap();
        store.read(|m| assert_eq!(m.api_keys["x"].hash, [4; 32]));
        let chain = audit_chain(&store);
        assert_eq!(
            chain.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
            ["before", "x"]
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        store.read(|m| assert_eq!(m.api_keys.len(), 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_refused_at_once_and_reads_do_not_wait_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        store.write(register("a", 1)).await.unwrap();
        let (release, held) = hold_writer(&store).await;
        // While the writer is stuck (as in a slow fsync), reads still answer.
        assert!(store.read(|m| m.api_keys.contains_key("a")));
        let mut tasks = Vec::new();
        for _ in 0..QUEUE_CAP {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(|_| Ok::<_, StoreError>(((), vec![]))).await
            }));
        }
        octomil_testkit::poll::eventually(std::time::Duration::from_secs(5), "queue full", || {
            let s = store.clone();
            async move { (s.writer.queued() == QUEUE_CAP).then_some(()) }
        })
        .await;
        let r = store.write(register("b", 2)).await;
        assert_eq!(r, Err(Refused::Store(StoreError::Busy.to_string())));
        assert_eq!(store.write_stats().busy, 1);
        // Over HTTP that is a 503 with Retry-After, not a 500.
        let e = crate::error::ApiError::from(StoreError::Busy);
        assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((e.code, e.retry_after), ("unavailable", Some(1)));
        drop(release);
        held.await.unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        store.write(register("b", 2)).await.unwrap();
    }
}
