//! Per-record data keys, so that a wipe can forget.
//!
//! redb never overwrites a live page: a save writes the new record to a fresh page and frees
//! the old one, and freed pages are neither zeroed nor promptly reused, so `state.redb` keeps
//! earlier sealed records. Sealed under the seal key alone, they would open again for anyone
//! holding that key. So each record (format 3) is sealed under its own random data key, and
//! the data keys live, wrapped by the seal key, in `state_dir/state.keys`: a small file that is
//! only ever overwritten in place (`pwrite` + `fdatasync`; never truncated, renamed or
//! replaced), which on an in-place filesystem such as ext4 destroys the old bytes.
//!
//! The file has two slots, 4 KiB apart so that one is never rewritten with the other's block.
//! Generation `g` uses slot `g % 2`. A save of generation `g`:
//! 1. writes the wrapped new data key into slot `g % 2` (it held `g - 2`'s key, which nothing
//!    references any more) and syncs it;
//! 2. commits the record to redb (durably);
//! 3. overwrites slot `(g - 1) % 2` with zeros and syncs: the previous record is now noise.
//!
//! `kill -9` before 2 completes leaves record `g - 1` with its key intact; after 2, record `g`
//! with its key. A crash between 2 and 3 leaves an unreferenced key behind, which the next
//! open destroys (step 3 again). A wipe is such a save, so once it returns, no earlier record
//! in `state.redb` can be opened with any key the state directory still holds.
//!
//! A slot is `version (1) || generation (8, LE) || nonce (24) || XChaCha20-Poly1305(data key)`
//! under the seal key, with the version and generation bound as associated data.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XNonce};
use nix::fcntl::OFlag;
use octomil_common::Secret;
use zeroize::Zeroizing;

use super::fsx::{self, LooseMode};
use super::seal::{KEY_LEN, NONCE_LEN, OpenError, RecordKey, TAG_LEN};
use super::{SealKey, StoreError};

/// File name of the data-key file inside the state directory.
pub const KEYS_FILE: &str = "state.keys";
const SLOTS: u64 = 2;
/// Slots sit in separate filesystem blocks.
const SLOT_STRIDE: u64 = 4096;
const SLOT_VERSION: u8 = 1;
const SLOT_HEADER: usize = 1 + 8 + NONCE_LEN;
pub(crate) const SLOT_LEN: usize = SLOT_HEADER + KEY_LEN + TAG_LEN;
const DOMAIN: &[u8] = b"octomil-edge/octomild/data-key\0";

/// A record's own key. Zeroized on drop; `Debug` prints no byte of it.
pub(crate) struct DataKey(Secret<[u8; KEY_LEN]>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(***)")
    }
}

impl RecordKey for DataKey {
    fn raw(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }
}

impl DataKey {
    pub(crate) fn generate() -> Result<DataKey, StoreError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(raw.as_mut()).map_err(StoreError::Random)?;
        Ok(DataKey(Secret::new(*raw)))
    }
}

/// The open `state.keys`.
pub(crate) struct KeyFile {
    file: File,
    path: PathBuf,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile").field("path", &self.path).finish()
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn offset(generation: u64) -> u64 {
    (generation % SLOTS) * SLOT_STRIDE
}

impl KeyFile {
    /// Opens `path` read-write, creating it (`O_EXCL`, 0600, both slots written as zeros so
    /// their blocks exist and later writes land in place) when it does not exist.
    pub(crate) fn open_or_create(path: &Path) -> Result<KeyFile, StoreError> {
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(fsx::FILE_MODE)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(path);
        let file = match created {
            Ok(file) => {
                file.set_permissions(std::fs::Permissions::from_mode(fsx::FILE_MODE))
                    .and_then(|()| file.write_all_at(&[0u8; (SLOTS * SLOT_STRIDE) as usize], 0))
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("create", path))?;
                if let Some(parent) = path.parent() {
                    fsx::sync_dir(parent)?;
                }
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = fsx::open_checked(path, true, LooseMode::Tighten)?;
                // Cut short by a crash while it was being created: write the missing zeros.
                let len = file.metadata().map_err(io_err("inspect", path))?.len();
                let full = SLOTS * SLOT_STRIDE;
                if len < full {
                    let zeros = vec![0u8; (full - len) as usize];
                    file.write_all_at(&zeros, len)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err("write", path))?;
                }
                file
            }
            Err(e) => return Err(io_err("create", path)(e)),
        };
        Ok(KeyFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing `path` read-only (the store's read-only key check); `None` when
    /// there is none.
    pub(crate) fn open_read_only(path: &Path) -> Result<Option<KeyFile>, StoreError> {
        match fsx::open_checked(path, false, LooseMode::Tighten) {
            Ok(file) => Ok(Some(KeyFile {
                file,
                path: path.to_path_buf(),
            })),
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_slot(&self, generation: u64) -> Result<Zeroizing<[u8; SLOT_LEN]>, StoreError> {
        let mut slot = Zeroizing::new([0u8; SLOT_LEN]);
        match self.file.read_exact_at(slot.as_mut(), offset(generation)) {
            Ok(()) => Ok(slot),
            // A file cut short holds no key there.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Zeroizing::new([0u8; SLOT_LEN]))
            }
            Err(e) => Err(io_err("read", &self.path)(e)),
        }
    }

    /// The data key of generation `generation`, unwrapped with `seal`.
    pub(crate) fn read(&self, seal: &SealKey, generation: u64) -> Result<DataKey, OpenError> {
        let slot = self
            .read_slot(generation)
            .map_err(|_| OpenError::DataKeyMissing)?;
        if slot[0] != SLOT_VERSION || slot[1..9] != generation.to_le_bytes() {
            return Err(OpenError::DataKeyMissing);
        }
        let nonce = XNonce::try_from(&slot[9..SLOT_HEADER]).map_err(|_| OpenError::Truncated)?;
        let tag =
            Tag::try_from(&slot[SLOT_HEADER + KEY_LEN..]).map_err(|_| OpenError::Truncated)?;
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        raw.copy_from_slice(&slot[SLOT_HEADER..SLOT_HEADER + KEY_LEN]);
        seal.cipher()
            .decrypt_inout_detached(&nonce, &aad(generation), raw.as_mut_slice().into(), &tag)
            .map_err(|_| OpenError::Auth)?;
        Ok(DataKey(Secret::new(*raw)))
    }

    /// Writes `key` wrapped by `seal` into generation `generation`'s slot, durably.
    pub(crate) fn write(
        &self,
        seal: &SealKey,
        generation: u64,
        key: &DataKey,
    ) -> Result<(), StoreError> {
        let mut slot = Zeroizing::new([0u8; SLOT_LEN]);
        slot[0] = SLOT_VERSION;
        slot[1..9].copy_from_slice(&generation.to_le_bytes());
        getrandom::fill(&mut slot[9..SLOT_HEADER]).map_err(StoreError::Random)?;
        let nonce = XNonce::try_from(&slot[9..SLOT_HEADER]).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            detail: "nonce length",
        })?;
        slot[SLOT_HEADER..SLOT_HEADER + KEY_LEN].copy_from_slice(key.raw());
        let tag = seal
            .cipher()
            .encrypt_inout_detached(
                &nonce,
                &aad(generation),
                (&mut slot[SLOT_HEADER..SLOT_HEADER + KEY_LEN]).into(),
            )
            .map_err(|_| StoreError::Corrupt {
                path: self.path.clone(),
                detail: "cannot wrap a data key",
            })?;
        slot[SLOT_HEADER + KEY_LEN..].copy_from_slice(&tag);
        self.overwrite(generation, slot.as_ref())
    }

    /// Overwrites generation `generation`'s slot with zeros in place and syncs it, unless it
    /// is already zero: whatever key it held is gone.
    pub(crate) fn destroy(&self, generation: u64) -> Result<(), StoreError> {
        if self.read_slot(generation)?.iter().all(|&b| b == 0) {
            return Ok(());
        }
        self.overwrite(generation, &[0u8; SLOT_LEN])
    }

    fn overwrite(&self, generation: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(bytes, offset(generation))
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("write", &self.path))
    }

    /// Every data key the file still yields with `seal`: what an attacker holding the state
    /// directory and the seal key could recover.
    #[cfg(test)]
    pub(crate) fn recoverable(&self, seal: &SealKey) -> Vec<DataKey> {
        (0..SLOTS)
            .filter_map(|i| {
                let slot = self.read_slot(i).ok()?;
                let generation = u64::from_le_bytes(slot[1..9].try_into().ok()?);
                self.read(seal, generation).ok()
            })
            .collect()
    }
}

fn aad(generation: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOMAIN.len() + 9);
    aad.extend_from_slice(DOMAIN);
    aad.push(SLOT_VERSION);
    aad.extend_from_slice(&generation.to_le_bytes());
    aad
}
