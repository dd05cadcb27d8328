//! `octomil devices list|show|revoke|delete`: the fleet as the control plane sees it.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use octomil_common::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api_keys::Environment;
use super::output::{Out, Table, ago, key_values, or_dash, when};
use super::{ApiClient, CliError, parse_device_id, parse_duration, parse_text};

#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// List devices with their state, presence and key expiry (every page, or --limit N)
    List(ListArgs),
    /// Show one device
    Show {
        #[arg(value_parser = parse_device_id)]
        id: DeviceId,
    },
    /// Revoke devices: their keys die and each is pushed a signed revocation. Several ids,
    /// --bootstrap-token or --all revoke in one call (one commit) and show progress
    Revoke {
        #[arg(value_parser = parse_device_id, required_unless_present_any = ["bootstrap_token", "all"])]
        ids: Vec<DeviceId>,
        /// Why, for the audit trail and the device's log
        #[arg(long, value_parser = parse_text)]
        reason: Option<String>,
        /// Revoke every device whose latest registration used this bootstrap token
        #[arg(long, value_name = "TOKEN_ID", conflicts_with_all = ["ids", "all"])]
        bootstrap_token: Option<String>,
        /// Revoke every device of the organization (owner only; give --confirm ORG_ID)
        #[arg(long, requires = "confirm", conflicts_with = "ids")]
        all: bool,
        /// With --all: the organization id, as confirmation
        #[arg(long, value_name = "ORG_ID")]
        confirm: Option<String>,
        /// Bulk: then wait up to this many seconds for the devices to report themselves
        /// revoked, showing how many have
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Delete a revoked device so its id can be provisioned again
    Delete {
        #[arg(value_parser = parse_device_id)]
        id: DeviceId,
    },
}

/// `octomil devices list` filters, each a query parameter of `GET /devices`.
#[derive(Debug, Default, Args)]
pub struct ListArgs {
    /// Show at most N devices (default: every device, fetched a page at a time)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// active or revoked
    #[arg(long, value_parser = ["active", "revoked"])]
    pub state: Option<String>,
    /// Only devices connected (true) or not (false) right now
    #[arg(long, value_name = "BOOL")]
    pub online: Option<bool>,
    /// Only devices seen within this long, e.g. 24h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub seen_within: Option<String>,
    /// Only devices last seen longer ago than this, e.g. 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub not_seen_for: Option<String>,
    /// Only devices whose daemon reported this version
    #[arg(long, value_parser = parse_text)]
    pub version: Option<String>,
    /// Only devices enrolled with this bootstrap token id
    #[arg(long, value_name = "ID", value_parser = parse_text)]
    pub bootstrap_token: Option<String>,
    /// Free text: part of the device id or of a metadata value (any case)
    #[arg(long, value_name = "TEXT", value_parser = parse_text)]
    pub search: Option<String>,
    /// live or test (a session sees both; a key only its own)
    #[arg(long, value_enum, ignore_case = true)]
    pub environment: Option<Environment>,
    /// Order: id (default) or last-seen (newest first, never seen last; sorted by the cloud)
    #[arg(long, value_parser = ["id", "last-seen"])]
    pub sort: Option<String>,
}

impl ListArgs {
    /// The query parameters, with durations turned into Unix seconds before `now`.
    fn query(&self, now: u64) -> Vec<(&'static str, String)> {
        let ago = |d: &str| {
            let secs = octomil_common::duration::parse_secs(d).unwrap_or(0);
            now.saturating_sub(secs).to_string()
        };
        let mut q = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                q.push((k, v));
            }
        };
        put("state", self.state.clone());
        put("online", self.online.map(|b| b.to_string()));
        put("last_seen_after", self.seen_within.as_deref().map(ago));
        put("last_seen_before", self.not_seen_for.as_deref().map(ago));
        put("version", self.version.clone());
        put("bootstrap_token", self.bootstrap_token.clone());
        put("q", self.search.clone());
        put(
            "environment",
            self.environment.map(|e| e.as_str().to_owned()),
        );
        put(
            "sort",
            (self.sort.as_deref() == Some("last-seen")).then(|| "last_seen".to_owned()),
        );
        q
    }
}

/// The most `GET /devices` serves per page.
const PAGE_MAX: usize = 5000;

/// `Device` of the API document; unknown values arrive as `null`.
#[derive(Debug, Deserialize)]
struct Device {
    device_id: String,
    state: String,
    #[serde(default)]
    registered_at: Option<u64>,
    #[serde(default)]
    last_refresh_at: Option<u64>,
    #[serde(default)]
    key_expires_at: Option<u64>,
    #[serde(default)]
    revoked_at: Option<u64>,
    #[serde(default)]
    revoke_reason: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(default)]
    last_seen: Option<u64>,
    #[serde(default)]
    daemon_version: Option<String>,
    #[serde(default)]
    reported_state: Option<String>,
    #[serde(default)]
    revocation_published: Option<bool>,
    #[serde(default)]
    revocation_ack_ms: Option<u64>,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Debug, Serialize)]
struct RevokeBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

pub async fn run(client: &ApiClient, cmd: DevicesCmd, out: &mut Out<'_>) -> Result<(), CliError> {
    match cmd {
        DevicesCmd::List(args) => {
            // The cloud answers a page at a time: follow the cursor to the end (or --limit).
            let limit = args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let raw = super::pages::fetch(
                client,
                &["devices"],
                "devices",
                &args.query(out.now),
                limit,
                PAGE_MAX,
            )
            .await?;
            if out.json {
                let all = serde_json::json!({ "devices": raw });
                return out.json_value(Some(&all));
            }
            let devices: Vec<Device> = super::pages::parse("devices", &raw)?;
            if devices.is_empty() {
                return out.note("no devices");
            }
            out.print(&render_list(&devices, out.now))
        }
        DevicesCmd::Show { id } => {
            let answer = client.get(&["devices", id.as_str()]).await?;
            show(&answer, out)
        }
        DevicesCmd::Revoke {
            ids,
            reason,
            bootstrap_token,
            all,
            confirm,
            wait,
        } => {
            let [id] = ids.as_slice() else {
                let body = BulkBody {
                    device_ids: (!ids.is_empty())
                        .then(|| ids.iter().map(DeviceId::as_str).collect()),
                    bootstrap_token_id: bootstrap_token.as_deref(),
                    all,
                    confirm: confirm.as_deref(),
                    reason: reason.as_deref(),
                };
                return bulk_revoke(client, &body, wait, out).await;
            };
            if bootstrap_token.is_some() || all {
                return Err(CliError::Usage(
                    "give device ids, --bootstrap-token or --all, not several".into(),
                ));
            }
            let body = RevokeBody {
                reason: reason.as_deref(),
            };
            let answer = client
                .post(&["devices", id.as_str(), "revoke"], &body)
                .await?;
            show(&answer, out)?;
            if out.json {
                return Ok(());
            }
            let device: Device = answer.parse()?;
            out.print(&push_outcome(&device, answer.status, out.now))
        }
        DevicesCmd::Delete { id } => {
            let answer = client.delete(&["devices", id.as_str()]).await?;
            if out.json {
                return out.json_value(answer.body.as_ref());
            }
            out.print(&format!(
                "deleted device {id}; its id may be provisioned again"
            ))
        }
    }
}

/// The body of `POST /revocations`.
#[derive(Debug, Serialize)]
struct BulkBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    device_ids: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap_token_id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    confirm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The answer of `POST /revocations`.
#[derive(Debug, Deserialize)]
struct BulkAnswer {
    revoked: Vec<String>,
    already_revoked: u64,
    #[serde(default)]
    not_found: Vec<String>,
    published: u64,
}

/// One bulk call (one commit for every device), then what happened to the pushes, then (with
/// `wait`) how many devices report themselves revoked, polled until all do or time is up.
async fn bulk_revoke(
    client: &ApiClient,
    body: &BulkBody<'_>,
    wait: Option<u64>,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let answer = client.post(&["revocations"], body).await?;
    if out.json {
        return out.json_value(answer.body.as_ref());
    }
    let b: BulkAnswer = answer.parse()?;
    out.print(&bulk_summary(&b))?;
    let Some(secs) = wait.filter(|_| !b.revoked.is_empty()) else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let wanted: std::collections::BTreeSet<&str> = b.revoked.iter().map(String::as_str).collect();
    let mut last = None;
    loop {
        let confirmed = reported_revoked(client, &wanted).await?;
        if last != Some(confirmed) {
            out.note(&format!(
                "acknowledged by the devices: {confirmed} of {}",
                wanted.len()
            ))?;
            last = Some(confirmed);
        }
        if confirmed == wanted.len() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return out.note(
                "not every device has reported yet (offline devices learn of it when they \
                 reconnect or refresh)",
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn bulk_summary(b: &BulkAnswer) -> String {
    let n = b.revoked.len() as u64;
    let mut s = format!(
        "revoked: {n} (already revoked: {}, not found: {})\n",
        b.already_revoked,
        b.not_found.len()
    );
    if n > 0 {
        s.push_str(&format!(
            "pushed: {} of {n} acknowledged by the broker{}\n",
            b.published,
            if b.published < n {
                "; the cloud keeps retrying the rest"
            } else {
                ""
            }
        ));
    }
    for id in &b.not_found {
        s.push_str(&format!("not found: {}\n", super::output::clean(id)));
    }
    s
}

/// How many of `wanted` the cloud has seen report themselves revoked (their presence).
async fn reported_revoked(
    client: &ApiClient,
    wanted: &std::collections::BTreeSet<&str>,
) -> Result<usize, CliError> {
    let raw = super::pages::fetch(client, &["devices"], "devices", &[], None, PAGE_MAX).await?;
    let devices: Vec<Device> = super::pages::parse("devices", &raw)?;
    Ok(devices
        .iter()
        .filter(|d| {
            wanted.contains(d.device_id.as_str()) && d.reported_state.as_deref() == Some("revoked")
        })
        .count())
}

fn show(answer: &super::client::Answer, out: &mut Out<'_>) -> Result<(), CliError> {
    if out.json {
        return out.json_value(answer.body.as_ref());
    }
    let device: Device = answer.parse()?;
    out.print(&render_one(&device, out.now))
}

/// One line on what happened to the revocation push: acknowledged by the broker (and
/// when), still being retried, or not pushed at all.
fn push_outcome(d: &Device, status: u16, now: u64) -> String {
    match (d.revocation_published, d.revocation_ack_ms) {
        (Some(true), Some(ms)) => format!(
            "revocation pushed: the broker acknowledged it {ms} ms after publishing (at {})",
            when(Some(now), now)
        ),
        (Some(true), None) => "revocation pushed: the broker acknowledged it".to_owned(),
        _ if status == 202 => "revocation recorded; the broker has not acknowledged it yet: \
             the cloud keeps retrying, and the device is refused at its next refresh anyway"
            .to_owned(),
        _ => "revocation recorded; the cloud has no broker, so the device learns of it at its \
             next refresh"
            .to_owned(),
    }
}

fn online(d: &Device) -> String {
    match d.online {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

fn render_list(devices: &[Device], now: u64) -> String {
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "ONLINE",
        "LAST SEEN",
        "REPORTED",
        "VERSION",
        "KEY EXPIRES",
        "ENV",
    ]);
    for d in devices {
        t.row(vec![
            d.device_id.clone(),
            d.state.clone(),
            online(d),
            ago(d.last_seen, now),
            or_dash(d.reported_state.as_deref()),
            or_dash(d.daemon_version.as_deref()),
            when(d.key_expires_at, now),
            or_dash(d.environment.as_deref()),
        ]);
    }
    t.render()
}

fn render_one(d: &Device, now: u64) -> String {
    let pairs = [
        ("device_id", d.device_id.clone()),
        ("state", d.state.clone()),
        ("online", online(d)),
        ("last_seen", when(d.last_seen, now)),
        ("reported_state", or_dash(d.reported_state.as_deref())),
        ("daemon_version", or_dash(d.daemon_version.as_deref())),
        ("registered_at", when(d.registered_at, now)),
        ("last_refresh_at", when(d.last_refresh_at, now)),
        ("key_expires_at", when(d.key_expires_at, now)),
        ("revoked_at", when(d.revoked_at, now)),
        ("revoke_reason", or_dash(d.revoke_reason.as_deref())),
        ("environment", or_dash(d.environment.as_deref())),
    ];
    let mut text = key_values(&pairs);
    // Metadata keys are the device's own: list them indented under their own header rather
    // than mixed into the fixed keys above.
    if let Some(meta) = d.metadata.as_ref().filter(|m| !m.is_empty()) {
        text.push_str("metadata:\n");
        let labels: Vec<String> = meta.keys().map(|k| format!("  {k}")).collect();
        let rows: Vec<(&str, String)> = labels
            .iter()
            .zip(meta.values())
            .map(|(k, v)| (k.as_str(), value_text(v)))
            .collect();
        text.push_str(&key_values(&rows));
    }
    text
}

/// A JSON value as plain text: strings without their quotes, the rest as JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::parse;
    use clap::error::ErrorKind;

    fn cmd(args: &[&str]) -> DevicesCmd {
        match parse(args).unwrap().command {
            Command::Devices(c) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_every_subcommand() {
        assert!(matches!(cmd(&["devices", "list"]), DevicesCmd::List(_)));
        let c = cmd(&[
            "devices",
            "list",
            "--limit",
            "10",
            "--state",
            "active",
            "--seen-within",
            "1h",
            "--search",
            "Cam",
            "--environment",
            "test",
            "--sort",
            "last-seen",
        ]);
        let DevicesCmd::List(a) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            a.query(10_000),
            [
                ("state", "active".to_owned()),
                ("last_seen_after", "6400".to_owned()),
                ("q", "Cam".to_owned()),
                ("environment", "test".to_owned()),
                ("sort", "last_seen".to_owned()),
            ]
        );
        assert!(parse(&["devices", "list", "--sort", "name"]).is_err());
        assert_eq!(a.limit, Some(10));
        assert!(parse(&["devices", "list", "--limit", "0"]).is_err());
        assert!(parse(&["devices", "list", "--state", "gone"]).is_err());
        let c = cmd(&["devices", "show", "dev-1"]);
        assert!(
            matches!(c, DevicesCmd::Show { ref id } if id.as_str() == "dev-1"),
            "{c:?}"
        );
        let c = cmd(&["devices", "revoke", "dev-1"]);
        assert!(
            matches!(c, DevicesCmd::Revoke { reason: None, .. }),
            "{c:?}"
        );
        let c = cmd(&["devices", "revoke", "dev-1", "--reason", "stolen"]);
        assert!(
            matches!(c, DevicesCmd::Revoke { ref reason, .. } if reason.as_deref() == Some("stolen")),
            "{c:?}"
        );
        let c = cmd(&["devices", "delete", "dev-1"]);
        assert!(
            matches!(c, DevicesCmd::Delete { ref id } if id.as_str() == "dev-1"),
            "{c:?}"
        );
    }

    #[test]
    fn rejects_bad_device_ids_and_empty_reasons() {
        for args in [
            &["devices", "show", "a/b"][..],
            &["devices", "revoke", ".."],
            &["devices", "delete", ""],
            &["devices", "revoke", "dev-1", "--reason", " "],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
        }
        assert!(parse(&["devices", "show"]).is_err());
    }

    #[test]
    fn revoke_body_omits_a_missing_reason() {
        let b = RevokeBody { reason: None };
        assert_eq!(serde_json::to_string(&b).unwrap(), "{}");
        let b = RevokeBody {
            reason: Some("lost"),
        };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"reason":"lost"}"#);
    }

    fn device(json: Value) -> Device {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn list_renders_presence_and_expiry() {
        let now = 1_000_000;
        let devices = [
            device(serde_json::json!({
                "device_id": "edge-01", "state": "active", "online": true,
                "last_seen": now - 30, "key_expires_at": now + 7_200,
                "reported_state": "active", "daemon_version": "0.1.0",
                "environment": "live",
            })),
            device(serde_json::json!({
                "device_id": "edge-02", "state": "revoked", "online": null,
                "last_seen": null, "key_expires_at": null,
            })),
        ];
        assert_eq!(
            render_list(&devices, now),
            "ID       STATE    ONLINE  LAST SEEN  REPORTED  VERSION  KEY EXPIRES                   ENV\n\
             edge-01  active   yes     30s ago    active    0.1.0    1970-01-12T15:46:40Z (in 2h)  live\n\
             edge-02  revoked  -       -          -         -        -                             -\n"
        );
    }

    #[test]
    fn revoke_says_whether_the_broker_acknowledged() {
        let acked = device(serde_json::json!({
            "device_id": "e", "state": "revoked", "revocation_published": true,
            "revocation_ack_ms": 3,
        }));
        let text = push_outcome(&acked, 200, 60);
        assert!(
            text.contains("acknowledged it 3 ms after publishing (at 1970-01-01T00:01:00Z"),
            "{text}"
        );
        let pending = device(serde_json::json!({
            "device_id": "e", "state": "revoked", "revocation_published": false,
        }));
        assert!(push_outcome(&pending, 202, 0).contains("keeps retrying"));
        assert!(push_outcome(&pending, 200, 0).contains("no broker"));
    }

    #[test]
    fn bulk_summary_counts_revoked_pushed_and_not_found() {
        let b = BulkAnswer {
            revoked: vec!["a".into(), "b".into(), "c".into()],
            already_revoked: 2,
            not_found: vec!["zz".into()],
            published: 2,
        };
        assert_eq!(
            bulk_summary(&b),
            "revoked: 3 (already revoked: 2, not found: 1)\n\
             pushed: 2 of 3 acknowledged by the broker; the cloud keeps retrying the rest\n\
             not found: zz\n"
        );
        let body = BulkBody {
            device_ids: Some(vec!["a", "b"]),
            bootstrap_token_id: None,
            all: false,
            confirm: None,
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"device_ids":["a","b"]}"#
        );
    }

    #[test]
    fn show_lists_fields_then_metadata() {
        let d = device(serde_json::json!({
            "device_id": "edge-01", "state": "revoked", "registered_at": 0,
            "revoked_at": 60, "revoke_reason": "stolen", "online": false,
            "metadata": {"model": "pi5", "ram_mb": 8192},
        }));
        let text = render_one(&d, 120);
        assert!(
            text.starts_with("device_id:       edge-01\nstate:           revoked\n"),
            "{text}"
        );
        assert!(
            text.contains("revoked_at:      1970-01-01T00:01:00Z (1m ago)\n"),
            "{text}"
        );
        assert!(text.contains("revoke_reason:   stolen\n"), "{text}");
        assert!(
            text.ends_with("metadata:\n  model:  pi5\n  ram_mb: 8192\n"),
            "{text}"
        );
    }
}
