//! What the devices last said on their status topics, kept in memory (the broker's retained status messages rebuild it after a restart).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use octomil_common::wire::Presence;
use octomil_common::wire::presence::MAX_PRESENCE_BYTES;

/// One device's presence as the cloud knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub online: bool,
    /// Unix seconds of the last status message or broker login.
    pub last_seen: Option<u64>,
    pub daemon_version: Option<String>,
    /// The daemon's own state (`active`, `offline`, `revoked`, ...).
    pub state: Option<String>,
    /// When the daemon says its key expires (Unix seconds).
    pub expires_at: Option<u64>,
    /// Unix seconds of the device's last login to the embedded broker.
    logged_in_at: Option<u64>,
}

/// Why a status message changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("not a device status topic")]
    NotStatusTopic,
    #[error("payload of {0} bytes is over the {MAX_PRESENCE_BYTES}-byte limit")]
    Oversized(usize),
    #[error("payload is not a presence message")]
    Unparsable,
    #[error("no such device")]
    UnknownDevice,
    #[error("says online, but the device never logged in to the broker")]
    NotVouched,
}

/// Presence of every device. Not persisted: it is a view of the broker, and the broker's
/// retained status messages (or, with the embedded broker, fresh logins) rebuild it.
#[derive(Debug, Default)]
pub struct PresenceTable {
    seen: Mutex<HashMap<String, Seen>>,
    /// Trust "online" only from a device that logged in to the embedded broker since the
    /// cloud started (its ACLs already keep each device to its own status topic; this also
    /// keeps a stale retained "online" from before a restart from counting).
    vouched: bool,
    ignored: AtomicU64,
    /// Told the device id after each change (the live event hub, [`crate::events`]).
    notify: Notifier,
}

/// Called with a device id after its presence changed, outside the table's lock.
pub type PresenceHook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Notifier(OnceLock<PresenceHook>);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

impl PresenceTable {
    pub fn new(vouched: bool) -> Self {
        Self {
            vouched,
            ..Self::default()
        }
    }

    /// Calls `hook` after every change of a device's presence (a login, a status message).
    /// Only the first hook set counts; returns false if one was already set.
    pub fn on_change(&self, hook: PresenceHook) -> bool {
        self.notify.0.set(hook).is_ok()
    }

    fn changed(&self, device_id: &str) {
        if let Some(hook) = self.notify.0.get() {
            hook(device_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, device_id: &str) -> Option<Seen> {
        self.lock().get(device_id).cloned()
    }

    /// How many status messages were dropped (oversized, unparsable, unknown, unvouched).
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    /// The device authenticated to the embedded broker (the broker's auth hook calls this).
    pub fn note_login(&self, device_id: &str, now: u64) {
        {
            let mut seen = self.lock();
            let s = seen.entry(device_id.to_owned()).or_default();
            s.last_seen = Some(now);
            s.logged_in_at = Some(now);
        }
        self.changed(device_id);
    }

    /// The device was deleted: forget it, so a re-provisioned id starts blank.
    pub fn forget(&self, device_id: &str) {
        self.lock().remove(device_id);
    }

    /// Records a message from `octomil/v1/devices/{id}/status`. `known` says whether the
    /// cloud has such a device. Ignored messages are counted and logged at debug.
    pub fn ingest(
        &self,
        topic: &str,
        payload: &[u8],
        now: u64,
        known: impl FnOnce(&str) -> bool,
    ) -> Result<(), Ignored> {
        let r = self.apply(topic, payload, now, known);
        match &r {
            Ok(id) => self.changed(id),
            Err(e) => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, reason = %e, "status message ignored");
            }
        }
        r.map(|_| ())
    }

    /// Records the message; the device id it was about.
    fn apply<'t>(
        &self,
        topic: &'t str,
        payload: &[u8],
        now: u64,
        known: impl FnOnce(&str) -> bool,
    ) -> Result<&'t str, Ignored> {
        let id = super::device_of_topic(topic, "status").ok_or(Ignored::NotStatusTopic)?;
        if payload.len() > MAX_PRESENCE_BYTES {
            return Err(Ignored::Oversized(payload.len()));
        }
        let p: Presence = serde_json::from_slice(payload).map_err(|_| Ignored::Unparsable)?;
        if !known(id) {
            return Err(Ignored::UnknownDevice);
        }
        let mut seen = self.lock();
        let logged_in = seen.get(id).and_then(|s| s.logged_in_at).is_some();
        if self.vouched && p.online && !logged_in {
            return Err(Ignored::NotVouched);
        }
        let s = seen.entry(id.to_owned()).or_default();
        s.online = p.online;
        s.last_seen = Some(now);
        s.state = Some(p.state);
        // The Last Will carries neither: keep what the device said while it was up.
        if p.daemon_version.is_some() {
            s.daemon_version = p.daemon_version;
        }
        if p.expires_at.is_some() {
            s.expires_at = p.expires_at;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "octomil/v1/devices/d1/status";

    fn online() -> Vec<u8> {
        serde_json::to_vec(&Presence {
            online: true,
            state: "active".into(),
            daemon_version: Some("0.1.0".into()),
            expires_at: Some(99),
        })
        .unwrap()
    }

    #[test]
    fn online_then_last_will_keeps_the_version() {
        let t = PresenceTable::new(false);
        t.ingest(T, &online(), 10, |_| true).unwrap();
        let will = serde_json::to_vec(&Presence::last_will()).unwrap();
        t.ingest(T, &will, 20, |_| true).unwrap();
        let s = t.get("d1").unwrap();
        assert!(!s.online);
        assert_eq!(s.last_seen, Some(20));
        assert_eq!(s.state.as_deref(), Some("offline"));
        assert_eq!(s.daemon_version.as_deref(), Some("0.1.0"));
        assert_eq!(s.expires_at, Some(99));
    }

    #[test]
    fn junk_is_counted_and_changes_nothing() {
        let t = PresenceTable::new(false);
        let big = vec![b' '; MAX_PRESENCE_BYTES + 1];
        assert_eq!(
            t.ingest(T, &big, 1, |_| true),
            Err(Ignored::Oversized(MAX_PRESENCE_BYTES + 1))
        );
        assert_eq!(t.ingest(T, b"{", 1, |_| true), Err(Ignored::Unparsable));
        assert_eq!(
            t.ingest("x/y", &online(), 1, |_| true),
            Err(Ignored::NotStatusTopic)
        );
        assert_eq!(
            t.ingest(T, &online(), 1, |_| false),
            Err(Ignored::UnknownDevice)
        );
        assert_eq!(t.ignored(), 4);
        assert_eq!(t.get("d1"), None);
    }

    #[test]
    fn vouched_tables_believe_online_only_after_a_login() {
        let t = PresenceTable::new(true);
        assert_eq!(
            t.ingest(T, &online(), 1, |_| true),
            Err(Ignored::NotVouched)
        );
        t.note_login("d1", 2);
        assert_eq!(t.get("d1").unwrap().last_seen, Some(2));
        t.ingest(T, &online(), 3, |_| true).unwrap();
        assert!(t.get("d1").unwrap().online);
        t.forget("d1");
        assert_eq!(t.get("d1"), None);
    }

    #[test]
    fn the_hook_hears_each_change_and_no_ignored_message() {
        let t = PresenceTable::new(false);
        let heard = std::sync::Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        assert!(t.on_change(Box::new(move |id: &str| {
            h.lock().unwrap().push(id.to_owned())
        })));
        assert!(!t.on_change(Box::new(|_: &str| {})), "only one hook");
        t.note_login("d1", 1);
        t.ingest(T, &online(), 2, |_| true).unwrap();
        let _ = t.ingest(T, b"{", 3, |_| true);
        assert_eq!(*heard.lock().unwrap(), ["d1", "d1"]);
    }
}
