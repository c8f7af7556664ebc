//! Generic readers over the spanned tree. Each reports what is wrong into the
//! [`Sink`] and returns `None`, so the decoder can carry on with the next
//! field instead of stopping.

use std::ops::RangeInclusive;

use super::error::Sink;
use super::tree::{Node, Value};
use super::types::Loc;

/// `parent.name`, or `name` at the top level.
pub(crate) fn field_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `parent[i]`.
pub(crate) fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// `parent.key` for simple keys, `parent["key"]` for keys such as label
/// keys with dots or slashes, so the path stays unambiguous.
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if simple {
        field_path(parent, key)
    } else {
        format!("{parent}[{key:?}]")
    }
}

/// One mapping entry with a string key.
pub(crate) struct Entry<'n> {
    pub(crate) key: &'n str,
    pub(crate) key_loc: Loc,
    pub(crate) value: &'n Node,
}

/// The string-keyed entries of a mapping, first occurrence of each key only.
/// Reports non-string and duplicate keys. `None` (reported) when `node` is
/// not a mapping; a null node is an empty mapping (`log:` with nothing
/// under it means "all defaults").
pub(crate) fn entries<'n>(node: &'n Node, path: &str, sink: &mut Sink) -> Option<Vec<Entry<'n>>> {
    let pairs = match &node.value {
        Value::Map(pairs) => pairs,
        Value::Null => return Some(Vec::new()),
        other => {
            sink.error(
                node.loc,
                path,
                format!("expected a mapping, found {}", other.kind()),
            );
            return None;
        }
    };
    let mut out: Vec<Entry<'n>> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let Value::Str(name) = &key.value else {
            sink.error(
                key.loc,
                path,
                format!("keys must be strings, found {}", key.value.kind()),
            );
            continue;
        };
        if let Some(first) = out.iter().find(|e| e.key == name.as_str()) {
            sink.error(
                key.loc,
                &key_path(path, name),
                format!(
                    "duplicate key `{name}` (first given at line {}, column {})",
                    first.key_loc.line, first.key_loc.column
                ),
            );
            continue;
        }
        out.push(Entry {
            key: name,
            key_loc: key.loc,
            value,
        });
    }
    Some(out)
}

/// A mapping read field by field. Whatever was not asked for by the time
/// [`Fields::finish`] runs is an unknown field.
pub(crate) struct Fields<'n> {
    path: String,
    loc: Loc,
    entries: Vec<(Entry<'n>, bool)>,
    known: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    /// `None` (reported) when `node` is not a mapping.
    pub(crate) fn new(node: &'n Node, path: &str, sink: &mut Sink) -> Option<Self> {
        let entries = entries(node, path, sink)?;
        Some(Fields {
            path: path.to_owned(),
            loc: node.loc,
            entries: entries.into_iter().map(|e| (e, false)).collect(),
            known: Vec::new(),
        })
    }

    pub(crate) fn loc(&self) -> Loc {
        self.loc
    }

    /// Whether the field is written with a non-null value, valid or not;
    /// tells "left out" apart from "given but wrong" (already reported).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(e, _)| e.key == name && e.value.value != Value::Null)
    }

    /// The field's value and path; `None` when absent or null (an empty
    /// value means the same as leaving the field out).
    pub(crate) fn optional(&mut self, name: &'static str) -> Option<(&'n Node, String)> {
        self.known.push(name);
        let (entry, used) = self.entries.iter_mut().find(|(e, _)| e.key == name)?;
        *used = true;
        if entry.value.value == Value::Null {
            return None;
        }
        Some((entry.value, field_path(&self.path, name)))
    }

    /// Like [`Fields::optional`], but reports a missing field at the
    /// mapping that should contain it.
    pub(crate) fn required(
        &mut self,
        name: &'static str,
        sink: &mut Sink,
    ) -> Option<(&'n Node, String)> {
        let found = self.optional(name);
        if found.is_none() {
            let path = field_path(&self.path, name);
            match self.entries.iter().find(|(e, _)| e.key == name) {
                // The key, not the empty value: YAML puts a null's position
                // on the colon, which reads oddly.
                Some((e, _)) => sink.error(e.key_loc, &path, "a value is required"),
                None => sink.error(self.loc, &path, "missing required field"),
            }
        }
        found
    }

    /// Reports every field that was never asked for.
    pub(crate) fn finish(self, sink: &mut Sink) {
        for (entry, used) in &self.entries {
            if *used {
                continue;
            }
            let hint = match closest(entry.key, &self.known) {
                Some(near) => format!(" (did you mean `{near}`?)"),
                None => format!("; expected one of: {}", self.known.join(", ")),
            };
            sink.error(
                entry.key_loc,
                &key_path(&self.path, entry.key),
                format!("unknown field `{}`{hint}", entry.key),
            );
        }
    }
}

/// Items of a list; `None` (reported) for anything else.
pub(crate) fn list<'n>(node: &'n Node, path: &str, sink: &mut Sink) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        other => {
            sink.error(
                node.loc,
                path,
                format!("expected a list, found {}", other.kind()),
            );
            None
        }
    }
}

/// Like [`list`], but an empty list is reported with `why_not_empty`.
pub(crate) fn non_empty_list<'n>(
    node: &'n Node,
    path: &str,
    sink: &mut Sink,
    why_not_empty: &str,
) -> Option<&'n [Node]> {
    let items = list(node, path, sink)?;
    if items.is_empty() {
        sink.error(
            node.loc,
            path,
            format!("must not be empty; {why_not_empty}"),
        );
        return None;
    }
    Some(items)
}

/// A string value. Numbers and booleans are not silently turned into text:
/// `1.10` would become `1.1`.
pub(crate) fn string<'n>(node: &'n Node, path: &str, sink: &mut Sink) -> Option<&'n str> {
    match &node.value {
        Value::Str(s) => Some(s),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            sink.error(
                node.loc,
                path,
                format!(
                    "expected a string, found {} (put it in quotes)",
                    node.value.kind()
                ),
            );
            None
        }
        other => {
            sink.error(
                node.loc,
                path,
                format!("expected a string, found {}", other.kind()),
            );
            None
        }
    }
}

/// A non-empty string value.
pub(crate) fn non_empty_string<'n>(node: &'n Node, path: &str, sink: &mut Sink) -> Option<&'n str> {
    let s = string(node, path, sink)?;
    if s.is_empty() {
        sink.error(node.loc, path, "must not be empty");
        return None;
    }
    Some(s)
}

/// A string value run through a small parser whose error message is
/// reported at the value.
pub(crate) fn parsed<T>(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let text = string(node, path, sink)?;
    match parse(text) {
        Ok(v) => Some(v),
        Err(message) => {
            sink.error(node.loc, path, message);
            None
        }
    }
}

/// An integer within `range`.
pub(crate) fn integer(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    range: RangeInclusive<i128>,
) -> Option<i128> {
    let n = match &node.value {
        Value::Int(n) => *n,
        // Integers beyond i64/u64 arrive as floats.
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => {
            sink.error(
                node.loc,
                path,
                format!("{f} is out of range {}-{}", range.start(), range.end()),
            );
            return None;
        }
        other => {
            sink.error(
                node.loc,
                path,
                format!("expected an integer, found {}", other.kind()),
            );
            return None;
        }
    };
    if !range.contains(&n) {
        sink.error(
            node.loc,
            path,
            format!("{n} is out of range {}-{}", range.start(), range.end()),
        );
        return None;
    }
    Some(n)
}

/// An integer that fits a `u32` within `range`.
pub(crate) fn u32_in(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    range: RangeInclusive<u32>,
) -> Option<u32> {
    let wide = i128::from(*range.start())..=i128::from(*range.end());
    integer(node, path, sink, wide).and_then(|n| u32::try_from(n).ok())
}

/// One of a fixed set of lowercase words.
pub(crate) fn choice<T: Copy>(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    options: &[(&'static str, T)],
) -> Option<T> {
    let names = || {
        options
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Value::Str(text) = &node.value else {
        sink.error(
            node.loc,
            path,
            format!("expected one of: {}; found {}", names(), node.value.kind()),
        );
        return None;
    };
    if let Some((_, v)) = options.iter().find(|(n, _)| n == text) {
        return Some(*v);
    }
    sink.error(
        node.loc,
        path,
        format!("unknown value `{text}`; expected one of: {}", names()),
    );
    None
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a plausible typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = match word.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment), since `wbe` for `web` is the most common typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
