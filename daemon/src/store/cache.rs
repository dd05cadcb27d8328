//! The boot-lifetime cache of the store's record: the kernel keyring, or nothing.
//!
//! The cache holds the *sealed* record exactly as it sits on disk (header + ciphertext), not
//! the unsealed secrets. Two reasons: the keyutils store also links every entry into the
//! uid's persistent keyring, which outlives the service by days (`persistent_keyring_expiry`)
//! and is readable by any process of that uid, so plaintext there would escape a unit whose
//! seal key is a TPM-bound systemd credential; and a sealed entry is authenticated, so a
//! garbage or forged entry (say, one swapping the pinned revocation key) cannot be accepted.
//! The price is one AEAD open per cached load, a few microseconds.

use std::fmt;
use std::path::Path;

use keyring_core::Entry;
use keyring_core::api::CredentialStoreApi as _;

/// Keyring service name of every octomild entry.
pub const KEYRING_SERVICE: &str = "octomil";

/// A best-effort cache of the sealed record. Every failure is a miss: the store then reads
/// the disk, which is always the truth. Implementations must never panic or block for long.
pub trait SecretCache: Send + Sync {
    fn get(&self) -> Option<Vec<u8>>;
    fn put(&self, bytes: &[u8]);
    fn clear(&self);
}

/// No cache: every load reads the disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

impl SecretCache for NoCache {
    fn get(&self) -> Option<Vec<u8>> {
        None
    }
    fn put(&self, _bytes: &[u8]) {}
    fn clear(&self) {}
}

/// The kernel keyring through `keyring-core` + `linux-keyutils-keyring-store`: entry
/// (`octomil`, absolute state dir), so two daemons with different state dirs never share an
/// entry. Needs a session keyring (systemd gives each service a private one); without one
/// every call is a miss, logged at debug.
pub struct KeyringCache {
    user: String,
    entry: Option<Entry>,
}

impl fmt::Debug for KeyringCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringCache")
            .field("user", &self.user)
            .field("available", &self.entry.is_some())
            .finish()
    }
}

impl KeyringCache {
    /// Never fails: an unusable keyring makes a cache that always misses.
    pub fn new(state_dir: &Path) -> KeyringCache {
        // Absolute but not canonical: the same answer before and after the directory exists.
        let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let user = dir.to_string_lossy().into_owned();
        let entry = linux_keyutils_keyring_store::Store::new()
            .and_then(|store| store.build(KEYRING_SERVICE, &user, None));
        let entry = match entry {
            Ok(entry) if usable(&entry) => Some(entry),
            Ok(_) => {
                tracing::debug!("no session keyring of our own; the store reads the disk");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "kernel keyring unavailable; the store reads the disk");
                None
            }
        };
        KeyringCache { user, entry }
    }

    /// Whether the keyring answered a write with a read when this cache was made.
    pub fn available(&self) -> bool {
        self.entry.is_some()
    }
}

/// A process without a session keyring of its own (a login shell, `su`) falls back to the
/// uid's user-session keyring: writes there succeed but the key is not "possessed", so it
/// cannot be read or deleted again. Caching there would only strand records in that keyring,
/// so a cache must prove it can read back what it writes. (In that case the 5-byte probe
/// itself stays behind: one per uid and state dir, as the kernel refuses to overwrite it.)
fn usable(entry: &Entry) -> bool {
    const PROBE: &[u8] = b"probe";
    match entry.get_secret() {
        Ok(_) => true,
        Err(keyring_core::Error::NoEntry) => {
            let ok = entry.set_secret(PROBE).is_ok()
                && entry.get_secret().is_ok_and(|bytes| bytes == PROBE);
            let _ = entry.delete_credential();
            ok
        }
        Err(_) => false,
    }
}

impl SecretCache for KeyringCache {
    fn get(&self) -> Option<Vec<u8>> {
        let entry = self.entry.as_ref()?;
        match entry.get_secret() {
            Ok(bytes) => Some(bytes),
            Err(keyring_core::Error::NoEntry) => None,
            Err(e) => {
                tracing::debug!(error = %e, "keyring read failed; treated as a miss");
                None
            }
        }
    }

    fn put(&self, bytes: &[u8]) {
        let Some(entry) = self.entry.as_ref() else {
            return;
        };
        if let Err(e) = entry.set_secret(bytes) {
            tracing::debug!(error = %e, "keyring write failed; the next load reads the disk");
        }
    }

    fn clear(&self) {
        let Some(entry) = self.entry.as_ref() else {
            return;
        };
        match entry.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => {}
            Err(e) => tracing::debug!(error = %e, "keyring delete failed"),
        }
    }
}
