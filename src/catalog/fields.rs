//! Reading typed values out of a located YAML tree while collecting every error.
//!
//! This is the catalog's equivalent of serde's `deny_unknown_fields` structs, but it does not
//! stop at the first problem: each reader records an error at the exact node and returns `None`,
//! and callers carry on so one run reports everything.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::diag::{Diagnostic, Severity};
use super::yaml::{shorten, Node, Pos, ScalarKind, Value};

/// The file being checked and the diagnostics found so far.
pub struct Cx<'a> {
    /// The file as named in diagnostics.
    pub file: &'a str,
    /// Where diagnostics go.
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Cx<'_> {
    /// Records an error at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, Severity::Error, message.into());
    }

    /// Records a warning at `pos`.
    pub fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, Severity::Warning, message.into());
    }

    fn push(&mut self, pos: Pos, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            severity,
            message,
        });
    }
}

/// Joins a field path for messages: `specs` + `ram_gb` = `specs.ram_gb`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A mapping being read. Every key asked for is remembered; [`Fields::finish`] reports the keys
/// nobody asked for as unknown, listing the ones that are allowed.
pub struct Fields<'n> {
    pos: Pos,
    path: String,
    what: String,
    entries: &'n [(Node, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    /// Starts reading `node` as a mapping. `path` names it in messages (`specs`,
    /// `pool[2]`); `what` names the thing defined (`Product`, `ProviderAccount`).
    ///
    /// Records an error and returns `None` when the node is not a mapping.
    pub fn new(node: &'n Node, path: &str, what: &str, cx: &mut Cx) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => {
                for (key, _) in entries {
                    if key.scalar().is_none() {
                        cx.error(key.pos, "mapping keys must be plain strings");
                    }
                }
                Some(Fields {
                    pos: node.pos,
                    path: path.to_owned(),
                    what: what.to_owned(),
                    entries,
                    used: vec![false; entries.len()],
                    known: Vec::new(),
                })
            }
            _ => {
                let name = if path.is_empty() {
                    format!("a {what}")
                } else {
                    format!("`{path}`")
                };
                cx.error(
                    node.pos,
                    format!("{name} must be a mapping, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// What the mapping defines, as messages name it (`Product \`vps-starter\``).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Renames what the mapping defines, once its kind and id are known.
    pub fn set_what(&mut self, what: String) {
        self.what = what;
    }

    /// The path of a field of this mapping, for messages.
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Where the mapping starts; missing fields are reported here.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    fn lookup(&mut self, key: &'static str) -> Option<(&'n Node, &'n Node)> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.scalar().is_some_and(|s| s.text == key))?;
        self.used[i] = true;
        let (k, v) = &self.entries[i];
        Some((k, v))
    }

    /// The key node of a field, for errors about the field itself.
    pub fn key_pos(&mut self, key: &'static str) -> Option<Pos> {
        self.lookup(key).map(|(k, _)| k.pos)
    }

    /// An optional field: `None` when absent or null.
    pub fn optional(&mut self, key: &'static str) -> Option<&'n Node> {
        self.lookup(key).map(|(_, v)| v).filter(|v| !v.is_null())
    }

    /// A required field: records "missing required field" (or "must not be null") and returns
    /// `None` when it is absent or null.
    pub fn required(&mut self, key: &'static str, cx: &mut Cx) -> Option<&'n Node> {
        match self.lookup(key) {
            None => {
                let within = if self.path.is_empty() {
                    self.what.clone()
                } else {
                    format!("`{}`", self.path)
                };
                cx.error(
                    self.pos,
                    format!("missing required field `{key}` in {within}"),
                );
                None
            }
            Some((_, v)) if v.is_null() => {
                cx.error(
                    v.pos,
                    format!("`{}` is required and must not be null", self.path_of(key)),
                );
                None
            }
            Some((_, v)) => Some(v),
        }
    }

    /// Reports every key that no reader asked for, with a suggestion when one is close.
    pub fn finish(self, cx: &mut Cx) {
        self.finish_with(cx, |_| None);
    }

    /// Like [`Fields::finish`], with `hint` giving a specific message for some unknown keys
    /// (for example a field valid only for another module).
    pub fn finish_with(self, cx: &mut Cx, hint: impl Fn(&str) -> Option<String>) {
        let within = if self.path.is_empty() {
            self.what.clone()
        } else {
            format!("`{}`", self.path)
        };
        let mut reported = 0usize;
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let Some(name) = key.scalar().map(|s| s.text.as_str()) else {
                continue;
            };
            if reported == MAX_UNKNOWN_REPORTED {
                let more = self.entries[i..]
                    .iter()
                    .enumerate()
                    .filter(|(j, (k, _))| !self.used[i + j] && k.scalar().is_some())
                    .count();
                cx.error(key.pos, format!("{more} more unknown fields in {within}"));
                break;
            }
            reported += 1;
            let message = if let Some(specific) = hint(name) {
                specific
            } else {
                let mut m = format!("unknown field `{}` in {within}", shorten(name));
                if let Some(close) = did_you_mean(name, &self.known) {
                    m.push_str(&format!("; did you mean `{close}`?"));
                } else if !self.known.is_empty() {
                    let mut known = self.known.clone();
                    known.sort_unstable();
                    m.push_str(&format!("; expected one of: {}", known.join(", ")));
                }
                m
            };
            cx.error(key.pos, message);
        }
    }
}

/// Unknown fields reported one by one in a mapping; the rest are counted in one line.
const MAX_UNKNOWN_REPORTED: usize = 100;

/// The closest candidate by edit distance, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Reads a non-empty string. Plain numbers and booleans are taken as their text (a hostname
/// label `2024` is still a name), collections and null are errors.
pub fn string(node: &Node, path: &str, cx: &mut Cx) -> Option<String> {
    match node.scalar() {
        Some(s) if s.kind() != ScalarKind::Null => {
            if s.text.trim().is_empty() {
                cx.error(node.pos, format!("`{path}` must not be empty"));
                None
            } else {
                Some(s.text.clone())
            }
        }
        _ => {
            cx.error(
                node.pos,
                format!("`{path}` must be a string, found {}", node.describe()),
            );
            None
        }
    }
}

/// Reads an identifier: lower-case letters, digits, `-`, `_` and `.`, starting with a letter or
/// digit, at most 63 characters. Ids end up in database rows, server names and metrics labels.
pub fn slug(node: &Node, path: &str, cx: &mut Cx) -> Option<String> {
    let s = string(node, path, cx)?;
    let ok = s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Some(s)
    } else {
        cx.error(
            node.pos,
            format!(
                "`{path}` must be a slug (lower-case letters, digits, `-`, `_` or `.`, starting \
                 with a letter or digit, at most 63 characters), found `{}`",
                shorten(&s)
            ),
        );
        None
    }
}

/// Reads a boolean (`true` / `false`).
pub fn boolean(node: &Node, path: &str, cx: &mut Cx) -> Option<bool> {
    match node.scalar().map(|s| s.kind()) {
        Some(ScalarKind::Bool(b)) => Some(b),
        _ => {
            cx.error(
                node.pos,
                format!(
                    "`{path}` must be `true` or `false`, found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

/// Reads an integer of at least `min`.
pub fn integer(node: &Node, path: &str, min: u64, cx: &mut Cx) -> Option<u64> {
    let parsed = match node.scalar() {
        Some(s) if s.kind() == ScalarKind::Int => parse_int(&s.text),
        _ => None,
    };
    let Some(n) = parsed else {
        cx.error(
            node.pos,
            format!("`{path}` must be a whole number, found {}", node.describe()),
        );
        return None;
    };
    if n < 0 {
        cx.error(
            node.pos,
            format!("`{path}` must not be negative, found `{n}`"),
        );
        return None;
    }
    let Ok(n) = u64::try_from(n) else {
        cx.error(node.pos, format!("`{path}` is too large, found `{n}`"));
        return None;
    };
    if n < min {
        let must = if min == 1 {
            "must be greater than zero".to_owned()
        } else {
            format!("must be at least {min}")
        };
        cx.error(node.pos, format!("`{path}` {must}, found `{n}`"));
        return None;
    }
    Some(n)
}

/// Reads an integer that fits in `u32`, of at least `min`.
pub fn integer_u32(node: &Node, path: &str, min: u32, cx: &mut Cx) -> Option<u32> {
    let n = integer(node, path, u64::from(min), cx)?;
    match u32::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => {
            cx.error(
                node.pos,
                format!("`{path}` is too large (at most {})", u32::MAX),
            );
            None
        }
    }
}

fn parse_int(text: &str) -> Option<i128> {
    if let Some(oct) = text.strip_prefix("0o") {
        return i128::from_str_radix(oct, 8).ok();
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return i128::from_str_radix(hex, 16).ok();
    }
    text.parse::<i128>().ok()
}

/// Reads a floating-point setting (not money) within `[min, max]`.
pub fn number(node: &Node, path: &str, min: f64, max: f64, cx: &mut Cx) -> Option<f64> {
    let value = match node.scalar() {
        Some(s) if matches!(s.kind(), ScalarKind::Int | ScalarKind::Float) => {
            s.text.parse::<f64>().ok().filter(|v| v.is_finite())
        }
        _ => None,
    };
    match value {
        Some(v) if (min..=max).contains(&v) => Some(v),
        Some(v) => {
            cx.error(
                node.pos,
                format!("`{path}` must be between {min} and {max}, found `{v}`"),
            );
            None
        }
        None => {
            cx.error(
                node.pos,
                format!("`{path}` must be a number, found {}", node.describe()),
            );
            None
        }
    }
}

/// How strictly a decimal is read.
#[derive(Debug, Clone, Copy)]
pub struct DecimalRule {
    /// Most digits after the point.
    pub max_scale: u32,
    /// Whether zero is allowed.
    pub allow_zero: bool,
}

/// Reads an exact, non-negative decimal from the scalar's own characters: `"29.99"` and `29.99`
/// both give exactly 29.99; no float is ever involved.
pub fn decimal(node: &Node, path: &str, rule: DecimalRule, cx: &mut Cx) -> Option<Decimal> {
    let text = match node.scalar() {
        Some(s) if s.kind() != ScalarKind::Null => s.text.trim(),
        _ => {
            cx.error(
                node.pos,
                format!(
                    "`{path}` must be a decimal amount such as \"29.99\", found {}",
                    node.describe()
                ),
            );
            return None;
        }
    };
    let plain_digits = {
        let body = text.strip_prefix(['-', '+']).unwrap_or(text);
        let mut parts = body.splitn(2, '.');
        let int = parts.next().unwrap_or("");
        let frac = parts.next();
        !int.is_empty()
            && int.chars().all(|c| c.is_ascii_digit())
            && frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
    };
    let parsed = if plain_digits {
        Decimal::from_str_exact(text).ok()
    } else {
        None
    };
    let Some(value) = parsed else {
        cx.error(
            node.pos,
            format!(
                "`{path}` must be a decimal amount such as \"29.99\", found `{}`",
                shorten(text)
            ),
        );
        return None;
    };
    if value.is_sign_negative() && !value.is_zero() {
        cx.error(
            node.pos,
            format!("`{path}` must not be negative, found `{text}`"),
        );
        return None;
    }
    if value.is_zero() && !rule.allow_zero {
        cx.error(
            node.pos,
            format!("`{path}` must be greater than zero, found `{text}`"),
        );
        return None;
    }
    let value = value.normalize();
    if value.scale() > rule.max_scale {
        cx.error(
            node.pos,
            format!(
                "`{path}` has more than {} decimal places: `{text}`",
                rule.max_scale
            ),
        );
        return None;
    }
    Some(value)
}

/// Reads a list of non-empty strings, with each item's position.
pub fn string_list(node: &Node, path: &str, cx: &mut Cx) -> Option<Vec<(String, Pos)>> {
    let Value::Seq(items) = &node.value else {
        cx.error(
            node.pos,
            format!("`{path}` must be a list, found {}", node.describe()),
        );
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match string(item, &format!("{path}[{i}]"), cx) {
            Some(s) => out.push((s, item.pos)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Reads a value of a vocabulary enum, listing the allowed values on error.
pub fn one_of<T: FromStr + Copy>(
    node: &Node,
    path: &str,
    all: &[T],
    as_str: fn(T) -> &'static str,
    cx: &mut Cx,
) -> Option<T> {
    let s = string(node, path, cx)?;
    if let Ok(v) = s.parse::<T>() {
        return Some(v);
    }
    let names: Vec<&str> = all.iter().map(|v| as_str(*v)).collect();
    let mut message = format!(
        "`{path}` must be one of {}, found `{}`",
        names.join(", "),
        shorten(&s)
    );
    if let Some(close) = did_you_mean(&s.to_ascii_lowercase(), &names) {
        message.push_str(&format!("; did you mean `{close}`?"));
    }
    cx.error(node.pos, message);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_made_for_typos_only() {
        let known = ["ram_gb", "cpu_cores", "storage_gb"];
        assert_eq!(did_you_mean("ram_gib", &known), Some("ram_gb"));
        assert_eq!(did_you_mean("cpu_core", &known), Some("cpu_cores"));
        assert_eq!(did_you_mean("colour", &known), None);
    }

    #[test]
    fn decimals_are_exact_and_checked() {
        let parsed =
            super::super::yaml::parse("a: \"29.99\"\nb: 29.90\nc: -1\nd: abc\ne: 1e3\nf: 1.999\n");
        let Value::Map(entries) = &parsed.documents[0].value else {
            panic!()
        };
        let mut diags = Vec::new();
        let mut cx = Cx {
            file: "f.yaml",
            diagnostics: &mut diags,
        };
        let rule = DecimalRule {
            max_scale: 2,
            allow_zero: true,
        };
        let got: Vec<Option<Decimal>> = entries
            .iter()
            .map(|(k, v)| decimal(v, &k.scalar().unwrap().text, rule, &mut cx))
            .collect();
        assert_eq!(got[0], Some(Decimal::new(2999, 2)));
        assert_eq!(got[1], Some(Decimal::new(299, 1)));
        assert!(got[2..].iter().all(Option::is_none));
        let messages: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            vec![
                "f.yaml:3:4: error: `c` must not be negative, found `-1`",
                "f.yaml:4:4: error: `d` must be a decimal amount such as \"29.99\", found `abc`",
                "f.yaml:5:4: error: `e` must be a decimal amount such as \"29.99\", found `1e3`",
                "f.yaml:6:4: error: `f` has more than 2 decimal places: `1.999`",
            ]
        );
    }
}
