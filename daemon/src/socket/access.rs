//! Who is calling: peer credentials, the access policy that classifies them, and the extractors.

use std::collections::BTreeSet;

use axum::extract::FromRequestParts;
use axum::response::Response;
use http::StatusCode;
use http::request::Parts;
use octomil_common::wire::codes;

use super::error_response;

/// What a caller may do. Decided once per connection, before any HTTP is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Root: every call, including `/v1/admin/*`.
    Admin,
    /// An allowed uid or gid: read calls.
    Read,
    /// Everyone else: 403 on every request; the router never sees them.
    Denied,
}

impl Access {
    /// Stable lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Admin => "admin",
            Access::Read => "read",
            Access::Denied => "denied",
        }
    }
}

/// The process at the other end of a connection, as the kernel reported it at `connect()`.
/// Inserted into every request's extensions by `serve`.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Effective uid of the connecting process (SO_PEERCRED).
    pub uid: u32,
    /// Effective primary gid of the connecting process (SO_PEERCRED).
    pub gid: u32,
    /// Its pid, when the kernel knows it (not for a peer in another pid namespace).
    pub pid: Option<i32>,
    pub access: Access,
}

/// Which non-root callers may read. Root is always admin and needs no entry.
/// Swapped as a whole (behind a `watch`) when SIGHUP reloads the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    pub allowed_uids: BTreeSet<u32>,
    pub allowed_gids: BTreeSet<u32>,
}

impl AccessPolicy {
    /// Classify a caller by its effective uid, primary gid and supplementary groups.
    pub fn classify(&self, uid: u32, gid: u32, supplementary: &[u32]) -> Access {
        if uid == 0 {
            Access::Admin
        } else if self.allowed_uids.contains(&uid)
            || self.allowed_gids.contains(&gid)
            || supplementary.iter().any(|g| self.allowed_gids.contains(g))
        {
            Access::Read
        } else {
            Access::Denied
        }
    }

    /// True when a caller's supplementary groups could change its classification, i.e. when
    /// reading them from `/proc` is worth the syscalls.
    pub(crate) fn needs_groups(&self, uid: u32, gid: u32) -> bool {
        self.classify(uid, gid, &[]) == Access::Denied && !self.allowed_gids.is_empty()
    }
}

/// Supplementary groups of `pid`, read from `/proc/<pid>/status`.
///
/// SO_PEERCRED carries no supplementary groups (SO_PEERGROUPS does, but nix 0.32 has no wrapper
/// and this crate forbids `unsafe`). Reading `/proc` after `connect()` is racy: the process may have
/// exited and its pid been reused. The `Uid:` line must show `uid` as the effective uid, else the
/// groups are ignored, which can only make the answer stricter.
pub(crate) fn supplementary_groups(pid: i32, uid: u32) -> Vec<u32> {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => parse_status_groups(&status, uid).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// The `Groups:` of a `/proc/<pid>/status` text whose effective uid is `uid`; `None` otherwise.
fn parse_status_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let mut euid = None;
    let mut groups = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            // real, effective, saved, filesystem
            euid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = Some(
                rest.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok())
                    .collect::<Vec<_>>(),
            );
        }
    }
    if euid == Some(uid) { groups } else { None }
}

/// `Peer` as a handler argument. A request that did not come through `serve` has none: that is a
/// wiring bug, answered 500 rather than guessed at.
impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Peer>().cloned().ok_or_else(|| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "request has no peer credentials (not served through the socket)",
            )
        })
    }
}

/// Handler argument for admin-only routes: 403 `forbidden` unless the caller is root.
#[derive(Clone, Debug)]
pub struct RequireAdmin(pub Peer);

impl<S: Send + Sync> FromRequestParts<S> for RequireAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let peer = Peer::from_request_parts(parts, state).await?;
        if peer.access == Access::Admin {
            Ok(RequireAdmin(peer))
        } else {
            Err(error_response(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                format!("admin calls need root; uid {} may only read", peer.uid),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(uids: &[u32], gids: &[u32]) -> AccessPolicy {
        AccessPolicy {
            allowed_uids: uids.iter().copied().collect(),
            allowed_gids: gids.iter().copied().collect(),
        }
    }

    #[test]
    fn classify_table() {
        use Access::*;
        let p = policy(&[1000], &[200]);
        let empty = AccessPolicy::default();
        // (policy, uid, gid, supplementary, expected)
        let table: &[(&AccessPolicy, u32, u32, &[u32], Access)] = &[
            (&empty, 0, 0, &[], Admin),
            (&empty, 0, 12345, &[], Admin),
            (&empty, 1000, 1000, &[], Denied),
            (&empty, 1000, 1000, &[200], Denied),
            (&p, 0, 0, &[], Admin),
            (&p, 1000, 1000, &[], Read),
            (&p, 1001, 200, &[], Read),
            (&p, 1001, 1001, &[5, 200, 7], Read),
            (&p, 1001, 1001, &[5, 7], Denied),
            (&p, 1001, 1001, &[], Denied),
            // gid 0 is not root: only uid 0 is admin.
            (&p, 1001, 0, &[0], Denied),
            (&policy(&[], &[0]), 1001, 0, &[], Read),
            (&p, 65534, 65534, &[65534], Denied),
        ];
        for (i, (pol, uid, gid, sup, want)) in table.iter().enumerate() {
            assert_eq!(pol.classify(*uid, *gid, sup), *want, "row {i}");
        }
    }

    #[test]
    fn needs_groups_only_when_they_could_help() {
        assert!(!AccessPolicy::default().needs_groups(1000, 1000));
        assert!(!policy(&[1000], &[200]).needs_groups(0, 0));
        assert!(!policy(&[1000], &[200]).needs_groups(1000, 1));
        assert!(!policy(&[1000], &[200]).needs_groups(1, 200));
        assert!(policy(&[1000], &[200]).needs_groups(1, 1));
    }

    #[test]
    fn status_groups_parsed_only_for_matching_euid() {
        let status = "Name:\tcat\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\n\
                      Groups:\t4 24 27 \nVmRSS:\t100 kB\n";
        assert_eq!(parse_status_groups(status, 1001), Some(vec![4, 24, 27]));
        assert_eq!(parse_status_groups(status, 1000), None);
        let none = "Uid:\t5\t5\t5\t5\nGroups:\t\n";
        assert_eq!(parse_status_groups(none, 5), Some(vec![]));
        assert_eq!(parse_status_groups("garbage", 5), None);
    }

    #[test]
    fn own_groups_readable_from_proc() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let mine: BTreeSet<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let read: BTreeSet<u32> = supplementary_groups(pid, uid).into_iter().collect();
        assert_eq!(read, mine);
        assert!(supplementary_groups(pid, uid.wrapping_add(1)).is_empty());
    }
}
