//! What the session hands to persistence: journal entries as changes are
//! accepted, views for snapshots, and the restore of a saved session.
//! Also the metadata kept per user after they leave (tasks, chat).

use bytes::Bytes;
use indexmap::IndexMap;
use serde_bytes::ByteBuf;
use tracing::warn;

use super::{RP_COMMON, ServerState, SessionState};
use crate::delta::Delta;
use crate::pickle::{self, Allow, Value};
use crate::store::writer::{NodeData, NodeView, SessionView};
use crate::store::{JournalEntry, RetainedImage, SessionImage};
use crate::wire::{CommitFrames, NodeFrames};

/// Metadata keys kept after a user leaves, unless configured otherwise.
pub const DEFAULT_RETAINED_KEYS: [&str; 2] = ["tasks", "chat_messages"];

/// Durable metadata: per user and key, the last value and its order.
#[derive(Debug, Default)]
pub struct Retained {
    values: IndexMap<(String, String), (Value, u64)>,
    next_seq: u64,
}

impl Retained {
    pub fn set(&mut self, user: &str, key: &str, value: Value) -> u64 {
        self.next_seq += 1;
        self.values
            .insert((user.to_string(), key.to_string()), (value, self.next_seq));
        self.next_seq
    }

    fn restore(&mut self, user: String, key: String, value: Value, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
        self.values.insert((user, key), (value, seq));
    }

    /// What a user gets at login for `key`: theirs, else the newest anyone left.
    pub fn for_login(&self, user: &str, key: &str) -> Option<Value> {
        if let Some((v, _)) = self.values.get(&(user.to_string(), key.to_string())) {
            return Some(v.clone());
        }
        self.values
            .iter()
            .filter(|((_, k), _)| k == key)
            .max_by_key(|(_, (_, seq))| *seq)
            .map(|(_, (v, _))| v.clone())
    }

    pub fn images(&self) -> Vec<RetainedImage> {
        self.values
            .iter()
            .map(|((user, key), (value, seq))| RetainedImage {
                user: user.clone(),
                key: key.clone(),
                value: ByteBuf::from(pickle::encode(value)),
                seq: *seq,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Names of the users with kept values, in order of first arrival.
    pub fn users(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (user, _) in self.values.keys() {
            if !names.contains(user) {
                names.push(user.clone());
            }
        }
        names
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What a restore brought back, for the start-up banner.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Restored {
    pub nodes: usize,
    /// Users whose tasks or chat were kept.
    pub users: Vec<String>,
    pub retained: usize,
    pub journal_entries: usize,
    pub initialized: bool,
}

impl SessionState {
    /// Records an accepted change for the journal.
    pub(super) fn record(&mut self, entry: JournalEntry) {
        self.changes += 1;
        self.journal.push(entry);
    }

    /// Takes the journal entries of the last handlers.
    pub fn drain_journal(&mut self) -> Vec<JournalEntry> {
        std::mem::take(&mut self.journal)
    }

    /// Takes the saves the last handlers asked for (their reasons).
    pub fn drain_save_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.save_requests)
    }

    /// Changes accepted since the server started; compared to decide
    /// whether a save has anything to write.
    pub fn change_count(&self) -> u64 {
        self.changes
    }

    pub fn is_initialized(&self) -> bool {
        self.state == ServerState::Active
    }

    /// A consistent view for the snapshot writer. Nodes whose bytes are at
    /// hand are shared, patched ones are copied as values and encoded by
    /// the writer.
    pub fn view(&mut self) -> SessionView {
        SessionView {
            initialized: self.is_initialized(),
            nodes: self
                .graph
                .iter()
                .map(|(uuid, n)| NodeView {
                    uuid: uuid.clone(),
                    owner: n.owner.clone(),
                    dependencies: n.dependencies.clone(),
                    raw_dependencies: n.raw_dependencies.clone(),
                    data: match n.cached_raw() {
                        Some(raw) => NodeData::Raw(raw),
                        None => NodeData::Value(n.cached_value().cloned().unwrap_or(Value::None)),
                    },
                })
                .collect(),
            retained: self.retained.images(),
            users: self.clients.values().map(|c| c.username.clone()).collect(),
        }
    }

    /// Loads a saved session and replays journal entries over it. Nobody is
    /// connected after a restart, so every node goes back to COMMON.
    pub fn restore(&mut self, image: SessionImage, entries: Vec<JournalEntry>) -> Restored {
        let mut initialized = image.initialized;
        for n in image.nodes {
            self.graph.put_node(NodeFrames {
                uuid: n.uuid,
                owner: n.owner,
                dependencies: n.dependencies,
                raw_dependencies: Bytes::from(n.raw_dependencies.into_vec()),
                raw_data: Bytes::from(n.raw_data.into_vec()),
            });
        }
        for r in image.retained {
            match pickle::decode(&r.value, Allow::Data) {
                Ok(v) => self.retained.restore(r.user, r.key, v, r.seq),
                Err(e) => warn!(user = %r.user, key = %r.key, error = %e, "dropped an undecodable retained value"),
            }
        }
        let journal_entries = entries.len();
        for entry in entries {
            match entry {
                JournalEntry::PutNode {
                    uuid,
                    owner,
                    dependencies,
                    raw_dependencies,
                    raw_data,
                } => self.graph.put_node(NodeFrames {
                    uuid,
                    owner,
                    dependencies,
                    raw_dependencies,
                    raw_data,
                }),
                JournalEntry::Commit {
                    uuid,
                    dependencies,
                    raw_dependencies,
                    raw_delta,
                } => {
                    let delta = match Delta::decode(&raw_delta) {
                        Ok(d) => d,
                        Err(e) => {
                            warn!(node = %uuid, error = %e, "journal: dropped an undecodable commit");
                            continue;
                        }
                    };
                    let mut commit = CommitFrames {
                        node_id: uuid.clone(),
                        dependencies,
                        raw_dependencies,
                        raw_delta,
                        delta,
                    };
                    if let Err(e) = self.graph.apply_commit(&mut commit, &mut Vec::new()) {
                        warn!(node = %uuid, error = %e, "journal: a commit no longer applies, skipped");
                    }
                }
                JournalEntry::Delete { uuid } => {
                    self.graph.delete(&uuid);
                }
                JournalEntry::Right { uuids, owner } => {
                    self.graph.set_owner(&uuids, &owner);
                }
                JournalEntry::Initialized => initialized = true,
                JournalEntry::Reset => {
                    initialized = false;
                    self.graph.clear();
                }
                JournalEntry::Retain { user, key, value, seq } => match pickle::decode(&value, Allow::Data) {
                    Ok(v) => self.retained.restore(user, key, v, seq),
                    Err(e) => warn!(error = %e, "journal: dropped an undecodable retained value"),
                },
            }
        }
        if !initialized {
            // A partial upload: its admin is gone, the next init starts over.
            self.graph.clear();
        }
        let all: Vec<String> = self.graph.catalog();
        self.graph.set_owner(&all, RP_COMMON);
        self.state = if initialized {
            ServerState::Active
        } else {
            ServerState::Waiting
        };
        Restored {
            nodes: self.graph.len(),
            users: self.retained.users(),
            retained: self.retained.len(),
            journal_entries,
            initialized,
        }
    }
}
