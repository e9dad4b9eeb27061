//! Delete, Right and Kick: operations on the graph and on other users.

use std::sync::Arc;

use tracing::{info, warn};

use super::{Channel, PeerId, SessionState};
use crate::pickle::Value;
use crate::wire::{Command, CommandKind};

impl SessionState {
    pub(super) fn handle_delete(&mut self, peer: &PeerId, cmd: Command) {
        let Some(uuid) = cmd.data.as_str() else {
            warn!(user = %self.username(peer), got = cmd.data.type_name(), "ignored a Delete whose data is not a uuid");
            return;
        };
        if self.graph.delete(uuid) {
            self.record(crate::store::JournalEntry::Delete { uuid: uuid.to_string() });
            info!(user = %self.username(peer), node = uuid, "node deleted");
        }
        let frames = Arc::new(Command::frames_raw(
            CommandKind::Delete,
            &cmd.owner,
            cmd.raw_data.clone(),
        ));
        self.broadcast(Channel::Command, frames, None);
    }

    pub(super) fn handle_right(&mut self, peer: &PeerId, cmd: Command) {
        let owner = cmd.data.get("owner").and_then(Value::as_str);
        let uuids: Option<Vec<String>> = match cmd.data.get("uuid") {
            Some(Value::List(items)) | Some(Value::Tuple(items)) => {
                items.iter().map(|v| v.as_str().map(str::to_owned)).collect()
            }
            _ => None,
        };
        let (Some(owner), Some(uuids)) = (owner, uuids) else {
            warn!(user = %self.username(peer), "ignored a malformed Right command");
            return;
        };
        let changed = self.graph.set_owner(&uuids, owner);
        if changed > 0 {
            self.record(crate::store::JournalEntry::Right {
                uuids: uuids.clone(),
                owner: owner.to_string(),
            });
        }
        tracing::debug!(user = %self.username(peer), owner, changed, "rights changed");
        let frames = Arc::new(Command::frames_raw(
            CommandKind::Right,
            &cmd.owner,
            cmd.raw_data.clone(),
        ));
        self.broadcast(Channel::Command, frames, None);
    }

    pub(super) fn handle_kick(&mut self, peer: &PeerId, data: &Value) {
        let requester = self.username(peer);
        if !self.clients.get(peer).is_some_and(|c| c.admin) {
            warn!(user = %requester, "refused a kick from a user who is not an admin");
            return;
        }
        let Some(target) = data.get("user").and_then(Value::as_str).map(str::to_owned) else {
            warn!(user = %requester, "ignored a malformed kick");
            return;
        };
        self.kick(&target, &format!("kicked by {requester}"));
    }

    /// Kicks a user by name. False when nobody of that name is online.
    pub fn kick(&mut self, target: &str, cause: &str) -> bool {
        let Some(victim) = self
            .clients
            .iter()
            .find(|(_, c)| c.username == target)
            .map(|(p, _)| p.clone())
        else {
            warn!(user = target, "cannot kick: user not found");
            return false;
        };
        let data = crate::pickle::dict([("reason", Value::str("kicked by admin"))]);
        self.send_command(&victim, CommandKind::Disconnect, &data);
        warn!(user = target, cause, "user kicked from the session");
        self.stats.kicks += 1;
        self.disconnect(&victim, cause);
        true
    }
}
