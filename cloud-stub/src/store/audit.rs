//! The audit log: one record per change an operator, a device or the system made, appended in
//! the same redb transaction as the change and hash-chained (each record's hash covers its
//! fields and the previous record's hash). Retention pruning keeps a checkpoint (the sequence
//! and hash of the newest pruned record), so the chain still verifies from there.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CompliancePreset, Hash};

/// One audit record (format version 2).
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
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    /// The hash of this record's fields and `prev_hash`: a length-prefixed encoding, so a
    /// client (`octomil audit verify`) recomputes it from the JSON it was given.
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
        h.update(b"octomil-audit-v1");
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
