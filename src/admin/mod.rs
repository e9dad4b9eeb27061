//! Administration of a running server: what an admin can ask the session
//! task, the HTTP endpoint that exposes it, the command-line client of that
//! endpoint and the interactive shell.

pub mod client;
pub mod http;
pub mod shell;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::metrics::Gauges;
use crate::store::writer::SessionView;

/// A question for the server loop; the answer comes back on the sender.
#[derive(Debug)]
pub enum AdminRequest {
    Status(oneshot::Sender<Status>),
    Kick {
        user: String,
        reply: oneshot::Sender<bool>,
    },
    /// Answered once the snapshot is on disk, or the save failed.
    Save(oneshot::Sender<Result<SaveReport, String>>),
    Export(oneshot::Sender<SessionView>),
    /// The shell's `exit`: stop the server as a signal would.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub admin: bool,
    /// Heartbeat round trip; 999 until measured, as the clients show it.
    pub latency_ms: i64,
    pub status: String,
}

/// The session as the server loop sees it at one moment.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: &'static str,
    pub users: Vec<UserInfo>,
    pub gauges: Gauges,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaveReport {
    pub reason: String,
    pub nodes: usize,
    pub bytes: u64,
    pub duration_ms: u64,
    pub saved_at: String,
    pub snapshot: String,
    pub backup: String,
}

/// The body of `GET /health` (and `replication-server status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub state: String,
    pub users_online: usize,
    pub nodes: usize,
    pub last_save: Option<String>,
    pub last_save_age_s: Option<f64>,
    pub last_save_error: Option<String>,
    pub journal_failing: bool,
    pub sockets_up: bool,
    pub version: String,
}

impl Health {
    pub fn of(status: &Status, sockets_up: bool, now: f64) -> Health {
        let save = &status.gauges.save;
        Health {
            healthy: sockets_up && save.last_error.is_none() && !save.journal_failing,
            state: status.state.to_string(),
            users_online: status.users.len(),
            nodes: status.gauges.nodes,
            last_save: save.last_success_at.map(crate::store::format_iso_utc),
            last_save_age_s: save.last_success_at.map(|t| ((now - t).max(0.0) * 10.0).round() / 10.0),
            last_save_error: save.last_error.clone(),
            journal_failing: save.journal_failing,
            sockets_up,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Two-column text for people: used by the CLI and the shell alike.
pub fn users_table(users: &[UserInfo]) -> String {
    if users.is_empty() {
        return "no users online".to_string();
    }
    let width = users.iter().map(|u| u.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<5}  {:>10}  STATUS\n", "USER", "ADMIN", "LATENCY");
    for u in users {
        let latency = if u.latency_ms == crate::session::UNKNOWN_LATENCY {
            "-".to_string()
        } else {
            format!("{} ms", u.latency_ms)
        };
        out.push_str(&format!(
            "{:<width$}  {:<5}  {:>10}  {}\n",
            u.name,
            if u.admin { "yes" } else { "no" },
            latency,
            u.status
        ));
    }
    out.pop();
    out
}

pub fn health_text(h: &Health) -> String {
    let save = match (&h.last_save, h.last_save_age_s) {
        (Some(at), Some(age)) => format!("{at} ({age:.0} s ago)"),
        _ => "none yet".to_string(),
    };
    let mut out = format!(
        "{}: {} session, {} user(s) online, {} node(s), last save {save}",
        if h.healthy { "healthy" } else { "UNHEALTHY" },
        h.state,
        h.users_online,
        h.nodes
    );
    if let Some(e) = &h.last_save_error {
        out.push_str(&format!("\nlast save failed: {e}"));
    }
    if h.journal_failing {
        out.push_str("\nthe journal cannot be written");
    }
    if !h.sockets_up {
        out.push_str("\nthe ZeroMQ sockets failed");
    }
    out
}

pub fn save_text(r: &SaveReport) -> String {
    format!(
        "saved {} node(s), {} bytes, in {} ms at {} to {} (backup {})",
        r.nodes, r.bytes, r.duration_ms, r.saved_at, r.snapshot, r.backup
    )
}
