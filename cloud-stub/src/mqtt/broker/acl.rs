//! Who may publish and subscribe where on the embedded broker: pure functions over (identity, topic), plus MQTT topic-filter checks that never panic on client input.
//!
//! The whole table (anything not listed is refused):
//!
//! | identity | publish | subscribe |
//! |---|---|---|
//! | device `{id}` | `octomil/v1/devices/{id}/status` (at most [`STATUS_MAX_BYTES`]) | `octomil/v1/devices/{id}/revocation` |
//! | revoked device `{id}` | nothing (its will is dropped) | `octomil/v1/devices/{id}/revocation` |
//! | the cloud | `octomil/v1/devices/{any id}/revocation` | any valid filter |
//!
//! The same functions answer brokers that ask over HTTP (`api::mqtt_auth`), so the embedded
//! broker, EMQX and the Mosquitto ACL file (`docs/mosquitto.acl.example`) apply one table.

use octomil_common::DeviceId;

/// Who a connection authenticated as (see `auth::Authenticator`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The cloud's own session (and tools presenting a certificate for the cloud's CN).
    Cloud,
    Device(DeviceId),
    /// A revoked device with a certificate that has not expired yet: it may still read its
    /// own (retained) revocation, so it learns of it even if it missed the push, and nothing
    /// else.
    Revoked(DeviceId),
}

impl Identity {
    /// Whether `self` and `other` are the same principal, whatever each may do now: a
    /// device revoked while connected may take over its own session, nobody else's.
    pub fn same_principal(&self, other: &Identity) -> bool {
        match (self, other) {
            (Identity::Cloud, Identity::Cloud) => true,
            (
                Identity::Device(a) | Identity::Revoked(a),
                Identity::Device(b) | Identity::Revoked(b),
            ) => a == b,
            _ => false,
        }
    }

    /// The client id a connection of this identity must use; `None` for the cloud, whose
    /// sessions are named `{identity}` or `{identity}:{suffix}` (checked by the caller).
    pub fn device_id(&self) -> Option<&DeviceId> {
        match self {
            Identity::Cloud => None,
            Identity::Device(id) | Identity::Revoked(id) => Some(id),
        }
    }
}

/// A device's status message may be at most this long. The cloud ignores (and counts)
/// anything over 1 KiB; the broker drops what is larger still, so a device cannot fill the
/// retained store with big messages.
pub const STATUS_MAX_BYTES: usize = 4 * 1024;

const PREFIX: &str = "octomil/v1/devices/";

/// What a PUBLISH to `topic` from `who` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRule {
    /// A device's own status: size-capped and rate-limited.
    Status,
    /// A revocation (or its clear), from the cloud.
    Revocation,
    Denied,
}

/// The publish column of the table.
pub fn publish_rule(who: &Identity, topic: &str) -> PublishRule {
    if !valid_topic(topic) {
        return PublishRule::Denied;
    }
    match who {
        Identity::Device(id) if device_topic(topic, "status") == Some(id.as_str()) => {
            PublishRule::Status
        }
        Identity::Cloud if device_topic(topic, "revocation").is_some() => PublishRule::Revocation,
        _ => PublishRule::Denied,
    }
}

/// The subscribe column of the table (`filter` is checked for validity too).
pub fn may_subscribe(who: &Identity, filter: &str) -> bool {
    if !valid_filter(filter) {
        return false;
    }
    match who {
        Identity::Cloud => true,
        Identity::Device(id) | Identity::Revoked(id) => {
            device_topic(filter, "revocation") == Some(id.as_str())
        }
    }
}

/// The device id of `octomil/v1/devices/{id}/{leaf}` when `{id}` is a valid device id
/// (so never a wildcard).
fn device_topic<'a>(topic: &'a str, leaf: &str) -> Option<&'a str> {
    let id = topic
        .strip_prefix(PREFIX)?
        .strip_suffix(leaf)?
        .strip_suffix('/')?;
    DeviceId::parse(id).ok().map(|_| id)
}

/// A topic name a client may publish to: non-empty, no wildcards, no NUL (MQTT 3.1.1 §4.7).
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client may subscribe with: `+` only as a whole level, `#` only as the
/// whole last level, no NUL (MQTT 3.1.1 §4.7.1).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len().saturating_sub(1);
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == last,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether `topic` (a valid topic name) matches `filter` (a valid filter). Topics starting
/// with `$` never match a filter that starts with a wildcard (§4.7.2).
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` has no wildcard (an exact topic).
pub fn is_exact(filter: &str) -> bool {
    !filter.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> Identity {
        Identity::Device(DeviceId::parse(id).unwrap())
    }

    #[test]
    fn the_table() {
        let a = dev("edge-a");
        let r = Identity::Revoked(DeviceId::parse("edge-r").unwrap());
        let rows: &[(&Identity, &str, PublishRule)] = &[
            (&r, "octomil/v1/devices/edge-r/status", PublishRule::Denied),
            (
                &r,
                "octomil/v1/devices/edge-r/revocation",
                PublishRule::Denied,
            ),
            (&r, "anything", PublishRule::Denied),
            (&a, "octomil/v1/devices/edge-a/status", PublishRule::Status),
            (&a, "octomil/v1/devices/edge-b/status", PublishRule::Denied),
            (
                &a,
                "octomil/v1/devices/edge-a/revocation",
                PublishRule::Denied,
            ),
            (
                &a,
                "octomil/v1/devices/edge-b/revocation",
                PublishRule::Denied,
            ),
            (
                &a,
                "octomil/v1/devices/edge-a/status/x",
                PublishRule::Denied,
            ),
            (&a, "octomil/v1/devices/+/status", PublishRule::Denied),
            (&a, "anything", PublishRule::Denied),
            (
                &Identity::Cloud,
                "octomil/v1/devices/edge-b/revocation",
                PublishRule::Revocation,
            ),
            (
                &Identity::Cloud,
                "octomil/v1/devices/edge-b/status",
                PublishRule::Denied,
            ),
            (
                &Identity::Cloud,
                "octomil/v1/devices/+/revocation",
                PublishRule::Denied,
            ),
            (
                &Identity::Cloud,
                "octomil/v1/devices/../revocation",
                PublishRule::Denied,
            ),
        ];
        for (who, topic, rule) in rows {
            assert_eq!(publish_rule(who, topic), *rule, "{who:?} publish {topic}");
        }
        let subs: &[(&Identity, &str, bool)] = &[
            (&a, "octomil/v1/devices/edge-a/revocation", true),
            (&r, "octomil/v1/devices/edge-r/revocation", true),
            (&r, "octomil/v1/devices/edge-a/revocation", false),
            (&r, "octomil/v1/devices/edge-r/status", false),
            (&r, "octomil/v1/devices/+/revocation", false),
            (&r, "#", false),
            (&a, "octomil/v1/devices/edge-b/revocation", false),
            (&a, "octomil/v1/devices/+/revocation", false),
            (&a, "octomil/v1/devices/edge-a/status", false),
            (&a, "#", false),
            (&a, "octomil/#", false),
            (&Identity::Cloud, "octomil/v1/devices/+/status", true),
            (&Identity::Cloud, "#", true),
            (&Identity::Cloud, "a/#/b", false),
        ];
        for (who, filter, ok) in subs {
            assert_eq!(
                may_subscribe(who, filter),
                *ok,
                "{who:?} subscribe {filter}"
            );
        }
    }

    #[test]
    fn principals() {
        let a = dev("edge-a");
        let ra = Identity::Revoked(DeviceId::parse("edge-a").unwrap());
        assert!(a.same_principal(&ra) && ra.same_principal(&a));
        assert!(!a.same_principal(&dev("edge-b")));
        assert!(!a.same_principal(&Identity::Cloud));
        assert!(Identity::Cloud.same_principal(&Identity::Cloud));
        assert_eq!(ra.device_id().map(DeviceId::as_str), Some("edge-a"));
        assert_eq!(Identity::Cloud.device_id(), None);
    }

    #[test]
    fn filters_and_matching() {
        for good in ["#", "+", "a/+/c", "a/#", "+/+", "é/ü"] {
            assert!(valid_filter(good), "{good}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "##", "a\0"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert!(matches("a/b/c", "a/+/c"));
        assert!(matches("a/b/c", "a/#"));
        assert!(matches("a", "a/#"));
        assert!(!matches("a/b", "a/+/c"));
        assert!(!matches("a/b/c", "a/+"));
        assert!(!matches("$SYS/x", "#"));
        // A multi-byte first character (rumqttc 0.25's `matches` slices `topic[..1]` and
        // panics on it).
        assert!(matches("é/x", "+/x"));
        assert!(!matches("é/x", "e/x"));
    }
}
