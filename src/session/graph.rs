//! The repository graph: every node the session holds, in insertion order
//! (the order the Python server's dict keeps, and so the catalog order).

use bytes::Bytes;
use indexmap::IndexMap;

use crate::wire::{self, CommitFrames, Dependencies, NodeFrames};

pub const RP_COMMON: &str = "COMMON";

/// A node as the server stores it: the client's bytes for the data, so that
/// serving it to a joining client costs no encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub owner: String,
    pub dependencies: Dependencies,
    pub raw_dependencies: Bytes,
    pub raw_data: Bytes,
}

impl StoredNode {
    pub fn frames(&self, uuid: &str) -> Vec<Bytes> {
        vec![
            wire::type_frame(wire::TYPE_NODE),
            Bytes::copy_from_slice(uuid.as_bytes()),
            Bytes::copy_from_slice(self.owner.as_bytes()),
            self.raw_dependencies.clone(),
            self.raw_data.clone(),
        ]
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: IndexMap<String, StoredNode>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, uuid: &str) -> Option<&StoredNode> {
        self.nodes.get(uuid)
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
                stored.raw_data = node.raw_data;
            }
            None => {
                self.nodes.insert(
                    node.uuid,
                    StoredNode {
                        owner: node.owner,
                        dependencies: node.dependencies,
                        raw_dependencies: node.raw_dependencies,
                        raw_data: node.raw_data,
                    },
                );
            }
        }
    }

    /// Records a commit's dependencies. False when the node is unknown.
    pub fn put_commit(&mut self, commit: &CommitFrames) -> bool {
        match self.nodes.get_mut(&commit.node_id) {
            Some(stored) => {
                stored.dependencies = commit.dependencies.clone();
                stored.raw_dependencies = commit.raw_dependencies.clone();
                true
            }
            None => false,
        }
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
