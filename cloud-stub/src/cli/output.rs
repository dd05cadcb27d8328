//! Human and JSON output: aligned tables, `key: value` blocks, UTC times, and the `Out`
//! sink every command writes through (so tests can capture it).

use std::fmt::Write as _;
use std::io::Write;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::CliError;

/// Where a command writes: results to `stdout`, notes and hints to `stderr`.
pub struct Out<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    /// `--json`: print the server's answer instead of the human rendering.
    pub json: bool,
    /// Unix seconds, for "in 3h" / "5m ago".
    pub now: u64,
}

impl std::fmt::Debug for Out<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("json", &self.json)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<'a> Out<'a> {
    pub fn new(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write, json: bool, now: u64) -> Self {
        Self {
            stdout,
            stderr,
            json,
            now,
        }
    }

    /// Writes `text` to stdout, ending it with a newline if it lacks one.
    pub fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.stdout
            .write_all(text.as_bytes())
            .and_then(|()| match text.ends_with('\n') {
                true => Ok(()),
                false => self.stdout.write_all(b"\n"),
            })
            .map_err(CliError::io("writing to stdout"))
    }

    /// A line for the operator, not for a pipe.
    pub fn note(&mut self, text: &str) -> Result<(), CliError> {
        writeln!(self.stderr, "{text}").map_err(CliError::io("writing to stderr"))
    }

    /// The server's answer, pretty-printed; an empty answer (204) prints nothing.
    pub fn json_value(&mut self, value: Option<&Value>) -> Result<(), CliError> {
        match value {
            Some(v) => {
                let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Io {
                    context: "formatting JSON",
                    source: e.into(),
                })?;
                self.print(&text)
            }
            None => Ok(()),
        }
    }
}

/// Replaces control characters (escape sequences included) so server-supplied text cannot
/// move the cursor, recolour or rewrite the operator's terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    pub fn render(&self) -> String {
        let head: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&head).chain(&self.rows) {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let _ = write!(line, "{cell:<width$}  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{}:", clean(key));
        let _ = writeln!(out, "{label:<width$} {}", clean(value));
    }
    out
}

/// Unix seconds as UTC RFC 3339: the one formatter the daemon and the cloud share.
pub use octomil_common::clock::rfc3339;

/// A span in at most two units: `45s`, `5m 3s`, `23h 59m`, `3d 4h`.
fn span(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    for (i, (size, unit)) in UNITS.iter().enumerate() {
        if secs >= *size {
            let major = format!("{}{unit}", secs / size);
            return match UNITS.get(i + 1) {
                Some((next, next_unit)) if secs % size / next > 0 => {
                    format!("{major} {}{next_unit}", secs % size / next)
                }
                _ => major,
            };
        }
    }
    "0s".to_owned()
}

/// `in 3h 5m`, `5m ago` or `now`.
pub fn relative(t: u64, now: u64) -> String {
    match t.cmp(&now) {
        std::cmp::Ordering::Greater => format!("in {}", span(t - now)),
        std::cmp::Ordering::Less => format!("{} ago", span(now - t)),
        std::cmp::Ordering::Equal => "now".to_owned(),
    }
}

/// Absolute and relative: `2026-03-01T12:00:00Z (in 23h)`; `-` when unknown.
pub fn when(t: Option<u64>, now: u64) -> String {
    match t {
        Some(t) => format!("{} ({})", rfc3339(t), relative(t, now)),
        None => "-".to_owned(),
    }
}

/// Relative only, for narrow table columns; `-` when unknown.
pub fn ago(t: Option<u64>, now: u64) -> String {
    t.map_or_else(|| "-".to_owned(), |t| relative(t, now))
}

pub fn or_dash(s: Option<&str>) -> String {
    s.map_or_else(|| "-".to_owned(), str::to_owned)
}

/// An id the server may send as a string or a number (the API document does not say);
/// either way it is shown and sent back as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Self(s)),
            Value::Number(n) => Ok(Self(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a string or number id, got {other}"
            ))),
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let mut t = Table::new(&["ID", "STATE", "NOTE"]);
        t.row(vec!["dev-1".into(), "active".into(), "x".into()]);
        t.row(vec!["a-much-longer-id".into(), "revoked".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID                STATE    NOTE\n\
             dev-1             active   x\n\
             a-much-longer-id  revoked\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&["NAME", "X"]);
        t.row(vec!["über".into(), "1".into()]);
        assert_eq!(t.render(), "NAME  X\nüber  1\n");
    }

    #[test]
    fn key_values_align() {
        let text = key_values(&[("id", "k1".into()), ("environment", "live".into())]);
        assert_eq!(text, "id:          k1\nenvironment: live\n");
    }

    #[test]
    fn relative_spans() {
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(145, 100), "in 45s");
        assert_eq!(relative(100, 403), "5m 3s ago");
        assert_eq!(relative(86_399, 0), "in 23h 59m");
        assert_eq!(relative(3 * 86_400 + 60, 0), "in 3d");
        assert_eq!(when(None, 0), "-");
        assert_eq!(when(Some(3_600), 0), "1970-01-01T01:00:00Z (in 1h)");
    }

    #[test]
    fn out_captures_and_json_pretty_prints() {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let mut out = Out::new(&mut o, &mut e, true, 0);
        out.json_value(Some(&serde_json::json!({"a": 1}))).unwrap();
        out.json_value(None).unwrap();
        out.note("hint").unwrap();
        assert_eq!(String::from_utf8(o).unwrap(), "{\n  \"a\": 1\n}\n");
        assert_eq!(String::from_utf8(e).unwrap(), "hint\n");
    }

    #[test]
    fn ids_accept_strings_and_numbers() {
        let a: Id = serde_json::from_str("\"k_1\"").unwrap();
        let b: Id = serde_json::from_str("42").unwrap();
        assert_eq!((a.0.as_str(), b.0.as_str()), ("k_1", "42"));
        assert!(serde_json::from_str::<Id>("null").is_err());
    }
}
