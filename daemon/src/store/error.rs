//! What can go wrong with the store, and how redb's open errors map onto it.

use std::path::{Path, PathBuf};

use redb::DatabaseError;

/// What can go wrong with the store. Messages name paths, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} is readable or writable by group or others (mode {mode:o}); a secret file must \
         be 0600 or 0400: chmod 600 it",
        path.display()
    )]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error(
        "{} is owned by uid {owner}, neither this process (uid {euid}) nor root",
        path.display()
    )]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error(
        "seal key {}: expected 32 raw bytes or 44 characters of base64, found {len} bytes",
        path.display()
    )]
    BadSealKey { path: PathBuf, len: usize },
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("state store {} is open in another process (is another octomild running?)", path.display())]
    Locked { path: PathBuf },
    #[error("{} is not an octomild state store: {source}", path.display())]
    NotAStore {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("state store {}: {source}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error(
        "the store {} cannot be opened with this seal key (key changed or file corrupt)",
        path.display()
    )]
    SealKeyMismatch { path: PathBuf },
    #[error("the store {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: &'static str },
    #[error(
        "the store {} is in format {found}, newer than this octomild reads ({supported}); \
         run a newer octomild",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u8,
        supported: u8,
    },
    #[error("cannot encode the state for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
}

/// Maps a failed redb open to the error an operator can act on.
pub(crate) fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        // InvalidData: not a redb file; UnexpectedEof: cut short inside redb's header.
        DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::NotAStore {
                path: path.to_path_buf(),
                source: DatabaseError::Storage(redb::StorageError::Io(io)).into(),
            }
        }
        DatabaseError::Storage(redb::StorageError::Corrupted(msg)) => StoreError::NotAStore {
            path: path.to_path_buf(),
            source: redb::Error::Corrupted(msg),
        },
        other => StoreError::Database {
            path: path.to_path_buf(),
            source: other.into(),
        },
    }
}
