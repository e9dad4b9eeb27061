//! Import of the Python deployment's `session_snapshot.pkl`: a pickled
//! dict whose `graph` is a replication GraphObjectStore of Node objects.
//! Decoded with the safe codec: only those two classes are accepted and
//! nothing is executed.

use std::path::Path;

use serde_bytes::ByteBuf;

use super::StoreError;
use super::snapshot::{NodeImage, SessionImage};
use crate::pickle::{self, Allow, Global, Value};

fn invalid(path: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// A slot of a Node's `(None, {slot: value})` state.
fn slot<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    match state {
        Value::Tuple(parts) => parts.iter().find_map(|p| p.get(name)),
        Value::Dict(_) => state.get(name),
        _ => None,
    }
}

pub fn import(path: &Path) -> Result<SessionImage, StoreError> {
    let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
        what: "read the Python server's snapshot",
        path: path.to_path_buf(),
        source,
    })?;
    let top = pickle::decode(&bytes, Allow::Legacy).map_err(|e| invalid(path, e.to_string()))?;
    let graph = top
        .get("graph")
        .ok_or_else(|| invalid(path, "no 'graph' in the snapshot"))?;
    let store = match graph {
        Value::Object(o) if o.class == Global::GraphObjectStore => o
            .state
            .as_ref()
            .and_then(|s| s.get("store"))
            .ok_or_else(|| invalid(path, "graph without a store"))?,
        Value::Dict(_) => graph,
        _ => return Err(invalid(path, "'graph' is not a GraphObjectStore")),
    };
    let entries = store
        .as_dict()
        .ok_or_else(|| invalid(path, "the store is not a dict"))?;
    let mut nodes = Vec::with_capacity(entries.len());
    for (key, node) in entries {
        let Value::Object(o) = node else {
            return Err(invalid(path, "a store entry is not a Node"));
        };
        if o.class != Global::ReplicationNode {
            return Err(invalid(path, "a store entry is not a Node"));
        }
        let state = o.state.as_ref().ok_or_else(|| invalid(path, "a Node without state"))?;
        let uuid = slot(state, "uuid")
            .and_then(Value::as_str)
            .or_else(|| key.as_str())
            .ok_or_else(|| invalid(path, "a Node without uuid"))?
            .to_string();
        let owner = slot(state, "owner")
            .and_then(Value::as_str)
            .unwrap_or(crate::session::RP_COMMON)
            .to_string();
        let deps = match slot(state, "dependencies") {
            Some(Value::List(items)) => Some(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
            _ => None,
        };
        let data = slot(state, "data").cloned().unwrap_or(Value::None);
        nodes.push(NodeImage {
            uuid,
            owner,
            raw_dependencies: ByteBuf::from(crate::wire::encode_dependencies(&deps).to_vec()),
            dependencies: deps,
            raw_data: ByteBuf::from(pickle::encode(&data)),
        });
    }
    let saved_at = match top.get("timestamp") {
        Some(Value::Float(f)) => *f,
        Some(Value::Int(i)) => *i as f64,
        _ => 0.0,
    };
    Ok(SessionImage {
        saved_at,
        reason: format!("imported from {}", path.display()),
        // The Python server always wrote false; a graph with nodes was live.
        initialized: !nodes.is_empty(),
        nodes,
        retained: Vec::new(),
        journal_generation: 0,
    })
}
