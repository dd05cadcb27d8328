//! The overview (`/dashboard/`): device counts by state and presence, the spread of daemon
//! versions, and registrations and revocations over the last 24 hours, hour by hour. It stands
//! for `GET /devices` (every member may read it) and is one pass over the device records plus
//! the presence table, so it stays a few milliseconds at 10,000 devices (BENCHMARKS.md).
//!
//! Registrations count each device's latest (re-)registration time; revocations its
//! revocation time. A deleted device no longer counts.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Request, State};
use axum::response::Response;

use super::{DashState, Nav, Refusal, render};

/// Versions listed by name; the rest are summed as "other".
pub const TOP_VERSIONS: usize = 8;
/// Hours in the activity chart.
pub const HOURS: usize = 24;
/// The chart's drawing box (SVG user units): one column per hour.
const CHART_W: u64 = 480;
const CHART_H: u64 = 100;
const COL_W: u64 = CHART_W / HOURS as u64;

/// One daemon version and how many devices run it.
#[derive(Debug)]
pub struct Version {
    pub name: String,
    pub count: usize,
    /// The device-list filter of this version (`version=...`), empty for "other" and "not
    /// reported".
    pub query: String,
    /// Share of the active devices, whole percent.
    pub percent: usize,
}

/// One hour of the activity chart.
#[derive(Debug)]
pub struct Hour {
    /// `13:00` (UTC), the hour's start.
    pub label: String,
    pub registrations: usize,
    pub revocations: usize,
    /// Bar geometry in SVG user units (attributes, never `style=`).
    pub x_reg: u64,
    pub x_rev: u64,
    pub y_reg: u64,
    pub h_reg: u64,
    pub y_rev: u64,
    pub h_rev: u64,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct Overview {
    nav: Option<Nav>,
    total: usize,
    active: usize,
    revoked: usize,
    online: usize,
    versions: Vec<Version>,
    hours: Vec<Hour>,
    registrations: usize,
    revocations: usize,
    chart_w: u64,
    chart_h: u64,
    bar_w: u64,
    since: String,
}

/// What one pass over the devices yields.
#[derive(Debug, Default)]
struct Tally {
    total: usize,
    revoked: usize,
    online: usize,
    versions: HashMap<String, usize>,
    unreported: usize,
    registrations: [usize; HOURS],
    revocations: [usize; HOURS],
}

/// The hour slot (0 = oldest, `HOURS - 1` = the current hour) of `t`, if within the window
/// starting at `start`.
fn slot(t: u64, start: u64, now: u64) -> Option<usize> {
    (t >= start && t <= now).then(|| {
        usize::try_from((t - start) / 3600)
            .unwrap_or(HOURS - 1)
            .min(HOURS - 1)
    })
}

/// `GET /dashboard/`.
pub async fn overview(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    viewer.check(&state, "GET", "/devices")?;
    let now = state.cloud.clock.now_secs();
    // The window: the current (partial) hour and the 23 whole hours before it.
    let start = (now - now % 3600).saturating_sub((HOURS as u64 - 1) * 3600);
    let presence = &state.cloud.presence;
    let t = state.cloud.store.read(|m| {
        let mut t = Tally {
            total: m.devices.len(),
            ..Tally::default()
        };
        for d in m.devices.values() {
            if d.revoked_at.is_some() {
                t.revoked += 1;
            }
            if let Some(i) = slot(d.registered_at_ms / 1000, start, now) {
                t.registrations[i] += 1;
            }
            if let Some(i) = d.revoked_at.and_then(|r| slot(r, start, now)) {
                t.revocations[i] += 1;
            }
            let seen = presence.get(&d.device_id).unwrap_or_default();
            t.online += usize::from(seen.online);
            // The spread is of the fleet in service: revoked devices are left out.
            if d.revoked_at.is_none() {
                match seen.daemon_version {
                    Some(v) => *t.versions.entry(v).or_default() += 1,
                    None => t.unreported += 1,
                }
            }
        }
        t
    });
    let active = t.total - t.revoked;
    let percent = |n: usize| (n * 100).checked_div(active).unwrap_or(0);
    let mut named: Vec<(String, usize)> = t.versions.into_iter().collect();
    // Most devices first; equal counts by name, so the order is stable between loads.
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let other: usize = named.iter().skip(TOP_VERSIONS).map(|v| v.1).sum();
    let mut versions: Vec<Version> = named
        .into_iter()
        .take(TOP_VERSIONS)
        .map(|(name, count)| Version {
            query: serde_urlencoded::to_string([("version", name.as_str())]).unwrap_or_default(),
            name,
            count,
            percent: percent(count),
        })
        .collect();
    if other > 0 {
        versions.push(Version {
            name: "other".into(),
            count: other,
            query: String::new(),
            percent: percent(other),
        });
    }
    if t.unreported > 0 {
        versions.push(Version {
            name: "not reported".into(),
            count: t.unreported,
            query: String::new(),
            percent: percent(t.unreported),
        });
    }
    let peak = t
        .registrations
        .iter()
        .chain(t.revocations.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as u64;
    let bar = |n: usize| -> u64 {
        let n = n as u64;
        // A non-zero hour always shows at least one unit.
        if n == 0 {
            0
        } else {
            (n * CHART_H / peak).max(1)
        }
    };
    let hours = (0..HOURS)
        .map(|i| {
            let at = start + i as u64 * 3600;
            let (reg, rev) = (t.registrations[i], t.revocations[i]);
            let (h_reg, h_rev) = (bar(reg), bar(rev));
            let x = i as u64 * COL_W;
            Hour {
                label: format!("{:02}:00", (at % 86_400) / 3600),
                registrations: reg,
                revocations: rev,
                x_reg: x + 2,
                x_rev: x + COL_W / 2,
                y_reg: CHART_H - h_reg,
                h_reg,
                y_rev: CHART_H - h_rev,
                h_rev,
            }
        })
        .collect();
    Ok(render(&Overview {
        nav: Some(viewer.nav(&state)),
        total: t.total,
        active,
        revoked: t.revoked,
        online: t.online,
        versions,
        hours,
        registrations: t.registrations.iter().sum(),
        revocations: t.revocations.iter().sum(),
        chart_w: CHART_W,
        chart_h: CHART_H,
        bar_w: COL_W / 2 - 2,
        since: super::format::time(start),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_window_and_nothing_else() {
        let now = 100 * 3600 + 1234;
        let start = (now - now % 3600) - 23 * 3600;
        assert_eq!(slot(start - 1, start, now), None);
        assert_eq!(slot(start, start, now), Some(0));
        assert_eq!(slot(now, start, now), Some(HOURS - 1));
        assert_eq!(slot(now + 1, start, now), None);
    }
}
