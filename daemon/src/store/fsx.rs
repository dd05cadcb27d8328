//! Private files and directories: created 0700/0600 from the start, looser modes tightened.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

use super::StoreError;

pub(crate) const DIR_MODE: u32 = 0o700;
pub(crate) const FILE_MODE: u32 = 0o600;

/// Any group or other permission bit: what a private file or directory must not have.
const GROUP_OTHER: u32 = 0o077;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and missing parents) 0700. An existing directory that grants anything to
/// group or others is tightened to 0700 with a warning: it is ours and holds secrets.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    let meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    tighten(dir, meta.permissions().mode(), DIR_MODE)
}

/// Creates the parent directory of `file` 0700 when it is missing; an existing parent is left
/// alone (a key file may live in a directory we do not own, such as `/etc/octomil`).
pub(crate) fn ensure_parent_dir(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.exists() => DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .map_err(io_err("create directory", parent)),
        _ => Ok(()),
    }
}

/// Makes sure `path` exists as a regular file of mode 0600 before anyone else (redb) opens it,
/// so it is never readable by others, not even for an instant. Symlinks are refused.
pub(crate) fn ensure_private_file(path: &Path) -> Result<(), StoreError> {
    let created = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(file) => {
            file.sync_all().map_err(io_err("sync", path))?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err("create", path)(e)),
    };
    if created {
        // The new directory entry must survive a power cut as well as the file's contents.
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        return Ok(());
    }
    let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    tighten(path, meta.permissions().mode(), FILE_MODE)
}

/// Reads a secret file that must not be readable by others: looser modes are tightened first.
pub(crate) fn read_private_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    tighten(path, meta.permissions().mode(), FILE_MODE)?;
    fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(io_err("read", path))
}

/// Writes a new secret file crash-safely: a 0600 temp file is written and synced, then
/// hard-linked to `path`, which therefore either does not exist or is complete. Returns
/// `false` when `path` already existed (another process won the race): the caller reads it.
pub(crate) fn create_secret_file(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let tmp = temp_name(path);
    let linked = write_private_temp(&tmp, bytes).and_then(|()| fs::hard_link(&tmp, path));
    // The temp name goes away in every case; the data lives on under `path` if linked.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err("create", path)(e)),
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// Replaces `path` with `bytes` crash-safely: a 0600 temp file beside it is written and
/// synced, renamed over `path`, and the directory synced, so a crash leaves the old file or
/// the new one, never a torn one, and the contents are never readable by others. The daemon's
/// one atomic private write (the limiter state uses it; the store itself is redb).
pub fn replace_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_name(path);
    let renamed = write_private_temp(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// A hidden temp name beside `path`, unique per process.
fn temp_name(path: &Path) -> std::path::PathBuf {
    let file_name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()))
}

/// Writes `bytes` to `tmp`, created 0600 (no symlink followed), and syncs it.
fn write_private_temp(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsync on a directory: makes a create, link or rename inside it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

fn tighten(path: &Path, mode: u32, want: u32) -> Result<(), StoreError> {
    if mode & GROUP_OTHER == 0 {
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        mode = format_args!("{:o}", mode & 0o7777),
        "tightening permissions to {want:o}: the store holds secrets"
    );
    fs::set_permissions(path, Permissions::from_mode(want)).map_err(io_err("chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn loose_modes_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        ensure_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            fs::read(&file).unwrap(),
            b"x",
            "tightening keeps the contents"
        );
    }

    #[test]
    fn symlinks_and_non_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::write(&target, b"").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            ensure_private_file(&link),
            Err(StoreError::NotAFile { .. })
        ));
        assert!(matches!(
            ensure_private_file(tmp.path()),
            Err(StoreError::NotAFile { .. })
        ));
        assert!(matches!(
            ensure_private_dir(&target),
            Err(StoreError::Io { .. } | StoreError::NotADirectory { .. })
        ));
    }

    #[test]
    fn private_file_is_replaced_whole_and_stays_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("limits.bin");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        replace_private_file(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        assert_eq!(mode(&path), 0o600, "the replacement is private");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn secret_file_is_created_once() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        assert!(create_secret_file(&path, b"one").unwrap());
        assert!(!create_secret_file(&path, b"two").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }
}
