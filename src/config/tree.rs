//! A generic YAML node tree in which every node keeps its source position.
//!
//! Deserializing straight into typed structs with serde stops at the first
//! mistake. To report every mistake at once, the document is first read into
//! this untyped tree (only YAML syntax errors can stop this step) and the
//! typed configuration is then decoded from it by hand, collecting errors.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, NonFiniteFloatPolicy, Options, Spanned};

use super::types::Loc;

/// One YAML node together with where it starts in the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) loc: Loc,
}

/// The shape of a node. Scalars are already resolved by the YAML core schema
/// (`80` is an integer, `"80"` a string, `true` a boolean, empty or `~` null).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in source order; duplicate keys are kept so they can be reported.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What the node is, for "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why the document could not be read into a tree at all.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) loc: Loc,
    pub(crate) message: String,
}

/// Parse one YAML document into a spanned tree.
pub(crate) fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut options = Options::default();
    // Duplicates are reported by the decoder together with every other
    // mistake, with both positions; the parser would stop at the first one.
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    // The message is rendered by us as FILE:LINE:COLUMN; no source excerpt.
    options.with_snippet = false;
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.non_finite_float_policy = NonFiniteFloatPolicy::PassThrough;
    match serde_saphyr::from_str_with_options::<Spanned<RawNode>>(source, options) {
        Ok(root) => Ok(from_spanned(root)),
        Err(err) => {
            let loc = err
                .location()
                .map(loc_of)
                .unwrap_or(Loc { line: 1, column: 1 });
            Err(SyntaxError {
                loc,
                message: clean_message(&err.to_string()),
            })
        }
    }
}

/// The library renders errors as "message at line L, column C"; the position
/// is reported separately, so drop it from the text.
fn clean_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let text = match first.rfind(" at line ") {
        Some(at) => &first[..at],
        None => first,
    };
    // The library's wording suggests API calls; say what the user must do.
    if text.starts_with("multiple YAML documents") {
        return "the file must hold exactly one YAML document (remove the `---` separator)"
            .to_owned();
    }
    // `method: *` is the likeliest way to hit this: `*` starts an alias.
    if text.contains("anchor or alias") {
        return format!(
            "YAML syntax error: {text} (`*` and `&` start YAML aliases and anchors; \
             quote the value, e.g. \"*\")"
        );
    }
    format!("YAML syntax error: {text}")
}

fn loc_of(location: serde_saphyr::Location) -> Loc {
    Loc {
        line: u32::try_from(location.line()).unwrap_or(u32::MAX),
        column: u32::try_from(location.column()).unwrap_or(u32::MAX),
    }
}

/// The serde-facing twin of [`Node`]: serde-saphyr hands out positions only
/// through `Spanned<T>`, so the tree is built from `Spanned<RawNode>` and then
/// flattened into the plainer [`Node`].
enum RawNode {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

fn from_spanned(node: Spanned<RawNode>) -> Node {
    // `referenced` is where the value is used; for an alias that is the
    // `*alias` token, which is where the user looks for the mistake.
    let loc = loc_of(node.referenced);
    let value = match node.value {
        RawNode::Null => Value::Null,
        RawNode::Bool(b) => Value::Bool(b),
        RawNode::Int(i) => Value::Int(i),
        RawNode::Float(f) => Value::Float(f),
        RawNode::Str(s) => Value::Str(s),
        RawNode::Seq(items) => Value::Seq(items.into_iter().map(from_spanned).collect()),
        RawNode::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (from_spanned(k), from_spanned(v)))
                .collect(),
        ),
    };
    Node { value, loc }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawNode, E> {
        // Far outside every range the schema accepts; saturate so the decoder
        // reports it as out of range instead of failing the whole parse.
        Ok(RawNode::Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<RawNode>>()? {
            let value = map.next_value::<Spanned<RawNode>>()?;
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
    }
}
