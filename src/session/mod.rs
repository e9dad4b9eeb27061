//! The session: the one owner of the repository graph and the client table.
//!
//! Handlers are plain functions of the state and a decoded message; they
//! queue what must go out in `SessionState::out`, which the server loop
//! sends. Nothing here touches a socket, so every
//! handler is unit-tested directly.

mod auth;
mod graph;
mod metadata;
mod persist;
mod rights;
mod snapshot;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use tracing::{debug, info, warn};

use crate::metrics::{CommitRejection, SessionStats};
use crate::pickle::Value;
use crate::wire::{Command, CommandKind, Update};

pub use graph::{CommitError, Graph, RP_COMMON, StoredNode};
pub use persist::{DEFAULT_RETAINED_KEYS, Restored, Retained};

use crate::store::JournalEntry;

/// The protocol version the clients must speak.
pub const PROTOCOL_VERSION: &str = "0.9.10";
/// Latency reported for a client the heartbeat has not measured yet.
pub const UNKNOWN_LATENCY: i64 = 999;
/// Most clients logged in at once; a session of a studio is a few dozen.
pub const MAX_CLIENTS: usize = 512;

/// A ZeroMQ identity: the same 16 bytes on the three ports of one client.
pub type PeerId = Bytes;

/// Server states, numbered as the Python library numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Waiting = 6,
    SrvSync = 7,
    Active = 2,
}

/// Client statuses, numbered as the Python library numbers them.
pub const STATUS_LOBBY: i64 = 10;
pub const STATUS_ACTIVE: i64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Command,
    Data,
    Heartbeat,
}

impl Channel {
    /// The three ports in port order (PORT, PORT+1, PORT+2).
    pub const ALL: [Channel; 3] = [Channel::Command, Channel::Data, Channel::Heartbeat];

    /// Position in `ALL`, for per-port arrays.
    pub fn index(self) -> usize {
        match self {
            Channel::Command => 0,
            Channel::Data => 1,
            Channel::Heartbeat => 2,
        }
    }

    /// The port's name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Command => "command",
            Channel::Data => "data",
            Channel::Heartbeat => "heartbeat",
        }
    }
}

/// What the session asks the socket side to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Send a message to one peer.
    Send {
        channel: Channel,
        to: PeerId,
        frames: Arc<Vec<Bytes>>,
    },
    /// The peer logged in: let its traffic through on every port.
    Admit(PeerId),
    /// The peer left: drop its traffic and stop watching its heartbeat.
    Evict(PeerId),
}

/// What the heartbeat side reports.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatEvent {
    Latencies(Vec<(PeerId, i64)>),
    Lost(PeerId),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub username: String,
    pub admin: bool,
    pub latency: i64,
    pub status: i64,
    /// The user's metadata dict, merged key by key.
    pub metadata: Vec<(Value, Value)>,
}

impl Client {
    fn record(&self) -> Value {
        crate::pickle::dict([
            ("id", Value::str(&self.username)),
            ("admin", Value::Bool(self.admin)),
            ("latency", Value::Int(self.latency)),
            ("status", Value::Int(self.status)),
            ("metadata", Value::Dict(self.metadata.clone())),
        ])
    }
}

/// An admin's upload of the initial repository in progress.
#[derive(Debug)]
struct Upload {
    uploader: PeerId,
    pending: HashSet<String>,
    size: usize,
    received: usize,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub admin_password: String,
    pub server_password: String,
    /// Metadata keys kept per user after they leave and saved.
    pub retained_keys: Vec<String>,
}

impl SessionConfig {
    pub fn new(admin_password: &str, server_password: &str) -> Self {
        SessionConfig {
            admin_password: admin_password.into(),
            server_password: server_password.into(),
            retained_keys: DEFAULT_RETAINED_KEYS.iter().map(|k| k.to_string()).collect(),
        }
    }
}

pub struct SessionState {
    config: SessionConfig,
    state: ServerState,
    clients: IndexMap<PeerId, Client>,
    graph: Graph,
    upload: Option<Upload>,
    retained: Retained,
    /// Messages and control requests produced by the last handler.
    pub out: Vec<Outgoing>,
    /// Accepted changes of the last handlers, for the journal.
    journal: Vec<JournalEntry>,
    /// Saves the last handlers asked for, by reason.
    save_requests: Vec<String>,
    changes: u64,
    /// Counters for /metrics.
    pub stats: SessionStats,
}

pub(crate) fn put_node_entry(node: &crate::wire::NodeFrames) -> JournalEntry {
    JournalEntry::PutNode {
        uuid: node.uuid.clone(),
        owner: node.owner.clone(),
        dependencies: node.dependencies.clone(),
        raw_dependencies: node.raw_dependencies.clone(),
        raw_data: node.raw_data.clone(),
    }
}

/// A readable name for a peer identity in log lines.
pub fn peer_name(peer: &[u8]) -> String {
    if peer.len() == 16 {
        let h: String = peer.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    } else {
        peer.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl SessionState {
    pub fn new(config: SessionConfig) -> Self {
        SessionState {
            config,
            state: ServerState::Waiting,
            clients: IndexMap::new(),
            graph: Graph::default(),
            upload: None,
            retained: Retained::default(),
            out: Vec::new(),
            journal: Vec::new(),
            save_requests: Vec::new(),
            changes: 0,
            stats: SessionStats::default(),
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn clients(&self) -> impl Iterator<Item = (&PeerId, &Client)> {
        self.clients.iter()
    }

    /// Whether the peer has logged in.
    pub fn is_client(&self, peer: &PeerId) -> bool {
        self.clients.contains_key(peer)
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Takes what the last handlers queued.
    pub fn drain_out(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    fn username(&self, peer: &PeerId) -> String {
        self.clients
            .get(peer)
            .map(|c| c.username.clone())
            .unwrap_or_else(|| format!("unauthenticated peer {}", peer_name(peer)))
    }

    fn send(&mut self, channel: Channel, to: &PeerId, frames: Arc<Vec<Bytes>>) {
        self.out.push(Outgoing::Send {
            channel,
            to: to.clone(),
            frames,
        });
    }

    fn send_command(&mut self, to: &PeerId, kind: CommandKind, data: &Value) {
        let frames = Arc::new(Command::frames(kind, "server", data));
        self.send(Channel::Command, to, frames);
    }

    /// Sends the same message to every registered client but `except`.
    fn broadcast(&mut self, channel: Channel, frames: Arc<Vec<Bytes>>, except: Option<&PeerId>) {
        let targets: Vec<PeerId> = self.clients.keys().filter(|p| Some(*p) != except).cloned().collect();
        for to in targets {
            self.send(channel, &to, frames.clone());
        }
    }

    /// UpdateClientsState to every registered client.
    fn broadcast_clients_state(&mut self) {
        if self.clients.is_empty() {
            return;
        }
        let users = Value::Dict(
            self.clients
                .values()
                .map(|c| (Value::str(&c.username), c.record()))
                .collect(),
        );
        let frames = Arc::new(Command::frames(CommandKind::UpdateClientsState, "server", &users));
        self.broadcast(Channel::Command, frames, None);
    }

    /// One command from the command port.
    pub fn handle_command(&mut self, peer: PeerId, cmd: Command) {
        let registered = self.clients.contains_key(&peer);
        match cmd.kind {
            CommandKind::Auth => self.handle_auth(&peer, &cmd.data),
            CommandKind::RequestServerInfo => self.handle_server_info(&peer),
            _ if !registered => {
                // The socket side filters these already; this keeps the
                // session safe on its own.
                debug!(peer = %peer_name(&peer), kind = cmd.kind.name(), "dropped command from an unauthenticated peer");
            }
            CommandKind::Snapshot => self.handle_snapshot(&peer, &cmd.data),
            CommandKind::ServerSnapshot => self.handle_server_snapshot(&peer, &cmd.data),
            CommandKind::UpdateUserMetadata => self.handle_metadata(&peer, cmd),
            CommandKind::Delete => self.handle_delete(&peer, cmd),
            CommandKind::Right => self.handle_right(&peer, cmd),
            CommandKind::Kick => self.handle_kick(&peer, &cmd.data),
            other => {
                warn!(user = %self.username(&peer), kind = other.name(), "ignored a command clients may not send");
            }
        }
    }

    fn handle_server_info(&mut self, peer: &PeerId) {
        let info = crate::pickle::dict([
            ("private", Value::Bool(!self.config.server_password.is_empty())),
            ("version", Value::str(PROTOCOL_VERSION)),
        ]);
        self.send_command(peer, CommandKind::RequestServerInfo, &info);
    }

    /// A Node or Commit from the data port: store it, then relay it to every
    /// other registered client, byte for byte.
    pub fn handle_update(&mut self, peer: PeerId, mut update: Update, frames: Arc<Vec<Bytes>>) {
        if !self.clients.contains_key(&peer) {
            debug!(peer = %peer_name(&peer), "dropped an update from an unauthenticated peer");
            return;
        }
        update.detach();
        match update {
            Update::Node(node) => {
                debug!(user = %self.username(&peer), node = %node.uuid, "node update");
                self.record(put_node_entry(&node));
                self.graph.put_node(node);
            }
            Update::Commit(mut commit) => {
                let mut skipped = Vec::new();
                match self.graph.apply_commit(&mut commit, &mut skipped) {
                    Ok(()) => {
                        self.stats.commits_applied += 1;
                        self.record(JournalEntry::Commit {
                            uuid: commit.node_id.clone(),
                            dependencies: commit.dependencies.clone(),
                            raw_dependencies: commit.raw_dependencies.clone(),
                            raw_delta: commit.raw_delta.clone(),
                        });
                        debug!(user = %self.username(&peer), node = %commit.node_id, "commit applied");
                        for line in skipped {
                            debug!(node = %commit.node_id, "delta edit skipped as deepdiff skips it: {line}");
                        }
                    }
                    Err(CommitError::UnknownNode) => {
                        self.stats.commits_rejected[CommitRejection::UnknownNode as usize] += 1;
                        warn!(
                            user = %self.username(&peer),
                            node = %commit.node_id,
                            "dropped a commit for a node the server does not hold (not relayed: clients crash on it)"
                        );
                        return;
                    }
                    Err(e) => {
                        self.stats.commits_rejected[CommitRejection::BadDelta as usize] += 1;
                        warn!(
                            user = %self.username(&peer),
                            node = %commit.node_id,
                            reason = %e,
                            "Corrupted data frame received, skipping it: the node is unchanged and the commit is not relayed"
                        );
                        return;
                    }
                }
            }
        }
        self.broadcast(Channel::Data, frames, Some(&peer));
    }

    pub fn handle_heartbeat(&mut self, event: HeartbeatEvent) {
        match event {
            HeartbeatEvent::Latencies(latencies) => {
                for (peer, latency) in latencies {
                    if let Some(client) = self.clients.get_mut(&peer) {
                        client.latency = latency;
                    }
                }
                self.broadcast_clients_state();
            }
            HeartbeatEvent::Lost(peer) => {
                if self.clients.contains_key(&peer) {
                    self.disconnect(&peer, "heartbeat timeout");
                }
            }
        }
    }

    /// Removes a client: its nodes go back to COMMON, announced to the others.
    pub fn disconnect(&mut self, peer: &PeerId, cause: &str) {
        let Some(client) = self.clients.shift_remove(peer) else {
            return;
        };
        self.out.push(Outgoing::Evict(peer.clone()));
        let locked = self.graph.owned_by(&client.username);
        if !locked.is_empty() {
            self.graph.set_owner(&locked, RP_COMMON);
            self.record(JournalEntry::Right {
                uuids: locked.clone(),
                owner: RP_COMMON.into(),
            });
            let data = crate::pickle::dict([
                ("uuid", Value::List(locked.iter().map(|u| Value::str(u)).collect())),
                ("owner", Value::str(RP_COMMON)),
            ]);
            let frames = Arc::new(Command::frames(CommandKind::Right, "server", &data));
            self.broadcast(Channel::Command, frames, None);
            info!(user = %client.username, nodes = locked.len(), "released the user's nodes to COMMON");
        }
        if self.upload.as_ref().is_some_and(|u| u.uploader == *peer) {
            warn!(
                user = %client.username,
                "the admin uploading the session left before it finished; discarding the partial upload, waiting for a new init"
            );
            self.upload = None;
            self.graph.clear();
            self.state = ServerState::Waiting;
            self.record(JournalEntry::Reset);
        }
        info!(user = %client.username, cause, online = self.clients.len(), "user disconnected");
        self.save_requests.push(format!("user_disconnect:{}", client.username));
    }
}

#[cfg(test)]
pub(crate) mod tests;
