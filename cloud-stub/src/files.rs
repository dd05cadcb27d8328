//! Private directories and atomically written files whose mode is right from the first byte.
//!
//! Keys and tokens must never exist on disk, even for an instant, with a looser mode than
//! intended, and a crash must leave either the old file or the new one, never a torn mix.
//! Every file therefore goes to a temp file in the target's directory (created 0600 or 0644,
//! `create_new`), is fsynced, renamed over the target, and the directory is fsynced.
//! Errors name the path only; file contents never reach a message.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use octomil_common::Secret;
use zeroize::Zeroize;

/// Mode of directories holding secrets: owner only.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of keys and tokens.
const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of certificates and other files anyone may read.
const PUBLIC_FILE_MODE: u32 = 0o644;

/// Distinguishes temp files of concurrent writers inside one process (the pid covers others).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{} exists but is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot inspect {}: {source}", path.display())]
    Metadata { path: PathBuf, source: io::Error },
    #[error("cannot set the mode of {}: {source}", path.display())]
    SetMode { path: PathBuf, source: io::Error },
    #[error("{} has no file name to write to", path.display())]
    NoFileName { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
}

/// Creates `path` (and missing parents) as 0700, or tightens an existing directory whose
/// group/other bits are set. A loose directory is worth one warning: someone created it
/// by hand or with another umask, and its files may already have been exposed.
pub fn ensure_private_dir(path: &Path) -> Result<(), FilesError> {
    match fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(FilesError::NotADirectory {
            path: path.to_owned(),
        }),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                set_mode(path, PRIVATE_DIR_MODE)?;
                tracing::warn!(
                    path = %path.display(),
                    was = format_args!("{mode:o}"),
                    "private directory was accessible to group/other; tightened to 0700"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(path)
                .map_err(|source| FilesError::CreateDir {
                    path: path.to_owned(),
                    source,
                })?;
            // The umask can only remove bits; set the exact mode so a restrictive umask
            // cannot leave the owner without write access.
            set_mode(path, PRIVATE_DIR_MODE)
        }
        Err(source) => Err(FilesError::Metadata {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Atomically replaces `path` with `bytes`, mode 0600 (keys, tokens).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    write_atomic(path, bytes, PRIVATE_FILE_MODE)
}

/// Atomically replaces `path` with `bytes`, mode 0644 (certificates).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    write_atomic(path, bytes, PUBLIC_FILE_MODE)
}

/// Reads a secret (a token or a PEM key) with trailing whitespace and newlines trimmed.
/// The buffer is trimmed in place and wiped if it turns out not to be UTF-8, so no stray
/// copy of the secret is left behind in freed memory.
pub fn read_secret_string(path: &Path) -> Result<Secret<String>, FilesError> {
    let bytes = fs::read(path).map_err(|source| FilesError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        e.into_bytes().zeroize();
        FilesError::NotUtf8 {
            path: path.to_owned(),
        }
    })?;
    let len = text.trim_end().len();
    text.truncate(len);
    Ok(Secret::new(text))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), FilesError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| FilesError::SetMode {
        path: path.to_owned(),
        source,
    })
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FilesError> {
    let name = path.file_name().ok_or_else(|| FilesError::NoFileName {
        path: path.to_owned(),
    })?;
    // `Path::new("ca.pem").parent()` is `Some("")`: that means the current directory.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Hidden and unique, in the same directory so the rename stays on one filesystem.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let result = write_and_rename(&tmp, path, dir, bytes, mode);
    if result.is_err() {
        // Best effort: after a successful rename the temp name is gone and this is a no-op.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| FilesError::Write {
        path: path.to_owned(),
        source,
    })
}

fn write_and_rename(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    // `mode()` is filtered by the umask; fchmod makes it exact (it never widens past `mode`).
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    // Persist the rename itself: without this a crash can bring back the old directory entry.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn private_and_public_files_get_exact_modes() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let cert = dir.path().join("cert.pem");
        write_private(&key, b"secret").unwrap();
        write_public(&cert, b"cert").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(fs::read(&cert).unwrap(), b"cert");
    }

    #[test]
    fn overwrite_replaces_contents_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        write_private(&key, b"first, longer contents").unwrap();
        write_private(&key, b"second").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"second");
        assert_eq!(mode(&key), 0o600);

        // A target someone left world-readable is replaced by a 0600 file, not reused.
        let loose = dir.path().join("loose");
        fs::write(&loose, b"old").unwrap();
        fs::set_permissions(&loose, Permissions::from_mode(0o666)).unwrap();
        write_private(&loose, b"new").unwrap();
        assert_eq!(mode(&loose), 0o600);
    }

    #[test]
    fn no_temp_files_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            write_private(&dir.path().join("a"), format!("{i}").as_bytes()).unwrap();
            write_public(&dir.path().join("b"), b"x").unwrap();
        }
        assert_eq!(names(dir.path()), ["a", "b"]);
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a directory fails after the temp file was written.
        let target = dir.path().join("occupied");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inner"), b"").unwrap();
        let err = write_private(&target, b"top secret").unwrap_err();
        assert!(err.to_string().contains("occupied"));
        assert!(!err.to_string().contains("top secret"));
        assert_eq!(names(dir.path()), ["occupied"]);
    }

    #[test]
    fn private_dir_is_created_0700_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/state");
        ensure_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        // Idempotent.
        ensure_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
    }

    #[test]
    fn loose_dir_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn file_in_place_of_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            ensure_private_dir(&file),
            Err(FilesError::NotADirectory { .. })
        ));
    }

    #[test]
    fn secret_is_trimmed_and_errors_name_the_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        write_private(&token, b"edg_live_abc \n\n").unwrap();
        assert_eq!(read_secret_string(&token).unwrap().expose(), "edg_live_abc");

        let missing = dir.path().join("missing");
        let err = read_secret_string(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"));

        let binary = dir.path().join("binary");
        write_private(&binary, b"\xff\xfeKEYMATERIAL").unwrap();
        let err = read_secret_string(&binary).unwrap_err();
        assert!(matches!(err, FilesError::NotUtf8 { .. }));
        assert!(!err.to_string().contains("KEYMATERIAL"));
    }
}
