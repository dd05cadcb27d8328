//! Creating the socket file with its final mode and owner before anyone else can reach it.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use tokio::net::UnixListener;

use super::{SocketError, SocketOptions};

/// Longest path `sockaddr_un.sun_path` holds, leaving room for the NUL.
const SUN_PATH_MAX: usize = 107;

/// Creates the socket with its final mode from the start: bind inside a fresh 0700 temp dir next
/// to the target, chmod/chown the socket there, then move it into place, so there is no moment
/// when it is reachable with looser permissions. Creates the parent dir 0755 if missing.
///
/// A stale socket at the path (connect() is refused) is replaced atomically by rename(); a live
/// one is `AlreadyRunning`; anything that is not a socket is `NotASocket` and left alone. When the
/// path is free, the socket is hard-linked into place, which fails instead of replacing a socket
/// another instance created meanwhile. Must run inside a tokio runtime.
pub fn bind(opts: &SocketOptions) -> Result<UnixListener, SocketError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(SocketError::NoRuntime);
    }
    let path = opts.path.as_path();
    check_len(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    ensure_dir(parent)?;
    let existing = probe(path)?;

    let staging = Staging::create(parent)?;
    let tmp_sock = staging.dir.join("s");
    check_len(&tmp_sock)?;
    let listener = std::os::unix::net::UnixListener::bind(&tmp_sock)
        .map_err(|e| io_err("bind", &tmp_sock, e))?;
    std::fs::set_permissions(&tmp_sock, Permissions::from_mode(opts.mode))
        .map_err(|e| io_err("chmod", &tmp_sock, e))?;
    if let Some(gid) = opts.group {
        nix::unistd::chown(&tmp_sock, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io_err("chown", &tmp_sock, e.into()))?;
    }
    // The inode survives the move; taken here, before anyone else could replace the file.
    let id = identity(&tmp_sock);

    match existing {
        Existing::Stale => {
            std::fs::rename(&tmp_sock, path).map_err(|e| io_err("replace", path, e))?;
        }
        Existing::Nothing => match std::fs::hard_link(&tmp_sock, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Someone created it between the probe and now: say who, if we can tell.
                probe(path)?;
                return Err(io_err("create", path, e));
            }
            // Filesystems without hard links: fall back to rename, losing only the race check.
            Err(_) => std::fs::rename(&tmp_sock, path).map_err(|e| io_err("create", path, e))?,
        },
    }
    drop(staging);
    remember(path, id);

    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", path, e))?;
    UnixListener::from_std(listener).map_err(|e| io_err("register", path, e))
}

/// What `probe` found at the socket path.
enum Existing {
    Nothing,
    /// A socket nobody listens on: left by a daemon that died.
    Stale,
}

/// Decides whether the path may be taken, without following symlinks.
fn probe(path: &Path) -> Result<Existing, SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(io_err("inspect", path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket { path: path.into() });
    }
    match try_connect(path) {
        Ok(()) => Err(SocketError::AlreadyRunning { path: path.into() }),
        Err(Errno::ECONNREFUSED) => Ok(Existing::Stale),
        Err(Errno::ENOENT) => Ok(Existing::Nothing),
        // A full backlog: someone is listening, just busy.
        Err(Errno::EAGAIN) => Err(SocketError::AlreadyRunning { path: path.into() }),
        Err(e) => Err(io_err("probe", path, e.into())),
    }
}

/// A non-blocking connect: a live but wedged daemon with a full backlog must not hang `bind`.
fn try_connect(path: &Path) -> Result<(), Errno> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)
}

/// Creates `dir` (and missing ancestors) 0755 if it does not exist.
fn ensure_dir(dir: &Path) -> Result<(), SocketError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, Permissions::from_mode(0o755)))
        .map_err(|e| io_err("create directory", dir, e))
}

fn check_len(path: &Path) -> Result<(), SocketError> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(SocketError::PathTooLong {
            path: path.into(),
            len,
            max: SUN_PATH_MAX,
        });
    }
    Ok(())
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> SocketError {
    SocketError::Io {
        action,
        path: path.into(),
        source,
    }
}

/// The private 0700 directory the socket is born in; removed with whatever is left in it.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> Result<Self, SocketError> {
        let template = parent.join(".octomild-XXXXXX");
        nix::unistd::mkdtemp(&template)
            .map(|dir| Staging { dir })
            .map_err(|e| io_err("create temporary directory in", parent, e.into()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // After a hard link the temp name is still there; after a rename it is already gone.
        let _ = std::fs::remove_file(self.dir.join("s"));
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove staging directory");
        }
    }
}

/// Device and inode of a socket file.
pub(crate) type Identity = (u64, u64);

/// Identities of the sockets `bind` created, by path, until `serve` claims them. Process-wide
/// because `bind` hands out a plain `UnixListener`, which cannot carry it; tiny and rarely touched.
static BOUND: Mutex<BTreeMap<PathBuf, Identity>> = Mutex::new(BTreeMap::new());

fn remember(path: &Path, id: Option<Identity>) {
    let mut bound = BOUND.lock().unwrap_or_else(PoisonError::into_inner);
    match id {
        Some(id) => bound.insert(path.to_path_buf(), id),
        None => bound.remove(path),
    };
}

/// The identity `bind` recorded for `path`, or (for a listener made elsewhere) what is there now.
pub(crate) fn claim_identity(path: &Path) -> Option<Identity> {
    let recorded = BOUND
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(path);
    recorded.or_else(|| identity(path))
}

/// Device and inode of the socket file at `path`.
fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// Removes the socket at `path` if it is still the one identified by `ours`.
pub(crate) fn remove_if_ours(path: &Path, ours: Option<Identity>) {
    match (ours, identity(path)) {
        (Some(ours), Some(now)) if ours == now => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove socket");
            }
        }
        (Some(_), Some(_)) => {
            tracing::info!(path = %path.display(), "socket was replaced by another; leaving it");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_long_paths_are_refused_before_touching_anything() {
        let long = PathBuf::from(format!("/tmp/{}/octomild.sock", "d".repeat(120)));
        assert!(matches!(
            check_len(&long),
            Err(SocketError::PathTooLong { len, .. }) if len > SUN_PATH_MAX
        ));
        assert!(check_len(Path::new("/run/octomil/octomild.sock")).is_ok());
    }

    #[test]
    fn bind_outside_a_runtime_is_an_error_not_a_panic() {
        let opts = SocketOptions::new("/nonexistent-octomild-test/s.sock");
        assert!(matches!(bind(&opts), Err(SocketError::NoRuntime)));
    }
}
