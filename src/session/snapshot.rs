//! Snapshot (a client pulls the repository) and ServerSnapshot (an admin
//! uploads the initial repository).

use std::collections::HashSet;
use tracing::{debug, info, warn};

use super::{PeerId, STATUS_ACTIVE, ServerState, SessionState, Upload};
use crate::pickle::Value;
use crate::wire::{CommandKind, NodeFrames};

impl SessionState {
    pub(super) fn send_catalog(&mut self, to: &PeerId) {
        let catalog = Value::List(self.graph.catalog().iter().map(|u| Value::str(u)).collect());
        let data = crate::pickle::dict([("STATE", Value::str("INIT")), ("CATALOG", catalog)]);
        info!(user = %self.username(to), nodes = self.graph.len(), "snapshot: sending the node catalog");
        self.send_command(to, CommandKind::Snapshot, &data);
    }

    pub(super) fn handle_snapshot(&mut self, peer: &PeerId, data: &Value) {
        match data.get("STATE").and_then(Value::as_str) {
            Some("REQUEST_INIT") => self.send_catalog(peer),
            Some("GET") => {
                let Some(uuid) = data.get("ID").and_then(Value::as_str) else {
                    warn!(user = %self.username(peer), "snapshot GET without a node id, ignored");
                    return;
                };
                let node_data = match self.graph.get_mut(uuid) {
                    Some(node) => Value::List(node.frames(uuid).iter().map(|f| Value::bytes(f)).collect()),
                    None => {
                        debug!(user = %self.username(peer), node = uuid, "snapshot: node no longer exists");
                        Value::bytes(b"removed")
                    }
                };
                let reply = crate::pickle::dict([("STATE", Value::str("SET")), ("DATA", node_data)]);
                self.send_command(peer, CommandKind::Snapshot, &reply);
            }
            Some("DONE") => {
                if let Some(client) = self.clients.get_mut(peer) {
                    client.status = STATUS_ACTIVE;
                    info!(user = %client.username, "snapshot: client is in sync");
                }
                self.broadcast_clients_state();
            }
            other => {
                warn!(user = %self.username(peer), state = ?other, "unknown snapshot state, ignored")
            }
        }
    }

    pub(super) fn handle_server_snapshot(&mut self, peer: &PeerId, data: &Value) {
        match data.get("STATE").and_then(Value::as_str) {
            Some("INIT") => self.begin_upload(peer, data),
            Some("SET") => self.receive_uploaded_node(peer, data),
            Some("END") => {
                if let Some(client) = self.clients.get_mut(peer) {
                    client.status = STATUS_ACTIVE;
                }
                info!(user = %self.username(peer), "session initialisation finished");
                self.broadcast_clients_state();
            }
            other => {
                warn!(user = %self.username(peer), state = ?other, "unknown server snapshot state, ignored")
            }
        }
    }

    fn reply_server_snapshot(&mut self, to: &PeerId, state: &str) {
        let data = crate::pickle::dict([("STATE", Value::str(state))]);
        self.send_command(to, CommandKind::ServerSnapshot, &data);
    }

    fn begin_upload(&mut self, peer: &PeerId, data: &Value) {
        let user = self.username(peer);
        let is_admin = self.clients.get(peer).is_some_and(|c| c.admin);
        let nodes: Option<Vec<String>> = match data.get("NODES") {
            Some(Value::List(items)) | Some(Value::Tuple(items)) => {
                items.iter().map(|v| v.as_str().map(str::to_owned)).collect()
            }
            _ => None,
        };
        let refusal = if !is_admin {
            Some("only an admin may initialise the session")
        } else if self.state != ServerState::Waiting {
            Some("the session is already initialised or being initialised")
        } else if nodes.is_none() {
            Some("the node list is missing or malformed")
        } else {
            None
        };
        if let Some(reason) = refusal {
            warn!(user = %user, reason, "session initialisation REJECTED");
            self.reply_server_snapshot(peer, "REJECTED");
            return;
        }
        let pending: HashSet<String> = nodes.unwrap_or_default().into_iter().collect();
        let size = pending.len();
        info!(user = %user, nodes = size, "session initialisation ACCEPTED, receiving nodes");
        self.state = ServerState::SrvSync;
        self.upload = Some(Upload {
            uploader: peer.clone(),
            pending,
            size,
            received: 0,
        });
        self.reply_server_snapshot(peer, "ACCEPTED");
        if size == 0 {
            self.finish_upload();
        }
    }

    fn receive_uploaded_node(&mut self, peer: &PeerId, data: &Value) {
        let user = self.username(peer);
        let Some(upload) = self.upload.as_mut().filter(|u| u.uploader == *peer) else {
            warn!(user = %user, "ignored a snapshot node outside an initialisation by this user");
            return;
        };
        let node = match data.get("DATA").map(NodeFrames::from_value) {
            Some(Ok(node)) => node,
            Some(Err(e)) => {
                warn!(user = %user, error = %e, "ignored a malformed snapshot node");
                return;
            }
            None => {
                warn!(user = %user, "ignored a snapshot SET without DATA");
                return;
            }
        };
        if !upload.pending.remove(&node.uuid) {
            warn!(user = %user, node = %node.uuid, "ignored a snapshot node that was not announced");
            return;
        }
        upload.received += 1;
        let (received, size) = (upload.received, upload.size);
        if received == size || received % 1000 == 0 {
            info!(received, total = size, "session initialisation progress");
        }
        self.record(super::put_node_entry(&node));
        self.graph.put_node(node);
        if self.upload.as_ref().is_some_and(|u| u.pending.is_empty()) {
            self.finish_upload();
        }
    }

    fn finish_upload(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        self.state = ServerState::Active;
        self.record(crate::store::JournalEntry::Initialized);
        self.save_requests.push("initialized".into());
        self.reply_server_snapshot(&upload.uploader, "DONE");
        let others: Vec<PeerId> = self
            .clients
            .keys()
            .filter(|p| **p != upload.uploader)
            .cloned()
            .collect();
        for peer in others {
            self.send_catalog(&peer);
        }
        info!(nodes = self.graph.len(), "session is ACTIVE");
    }
}
