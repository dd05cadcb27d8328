//! `octomil org settings` (show or change the organization's settings) and the `members`
//! subcommands, which live in `org/members.rs`.

mod members;

pub use members::MembersCmd;

use clap::{Args, Subcommand, ValueEnum};
use octomil_common::duration::format_secs;
use octomil_common::wire::RateLimit;
use serde::{Deserialize, Serialize};

use super::output::{Out, key_values, or_dash};
use super::{ApiClient, CliError, parse_duration};

#[derive(Debug, Subcommand)]
pub enum OrgCmd {
    /// Show the organization's settings; with flags, change them
    Settings(SettingsArgs),
    /// Manage the organization's members
    #[command(subcommand)]
    Members(members::MembersCmd),
}

#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Lifetime of device keys, e.g. 48h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub device_token_expiry: Option<String>,
    /// Compliance preset (sets the MFA policy)
    #[arg(long, value_enum, ignore_case = true)]
    pub compliance_preset: Option<Preset>,
    /// Control-plane requests per minute per device
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub control_plane_limit: Option<u32>,
    /// Inference requests per minute per key
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub inference_limit: Option<u32>,
    /// Device registrations per minute per source IP
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub registration_limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    None,
    Hipaa,
    Pci,
    Gdpr,
    Soc2,
}

/// `PATCH /org/settings`: only what was given; limits are always per minute.
#[derive(Debug, Default, Serialize)]
struct SettingsPatch<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    device_token_expiry: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compliance_preset: Option<Preset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limits: Option<Limits>,
}

/// The `rate_limits` object, used both ways: a PATCH gives any subset of the surfaces.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    control_plane: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inference: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration: Option<RateLimit>,
}

#[derive(Debug, Deserialize)]
struct Settings {
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    org_name: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    device_token_expiry: Option<String>,
    #[serde(default)]
    compliance_preset: Option<String>,
    #[serde(default)]
    rate_limits: Limits,
}

pub async fn run(client: &ApiClient, cmd: OrgCmd, out: &mut Out<'_>) -> Result<(), CliError> {
    let args = match cmd {
        OrgCmd::Settings(args) => args,
        OrgCmd::Members(cmd) => return members::run(client, cmd, out).await,
    };
    // No flags shows the settings; any flag sends exactly those fields.
    let patch = settings_patch(&args);
    let answer = if patch_is_empty(&patch) {
        client.get(&["org", "settings"]).await?
    } else {
        client.patch(&["org", "settings"], &patch).await?
    };
    if out.json {
        return out.json_value(answer.body.as_ref());
    }
    out.print(&render_settings(&answer.parse()?))
}

fn settings_patch(a: &SettingsArgs) -> SettingsPatch<'_> {
    let per_minute = |n: Option<u32>| n.map(RateLimit::per_minute);
    let limits = Limits {
        control_plane: per_minute(a.control_plane_limit),
        inference: per_minute(a.inference_limit),
        registration: per_minute(a.registration_limit),
    };
    let any_limit = limits.control_plane.is_some()
        || limits.inference.is_some()
        || limits.registration.is_some();
    SettingsPatch {
        device_token_expiry: a.device_token_expiry.as_deref(),
        compliance_preset: a.compliance_preset,
        rate_limits: any_limit.then_some(limits),
    }
}

fn patch_is_empty(p: &SettingsPatch<'_>) -> bool {
    p.device_token_expiry.is_none() && p.compliance_preset.is_none() && p.rate_limits.is_none()
}

/// `100/min`, or `100 per 1h` for a period other than a minute.
fn rate(r: Option<&RateLimit>) -> String {
    match r {
        Some(r) if r.period_secs == 60 => format!("{}/min", r.limit),
        Some(r) => format!("{} per {}", r.limit, format_secs(u64::from(r.period_secs))),
        None => "-".to_owned(),
    }
}

fn render_settings(s: &Settings) -> String {
    key_values(&[
        ("org_id", or_dash(s.org_id.as_deref())),
        ("org_name", or_dash(s.org_name.as_deref())),
        ("environment", or_dash(s.environment.as_deref())),
        (
            "device_token_expiry",
            or_dash(s.device_token_expiry.as_deref()),
        ),
        ("compliance_preset", or_dash(s.compliance_preset.as_deref())),
        (
            "control_plane_limit",
            rate(s.rate_limits.control_plane.as_ref()),
        ),
        ("inference_limit", rate(s.rate_limits.inference.as_ref())),
        (
            "registration_limit",
            rate(s.rate_limits.registration.as_ref()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::parse;
    use clap::error::ErrorKind;

    fn cmd(args: &[&str]) -> OrgCmd {
        match parse(args).unwrap().command {
            Command::Org(c) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn patch_json(args: &[&str]) -> serde_json::Value {
        let OrgCmd::Settings(a) = cmd(args) else {
            panic!("{args:?}")
        };
        serde_json::to_value(settings_patch(&a)).unwrap()
    }

    #[test]
    fn settings_without_flags_is_a_read() {
        let OrgCmd::Settings(a) = cmd(&["org", "settings"]) else {
            panic!()
        };
        assert!(patch_is_empty(&settings_patch(&a)));
    }

    #[test]
    fn settings_flags_build_a_partial_patch() {
        assert_eq!(
            patch_json(&["org", "settings", "--device-token-expiry", "48h"]),
            serde_json::json!({"device_token_expiry": "48h"})
        );
        assert_eq!(
            patch_json(&[
                "org",
                "settings",
                "--compliance-preset",
                "HIPAA",
                "--inference-limit",
                "500"
            ]),
            serde_json::json!({
                "compliance_preset": "hipaa",
                "rate_limits": {"inference": {"limit": 500, "period_secs": 60}}
            })
        );
        assert_eq!(
            patch_json(&[
                "org",
                "settings",
                "--control-plane-limit",
                "100",
                "--registration-limit",
                "10"
            ]),
            serde_json::json!({"rate_limits": {
                "control_plane": {"limit": 100, "period_secs": 60},
                "registration": {"limit": 10, "period_secs": 60}
            }})
        );
    }

    #[test]
    fn settings_rejects_bad_values() {
        for args in [
            &["org", "settings", "--device-token-expiry", "48"][..],
            &["org", "settings", "--device-token-expiry", "0h"],
            &["org", "settings", "--inference-limit", "0"],
            &["org", "settings", "--registration-limit", "lots"],
        ] {
            assert_eq!(
                parse(args).unwrap_err().kind(),
                ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
        let e = parse(&["org", "settings", "--compliance-preset", "iso27001"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn renders_settings() {
        let s: Settings = serde_json::from_value(serde_json::json!({
            "org_id": "org_1", "org_name": "Acme", "environment": "live",
            "device_token_expiry": "24h", "compliance_preset": "none",
            "rate_limits": {"control_plane": {"limit": 100, "period_secs": 60},
                            "inference": {"limit": 1000, "period_secs": 3600}}
        }))
        .unwrap();
        let text = render_settings(&s);
        assert!(text.contains("device_token_expiry: 24h\n"), "{text}");
        assert!(text.contains("control_plane_limit: 100/min\n"), "{text}");
        assert!(
            text.contains("inference_limit:     1000 per 1h\n"),
            "{text}"
        );
        assert!(text.contains("registration_limit:  -\n"), "{text}");
    }
}
