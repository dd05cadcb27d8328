//! Private files and directories: created 0700/0600 from the start, looser modes tightened.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    // Checked (and tightened) through the descriptor, not the path.
    open_checked(path, false, LooseMode::Tighten).map(drop)
}

/// What to do with a private file whose mode grants group or others anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LooseMode {
    /// Ours (the seal key file): tighten it to 0600 through the open descriptor, with a warning.
    Tighten,
    /// Provisioned by someone else (the bootstrap token file): refuse it, naming the file.
    Refuse,
    /// A systemd credential: systemd made the file and its private directory; only its type
    /// is checked (its mode bits may show an ACL mask).
    Trust,
}

/// Opens a private file once, without following a symlink in its last component and without
/// blocking on a FIFO, checks that descriptor (`fstat`: a regular file, owned by us or root,
/// no group/other bits unless `loose` says otherwise) and reads the same descriptor: what was
/// checked is what is read, whatever happens to the path meanwhile.
pub(crate) fn read_private_file(
    path: &Path,
    loose: LooseMode,
) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
    let mut file = open_checked(path, false, loose)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err("read", path))?;
    Ok(bytes)
}

/// Opens `path` (read-only or read-write) with `O_NOFOLLOW | O_NONBLOCK` and checks the
/// descriptor as [`read_private_file`] describes.
pub(crate) fn open_checked(path: &Path, write: bool, loose: LooseMode) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                StoreError::NotAFile {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("open", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(StoreError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER != 0 {
        match loose {
            LooseMode::Trust => {}
            LooseMode::Refuse => {
                return Err(StoreError::InsecureMode {
                    path: path.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
            LooseMode::Tighten => {
                warn_tighten(path, mode, FILE_MODE);
                file.set_permissions(Permissions::from_mode(FILE_MODE))
                    .map_err(io_err("chmod", path))?;
            }
        }
    }
    Ok(file)
}

/// Writes a new secret file crash-safely: a 0600 temp file is written and synced, then
/// hard-linked to `path`, which therefore either does not exist or is complete. Returns
/// `false` when `path` already existed (another process won the race): the caller reads it.
pub(crate) fn create_secret_file(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let tmp = write_private_temp(path, bytes).map_err(io_err("create", path))?;
    let linked = fs::hard_link(&tmp, path);
    // Our temp name goes away in every case; the data lives on under `path` if linked.
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
    let tmp = write_private_temp(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// How many temp names are tried before giving up: a name that exists is never reused.
const TEMP_ATTEMPTS: u32 = 8;

/// A hidden temp name beside `path`: `.NAME.tmp.PID` first, then with a random suffix.
fn temp_name(path: &Path, attempt: u32) -> io::Result<PathBuf> {
    let file_name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    let pid = std::process::id();
    if attempt == 0 {
        return Ok(path.with_file_name(format!(".{file_name}.tmp.{pid}")));
    }
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).map_err(io::Error::other)?;
    Ok(path.with_file_name(format!(
        ".{file_name}.tmp.{pid}.{:016x}",
        u64::from_le_bytes(salt)
    )))
}

/// Creates a fresh 0600 temp file beside `path` (`O_CREAT | O_EXCL | O_NOFOLLOW`: whatever
/// already sits at a temp name, a file, a hard link or a symlink, is never opened, followed or
/// removed; another name is tried), writes `bytes`, syncs, and returns its name. On error
/// nothing of ours is left behind.
fn write_private_temp(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    for attempt in 0..TEMP_ATTEMPTS {
        let tmp = temp_name(path, attempt)?;
        let mut f: File = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::warn!(path = %tmp.display(), "a file already sits at the temp name; not touching it");
                continue;
            }
            Err(e) => return Err(e),
        };
        // create_new applies the mode through the umask only: make sure it is 0600.
        let written = f
            .set_permissions(Permissions::from_mode(FILE_MODE))
            .and_then(|()| f.write_all(bytes))
            .and_then(|()| f.sync_all());
        return match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        };
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{TEMP_ATTEMPTS} temp names beside the file are taken"),
    ))
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

fn warn_tighten(path: &Path, mode: u32, want: u32) {
    tracing::warn!(
        path = %path.display(),
        mode = format_args!("{:o}", mode & 0o7777),
        "tightening permissions to {want:o}: the store holds secrets"
    );
}

fn tighten(path: &Path, mode: u32, want: u32) -> Result<(), StoreError> {
    if mode & GROUP_OTHER == 0 {
        return Ok(());
    }
    warn_tighten(path, mode, want);
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

    /// A file, hard link or symlink planted at the temp name is never opened, followed,
    /// truncated or removed: the write goes to a fresh name and still succeeds.
    #[test]
    fn planted_temp_names_are_never_followed_or_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"not yours").unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        let pid = std::process::id();

        // A symlink at the temp name of an atomic replace.
        let path = dir.join("limits.bin");
        let planted = dir.join(format!(".limits.bin.tmp.{pid}"));
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        replace_private_file(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            fs::read(&outside).unwrap(),
            b"not yours",
            "written through the symlink"
        );
        assert!(
            fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        // A hard link to someone else's file at the temp name of a secret file.
        let key = dir.join("seal.key");
        let planted = dir.join(format!(".seal.key.tmp.{pid}"));
        fs::hard_link(&outside, &planted).unwrap();
        assert!(create_secret_file(&key, b"secret").unwrap());
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(
            fs::read(&outside).unwrap(),
            b"not yours",
            "written through the link"
        );
        assert_eq!(
            fs::read(&planted).unwrap(),
            b"not yours",
            "the planted link stays"
        );
        // Only what we made and what was planted: none of our temp files is left behind.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!(".limits.bin.tmp.{pid}"),
                format!(".seal.key.tmp.{pid}"),
                "limits.bin".into(),
                "seal.key".into()
            ]
        );
    }

    #[test]
    fn private_files_are_checked_through_the_descriptor_that_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::write(&target, b"secret").unwrap();
        fs::set_permissions(&target, Permissions::from_mode(0o600)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for loose in [LooseMode::Tighten, LooseMode::Refuse, LooseMode::Trust] {
            let err = read_private_file(&link, loose).unwrap_err();
            assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");
        }
        // A FIFO is refused at once, not waited on.
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_private_file(&fifo, LooseMode::Refuse).unwrap_err();
        assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");

        assert_eq!(
            &*read_private_file(&target, LooseMode::Refuse).unwrap(),
            b"secret"
        );
        fs::set_permissions(&target, Permissions::from_mode(0o640)).unwrap();
        let err = read_private_file(&target, LooseMode::Refuse).unwrap_err();
        assert!(
            matches!(err, StoreError::InsecureMode { mode: 0o640, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&target.display().to_string()), "{msg}");
        assert!(msg.contains("640"), "{msg}");
        assert_eq!(mode(&target), 0o640, "refused, not changed");
        assert_eq!(
            &*read_private_file(&target, LooseMode::Tighten).unwrap(),
            b"secret"
        );
        assert_eq!(mode(&target), 0o600, "tightened");
    }
}
