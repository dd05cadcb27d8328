//! The audit-log page: the API's `GET /audit` with its filters (actor, action or `prefix.`,
//! target, time range) kept in the URL, and the filtered view as CSV.

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::devices::AuditRow;
use super::{DashState, Nav, Refusal, Viewer, render};
use crate::api::audit::{AuditPage, AuditQuery};
use crate::error::ApiError;

/// Records per page on screen; the CSV export walks every page.
const PAGE: usize = 200;
const CSV_PAGE: usize = 5000;

#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub target: String,
    /// `YYYY-MM-DD` (UTC), inclusive.
    #[serde(default)]
    pub from: String,
    /// `YYYY-MM-DD` (UTC), inclusive (the whole day).
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub cursor: String,
}

impl Filter {
    fn parse(req: &Request) -> Result<Self, Refusal> {
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).map_err(|_| {
            Refusal::Api(ApiError::bad_request(
                octomil_common::wire::codes::INVALID_ARGUMENT,
                "the filter in the address is malformed",
            ))
        })
    }

    fn query_string(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("actor", self.actor.as_str()),
            ("action", &self.action),
            ("target", &self.target),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    fn api_query(&self, limit: usize, cursor: Option<String>) -> Result<AuditQuery, Refusal> {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let day = |s: &str, name: &str| -> Result<Option<u64>, Refusal> {
            if s.trim().is_empty() {
                return Ok(None);
            }
            super::format::parse_day(s.trim()).map(Some).ok_or_else(|| {
                Refusal::Api(ApiError::bad_request(
                    octomil_common::wire::codes::INVALID_ARGUMENT,
                    format!("{name} must be a date such as 2026-11-30"),
                ))
            })
        };
        let since = day(&self.from, "from")?;
        let until = day(&self.to, "to")?.map(|d| d + 86_400);
        // `GET /audit` may grow filters; what the page does not set stays at its default.
        #[allow(clippy::needless_update)]
        Ok(AuditQuery {
            actor: some(&self.actor),
            action: some(&self.action),
            target: some(&self.target),
            since: since.map(|s| s.to_string()),
            until: until.map(|s| s.to_string()),
            limit: Some(limit.to_string()),
            cursor,
            ..AuditQuery::default()
        })
    }
}

async fn page_of(state: &DashState, viewer: &Viewer, q: AuditQuery) -> Result<AuditPage, Refusal> {
    let auth = viewer.check(state, "GET", "/audit")?;
    let axum::Json(page) = crate::api::audit::list(
        State(state.cloud.clone()),
        auth,
        Ok(axum::extract::Query(q)),
    )
    .await?;
    Ok(page)
}

#[derive(Template)]
#[template(path = "dashboard/audit.html")]
struct AuditPageView<'a> {
    nav: Option<Nav>,
    f: &'a Filter,
    rows: Vec<AuditRow>,
    targets: Vec<String>,
    next: Option<String>,
    csv: String,
}

/// `GET /dashboard/audit`.
pub async fn list(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let f = Filter::parse(&req)?;
    let cursor = (!f.cursor.is_empty()).then(|| f.cursor.clone());
    let page = page_of(&state, &viewer, f.api_query(PAGE, cursor)?).await?;
    let qs = f.query_string();
    let next = page.next_cursor.map(|c| {
        let sep = if qs.is_empty() { "" } else { "&" };
        format!("/dashboard/audit?{qs}{sep}cursor={c}")
    });
    Ok(render(&AuditPageView {
        nav: Some(viewer.nav(&state)),
        f: &f,
        targets: page.records.iter().map(|r| r.target.clone()).collect(),
        rows: page.records.iter().map(AuditRow::of).collect(),
        next,
        csv: format!("/dashboard/audit.csv?{qs}"),
    }))
}

/// One CSV field: quoted, quotes doubled, and a leading `= + - @` (or tab/CR) defused with a
/// `'` so a spreadsheet does not run it as a formula.
fn field(s: &str) -> String {
    let defuse = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    format!(
        "\"{}{}\"",
        if defuse { "'" } else { "" },
        s.replace('"', "\"\"")
    )
}

/// `GET /dashboard/audit.csv`: every record matching the filter.
pub async fn csv(State(state): State<DashState>, req: Request) -> Result<Response, Refusal> {
    let viewer = super::viewer(&state, req.headers(), super::peer_of(&req)).await?;
    let f = Filter::parse(&req)?;
    let mut out = String::from(
        "seq,time_utc,actor,origin,action,target,reason,result,source,request_id,hash\n",
    );
    let mut cursor = None;
    loop {
        let page = page_of(&state, &viewer, f.api_query(CSV_PAGE, cursor)?).await?;
        for r in &page.records {
            let cells = [
                r.seq.to_string(),
                super::format::time(r.at_ms / 1000),
                r.actor.clone(),
                r.origin.clone(),
                r.action.clone(),
                r.target.clone(),
                r.reason.clone().unwrap_or_default(),
                r.result.clone(),
                r.source.clone().unwrap_or_default(),
                r.request_id.clone().unwrap_or_default(),
                r.hash.clone(),
            ];
            let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut r = out.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"octomil-audit.csv\""),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("a"), "\"a\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=cmd|' /C calc'!A0"), "\"'=cmd|' /C calc'!A0\"");
        assert_eq!(field("@x"), "\"'@x\"");
        assert_eq!(field("a,b\nc"), "\"a,b\nc\"");
    }
}
