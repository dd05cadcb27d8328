//! Following a list's cursor: every `octomil ... list` fetches every page by default, and
//! stops after `--limit N` items when given (asking for pages of at most N).

use serde_json::Value;

use super::{ApiClient, CliError};

/// Fetches the items under `field` of `path` with `query`, page after page, until the cloud
/// says there are no more or `limit` items were collected. `page_max` is the most the list
/// serves per page.
pub async fn fetch(
    client: &ApiClient,
    path: &[&str],
    field: &str,
    query: &[(&str, String)],
    limit: Option<usize>,
    page_max: usize,
) -> Result<Vec<Value>, CliError> {
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = limit.map(|l| l.saturating_sub(items.len()));
        if want == Some(0) {
            break;
        }
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(w) = want {
            q.push(("limit", w.min(page_max).to_string()));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = client.get_query(path, &pairs).await?;
        let url = answer.url.clone();
        let body = answer.body.unwrap_or_default();
        let page = body[field]
            .as_array()
            .cloned()
            .ok_or_else(|| CliError::Decode {
                url,
                detail: format!("no {field} list"),
            })?;
        items.extend(page);
        match body["next_cursor"].as_str() {
            // A cursor that repeats would loop for ever: stop there.
            Some(c) if cursor.as_deref() != Some(c) => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    if let Some(l) = limit {
        items.truncate(l);
    }
    Ok(items)
}

/// Deserializes fetched items (of the list at `what`) into the command's row type.
pub fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    items: &[Value],
) -> Result<Vec<T>, CliError> {
    items
        .iter()
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| CliError::Decode {
                url: what.to_owned(),
                detail: e.to_string(),
            })
        })
        .collect()
}
