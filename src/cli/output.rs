//! The output contract of every command: `--format text|json`, RFC 3339 UTC timestamps with
//! milliseconds and `Z`, tables that stay aligned, and text that is safe for a terminal.

use std::borrow::Cow;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// A timestamp as every command prints it, in text and JSON: `2026-11-22T05:44:25.123Z`.
#[must_use]
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// [`ts`] of an optional time, JSON `null` when absent.
#[must_use]
pub fn ts_json(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(ts(t)))
}

/// [`ts`] of an optional time, `-` when absent.
#[must_use]
pub fn ts_text(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), ts)
}

/// A duration since `then`, as people read ages: `42s`, `7m`, `3h`, `12d`.
#[must_use]
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - then).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `text` safe for a terminal: control characters written by billing (escape sequences that
/// would recolour, move the cursor or retitle the terminal) are shown escaped, not obeyed.
#[must_use]
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes one JSON document to stdout.
///
/// # Errors
/// When stdout cannot be written.
pub fn json(value: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()
}

/// Writes text to stdout, escaped for the terminal.
///
/// # Errors
/// When stdout cannot be written.
pub fn text(s: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(printable(s).as_bytes())?;
    out.flush()
}

/// A text table: columns as wide as their widest cell (up to a cap, longer cells are cut
/// with `…`), numbers aligned right, the last column left free.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

/// Widest a column other than the last may be.
const MAX_WIDTH: usize = 40;

impl Table {
    /// A table with these columns; a header starting with `>` is right-aligned (numbers).
    #[must_use]
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (control characters escaped, one line per cell).
    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|c| printable(&c).replace('\n', " "))
            .collect();
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header.
    #[must_use]
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count().min(MAX_WIDTH));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate().take(n) {
                let last = i + 1 == n;
                let cell = if last {
                    cell.clone()
                } else {
                    cut(cell, MAX_WIDTH)
                };
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(&cell);
                } else if last {
                    line.push_str(&cell);
                } else {
                    line.push_str(&cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn cut(cell: &str, max: usize) -> String {
    if cell.chars().count() <= max {
        return cell.to_owned();
    }
    let mut s: String = cell.chars().take(max - 1).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_stay_aligned_with_long_and_hostile_values() {
        let mut t = Table::new(&[">ID", "CUSTOMER", "REASON"]);
        t.row(vec!["7".into(), "c".into(), "ok".into()]);
        t.row(vec![
            "12345".into(),
            "a-very-long-customer-identifier-from-billing-0123456789".into(),
            "line\nbreak \u{1b}[31mred".into(),
        ]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "   ID  CUSTOMER                                  REASON"
        );
        assert_eq!(
            lines[1],
            "    7  c                                         ok"
        );
        assert_eq!(
            lines[2],
            "12345  a-very-long-customer-identifier-from-bi…  line break \\u{1b}[31mred"
        );
    }

    #[test]
    fn times_have_one_format() {
        let t = DateTime::parse_from_rfc3339("2026-11-22T05:44:25.123456+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(ts(t), "2026-11-22T04:44:25.123Z");
        let later = t + chrono::Duration::seconds(3 * 3600 + 5);
        assert_eq!(age(t, later), "3h");
        assert_eq!(age(later, t), "0s");
    }
}
