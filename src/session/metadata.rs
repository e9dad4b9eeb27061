//! UpdateUserMetadata: presence, tasks and chat of each user.

use std::sync::Arc;

use tracing::{debug, warn};

use super::{Channel, PeerId, SessionState};
use crate::pickle::Value;
use crate::wire::{Command, CommandKind};

/// Most metadata keys one user may hold; the add-on uses eight.
pub const MAX_METADATA_KEYS: usize = 64;

impl SessionState {
    pub(super) fn handle_metadata(&mut self, peer: &PeerId, cmd: Command) {
        let Some(client) = self.clients.get_mut(peer) else {
            return;
        };
        let Value::Dict(update) = cmd.data else {
            warn!(user = %client.username, got = cmd.data.type_name(), "ignored metadata that is not a dict");
            return;
        };
        let mut durable = Vec::new();
        for (key, value) in update {
            if let Some(k) = key.as_str()
                && self.config.retained_keys.iter().any(|r| r == k)
            {
                durable.push((k.to_string(), value.clone()));
            }
            let len = client.metadata.len();
            match client.metadata.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None if len < MAX_METADATA_KEYS => client.metadata.push((key, value)),
                None => {
                    warn!(user = %client.username, "ignored a metadata key beyond the limit of {MAX_METADATA_KEYS}");
                }
            }
        }
        debug!(user = %client.username, "metadata update relayed");
        let user = client.username.clone();
        for (key, value) in durable {
            let raw = serde_bytes::ByteBuf::from(crate::pickle::encode(&value));
            let seq = self.retained.set(&user, &key, value);
            self.record(crate::store::JournalEntry::Retain {
                user: user.clone(),
                key,
                value: raw,
                seq,
            });
        }
        let Some(client) = self.clients.get(peer) else { return };
        // Clients find the sender by the owner field, so it must be the
        // authenticated name whatever the sender wrote there.
        let username = client.username.clone();
        let frames = Arc::new(Command::frames_raw(
            CommandKind::UpdateUserMetadata,
            &username,
            cmd.raw_data,
        ));
        self.broadcast(Channel::Command, frames, Some(peer));
    }
}
