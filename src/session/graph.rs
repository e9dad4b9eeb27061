//! The repository graph: every node the session holds, in insertion order
//! (the order the Python server's dict keeps, and so the catalog order).

use bytes::Bytes;
use indexmap::IndexMap;

use crate::delta::{self, Abort};
use crate::pickle::{self, Allow, Value};
use crate::wire::{self, CommitFrames, Dependencies, NodeFrames};

pub const RP_COMMON: &str = "COMMON";

/// A node as the server stores it. Nodes nobody patches keep only the
/// client's bytes, so serving them costs no encoding; a node that receives
/// commits is decoded once and keeps its value, and is re-encoded only when
/// a client or a snapshot needs the bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub owner: String,
    pub dependencies: Dependencies,
    pub raw_dependencies: Bytes,
    raw_data: Option<Bytes>,
    value: Option<Value>,
    /// Size of the pickled data when last known; a patched value keeps the
    /// size it had until it is encoded again.
    size: usize,
}

impl StoredNode {
    pub fn new(owner: String, dependencies: Dependencies, raw_dependencies: Bytes, raw_data: Bytes) -> Self {
        StoredNode {
            owner,
            dependencies,
            raw_dependencies,
            size: raw_data.len(),
            raw_data: Some(raw_data),
            value: None,
        }
    }

    /// The pickled data, encoding the patched value if it changed.
    pub fn raw_data(&mut self) -> Bytes {
        if let Some(raw) = &self.raw_data {
            return raw.clone();
        }
        let raw = Bytes::from(pickle::encode(self.value.as_ref().unwrap_or(&Value::None)));
        self.size = raw.len();
        self.raw_data = Some(raw.clone());
        raw
    }

    /// The decoded data, decoding the client's bytes on first use.
    pub fn value(&mut self) -> Result<&Value, pickle::DecodeError> {
        Ok(self.value_mut()?)
    }

    /// The decoded data to patch; `patched` must follow a change.
    fn value_mut(&mut self) -> Result<&mut Value, pickle::DecodeError> {
        if self.value.is_none() {
            let raw = self.raw_data.as_ref().map(|b| &b[..]).unwrap_or(b"\x80\x04N.");
            self.value = Some(pickle::decode(raw, Allow::Data)?);
        }
        Ok(self.value.get_or_insert(Value::None))
    }

    /// The value changed in place: its bytes are stale.
    fn patched(&mut self) {
        self.raw_data = None;
    }

    /// The bytes if they are current, without encoding.
    pub fn cached_raw(&self) -> Option<Bytes> {
        self.raw_data.clone()
    }

    /// The decoded value if there is one, without decoding.
    pub fn cached_value(&self) -> Option<&Value> {
        self.value.as_ref()
    }

    /// Bytes the node takes, as stored on disk and sent to clients.
    pub fn stored_bytes(&self) -> usize {
        self.size + self.raw_dependencies.len()
    }

    fn set_raw(&mut self, raw: Bytes) {
        self.size = raw.len();
        self.raw_data = Some(raw);
        self.value = None;
    }

    pub fn frames(&mut self, uuid: &str) -> Vec<Bytes> {
        let raw_data = self.raw_data();
        wire::node_frames(uuid, &self.owner, self.raw_dependencies.clone(), raw_data)
    }
}

/// Why a commit was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the server does not hold this node")]
    UnknownNode,
    #[error("the stored node data cannot be decoded: {0}")]
    Stored(#[from] pickle::DecodeError),
    #[error(transparent)]
    Delta(#[from] Abort),
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: IndexMap<String, StoredNode>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Bytes of node data held (the last known size of patched nodes).
    pub fn bytes_held(&self) -> u64 {
        self.nodes.values().map(|n| n.stored_bytes() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, uuid: &str) -> Option<&StoredNode> {
        self.nodes.get(uuid)
    }

    pub fn get_mut(&mut self, uuid: &str) -> Option<&mut StoredNode> {
        self.nodes.get_mut(uuid)
    }

    pub fn contains(&self, uuid: &str) -> bool {
        self.nodes.contains_key(uuid)
    }

    pub fn catalog(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    /// A full node replaces data and dependencies; only Right changes the
    /// owner of a node the server already holds.
    pub fn put_node(&mut self, node: NodeFrames) {
        match self.nodes.get_mut(&node.uuid) {
            Some(stored) => {
                stored.dependencies = node.dependencies;
                stored.raw_dependencies = node.raw_dependencies;
                stored.set_raw(node.raw_data);
            }
            None => {
                let stored = StoredNode::new(node.owner, node.dependencies, node.raw_dependencies, node.raw_data);
                self.nodes.insert(node.uuid, stored);
            }
        }
    }

    /// Patches a node with a commit's delta, all or nothing: when Python
    /// would abort, the node is left as it was. `log` gets the edits deepdiff
    /// would have skipped. The parsed delta is used up (its values move into
    /// the node); the commit's bytes stay.
    pub fn apply_commit(&mut self, commit: &mut CommitFrames, log: &mut Vec<String>) -> Result<(), CommitError> {
        let stored = self.nodes.get_mut(&commit.node_id).ok_or(CommitError::UnknownNode)?;
        let delta = std::mem::take(&mut commit.delta);
        delta::apply_in_place(stored.value_mut()?, delta, log)?;
        stored.patched();
        stored.dependencies = commit.dependencies.clone();
        stored.raw_dependencies = commit.raw_dependencies.clone();
        Ok(())
    }

    /// Removes a node and every reference to it. False when unknown.
    pub fn delete(&mut self, uuid: &str) -> bool {
        if self.nodes.shift_remove(uuid).is_none() {
            return false;
        }
        for stored in self.nodes.values_mut() {
            if let Some(deps) = &mut stored.dependencies
                && let Some(pos) = deps.iter().position(|d| d == uuid)
            {
                // Python's list.remove drops the first occurrence only.
                deps.remove(pos);
                stored.raw_dependencies = wire::encode_dependencies(&stored.dependencies);
            }
        }
        true
    }

    /// Sets the owner of each listed node that exists.
    pub fn set_owner(&mut self, uuids: &[String], owner: &str) -> usize {
        let mut changed = 0;
        for uuid in uuids {
            if let Some(stored) = self.nodes.get_mut(uuid) {
                stored.owner = owner.to_string();
                changed += 1;
            }
        }
        changed
    }

    /// Nodes owned by a user, in graph order.
    pub fn owned_by(&self, owner: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.owner == owner)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &StoredNode)> {
        self.nodes.iter()
    }
}
