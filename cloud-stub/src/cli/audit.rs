//! `octomil audit list|export|verify`: the cloud's hash-chained audit log. `verify` fetches
//! every record and recomputes the chain from the retention checkpoint, so an operator can
//! check that no record was changed, removed or inserted.

use clap::{Args, Subcommand, ValueEnum};
use octomil_common::duration;

use super::output::{Out, Table, clean, rfc3339};
use super::{ApiClient, CliError, parse_duration};
use crate::api::audit::{AuditPage, AuditView, unhex};
use crate::store::audit::{Entry, verify_entries};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Show audit records, oldest first
    List(Filter),
    /// Write every matching record to stdout as CSV or JSON
    Export {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
    /// Check the hash chain of the whole log
    Verify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

#[derive(Debug, Args, Default)]
pub struct Filter {
    /// Only this actor (key:ID, session:EMAIL, device:ID, system)
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action, or actions starting with it when it ends in `.` (device.)
    #[arg(long)]
    pub action: Option<String>,
    /// Only records about this target
    #[arg(long)]
    pub target: Option<String>,
    /// Only records of the last DURATION, e.g. 24h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<String>,
}

impl Filter {
    fn query(&self, now: u64) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(a) = &self.actor {
            q.push(("actor", a.clone()));
        }
        if let Some(a) = &self.action {
            q.push(("action", a.clone()));
        }
        if let Some(t) = &self.target {
            q.push(("target", t.clone()));
        }
        if let Some(s) = &self.since {
            let secs = duration::parse_secs(s).unwrap_or(0);
            q.push(("since", now.saturating_sub(secs).to_string()));
        }
        q
    }
}

/// Every matching record, following the cursor; and the checkpoint.
async fn fetch(
    client: &ApiClient,
    filter: &Filter,
    now: u64,
) -> Result<(Vec<AuditView>, AuditPage), CliError> {
    let base = filter.query(now);
    let mut records = Vec::new();
    let mut hidden = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let page: AuditPage = client.get_query(&["audit"], &q).await?.parse()?;
        records.extend(page.records.iter().cloned());
        hidden.extend(page.hidden.iter().cloned());
        match &page.next_cursor {
            Some(c) if cursor.as_ref() != Some(c) => cursor = Some(c.clone()),
            _ => {
                let mut page = page;
                page.hidden = hidden;
                return Ok((records, page));
            }
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The records as CSV, with a header line.
pub fn to_csv(records: &[AuditView]) -> String {
    let mut out = String::from(
        "seq,time,actor,origin,action,target,reason,result,source,request_id,prev_hash,hash\n",
    );
    for r in records {
        let fields = [
            r.seq.to_string(),
            rfc3339(r.at_ms / 1000),
            r.actor.clone(),
            r.origin.clone(),
            r.action.clone(),
            r.target.clone(),
            r.reason.clone().unwrap_or_default(),
            r.result.clone(),
            r.source.clone().unwrap_or_default(),
            r.request_id.clone().unwrap_or_default(),
            r.prev_hash.clone(),
            r.hash.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

pub async fn run(client: &ApiClient, cmd: AuditCmd, out: &mut Out<'_>) -> Result<(), CliError> {
    match cmd {
        AuditCmd::List(filter) => {
            let (records, _) = fetch(client, &filter, out.now).await?;
            if out.json {
                let v = serde_json::to_value(&records).unwrap_or_default();
                return out.json_value(Some(&v));
            }
            if records.is_empty() {
                return out.note("no audit records");
            }
            let mut t = Table::new(&["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "SOURCE"]);
            for r in &records {
                t.row(vec![
                    r.seq.to_string(),
                    rfc3339(r.at_ms / 1000),
                    clean(&r.actor),
                    clean(&r.action),
                    clean(&r.target),
                    clean(r.source.as_deref().unwrap_or("-")),
                ]);
            }
            out.print(&t.render())
        }
        AuditCmd::Export { filter, format } => {
            let (records, _) = fetch(client, &filter, out.now).await?;
            match format {
                Format::Csv => out.print(to_csv(&records).trim_end()),
                Format::Json => {
                    let v = serde_json::to_value(&records).unwrap_or_default();
                    out.json_value(Some(&v))
                }
            }
        }
        AuditCmd::Verify => {
            let (views, page) = fetch(client, &Filter::default(), out.now).await?;
            let checkpoint = page
                .checkpoint
                .checkpoint()
                .ok_or_else(|| CliError::AuditChain("the checkpoint is malformed".into()))?;
            let records = views
                .iter()
                .map(|v| {
                    v.record().ok_or_else(|| {
                        CliError::AuditChain(format!("record {} has a malformed hash", v.seq))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            // Records of the other environment (for a key that sees one) come as links:
            // their place in the chain is checked, their content by whoever may read it.
            let mut entries = std::collections::BTreeMap::new();
            for l in &page.hidden {
                let (Some(prev_hash), Some(hash)) = (unhex(&l.prev_hash), unhex(&l.hash)) else {
                    return Err(CliError::AuditChain(format!(
                        "link {} has a malformed hash",
                        l.seq
                    )));
                };
                entries.insert(
                    l.seq,
                    Entry::Link {
                        seq: l.seq,
                        prev_hash,
                        hash,
                    },
                );
            }
            for r in &records {
                entries.insert(r.seq, Entry::Record(r));
            }
            let entries: Vec<Entry<'_>> = entries.into_values().collect();
            verify_entries(checkpoint, &entries)
                .map_err(|e| CliError::AuditChain(e.to_string()))?;
            let links = entries.len() - records.len();
            let others = if links == 0 {
                String::new()
            } else {
                format!(" and {links} links of the other environment's records")
            };
            out.note(&format!(
                "audit log verified: {} records{others}, chained from checkpoint {}",
                records.len(),
                checkpoint.seq
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
