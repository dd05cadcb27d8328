//! `GET /org/settings`, `PATCH /org/settings`: device-key lifetime, compliance preset and
//! the cloud's rate limits. Changes apply to keys issued (and limits checked) afterwards.

use axum::Json;
use axum::extract::State;
use octomil_common::duration;
use octomil_common::wire::{RateLimit, codes};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::scope::Role;
use crate::store::{Change, CloudRateLimits, CompliancePreset, Environment, OrgRecord};

/// Device keys may live between these bounds. The floor is low so tests and labs can watch
/// refreshes happen; fleets want hours.
pub const MIN_EXPIRY_SECS: u64 = 5;
pub const MAX_EXPIRY_SECS: u64 = 365 * 86_400;
const MAX_LIMIT: u32 = 1_000_000;
const MAX_PERIOD_SECS: u32 = 86_400;

#[derive(Debug, Serialize)]
pub struct SettingsView {
    pub org_id: String,
    pub org_name: String,
    pub environment: Environment,
    pub device_token_expiry: String,
    pub compliance_preset: CompliancePreset,
    pub rate_limits: CloudRateLimits,
}

impl SettingsView {
    fn of(o: &OrgRecord) -> Self {
        Self {
            org_id: o.id.clone(),
            org_name: o.name.clone(),
            environment: o.environment,
            device_token_expiry: duration::format_secs(o.settings.device_token_expiry_secs),
            compliance_preset: o.settings.compliance_preset,
            rate_limits: o.settings.rate_limits,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    pub control_plane: Option<RateLimit>,
    pub inference: Option<RateLimit>,
    pub registration: Option<RateLimit>,
    pub auth_failures: Option<RateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub device_token_expiry: Option<String>,
    pub compliance_preset: Option<CompliancePreset>,
    pub rate_limits: Option<LimitsPatch>,
}

fn org(state: &AppState) -> ApiResult<OrgRecord> {
    state
        .org()
        .ok_or_else(|| ApiError::not_found("organization"))
}

pub async fn show(State(state): State<AppState>, _auth: Auth) -> ApiResult<Json<SettingsView>> {
    Ok(Json(SettingsView::of(&org(&state)?)))
}

/// Whether a patch needs a fresh second factor from a session: a preset change (the rule the
/// dashboard's review step asks the code by, so there is one rule).
pub fn needs_step_up(patch: &SettingsPatch) -> bool {
    patch.compliance_preset.is_some()
}

/// A device-key lifetime as given (`24h`), checked against the bounds: seconds.
pub fn check_expiry(s: &str) -> ApiResult<u64> {
    let secs = duration::parse_secs(s).map_err(|e| {
        ApiError::bad_request(codes::INVALID_ARGUMENT, format!("device_token_expiry: {e}"))
    })?;
    if !(MIN_EXPIRY_SECS..=MAX_EXPIRY_SECS).contains(&secs) {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("device_token_expiry must be between {MIN_EXPIRY_SECS}s and 365d"),
        ));
    }
    Ok(secs)
}

/// A rate limit checked against the bounds (`name` as the patch names it).
pub fn check_limit(name: &str, l: RateLimit) -> ApiResult<RateLimit> {
    if l.limit == 0 || l.limit > MAX_LIMIT || l.period_secs == 0 || l.period_secs > MAX_PERIOD_SECS
    {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!(
                "rate_limits.{name}: limit must be 1-{MAX_LIMIT} and period_secs 1-{MAX_PERIOD_SECS}"
            ),
        ));
    }
    Ok(l)
}

pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Body(patch): Body<SettingsPatch>,
) -> ApiResult<Json<SettingsView>> {
    if needs_step_up(&patch) {
        // A preset change is destructive: a session needs a fresh second factor.
        crate::session::require_recent_second_factor(&state, &auth)?;
    }
    // Validate everything before changing anything.
    let expiry = patch
        .device_token_expiry
        .as_deref()
        .map(check_expiry)
        .transpose()?;
    let limits = patch
        .rate_limits
        .map(|l| -> ApiResult<_> {
            Ok((
                l.control_plane
                    .map(|x| check_limit("control_plane", x))
                    .transpose()?,
                l.inference
                    .map(|x| check_limit("inference", x))
                    .transpose()?,
                l.registration
                    .map(|x| check_limit("registration", x))
                    .transpose()?,
                l.auth_failures
                    .map(|x| check_limit("auth_failures", x))
                    .transpose()?,
            ))
        })
        .transpose()?;
    // The step runs on the writer thread: it owns what it uses.
    let owned = (state.clone(), auth.clone());
    let pending = state.store.write(move |m| {
        let (state, auth) = owned;
        let mut o = m
            .org
            .clone()
            .ok_or_else(|| ApiError::not_found("organization"))?;
        if let Some(secs) = expiry {
            o.settings.device_token_expiry_secs = secs;
        }
        let mut ended = Vec::new();
        if let Some(p) = patch.compliance_preset {
            // Only an Owner may relax MFA: an Admin cannot turn it off for anyone.
            let cur = o.settings.compliance_preset;
            let lowers = [Role::Member, Role::Admin, Role::Owner]
                .into_iter()
                .any(|r| cur.requires_mfa(r) && !p.requires_mfa(r));
            if lowers && auth.role() < Some(Role::Owner) {
                return Err(ApiError::forbidden(
                    "only an owner may change to a preset that requires MFA of fewer roles",
                ));
            }
            o.settings.compliance_preset = p;
            // A preset that now requires MFA ends the sessions that were opened without it.
            ended = m
                .sessions
                .values()
                .filter(|s| !s.mfa)
                .filter(|s| {
                    m.members
                        .get(&s.email)
                        .is_some_and(|mem| p.requires_mfa(mem.role))
                })
                .map(|s| Change::DeleteSession(s.jti.clone()))
                .collect();
        }
        if let Some((cp, inf, reg, fail)) = limits {
            let rl = &mut o.settings.rate_limits;
            rl.control_plane = cp.unwrap_or(rl.control_plane);
            rl.inference = inf.unwrap_or(rl.inference);
            rl.registration = reg.unwrap_or(rl.registration);
            rl.auth_failures = fail.unwrap_or(rl.auth_failures);
        }
        let mut changes = vec![
            Change::Org(o.clone()),
            super::audit::change(
                &auth,
                state.clock.now_ms(),
                "org.settings",
                o.id.clone(),
                Some(format!(
                    "device_token_expiry {}s, compliance_preset {:?}",
                    o.settings.device_token_expiry_secs, o.settings.compliance_preset
                )),
            ),
        ];
        changes.extend(ended);
        Ok::<_, ApiError>((SettingsView::of(&o), changes))
    });
    let view = pending.await?;
    tracing::info!(auth = %auth.subject(), "organization settings changed");
    Ok(Json(view))
}
