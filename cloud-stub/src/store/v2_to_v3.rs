//! Format version 2 -> 3: members enrol themselves (invitations, recovery codes, TOTP that
//! may be absent until enrolled) and sessions remember their latest second factor. Touches
//! only the `members` and `sessions` tables (and creates `invitations`); every other table
//! is left as version 2 wrote it.

use serde::{Deserialize, Serialize};

use super::{INVITATIONS, MEMBERS, MemberRecord, SESSIONS, SessionRecord, StoreError};
use crate::scope::Role;

/// The `members` value in version 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecordV2 {
    pub email: String,
    pub role: Role,
    pub password_hash: String,
    pub totp_secret: Vec<u8>,
    pub created_at: u64,
    pub last_totp_step: Option<u64>,
}

/// The `sessions` value in version 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecordV2 {
    pub jti: String,
    pub email: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub mfa: bool,
}

/// Members keep their TOTP secret (every version-2 member had one) and start without
/// recovery codes; sessions opened with a TOTP code count their login as their latest
/// second factor.
pub(super) fn migrate(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let members: Vec<MemberRecordV2> = super::decode_all(&tx.open_table(MEMBERS)?, "members")?;
    {
        let mut t = tx.open_table(MEMBERS)?;
        for m in members {
            let rec = MemberRecord {
                email: m.email,
                role: m.role,
                password_hash: m.password_hash,
                totp_secret: (!m.totp_secret.is_empty()).then_some(m.totp_secret),
                created_at: m.created_at,
                last_totp_step: m.last_totp_step,
                pending_totp: None,
                recovery_codes: Vec::new(),
            };
            t.insert(rec.email.as_str(), encode(&rec)?.as_slice())?;
        }
    }
    let sessions: Vec<SessionRecordV2> = super::decode_all(&tx.open_table(SESSIONS)?, "sessions")?;
    {
        let mut t = tx.open_table(SESSIONS)?;
        for s in sessions {
            let rec = SessionRecord {
                second_factor_at: s.mfa.then_some(s.created_at),
                jti: s.jti,
                email: s.email,
                created_at: s.created_at,
                expires_at: s.expires_at,
                mfa: s.mfa,
                enrolment_only: false,
            };
            t.insert(rec.jti.as_str(), encode(&rec)?.as_slice())?;
        }
    }
    tx.open_table(INVITATIONS)?;
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Db(e.to_string()))
}
