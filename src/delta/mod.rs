//! deepdiff Delta: decoding a client's delta pickle into typed operations
//! and applying it to a node's value the way the clients (deepdiff 8.1.1)
//! do, while still reading deltas written by deepdiff 5.7.0.

mod apply;
pub mod path;
pub mod pyops;
pub mod repr;
mod sort;

pub use apply::{Abort, Change, apply_in_place};
pub use path::Dialect;

use crate::pickle::{self, Allow, Global, Value};

/// One `deepdiff.helper.Opcode`.
#[derive(Debug, Clone, PartialEq)]
pub struct Opcode {
    pub tag: String,
    pub t1_from: i64,
    pub t1_to: i64,
    pub new_values: Value,
}

/// A path as the delta's pickle holds it (`root['objects'][3]`), shared
/// with the decoded pickle rather than copied.
pub type Path = std::sync::Arc<str>;

/// `{container_path: {index: value}}` of the ignore_order reports.
pub type IndexedItems = Vec<(Path, Vec<(Value, Value)>)>;

/// A delta, its operations in the order deepdiff stores them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    pub dialect: Dialect,
    pub values_changed: Vec<(Path, Change)>,
    pub type_changes: Vec<(Path, Change)>,
    pub iterable_opcodes: Vec<(Path, Vec<Opcode>)>,
    pub iterable_item_removed: Vec<(Path, Value)>,
    pub iterable_item_added: Vec<(Path, Value)>,
    pub items_added_at_indexes: IndexedItems,
    pub items_removed_at_indexes: IndexedItems,
    pub dictionary_item_added: Vec<(Path, Value)>,
    pub dictionary_item_removed: Vec<(Path, Value)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeltaError {
    #[error("cannot decode the delta pickle: {0}")]
    Pickle(#[from] pickle::DecodeError),
    #[error("malformed delta: {0}")]
    Malformed(String),
    #[error("the delta uses {0}, which deepdiff deltas of Blender data never contain")]
    Unsupported(String),
    #[error("applying the delta failed as it would in Python: {0}")]
    Aborted(#[from] Abort),
}

fn malformed<T>(msg: impl Into<String>) -> Result<T, DeltaError> {
    Err(DeltaError::Malformed(msg.into()))
}

// The decoded pickle is consumed: its values move into the delta.
fn path_map(v: Value, what: &str) -> Result<Vec<(Path, Value)>, DeltaError> {
    let Value::Dict(items) = v else {
        return malformed(format!("{what} is not a dict"));
    };
    items
        .into_iter()
        .map(|(k, x)| match k {
            Value::Str(s) => Ok((s, x)),
            _ => malformed(format!("{what} has a path that is not a str")),
        })
        .collect()
}

fn changes(v: Value, what: &str) -> Result<Vec<(Path, Change)>, DeltaError> {
    path_map(v, what)?
        .into_iter()
        .map(|(p, c)| {
            let Value::Dict(entries) = c else {
                return malformed(format!("{what}[{p}] is not a dict"));
            };
            let mut change = Change {
                new_value: None,
                new_type: Value::None,
            };
            // Moved out, not copied: a new value can be a whole list. The
            // last of repeated keys wins, as in the dict Python builds.
            for (k, x) in entries {
                match k.as_str() {
                    Some("new_value") => change.new_value = Some(x),
                    Some("new_type") => change.new_type = x,
                    _ => {}
                }
            }
            Ok((p, change))
        })
        .collect()
}

fn int_arg(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(Value::Bool(b)) => i64::from(*b),
        _ => 0,
    }
}

fn opcodes(v: Value) -> Result<Vec<(Path, Vec<Opcode>)>, DeltaError> {
    path_map(v, "_iterable_opcodes")?
        .into_iter()
        .map(|(p, ops)| {
            let Value::List(list) = ops else {
                return malformed("opcodes are not a list");
            };
            let ops = list
                .iter()
                .map(|op| match op {
                    Value::Object(o) if o.class == Global::DeepdiffOpcode => Ok(Opcode {
                        tag: o.args.first().and_then(Value::as_str).unwrap_or_default().to_string(),
                        t1_from: int_arg(o.args.get(1)),
                        t1_to: int_arg(o.args.get(2)),
                        new_values: o.args.get(6).cloned().unwrap_or(Value::None),
                    }),
                    // Deltas rebuilt from flat rows carry opcodes as dicts.
                    Value::Dict(_) => Ok(Opcode {
                        tag: op.get("tag").and_then(Value::as_str).unwrap_or_default().to_string(),
                        t1_from: int_arg(op.get("t1_from_index")),
                        t1_to: int_arg(op.get("t1_to_index")),
                        new_values: op.get("new_values").cloned().unwrap_or(Value::None),
                    }),
                    _ => malformed("an opcode is neither an Opcode nor a dict"),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((p, ops))
        })
        .collect()
}

fn indexed(v: Value, what: &str) -> Result<IndexedItems, DeltaError> {
    path_map(v, what)?
        .into_iter()
        .map(|(p, m)| match m {
            Value::Dict(items) => Ok((p, items)),
            _ => malformed(format!("{what}[{p}] is not a dict")),
        })
        .collect()
}

impl Delta {
    /// Parses `delta.dumps()` as a client sends it.
    pub fn decode(raw: &[u8]) -> Result<Delta, DeltaError> {
        let (value, info) = pickle::decode_with_info(raw, Allow::Delta)?;
        let dialect = if info.ordered_dict_plus {
            Dialect::V5
        } else {
            Dialect::V8
        };
        Self::from_value(value, dialect)
    }

    pub fn from_value(value: Value, dialect: Dialect) -> Result<Delta, DeltaError> {
        let Value::Dict(items) = value else {
            return malformed("the delta is not a dict");
        };
        let mut d = Delta {
            dialect,
            ..Default::default()
        };
        for (k, v) in items {
            let Some(key) = k.as_str() else {
                return malformed("a delta key is not a str");
            };
            match key {
                "values_changed" => d.values_changed = changes(v, key)?,
                "type_changes" => d.type_changes = changes(v, key)?,
                "_iterable_opcodes" => d.iterable_opcodes = opcodes(v)?,
                "iterable_item_removed" => d.iterable_item_removed = path_map(v, key)?,
                "iterable_item_added" => d.iterable_item_added = path_map(v, key)?,
                "iterable_items_added_at_indexes" => d.items_added_at_indexes = indexed(v, key)?,
                "iterable_items_removed_at_indexes" => d.items_removed_at_indexes = indexed(v, key)?,
                "dictionary_item_added" => d.dictionary_item_added = path_map(v, key)?,
                "dictionary_item_removed" => d.dictionary_item_removed = path_map(v, key)?,
                // Markers deepdiff stores next to the operations.
                "_numpy_paths" | "_iterable_compare_func_was_used" => {
                    if pyops::truthy(&v) {
                        return Err(DeltaError::Unsupported(key.to_string()));
                    }
                }
                other => {
                    if pyops::truthy(&v) {
                        return Err(DeltaError::Unsupported(other.to_string()));
                    }
                }
            }
        }
        Ok(d)
    }
}

/// Decodes a client's delta and applies it to a node value in place, all
/// or nothing, as the server does with a commit. `log` receives what
/// deepdiff would have logged for the edits it skipped.
pub fn apply_delta(value: &mut Value, raw_delta: &[u8], log: &mut Vec<String>) -> Result<(), DeltaError> {
    let delta = Delta::decode(raw_delta)?;
    Ok(apply_in_place(value, delta, log)?)
}
