//! The seal key (systemd credential or 0600 key file) and the sealed record format.
//!
//! A record is `version (1 byte) || generation (8, LE) || nonce (24) || XChaCha20-Poly1305(postcard)`.
//! The header is plain so a reader can compare generations without the key; the AEAD's
//! associated data binds the header's version and generation under a fixed domain string, so a
//! record cannot be replayed under another generation or format. The nonce is random per save.
//!
//! Format 3 seals each record under its own random data key (kept wrapped by the seal key in
//! `state.keys`, see [`super::datakey`]); formats 1 and 2 sealed it under the seal key itself.
//! The plaintext layout of format 3 is format 2's; format 4 (sealed like format 3) gave the
//! MQTT details a store record of their own, with the client certificate.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use octomil_common::Secret;
use zeroize::Zeroizing;

use super::{Persisted, StoreError, fsx};

/// The file name of the seal key inside `$CREDENTIALS_DIRECTORY` (`LoadCredentialEncrypted=`).
pub const CREDENTIAL_NAME: &str = "octomil-seal-key";
/// Format of the records this build writes: sealed under a per-record data key, with the
/// MQTT client certificate. It also reads format 3 (the same without the certificate), format
/// 2 (sealed under the seal key) and format 1 (format 2 before the registration epoch) and
/// migrates them when the store opens (`Store::open` rewrites the record in format 4).
pub const FORMAT_VERSION: u8 = 4;
/// The first format whose records are sealed under a data key rather than the seal key.
pub(crate) const FIRST_DATA_KEY_FORMAT: u8 = 3;
/// The oldest format this build still reads.
const OLDEST_READABLE: u8 = 1;
/// Associated data prefix: a sealed octomild state record and nothing else.
const DOMAIN: &[u8] = b"octomil-edge/octomild/state-record\0";
pub(crate) const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;
/// Length of a base64 (padded) 32-byte key: the text form of a seal key.
const KEY_B64_LEN: usize = 44;

/// The 32-byte key that seals secrets at rest.
pub struct SealKey(Secret<[u8; KEY_LEN]>);

/// Where the seal key came from, for the start-up log line and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    SystemdCredential,
    KeyFile(PathBuf),
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(***)")
    }
}

impl SealKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SealKey {
        SealKey(Secret::new(bytes))
    }

    /// A fresh key from the OS random generator.
    pub fn generate() -> Result<SealKey, StoreError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(raw.as_mut()).map_err(StoreError::Random)?;
        Ok(SealKey::from_bytes(*raw))
    }

    /// systemd credential first: `$CREDENTIALS_DIRECTORY/octomil-seal-key` (from
    /// `LoadCredentialEncrypted=`; 32 raw bytes or 44-char base64 text); else `key_file` (0600,
    /// created with 32 random bytes on first start, its directory created 0700). The key file
    /// accepts the same two forms, so an operator may provision it by hand.
    pub fn load_or_create(
        credentials_dir: Option<&Path>,
        key_file: &Path,
    ) -> Result<(SealKey, KeySource), StoreError> {
        if let Some(dir) = credentials_dir {
            let path = dir.join(CREDENTIAL_NAME);
            match fsx::read_private_file(&path, fsx::LooseMode::Trust) {
                Ok(bytes) => return Ok((parse_key(&bytes, &path)?, KeySource::SystemdCredential)),
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::debug!(
                        path = %path.display(),
                        "no seal key credential; using the key file"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        if !key_file.exists() {
            fsx::ensure_parent_dir(key_file)?;
            let fresh = SealKey::generate()?;
            if fsx::create_secret_file(key_file, fresh.0.expose())? {
                tracing::info!(path = %key_file.display(), "created a new seal key file");
                return Ok((fresh, KeySource::KeyFile(key_file.to_path_buf())));
            }
            // Another process created it between our check and our link: use theirs.
        }
        let bytes = fsx::read_private_file(key_file, fsx::LooseMode::Tighten)?;
        Ok((
            parse_key(&bytes, key_file)?,
            KeySource::KeyFile(key_file.to_path_buf()),
        ))
    }

    #[cfg(test)]
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }
}

/// A key that seals records: the seal key (formats 1 and 2, and the data-key slots) or a
/// per-record data key (format 3).
pub(crate) trait RecordKey {
    fn raw(&self) -> &[u8; KEY_LEN];

    fn cipher(&self) -> XChaCha20Poly1305 {
        // Borrow the key as the cipher's array type: no extra copy is left on the stack.
        let key: &Key = self.raw().into();
        XChaCha20Poly1305::new(key)
    }
}

impl RecordKey for SealKey {
    fn raw(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }
}

/// 32 raw bytes, or 44 characters of standard base64 (a trailing newline is allowed).
fn parse_key(bytes: &[u8], path: &Path) -> Result<SealKey, StoreError> {
    let bad = || StoreError::BadSealKey {
        path: path.to_path_buf(),
        len: bytes.len(),
    };
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Ok(SealKey::from_bytes(raw));
    }
    let text = bytes.trim_ascii_end();
    if text.len() != KEY_B64_LEN {
        return Err(bad());
    }
    let decoded = Zeroizing::new(STANDARD.decode(text).map_err(|_| bad())?);
    let raw = <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| bad())?;
    Ok(SealKey::from_bytes(raw))
}

/// The plain part of a record: enough to tell generations apart without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u8,
    pub generation: u64,
    pub nonce: [u8; NONCE_LEN],
}

/// Why a record did not open. The store turns these into [`StoreError`]s naming its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    Truncated,
    UnknownVersion(u8),
    /// Authentication failed: another key, or bytes changed on disk.
    Auth,
    /// Authentic but not a `Persisted`: a bug, or a format change without a version bump.
    Decode,
    /// The record's data key is not in `state.keys` (file gone, slot destroyed or damaged).
    DataKeyMissing,
}

impl OpenError {
    pub(crate) fn into_store_error(self, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        match self {
            OpenError::Truncated => StoreError::Corrupt {
                path,
                detail: "the sealed record is shorter than its header and tag",
            },
            OpenError::UnknownVersion(found) => StoreError::UnsupportedFormat {
                path,
                found,
                supported: FORMAT_VERSION,
            },
            OpenError::Auth => StoreError::SealKeyMismatch { path },
            OpenError::Decode => StoreError::Corrupt {
                path,
                detail: "the sealed record opened but does not decode",
            },
            OpenError::DataKeyMissing => StoreError::Corrupt {
                path,
                detail: "the data key of the current record is missing from state.keys",
            },
        }
    }
}

impl Header {
    pub(crate) fn parse(record: &[u8]) -> Result<Header, OpenError> {
        if record.len() < HEADER_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let version = record[0];
        if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
            return Err(OpenError::UnknownVersion(version));
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&record[1..9]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&record[9..HEADER_LEN]);
        Ok(Header {
            version,
            generation: u64::from_le_bytes(generation),
            nonce,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.version);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.nonce);
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(DOMAIN.len() + 9);
        aad.extend_from_slice(DOMAIN);
        aad.push(self.version);
        aad.extend_from_slice(&self.generation.to_le_bytes());
        aad
    }
}

/// Seals `state` as generation `generation` under a fresh random nonce. The plaintext is
/// encoded straight into the buffer that is then encrypted in place, so no unencrypted copy
/// outlives this call (the buffer is sized up front: no reallocation leaves one behind).
pub(crate) fn seal(
    key: &impl RecordKey,
    generation: u64,
    state: &Persisted,
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(SealError::Random)?;
    let header = Header {
        version: FORMAT_VERSION,
        generation,
        nonce,
    };
    let plain_len = postcard::experimental::serialized_size(state).map_err(SealError::Encode)?;
    let mut record = Zeroizing::new(Vec::with_capacity(HEADER_LEN + plain_len + TAG_LEN));
    header.write(&mut record);
    record.resize(HEADER_LEN + plain_len, 0);
    postcard::to_slice(state, &mut record[HEADER_LEN..]).map_err(SealError::Encode)?;
    let tag = key
        .cipher()
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            &header.aad(),
            (&mut record[HEADER_LEN..]).into(),
        )
        .map_err(|_| SealError::Encrypt)?;
    record.extend_from_slice(&tag);
    // Encrypted now: hand the bytes out of the zeroizing wrapper without a copy.
    Ok(std::mem::take(&mut *record))
}

/// Seals raw plaintext under any format `version`: how tests make records of earlier formats.
#[cfg(test)]
pub(crate) fn seal_raw_for_tests(
    key: &impl RecordKey,
    version: u8,
    generation: u64,
    plain: &[u8],
) -> Vec<u8> {
    let header = Header {
        version,
        generation,
        nonce: [3; NONCE_LEN],
    };
    let mut record = Vec::new();
    header.write(&mut record);
    let mut body = plain.to_vec();
    let tag = key
        .cipher()
        .encrypt_inout_detached(
            &XNonce::from(header.nonce),
            &header.aad(),
            body.as_mut_slice().into(),
        )
        .expect("seal");
    record.extend_from_slice(&body);
    record.extend_from_slice(&tag);
    record
}

/// Opens a record sealed by [`seal`] under `key` (which key a format needs is the store's
/// business: see `Store::unseal`).
pub(crate) fn open(key: &impl RecordKey, record: &[u8]) -> Result<Persisted, OpenError> {
    let header = Header::parse(record)?;
    let (body, tag) = record[HEADER_LEN..].split_at(record.len() - HEADER_LEN - TAG_LEN);
    let tag = Tag::try_from(tag).map_err(|_| OpenError::Truncated)?;
    let mut plain = Zeroizing::new(body.to_vec());
    key.cipher()
        .decrypt_inout_detached(
            &XNonce::from(header.nonce),
            &header.aad(),
            plain.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| OpenError::Auth)?;
    match header.version {
        1 => postcard::from_bytes::<super::v1::Persisted>(&plain)
            .map(Into::into)
            .map_err(|_| OpenError::Decode),
        2 | 3 => postcard::from_bytes::<super::v3::Persisted>(&plain)
            .map(Into::into)
            .map_err(|_| OpenError::Decode),
        _ => postcard::from_bytes(&plain).map_err(|_| OpenError::Decode),
    }
}

/// Why sealing failed; none of these carries data.
#[derive(Debug)]
pub(crate) enum SealError {
    Random(getrandom::Error),
    Encode(postcard::Error),
    Encrypt,
}

impl SealError {
    pub(crate) fn into_store_error(self, path: &Path) -> StoreError {
        match self {
            SealError::Random(e) => StoreError::Random(e),
            SealError::Encode(source) => StoreError::Encode {
                path: path.to_path_buf(),
                source,
            },
            SealError::Encrypt => StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: "the state is too large to seal",
            },
        }
    }
}
