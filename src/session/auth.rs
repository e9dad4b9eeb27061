//! Auth: logins and their refusals.

use tracing::{info, warn};

use super::{
    Client, MAX_CLIENTS, PROTOCOL_VERSION, PeerId, STATUS_LOBBY, ServerState, SessionState, UNKNOWN_LATENCY, peer_name,
};
use crate::metrics::AuthRefusal;
use crate::pickle::Value;
use crate::wire::{CommandKind, MAX_USERNAME_LEN};

pub const ALREADY_LOGGED_IN: &str = "FAILED: client already logged in";
pub const WRONG_ADMIN_PASSWORD: &str = "FAILED: wrong admin password";
pub const WRONG_SERVER_PASSWORD: &str = "FAILED: wrong server password";
pub const MALFORMED_REQUEST: &str = "FAILED: malformed authentication request";
pub const SERVER_FULL: &str = "FAILED: server full";

/// A password field: a str, or None (which a public server accepts).
fn password(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl SessionState {
    pub(super) fn handle_auth(&mut self, peer: &PeerId, data: &Value) {
        let status = match self.login(peer, data) {
            Ok(answer) => answer,
            Err((why, refusal)) => {
                self.stats.auth_refusals[why as usize] += 1;
                refusal
            }
        };
        // Every registered client learns the new table before the sender
        // hears its answer, as the Python server does.
        self.broadcast_clients_state();
        self.send_command(peer, CommandKind::Auth, &Value::str(&status));
    }

    /// The answer for the client, or why it was refused and the refusal.
    fn login(&mut self, peer: &PeerId, data: &Value) -> Result<String, (AuthRefusal, String)> {
        let username = data
            .get("AUTH_ID")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if data.as_dict().is_none() || username.is_empty() || username.len() > MAX_USERNAME_LEN {
            warn!(peer = %peer_name(peer), "refused login: malformed authentication request");
            return Err((AuthRefusal::Malformed, MALFORMED_REQUEST.to_string()));
        }
        let refuse = |why: AuthRefusal, reason: &str| {
            warn!(user = %username, peer = %peer_name(peer), reason, "refused login");
            Err((why, reason.to_string()))
        };
        if self.clients.contains_key(peer) || self.clients.values().any(|c| c.username == username) {
            return refuse(AuthRefusal::AlreadyLoggedIn, ALREADY_LOGGED_IN);
        }
        let admin = data.get("AUTH_TYPE").and_then(Value::as_str) == Some("ADMIN");
        if admin && password(data, "A_PWD").as_deref() != Some(self.config.admin_password.as_str()) {
            return refuse(AuthRefusal::WrongAdminPassword, WRONG_ADMIN_PASSWORD);
        }
        if !self.config.server_password.is_empty()
            && password(data, "S_PWD").as_deref() != Some(self.config.server_password.as_str())
        {
            return refuse(AuthRefusal::WrongServerPassword, WRONG_SERVER_PASSWORD);
        }
        let version = match data.get("VERSION") {
            Some(Value::Str(v)) => v.to_string(),
            Some(Value::None) | None => "None".to_string(),
            Some(other) => other.type_name().to_string(),
        };
        if version != PROTOCOL_VERSION {
            return refuse(
                AuthRefusal::WrongVersion,
                &format!("FAILED: wrong client version ({version} != {PROTOCOL_VERSION})"),
            );
        }
        if self.clients.len() >= MAX_CLIENTS {
            return refuse(AuthRefusal::ServerFull, SERVER_FULL);
        }
        // Tasks and chat survive the user's absence and the server's restarts.
        let metadata: Vec<(Value, Value)> = self
            .config
            .retained_keys
            .iter()
            .filter_map(|k| self.retained.for_login(&username, k).map(|v| (Value::str(k), v)))
            .collect();
        self.clients.insert(
            peer.clone(),
            Client {
                username: username.clone(),
                admin,
                latency: UNKNOWN_LATENCY,
                status: STATUS_LOBBY,
                metadata,
            },
        );
        self.out.push(super::Outgoing::Admit(peer.clone()));
        let answer = match self.state {
            ServerState::Waiting | ServerState::SrvSync => "LOBBY",
            ServerState::Active => "RUNNING",
        };
        info!(
            user = %username,
            role = if admin { "admin" } else { "client" },
            answer,
            online = self.clients.len(),
            "user logged in"
        );
        Ok(answer.to_string())
    }
}
