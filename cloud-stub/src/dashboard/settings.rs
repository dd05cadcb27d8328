//! Organisation settings (`/dashboard/settings`): the API's `GET /org/settings` for every
//! member (read-only), and for the roles the table lets `PATCH /org/settings` a form whose
//! save goes through a review step: what each change means for this organisation (devices,
//! members, sessions, limits), computed from its current state, before anything is saved.
//! The save calls the API's handler; a preset change needs a fresh authenticator code, by the
//! API's own rule ([`org_settings::needs_step_up`]).

use askama::Template;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use octomil_common::duration;
use octomil_common::wire::RateLimit;

use super::{DashState, Form, Nav, Refusal, Viewer, render};
use crate::api::org_settings::{self, LimitsPatch, SettingsPatch};
use crate::error::ApiError;
use crate::extract::Body;
use crate::scope::Role;
use crate::store::{CloudRateLimits, CompliancePreset, Settings};

/// The presets as the form offers them: (preset, form value, label).
const PRESETS: [(CompliancePreset, &str, &str); 5] = [
    (CompliancePreset::None, "none", "None"),
    (CompliancePreset::Hipaa, "hipaa", "HIPAA"),
    (CompliancePreset::Pci, "pci", "PCI DSS"),
    (CompliancePreset::Gdpr, "gdpr", "GDPR"),
    (CompliancePreset::Soc2, "soc2", "SOC 2"),
];

/// The rate limits: (API name, label, who it counts, whether devices mirror it).
const LIMITS: [(&str, &str, &str, bool); 4] = [
    (
        "control_plane",
        "Control plane",
        "per device: register, refresh and device-key calls",
        true,
    ),
    (
        "inference",
        "Inference",
        "per API key: POST /inference",
        true,
    ),
    (
        "registration",
        "Registration",
        "per source address: POST /devices/register",
        false,
    ),
    (
        "auth_failures",
        "Failed authentications",
        "per source address: only failures count",
        false,
    ),
];

/// Daemons refresh at 70-80 % of a key's lifetime (daemon/src/schedule.rs): the mean, and the
/// latest point.
const REFRESH_AT: f64 = 0.75;
const REFRESH_LATEST: f64 = 0.80;

fn preset_value(p: CompliancePreset) -> &'static str {
    PRESETS.iter().find(|x| x.0 == p).map_or("none", |x| x.1)
}

fn preset_label(p: CompliancePreset) -> &'static str {
    PRESETS.iter().find(|x| x.0 == p).map_or("None", |x| x.2)
}

fn limit_at(l: &CloudRateLimits, i: usize) -> RateLimit {
    match i {
        0 => l.control_plane,
        1 => l.inference,
        2 => l.registration,
        _ => l.auth_failures,
    }
}

fn set_limit(l: &mut CloudRateLimits, i: usize, v: RateLimit) {
    match i {
        0 => l.control_plane = v,
        1 => l.inference = v,
        2 => l.registration = v,
        _ => l.auth_failures = v,
    }
}

fn per_minute(l: RateLimit) -> f64 {
    f64::from(l.limit) * 60.0 / f64::from(l.period_secs.max(1))
}

/// A figure to about three significant digits.
fn num(f: f64) -> String {
    if f >= 100.0 || (f >= 1.0 && (f - f.round()).abs() < 0.005) {
        format!("{f:.0}")
    } else if f >= 10.0 {
        format!("{f:.1}")
    } else if f >= 0.01 || f == 0.0 {
        format!("{f:.2}")
    } else {
        format!("{f:.4}")
    }
}

/// Seconds as an operator reads them (`45 min`, `18 h`).
fn human(secs: f64) -> String {
    if secs < 120.0 {
        format!("{} s", num(secs))
    } else if secs < 7200.0 {
        format!("{} min", num(secs / 60.0))
    } else if secs < 2.0 * 86_400.0 {
        format!("{} h", num(secs / 3600.0))
    } else {
        format!("{} days", num(secs / 86_400.0))
    }
}

/// A fleet-wide rate in the unit that keeps it readable (per second, minute or hour).
fn fleet_rate(per_sec: f64) -> String {
    if per_sec >= 1.0 {
        format!("{} refreshes/s", num(per_sec))
    } else if per_sec * 60.0 >= 1.0 {
        format!("{} refreshes a minute", num(per_sec * 60.0))
    } else {
        format!("{} refreshes an hour", num(per_sec * 3600.0))
    }
}

fn limit_text(l: RateLimit) -> String {
    format!("{} per {} s", l.limit, l.period_secs)
}

/// Seconds between two refreshes of one device for a key lifetime.
fn refresh_interval(lifetime: u64) -> f64 {
    (lifetime as f64 * REFRESH_AT).max(1.0)
}

/// Which roles a preset asks a TOTP code of, in words.
fn mfa_roles(p: CompliancePreset) -> &'static str {
    match (p.requires_mfa(Role::Member), p.requires_mfa(Role::Admin)) {
        (true, _) => "every member",
        (false, true) => "Owners and Admins",
        (false, false) => "nobody",
    }
}

/// The form's fields as typed, to prefill the form and carry through the review.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub expiry: String,
    pub preset: String,
    /// (limit, period seconds) in [`LIMITS`] order.
    pub limits: Vec<(String, String)>,
}

impl Fields {
    fn of(s: &Settings) -> Self {
        Self {
            expiry: duration::format_secs(s.device_token_expiry_secs),
            preset: preset_value(s.compliance_preset).to_owned(),
            limits: (0..LIMITS.len())
                .map(|i| {
                    let l = limit_at(&s.rate_limits, i);
                    (l.limit.to_string(), l.period_secs.to_string())
                })
                .collect(),
        }
    }

    /// The form's values; a field the form lacks keeps its value in `base`.
    fn from_form(form: &Form, base: &Self) -> Self {
        let get = |k: &str, d: &str| {
            form.get(k)
                .map_or_else(|| d.to_owned(), |v| v.trim().to_owned())
        };
        Self {
            expiry: get("expiry", &base.expiry),
            preset: get("preset", &base.preset),
            limits: LIMITS
                .iter()
                .zip(&base.limits)
                .map(|((key, ..), (l, p))| {
                    (
                        get(&format!("{key}_limit"), l),
                        get(&format!("{key}_period"), p),
                    )
                })
                .collect(),
        }
    }

    /// The fields as hidden inputs of the review's form: (name, value).
    fn hidden(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("expiry".to_owned(), self.expiry.clone()),
            ("preset".to_owned(), self.preset.clone()),
        ];
        for ((key, ..), (l, p)) in LIMITS.iter().zip(&self.limits) {
            v.push((format!("{key}_limit"), l.clone()));
            v.push((format!("{key}_period"), p.clone()));
        }
        v
    }

    /// The values, checked by the API's own bounds; a message for the first that fails.
    fn parse(&self) -> Result<Settings, String> {
        let expiry = org_settings::check_expiry(&self.expiry).map_err(|e| e.message)?;
        let preset = PRESETS
            .iter()
            .find(|x| x.1 == self.preset)
            .map(|x| x.0)
            .ok_or_else(|| "choose one of the compliance presets".to_owned())?;
        let mut limits = CloudRateLimits::default();
        for (i, ((key, label, ..), (l, p))) in LIMITS.iter().zip(&self.limits).enumerate() {
            let whole = |s: &str, what: &str| {
                s.parse::<u32>()
                    .map_err(|_| format!("{label}: the {what} must be a whole number above 0"))
            };
            let rl = RateLimit {
                limit: whole(l, "limit")?,
                period_secs: whole(p, "period")?,
            };
            set_limit(
                &mut limits,
                i,
                org_settings::check_limit(key, rl).map_err(|e| e.message)?,
            );
        }
        Ok(Settings {
            device_token_expiry_secs: expiry,
            compliance_preset: preset,
            rate_limits: limits,
        })
    }
}

/// The patch from `cur` to `new`: only what changes (so a preset is sent, and a code asked
/// for, only when it changes).
fn patch_of(cur: &Settings, new: &Settings) -> Option<SettingsPatch> {
    let changed = |i: usize| {
        let n = limit_at(&new.rate_limits, i);
        (n != limit_at(&cur.rate_limits, i)).then_some(n)
    };
    let limits = LimitsPatch {
        control_plane: changed(0),
        inference: changed(1),
        registration: changed(2),
        auth_failures: changed(3),
    };
    let any_limit = limits.control_plane.is_some()
        || limits.inference.is_some()
        || limits.registration.is_some()
        || limits.auth_failures.is_some();
    let patch = SettingsPatch {
        device_token_expiry: (new.device_token_expiry_secs != cur.device_token_expiry_secs)
            .then(|| duration::format_secs(new.device_token_expiry_secs)),
        compliance_preset: (new.compliance_preset != cur.compliance_preset)
            .then_some(new.compliance_preset),
        rate_limits: any_limit.then_some(limits),
    };
    (patch.device_token_expiry.is_some()
        || patch.compliance_preset.is_some()
        || patch.rate_limits.is_some())
    .then_some(patch)
}

/// What the consequences are computed from: the organisation as it is now.
#[derive(Debug)]
struct Facts {
    settings: Settings,
    active_devices: usize,
    /// (email, role, TOTP enrolled).
    members: Vec<(String, Role, bool)>,
    /// The member email of each session opened without a second factor.
    sessions_without_mfa: Vec<String>,
}

fn facts(state: &DashState) -> Result<Facts, ApiError> {
    state.cloud.store.read(|m| {
        let org = m
            .org
            .as_ref()
            .ok_or_else(|| ApiError::not_found("organization"))?;
        Ok(Facts {
            settings: org.settings.clone(),
            active_devices: m
                .devices
                .values()
                .filter(|d| d.revoked_at.is_none())
                .count(),
            members: m
                .members
                .values()
                .map(|r| (r.email.clone(), r.role, r.has_mfa()))
                .collect(),
            sessions_without_mfa: m
                .sessions
                .values()
                .filter(|s| !s.mfa)
                .map(|s| s.email.clone())
                .collect(),
        })
    })
}

/// One change as the review spells it out.
#[derive(Debug)]
pub struct Consequence {
    pub id: &'static str,
    pub title: String,
    pub from: String,
    pub to: String,
    pub lines: Vec<String>,
    /// Whether the change loosens a protection.
    pub loosens: bool,
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    let mut s = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

fn expiry_consequence(f: &Facts, new: &Settings) -> Consequence {
    let (old_l, new_l) = (
        f.settings.device_token_expiry_secs,
        new.device_token_expiry_secs,
    );
    let n = f.active_devices;
    let (old_i, new_i) = (refresh_interval(old_l), refresh_interval(new_l));
    let mut lines = vec![
        format!(
            "Device keys issued from now on live {} instead of {}. Keys already issued keep \
             their expiry: devices pick up the new lifetime at their next refresh (daemons \
             refresh at 70-80 % of a key's lifetime, so every active device within about {}).",
            duration::format_secs(new_l),
            duration::format_secs(old_l),
            human(old_l as f64 * REFRESH_LATEST),
        ),
        format!(
            "{n} active device{} will refresh about {} times an hour each instead of {}: \
             about {} across the fleet instead of {}.",
            if n == 1 { "" } else { "s" },
            num(3600.0 / new_i),
            num(3600.0 / old_i),
            fleet_rate(n as f64 / new_i),
            fleet_rate(n as f64 / old_i),
        ),
    ];
    let loosens = new_l > old_l;
    lines.push(if loosens {
        "Longer keys: a stolen or copied key keeps working longer before it expires \
         (revoking the device still cuts it off at once)."
            .to_owned()
    } else {
        "Shorter keys: a stolen key stops working sooner, for more refresh traffic.".to_owned()
    });
    Consequence {
        id: "expiry",
        title: "Device token expiry".into(),
        from: duration::format_secs(old_l),
        to: duration::format_secs(new_l),
        lines,
        loosens,
    }
}

fn preset_consequence(f: &Facts, new: &Settings, viewer_role: Role) -> Consequence {
    let (old, p) = (f.settings.compliance_preset, new.compliance_preset);
    let mut lines = vec![format!(
        "A code from an authenticator app (TOTP) at sign-in is required of {} instead of {}.",
        mfa_roles(p),
        mfa_roles(old)
    )];
    let enrol: Vec<&str> = f
        .members
        .iter()
        .filter(|(_, role, has)| p.requires_mfa(*role) && !has)
        .map(|(e, ..)| e.as_str())
        .collect();
    if enrol.is_empty() {
        lines.push("Every member it requires a code of has an authenticator enrolled.".into());
    } else {
        lines.push(format!(
            "{} member{} without an authenticator must enrol one at their next sign-in, \
             before they can do anything else: {}.",
            enrol.len(),
            if enrol.len() == 1 { "" } else { "s" },
            list(&enrol)
        ));
    }
    let ended = f
        .sessions_without_mfa
        .iter()
        .filter(|e| {
            f.members
                .iter()
                .any(|(m, role, _)| m == *e && p.requires_mfa(*role))
        })
        .count();
    if ended > 0 {
        lines.push(format!(
            "{ended} session{} opened without a code end{} at once: those members sign in \
             again.",
            if ended == 1 { "" } else { "s" },
            if ended == 1 { "s" } else { "" },
        ));
    }
    let relieved: Vec<&str> = f
        .members
        .iter()
        .filter(|(_, role, _)| old.requires_mfa(*role) && !p.requires_mfa(*role))
        .map(|(e, ..)| e.as_str())
        .collect();
    let lowers = [Role::Member, Role::Admin, Role::Owner]
        .into_iter()
        .any(|r| old.requires_mfa(r) && !p.requires_mfa(r));
    if !relieved.is_empty() {
        lines.push(format!("No longer asked for a code: {}.", list(&relieved)));
    }
    if lowers && viewer_role < Role::Owner {
        lines.push(
            "Only an Owner may change to a preset that asks fewer roles for a code: \
             this change will be refused."
                .into(),
        );
    }
    let (old_days, new_days) = (
        crate::store::audit::retention_days(old),
        crate::store::audit::retention_days(p),
    );
    if old_days == new_days {
        lines.push(format!(
            "The audit log still keeps records for {new_days} days."
        ));
    } else {
        lines.push(format!(
            "The audit log keeps records for {new_days} days instead of {old_days}{}.",
            if new_days < old_days {
                format!(": records older than {new_days} days are dropped within a day")
            } else {
                String::new()
            }
        ));
    }
    lines.push(format!(
        "Password rules do not change: every preset asks for at least {} characters.",
        crate::api::login::MIN_PASSWORD_LEN
    ));
    lines.push("Saving a preset change needs a fresh authenticator code.".into());
    Consequence {
        id: "preset",
        title: "Compliance preset".into(),
        from: preset_label(old).into(),
        to: preset_label(p).into(),
        lines,
        loosens: lowers || new_days < old_days,
    }
}

fn limit_consequence(f: &Facts, new: &Settings, i: usize) -> Option<Consequence> {
    let (key, label, who, mirrored) = LIMITS[i];
    let (old, n) = (
        limit_at(&f.settings.rate_limits, i),
        limit_at(&new.rate_limits, i),
    );
    if old == n {
        return None;
    }
    let loosens = per_minute(n) > per_minute(old);
    let mut lines = vec![format!(
        "{} a minute {who}, instead of {}.",
        num(per_minute(n)),
        num(per_minute(old))
    )];
    if mirrored {
        lines.push(format!(
            "The cloud applies it at once; daemons mirror it (and pace their own calls) from \
             their next refresh, within about {}.",
            human(new.device_token_expiry_secs as f64 * REFRESH_LATEST)
        ));
    }
    match key {
        "registration" => lines.push(format!(
            "A site enrolling devices from one address (behind NAT) registers at most {} a \
             minute; the challenge step allows six per registration (at least 60 a minute).",
            num(per_minute(n))
        )),
        "auth_failures" => lines.push(
            "Only failures count: a valid credential is never refused because of it. Lower \
             cuts off guessing from one address sooner."
                .into(),
        ),
        _ => {}
    }
    lines.push(if loosens {
        "This loosens the limit.".into()
    } else {
        "This tightens the limit: callers above it get 429 with Retry-After.".into()
    });
    Some(Consequence {
        id: key,
        title: format!("Rate limit: {label}"),
        from: limit_text(old),
        to: limit_text(n),
        lines,
        loosens,
    })
}

/// Every consequence of going from the current settings to `new`, and warnings about the
/// combination.
fn consequences(f: &Facts, new: &Settings, viewer_role: Role) -> (Vec<Consequence>, Vec<String>) {
    let cur = &f.settings;
    let mut out = Vec::new();
    if new.device_token_expiry_secs != cur.device_token_expiry_secs {
        out.push(expiry_consequence(f, new));
    }
    if new.compliance_preset != cur.compliance_preset {
        out.push(preset_consequence(f, new, viewer_role));
    }
    out.extend((0..LIMITS.len()).filter_map(|i| limit_consequence(f, new, i)));
    let mut warnings = Vec::new();
    // Refreshes are control-plane calls: a lifetime so short that one device's refreshes
    // alone exceed its control-plane limit would have refreshes refused.
    let refresh_rate = 60.0 / refresh_interval(new.device_token_expiry_secs);
    let cp = new.rate_limits.control_plane;
    if refresh_rate > per_minute(cp) {
        warnings.push(format!(
            "Each device would refresh about {} times a minute, more than its control-plane \
             limit ({}) allows: refreshes would be refused. Lengthen the expiry or raise the \
             limit.",
            num(refresh_rate),
            limit_text(cp)
        ));
    }
    (out, warnings)
}

/// A preset option of the form.
#[derive(Debug)]
pub struct PresetOption {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

/// A rate-limit row of the form or the read-only table.
#[derive(Debug)]
pub struct LimitRow {
    pub key: &'static str,
    pub label: &'static str,
    pub who: &'static str,
    pub limit: String,
    pub period: String,
    pub current: String,
}

#[derive(Template)]
#[template(path = "dashboard/settings.html")]
struct SettingsPage {
    nav: Option<Nav>,
    csrf: String,
    org_name: String,
    org_id: String,
    expiry: String,
    preset: &'static str,
    audit_days: u64,
    mfa: &'static str,
    fields: Fields,
    presets: Vec<PresetOption>,
    limits: Vec<LimitRow>,
    can_edit: bool,
    saved: bool,
    error: Option<String>,
}

async fn settings_page(
    state: &DashState,
    viewer: &Viewer,
    typed: Option<Fields>,
    saved: bool,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let auth = viewer.check(state, "GET", "/org/settings")?;
    let axum::Json(v) = org_settings::show(State(state.cloud.clone()), auth).await?;
    let now = Settings {
        device_token_expiry_secs: duration::parse_secs(&v.device_token_expiry)
            .map_err(ApiError::internal)?,
        compliance_preset: v.compliance_preset,
        rate_limits: v.rate_limits,
    };
    let fields = typed.unwrap_or_else(|| Fields::of(&now));
    let presets = PRESETS
        .iter()
        .map(|&(_, value, label)| PresetOption {
            value,
            label,
            selected: fields.preset == value,
        })
        .collect();
    let limits = LIMITS
        .iter()
        .zip(&fields.limits)
        .enumerate()
        .map(|(i, (&(key, label, who, _), (l, p)))| LimitRow {
            key,
            label,
            who,
            limit: l.clone(),
            period: p.clone(),
            current: limit_text(limit_at(&now.rate_limits, i)),
        })
        .collect();
    let page = SettingsPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        org_name: v.org_name,
        org_id: v.org_id,
        expiry: v.device_token_expiry,
        preset: preset_label(v.compliance_preset),
        audit_days: crate::store::audit::retention_days(v.compliance_preset),
        mfa: mfa_roles(v.compliance_preset),
        fields,
        presets,
        limits,
        can_edit: viewer.may(state, "PATCH", "/org/settings"),
        saved,
        error,
    };
    Ok(render(&page))
}

/// `GET /dashboard/settings` (`?saved=1` after a save).
pub async fn page(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let saved = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "saved=1"));
    settings_page(&state, &viewer, None, saved, None).await
}

#[derive(Template)]
#[template(path = "dashboard/settings_review.html")]
struct ReviewPage {
    nav: Option<Nav>,
    csrf: String,
    consequences: Vec<Consequence>,
    warnings: Vec<String>,
    hidden: Vec<(String, String)>,
    /// A preset change: the form asks for the authenticator code.
    needs_code: bool,
    /// The code is required now (no second factor within the last 10 minutes).
    code_required: bool,
    error: Option<String>,
}

fn with_status(mut r: Response, status: StatusCode) -> Response {
    *r.status_mut() = status;
    r
}

/// The typed fields, checked; or the form again with the message (400).
async fn checked(
    state: &DashState,
    viewer: &Viewer,
    form: &Form,
) -> Result<Result<(Facts, Fields, Settings), Response>, Refusal> {
    let f = facts(state)?;
    let fields = Fields::from_form(form, &Fields::of(&f.settings));
    match fields.parse() {
        Ok(new) => Ok(Ok((f, fields, new))),
        Err(message) => {
            let r = settings_page(state, viewer, Some(fields), false, Some(message)).await?;
            Ok(Err(with_status(r, StatusCode::BAD_REQUEST)))
        }
    }
}

fn review_page(
    state: &DashState,
    viewer: &Viewer,
    f: &Facts,
    fields: &Fields,
    new: &Settings,
    error: Option<String>,
) -> Response {
    let (consequences, warnings) = consequences(f, new, viewer.role);
    let needs_code = patch_of(&f.settings, new).is_some_and(|p| org_settings::needs_step_up(&p));
    let code_required = needs_code
        && crate::session::require_recent_second_factor(&state.cloud, &viewer.auth).is_err();
    render(&ReviewPage {
        nav: Some(viewer.nav(state)),
        csrf: viewer.csrf.clone(),
        consequences,
        warnings,
        hidden: fields.hidden(),
        needs_code,
        code_required,
        error,
    })
}

/// `POST /dashboard/settings/review`: the consequences of the typed values; nothing changes.
pub async fn review(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    viewer.check(&state, "PATCH", "/org/settings")?;
    let (f, fields, new) = match checked(&state, &viewer, &form).await? {
        Ok(x) => x,
        Err(r) => return Ok(r),
    };
    Ok(review_page(&state, &viewer, &f, &fields, &new, None))
}

/// `POST /dashboard/settings`: the reviewed values (and `totp` for a preset change) saved
/// through the API's `PATCH /org/settings`.
pub async fn save(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let (viewer, form) = super::posted(&state, req).await?;
    // The API's rule for the route first: a Member's forged POST ends here.
    let auth = viewer.check(&state, "PATCH", "/org/settings")?;
    let (f, fields, new) = match checked(&state, &viewer, &form).await? {
        Ok(x) => x,
        Err(r) => return Ok(r),
    };
    let Some(patch) = patch_of(&f.settings, &new) else {
        return Ok(Redirect::to("/dashboard/settings").into_response());
    };
    if org_settings::needs_step_up(&patch)
        && let Err(e) =
            super::require_fresh_totp(&state, &viewer, form.get("totp").unwrap_or("")).await
    {
        let r = review_page(&state, &viewer, &f, &fields, &new, Some(e.message));
        return Ok(with_status(r, e.status));
    }
    match org_settings::update(State(state.cloud.clone()), auth, Body(patch)).await {
        Ok(_) => Ok(Redirect::to("/dashboard/settings?saved=1").into_response()),
        Err(e) => {
            let r = review_page(&state, &viewer, &f, &fields, &new, Some(e.message));
            Ok(with_status(r, e.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(devices: usize) -> Facts {
        Facts {
            settings: Settings::default(),
            active_devices: devices,
            members: vec![
                ("owner@example.com".into(), Role::Owner, true),
                ("mia@example.com".into(), Role::Member, false),
            ],
            sessions_without_mfa: vec!["mia@example.com".into()],
        }
    }

    #[test]
    fn a_shorter_expiry_spells_out_the_refresh_load() {
        let f = facts(3600);
        let new = Settings {
            device_token_expiry_secs: 3600,
            ..Settings::default()
        };
        let (c, warnings) = consequences(&f, &new, Role::Owner);
        assert_eq!(c.len(), 1);
        let text = c[0].lines.join(" ");
        // 1 h keys, refreshed at 75 %: 1.33 an hour each; 3600 devices: 1.33 /s.
        assert!(
            text.contains("3600 active devices will refresh about 1.33 times an hour"),
            "{text}"
        );
        assert!(text.contains("about 1.33 refreshes/s"), "{text}");
        assert!(!c[0].loosens);
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_preset_change_names_who_must_enrol_and_which_sessions_end() {
        let f = facts(0);
        let new = Settings {
            compliance_preset: CompliancePreset::Hipaa,
            ..Settings::default()
        };
        let (c, _) = consequences(&f, &new, Role::Owner);
        let text = c[0].lines.join(" ");
        assert!(
            text.contains("1 member without an authenticator must enrol"),
            "{text}"
        );
        assert!(text.contains("mia@example.com"), "{text}");
        assert!(
            text.contains("1 session opened without a code ends at once"),
            "{text}"
        );
        assert!(text.contains("2190 days instead of 90"), "{text}");
        let p = patch_of(&f.settings, &new).unwrap();
        assert!(org_settings::needs_step_up(&p));
    }

    #[test]
    fn a_tiny_expiry_warns_about_the_control_plane_limit() {
        // 5 s keys: a refresh every 3.75 s, 16 a minute, over a limit of 10 a minute.
        let new = Settings {
            device_token_expiry_secs: 5,
            rate_limits: CloudRateLimits {
                control_plane: RateLimit::per_minute(10),
                ..CloudRateLimits::default()
            },
            ..Settings::default()
        };
        let (_, warnings) = consequences(&facts(1), &new, Role::Owner);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn unchanged_values_make_no_patch() {
        let s = Settings::default();
        assert!(patch_of(&s, &s.clone()).is_none());
        let fields = Fields::of(&s);
        assert_eq!(fields.parse().unwrap(), s);
    }
}
