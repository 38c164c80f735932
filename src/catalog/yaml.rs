//! A YAML document tree that remembers where every node was written.
//!
//! `serde_yaml` stops at the first error of a document and forgets positions once a value is
//! built, but `catalog validate` must report every error with its line and column. So the
//! catalog is read in two steps: this module turns text into a tree of [`Node`]s, each with its
//! [`Pos`], and `catalog::parse` checks that tree field by field, collecting every problem.
//!
//! Scalars keep their source text: a price written as `29.99` is parsed as an exact decimal from
//! those characters, never through a float. Anchors, aliases and merge keys (`<<: *defaults`) are
//! resolved here, with limits on nesting and alias expansion so that no input can exhaust memory
//! or the stack.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in a source file: 1-based line and column, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub column: u32,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
        }
    }
}

/// One node of a YAML document and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where the node starts in its file.
    pub pos: Pos,
}

/// The content of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar, with its text as written (after YAML unescaping).
    Scalar(Scalar),
    /// A sequence (`- a` or `[a, b]`).
    Seq(Vec<Node>),
    /// A mapping, entries in source order (duplicate keys are rejected while building).
    Map(Vec<(Node, Node)>),
}

/// A scalar's text and whether it was written plain (so `null`, `true`, `12` have their YAML
/// meaning) or quoted / block (always a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The scalar's text.
    pub text: String,
    /// `true` for plain scalars, the only ones YAML resolves to null, booleans and numbers.
    pub plain: bool,
}

/// What a scalar resolves to under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// `~`, `null`, or nothing at all.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A decimal, octal (`0o`) or hexadecimal (`0x`) integer.
    Int,
    /// A number with a fraction or exponent, or `.inf` / `.nan`.
    Float,
    /// Anything else, and every quoted scalar.
    Str,
}

impl Scalar {
    /// Resolves the scalar's type as YAML 1.2's core schema does.
    pub fn kind(&self) -> ScalarKind {
        if !self.plain {
            return ScalarKind::Str;
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
            "true" | "True" | "TRUE" => return ScalarKind::Bool(true),
            "false" | "False" | "FALSE" => return ScalarKind::Bool(false),
            _ => {}
        }
        if is_core_int(t) {
            ScalarKind::Int
        } else if is_core_float(t) {
            ScalarKind::Float
        } else {
            ScalarKind::Str
        }
    }
}

fn is_core_int(t: &str) -> bool {
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(rest) = t.strip_prefix("0o") {
        return digits(rest, 8);
    }
    if let Some(rest) = t.strip_prefix("0x") {
        return digits(rest, 16);
    }
    digits(t.strip_prefix(['-', '+']).unwrap_or(t), 10)
}

fn is_core_float(t: &str) -> bool {
    if matches!(
        t.to_ascii_lowercase().as_str(),
        ".inf" | "+.inf" | "-.inf" | ".nan"
    ) {
        return true;
    }
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.chars().all(|c| c.is_ascii_digit()) && frac.chars().all(|c| c.is_ascii_digit()))
                && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok && (mantissa.contains('.') || exponent.is_some())
}

impl Node {
    /// The scalar, if this node is one.
    pub fn scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the node is YAML null (`~`, `null`, or an empty value).
    pub fn is_null(&self) -> bool {
        self.scalar().is_some_and(|s| s.kind() == ScalarKind::Null)
    }

    /// A short description of what the node is, for error messages ("a list", "the string `x`").
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
            Value::Scalar(s) => {
                let shown = shorten(&s.text);
                match s.kind() {
                    ScalarKind::Null => "null".to_owned(),
                    ScalarKind::Bool(b) => format!("the boolean `{b}`"),
                    ScalarKind::Int => format!("the integer `{shown}`"),
                    ScalarKind::Float => format!("the number `{shown}`"),
                    ScalarKind::Str => format!("the string `{shown}`"),
                }
            }
        }
    }
}

/// Cuts long text for messages, so that an error never echoes a whole pasted blob.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// A problem found while building the tree: a syntax error, or a structure this loader refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeError {
    /// Where the problem is.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

/// The documents of one file, and every problem met while reading them.
///
/// After a syntax error the parser cannot resynchronise, so `documents` holds only the documents
/// that were complete before it; errors of other kinds do not stop the reading.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Complete documents, in file order. An empty document (`---` with nothing after it) is null.
    pub documents: Vec<Node>,
    /// Problems, in the order they were found.
    pub errors: Vec<TreeError>,
    /// Whether a syntax error cut the file short.
    pub syntax_error: bool,
}

/// Nesting deeper than this is refused: no catalog needs it, and it bounds the work per node.
const MAX_DEPTH: usize = 64;
/// Alias expansion may create at most this many nodes per file (the "billion laughs" guard).
const MAX_ALIAS_NODES: usize = 1_000_000;

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parses every document of `text`.
///
/// ```
/// use provisioner::catalog::yaml::{parse, Pos, Value};
/// let parsed = parse("id: vps-starter\nspecs: {ram_gb: 4}\n");
/// assert!(parsed.errors.is_empty());
/// let Value::Map(entries) = &parsed.documents[0].value else { unreachable!() };
/// assert_eq!(entries[1].1.pos, Pos { line: 2, column: 8 });
/// ```
pub fn parse(text: &str) -> Parsed {
    parse_within(text, &AliasBudget::default())
}

/// How many nodes aliases may still expand to, shared by every file of a catalog (and by the
/// threads that check them), so that many files cannot multiply it.
#[derive(Debug)]
pub struct AliasBudget(std::sync::atomic::AtomicUsize);

impl Default for AliasBudget {
    fn default() -> Self {
        AliasBudget(std::sync::atomic::AtomicUsize::new(MAX_ALIAS_NODES))
    }
}

impl AliasBudget {
    /// Takes `n` nodes from the budget; false (taking nothing) when fewer are left.
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }
}

/// Parses every document of `text`, expanding aliases within `aliases`.
pub fn parse_within(text: &str, aliases: &AliasBudget) -> Parsed {
    let mut out = Parsed::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    // Once nesting is too deep, events are skipped until the stack returns to this depth.
    let mut skip_depth: Option<usize> = None;
    let mut skipped_nesting = 0usize;

    for item in Parser::new_from_str(text) {
        let (event, span) = match item {
            Ok(pair) => pair,
            Err(e) => {
                let m = e.marker();
                out.errors.push(TreeError {
                    pos: Pos {
                        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
                        column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
                    },
                    message: format!("YAML syntax error: {}", e.info()),
                });
                out.syntax_error = true;
                return out;
            }
        };
        let pos = Pos::of(&span);
        if skip_depth.is_some() {
            match event {
                Event::SequenceStart(..) | Event::MappingStart(..) => skipped_nesting += 1,
                Event::SequenceEnd | Event::MappingEnd => {
                    if skipped_nesting == 0 {
                        skip_depth = None;
                        // The over-deep collection stands in as null so its parent stays whole.
                        let placeholder = Node {
                            value: Value::Scalar(Scalar {
                                text: String::new(),
                                plain: true,
                            }),
                            pos,
                        };
                        attach(&mut stack, &mut out, placeholder);
                    } else {
                        skipped_nesting -= 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match event {
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {
                if matches!(event, Event::DocumentStart(_)) {
                    anchors.clear();
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    match (tag.is_yaml_core_schema(), tag.suffix.as_str()) {
                        (true, "str") => plain = false,
                        (true, "null" | "bool" | "int" | "float") => {}
                        _ => out.errors.push(TreeError {
                            pos,
                            message: format!(
                                "unsupported YAML tag `{tag}`; the catalog uses plain YAML values"
                            ),
                        }),
                    }
                }
                let node = Node {
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain,
                    }),
                    pos,
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                attach(&mut stack, &mut out, node);
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    out.errors.push(TreeError {
                        pos,
                        message: "alias refers to an unknown anchor".to_owned(),
                    });
                    continue;
                };
                let size = count_nodes(target);
                if !aliases.take(size) {
                    out.errors.push(TreeError {
                        pos,
                        message: format!(
                            "aliases expand to more than {MAX_ALIAS_NODES} nodes in this catalog; \
                             refusing to expand further"
                        ),
                    });
                    continue;
                }
                let node = target.clone();
                attach(&mut stack, &mut out, node);
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if let Some(tag) = tag {
                    if !tag.is_yaml_core_schema() {
                        out.errors.push(TreeError {
                            pos,
                            message: format!(
                                "unsupported YAML tag `{tag}`; the catalog uses plain YAML values"
                            ),
                        });
                    }
                }
                if stack.len() >= MAX_DEPTH {
                    out.errors.push(TreeError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                    skip_depth = Some(stack.len());
                    skipped_nesting = 0;
                    continue;
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    });
                } else {
                    stack.push(Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (
                        Node {
                            value: Value::Seq(items),
                            pos,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(finish_mapping(entries, &mut out.errors)),
                            pos,
                        },
                        anchor,
                    ),
                    None => continue,
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                attach(&mut stack, &mut out, node);
            }
        }
    }
    out
}

fn attach(stack: &mut [Frame], out: &mut Parsed, node: Node) {
    match stack.last_mut() {
        None => out.documents.push(node),
        Some(Frame::Seq { items, .. }) => items.push(node),
        Some(Frame::Map { entries, key, .. }) => match key.take() {
            None => *key = Some(node),
            Some(k) => entries.push((k, node)),
        },
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(_) => 1,
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

fn key_text(node: &Node) -> Option<&str> {
    node.scalar().map(|s| s.text.as_str())
}

fn is_merge_key(node: &Node) -> bool {
    node.scalar().is_some_and(|s| s.plain && s.text == "<<")
}

/// Where each key of a mapping being built was first written. Catalog mappings have a
/// handful of keys, for which a scan beats hashing; past a few dozen (a hostile mapping of
/// 100,000 keys would make scanning quadratic) the keys are hashed.
enum KeyIndex {
    Scan,
    Hash(HashMap<String, Pos>),
}

const HASH_KEYS_FROM: usize = 32;

impl KeyIndex {
    fn first(&self, own: &[(Node, Node)], text: &str) -> Option<Pos> {
        match self {
            KeyIndex::Scan => own
                .iter()
                .find(|(k, _)| key_text(k) == Some(text))
                .map(|(k, _)| k.pos),
            KeyIndex::Hash(seen) => seen.get(text).copied(),
        }
    }

    /// Records that `own` just got its last entry.
    fn added(&mut self, own: &[(Node, Node)]) {
        match self {
            KeyIndex::Scan if own.len() > HASH_KEYS_FROM => {
                let mut seen = HashMap::with_capacity(own.len() * 2);
                for (k, _) in own {
                    if let Some(text) = key_text(k) {
                        seen.entry(text.to_owned()).or_insert(k.pos);
                    }
                }
                *self = KeyIndex::Hash(seen);
            }
            KeyIndex::Scan => {}
            KeyIndex::Hash(seen) => {
                if let Some((k, _)) = own.last() {
                    if let Some(text) = key_text(k) {
                        seen.entry(text.to_owned()).or_insert(k.pos);
                    }
                }
            }
        }
    }
}

/// Rejects duplicate keys and applies merge keys: explicit entries win over merged ones, and
/// earlier merge sources win over later ones, as the YAML merge-key spec says.
fn finish_mapping(entries: Vec<(Node, Node)>, errors: &mut Vec<TreeError>) -> Vec<(Node, Node)> {
    let mut index = KeyIndex::Scan;
    let mut own: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
    let mut merged: Vec<(Node, Node)> = Vec::new();
    for (key, value) in entries {
        if is_merge_key(&key) {
            let sources: Vec<&Node> = match &value.value {
                Value::Map(_) => vec![&value],
                Value::Seq(items) => items.iter().collect(),
                Value::Scalar(_) => Vec::new(),
            };
            if sources.is_empty() || sources.iter().any(|s| !matches!(s.value, Value::Map(_))) {
                errors.push(TreeError {
                    pos: value.pos,
                    message: "a merge key `<<` takes a mapping or a list of mappings".to_owned(),
                });
                continue;
            }
            for source in sources {
                if let Value::Map(source_entries) = &source.value {
                    merged.extend(source_entries.iter().cloned());
                }
            }
            continue;
        }
        if let Some(text) = key_text(&key) {
            if let Some(first) = index.first(&own, text) {
                errors.push(TreeError {
                    pos: key.pos,
                    message: format!(
                        "duplicate key `{}` (first written at line {}, column {})",
                        shorten(text),
                        first.line,
                        first.column
                    ),
                });
                continue;
            }
        }
        own.push((key, value));
        index.added(&own);
    }
    for (key, value) in merged {
        let Some(text) = key_text(&key) else { continue };
        if index.first(&own, text).is_none() {
            own.push((key, value));
            index.added(&own);
        }
    }
    own
}

/// Writes `value` as YAML (`catalog show`).
///
/// This is the only use of `serde_yaml`: the crate was chosen by the people we build for, but
/// upstream marks it deprecated. Catalogs are read by the located parser above (saphyr);
/// replacing the writer (with `serde_yml`, `serde_norway` or a hand-written emitter of this
/// JSON-shaped value) changes this function and nothing else.
///
/// # Errors
/// When the value cannot be represented (it always can: it is JSON).
pub fn render(value: &serde_json::Value) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(e) => e,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let parsed = parse("a: 1\nbb:\n  c: x\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let root = &parsed.documents[0];
        let entries = map(root);
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, column: 4 });
        let inner = map(&entries[1].1);
        assert_eq!(inner[0].0.pos, Pos { line: 3, column: 3 });
    }

    #[test]
    fn scalars_resolve_as_the_core_schema_says() {
        let kinds: Vec<(&str, bool, ScalarKind)> = vec![
            ("", true, ScalarKind::Null),
            ("~", true, ScalarKind::Null),
            ("null", true, ScalarKind::Null),
            ("null", false, ScalarKind::Str),
            ("true", true, ScalarKind::Bool(true)),
            ("yes", true, ScalarKind::Str),
            ("12", true, ScalarKind::Int),
            ("-3", true, ScalarKind::Int),
            ("0x1F", true, ScalarKind::Int),
            ("29.99", true, ScalarKind::Float),
            ("1e3", true, ScalarKind::Float),
            (".5", true, ScalarKind::Float),
            (".inf", true, ScalarKind::Float),
            ("1.2.3", true, ScalarKind::Str),
            ("12", false, ScalarKind::Str),
            ("ubuntu-24.04", true, ScalarKind::Str),
        ];
        for (text, plain, want) in kinds {
            let s = Scalar {
                text: text.to_owned(),
                plain,
            };
            assert_eq!(s.kind(), want, "{text:?} plain={plain}");
        }
    }

    #[test]
    fn several_documents_and_an_empty_one() {
        let parsed = parse("a: 1\n---\nb: 2\n---\n");
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.documents.len(), 3);
        assert!(parsed.documents[2].is_null());
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_places() {
        let parsed = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].pos, Pos { line: 3, column: 1 });
        assert!(parsed.errors[0]
            .message
            .contains("first written at line 1, column 1"));
    }

    #[test]
    fn merge_keys_fill_in_without_overriding() {
        let parsed = parse("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  y: 3\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let thing = &map(&parsed.documents[0])[1].1;
        let got: Vec<(String, String)> = map(thing)
            .iter()
            .map(|(k, v)| {
                (
                    k.scalar().unwrap().text.clone(),
                    v.scalar().unwrap().text.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("y".into(), "3".into()), ("x".into(), "1".into())]
        );
    }

    #[test]
    fn syntax_errors_stop_the_file_with_a_position() {
        let parsed = parse("ok: 1\n---\na: [1, 2\nb: 3\n");
        assert!(parsed.syntax_error);
        assert_eq!(
            parsed.documents.len(),
            1,
            "the complete first document is kept"
        );
        assert_eq!(parsed.errors.len(), 1);
        assert!(parsed.errors[0].message.starts_with("YAML syntax error"));
        assert!(parsed.errors[0].pos.line >= 3);
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_refused_not_fatal() {
        // Our own limit, well inside the parser's.
        let deep = format!("a: {}{}\nb: 1\n", "[".repeat(100), "]".repeat(100));
        let parsed = parse(&deep);
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert!(parsed.errors[0]
            .message
            .contains("nesting deeper than 64 levels"));
        assert_eq!(
            parsed.documents.len(),
            1,
            "the rest of the document is kept"
        );
        // The parser's own limit, further down, is a syntax error.
        let deeper = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert!(parse(&deeper).syntax_error);

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h"];
        let mut prev = "a";
        for n in names {
            bomb.push_str(&format!(
                "{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = n;
        }
        let parsed = parse(&bomb);
        assert!(parsed
            .errors
            .iter()
            .any(|e| e.message.contains("refusing to expand")));
    }
}
