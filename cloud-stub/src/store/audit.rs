//! The audit log: one record per change an operator, a device or the system made, appended in
//! the same redb transaction as the change and hash-chained (each record's hash covers its
//! fields and the previous record's hash). Retention pruning keeps a checkpoint (the sequence
//! and hash of the newest pruned record), so the chain still verifies from there.
//!
//! Each record says what its hash covers (`version`): records written before format 4 (hash
//! version 1) cover the fields they had, so they still verify after the migration gave them an
//! environment; records of hash version 2 cover their environment as well.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CompliancePreset, Environment, Hash};

/// The hash version of records written now (see [`AuditRecord::compute_hash`]).
pub const HASH_VERSION: u8 = 2;

/// One audit record (format version 4; see [`super::v2_env`] for version 2's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, never reused.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `key:ID`, `session:EMAIL`, `device:ID` or `system`.
    pub actor: String,
    /// `api`, `dashboard`, `device` or `system`.
    pub origin: String,
    /// What happened, e.g. `member.add`, `device.revoke`.
    pub action: String,
    /// What it happened to (an id or an email).
    pub target: String,
    pub reason: Option<String>,
    /// `ok` (refused calls change nothing and are not recorded).
    pub result: String,
    /// The source address of the request.
    pub source: Option<String>,
    pub request_id: Option<String>,
    /// Sandbox or live: the environment of what the record is about (the device, token or
    /// resource), or of the key that acted. Records migrated from format 2 took the
    /// organization's environment.
    pub environment: Environment,
    /// What `hash` covers: 1 for records written before format 4 (not the environment), 2
    /// since (the environment too).
    pub version: u8,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// Where verification starts after pruning: the newest pruned record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Hash,
}

impl AuditRecord {
    /// A record to append; the store fills in `seq`, `prev_hash` and `hash` at commit.
    pub fn new(
        at_ms: u64,
        actor: String,
        origin: &str,
        action: &str,
        target: impl Into<String>,
    ) -> Self {
        Self {
            seq: 0,
            at_ms,
            actor,
            origin: origin.to_owned(),
            action: action.to_owned(),
            target: target.into(),
            reason: None,
            result: "ok".into(),
            source: None,
            request_id: None,
            environment: Environment::Live,
            version: HASH_VERSION,
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    /// The hash of this record's fields and `prev_hash`: a length-prefixed encoding, so a
    /// client (`octomil audit verify`) recomputes it from the JSON it was given. Hash version
    /// 1 (records from before format 4) covers every field but the environment; version 2
    /// starts with another domain string and covers the environment after `request_id`. An
    /// unknown version hashes to something no record carries, so it never verifies.
    pub fn compute_hash(&self) -> Hash {
        fn field(h: &mut Sha256, b: &[u8]) {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        fn opt(h: &mut Sha256, s: &Option<String>) {
            match s {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([1u8]);
                    field(h, s.as_bytes());
                }
            }
        }
        let mut h = Sha256::new();
        match self.version {
            1 => h.update(b"octomil-audit-v1"),
            2 => h.update(b"octomil-audit-v2"),
            _ => h.update(b"octomil-audit-unknown-version"),
        }
        h.update(self.seq.to_le_bytes());
        h.update(self.at_ms.to_le_bytes());
        field(&mut h, self.actor.as_bytes());
        field(&mut h, self.origin.as_bytes());
        field(&mut h, self.action.as_bytes());
        field(&mut h, self.target.as_bytes());
        opt(&mut h, &self.reason);
        field(&mut h, self.result.as_bytes());
        opt(&mut h, &self.source);
        opt(&mut h, &self.request_id);
        if self.version >= 2 {
            field(&mut h, self.environment.as_str().as_bytes());
        }
        h.update(self.prev_hash);
        h.finalize().into()
    }

    /// Links the record after `head` (`seq`, hash).
    pub fn seal(&mut self, head: Checkpoint) {
        self.seq = head.seq + 1;
        self.prev_hash = head.hash;
        self.hash = self.compute_hash();
    }
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit record {0} does not follow the one before it (sequence or link broken)")]
    Broken(u64),
    #[error("audit record {0} was changed after it was written (hash mismatch)")]
    Tampered(u64),
}

/// Verifies `records` (in order) starting from `checkpoint`.
pub fn verify(checkpoint: Checkpoint, records: &[AuditRecord]) -> Result<(), ChainError> {
    let mut head = checkpoint;
    for r in records {
        if r.seq != head.seq + 1 || r.prev_hash != head.hash {
            return Err(ChainError::Broken(r.seq));
        }
        if r.compute_hash() != r.hash {
            return Err(ChainError::Tampered(r.seq));
        }
        head = Checkpoint {
            seq: r.seq,
            hash: r.hash,
        };
    }
    Ok(())
}

/// One entry of the chain as a verifier received it: a whole record, or only the link (its
/// sequence, `prev_hash` and `hash`) of a record of an environment the verifier may not read.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    Record(&'a AuditRecord),
    Link {
        seq: u64,
        prev_hash: Hash,
        hash: Hash,
    },
}

/// Verifies `entries` (in order) from `checkpoint`: every entry must follow the one before;
/// a whole record's hash is recomputed, a link's is taken as given (its record is checked by
/// whoever may read it).
pub fn verify_entries(checkpoint: Checkpoint, entries: &[Entry<'_>]) -> Result<(), ChainError> {
    let mut head = checkpoint;
    for e in entries {
        let (seq, prev, hash) = match e {
            Entry::Record(r) => (r.seq, r.prev_hash, r.hash),
            Entry::Link {
                seq,
                prev_hash,
                hash,
            } => (*seq, *prev_hash, *hash),
        };
        if seq != head.seq + 1 || prev != head.hash {
            return Err(ChainError::Broken(seq));
        }
        if let Entry::Record(r) = e
            && r.compute_hash() != r.hash
        {
            return Err(ChainError::Tampered(seq));
        }
        head = Checkpoint { seq, hash };
    }
    Ok(())
}

/// How long audit records are kept under each compliance preset.
pub fn retention_days(p: CompliancePreset) -> u64 {
    match p {
        CompliancePreset::None => 90,
        CompliancePreset::Gdpr | CompliancePreset::Soc2 | CompliancePreset::Pci => 365,
        // HIPAA asks for six years of documentation.
        CompliancePreset::Hipaa => 6 * 365,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut head = Checkpoint::default();
        (0..n)
            .map(|i| {
                let mut r = AuditRecord::new(i, "system".into(), "system", "test", format!("t{i}"));
                r.seal(head);
                head = Checkpoint {
                    seq: r.seq,
                    hash: r.hash,
                };
                r
            })
            .collect()
    }

    #[test]
    fn old_records_verify_without_their_environment_and_new_ones_cover_it() {
        let mut c = chain(4);
        // The first two were written before format 4: hash version 1.
        let mut head = Checkpoint::default();
        for (i, r) in c.iter_mut().enumerate() {
            if i < 2 {
                r.version = 1;
            }
            r.seal(head);
            head = Checkpoint {
                seq: r.seq,
                hash: r.hash,
            };
        }
        assert_eq!(verify(Checkpoint::default(), &c), Ok(()));
        // The migration sets an old record's environment: the chain still verifies.
        let mut migrated = c.clone();
        migrated[0].environment = Environment::Test;
        assert_eq!(verify(Checkpoint::default(), &migrated), Ok(()));
        // A new record's environment is covered.
        let mut edited = c.clone();
        edited[3].environment = Environment::Test;
        assert_eq!(
            verify(Checkpoint::default(), &edited),
            Err(ChainError::Tampered(4))
        );
        // Claiming an old hash version for a new record does not verify either.
        let mut downgraded = c.clone();
        downgraded[3].version = 1;
        assert_eq!(
            verify(Checkpoint::default(), &downgraded),
            Err(ChainError::Tampered(4))
        );
    }

    #[test]
    fn links_stand_in_for_records_a_verifier_may_not_read() {
        let c = chain(3);
        let link = |r: &AuditRecord| Entry::Link {
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
        };
        let entries = [Entry::Record(&c[0]), link(&c[1]), Entry::Record(&c[2])];
        assert_eq!(verify_entries(Checkpoint::default(), &entries), Ok(()));
        // A dropped link is a gap; an edited visible record is caught.
        let gap = [Entry::Record(&c[0]), Entry::Record(&c[2])];
        assert_eq!(
            verify_entries(Checkpoint::default(), &gap),
            Err(ChainError::Broken(3))
        );
        let mut edited = c[2].clone();
        edited.target = "x".into();
        let entries = [Entry::Record(&c[0]), link(&c[1]), Entry::Record(&edited)];
        assert_eq!(
            verify_entries(Checkpoint::default(), &entries),
            Err(ChainError::Tampered(3))
        );
    }

    #[test]
    fn a_chain_verifies_and_any_change_is_caught() {
        let c = chain(5);
        assert_eq!(verify(Checkpoint::default(), &c), Ok(()));
        let mut edited = c.clone();
        edited[2].target = "someone else".into();
        assert_eq!(
            verify(Checkpoint::default(), &edited),
            Err(ChainError::Tampered(3))
        );
        let mut dropped = c.clone();
        dropped.remove(1);
        assert_eq!(
            verify(Checkpoint::default(), &dropped),
            Err(ChainError::Broken(3))
        );
        // After pruning the first two, the checkpoint carries the chain.
        let cp = Checkpoint {
            seq: c[1].seq,
            hash: c[1].hash,
        };
        assert_eq!(verify(cp, &c[2..]), Ok(()));
        assert_eq!(
            verify(Checkpoint::default(), &c[2..]),
            Err(ChainError::Broken(3))
        );
    }
}
