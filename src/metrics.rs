//! Counters behind `/metrics`, and their Prometheus text rendering.
//!
//! Traffic is counted in atomics as it passes the sockets, so `/metrics`
//! reads it without a round trip through the server loop; the session's
//! own counters are plain fields, copied out when an admin asks.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::session::Channel;

/// Slots per channel for message types: type numbers are 1..=14, the last
/// slot holds what could not be classified.
pub const TYPE_SLOTS: usize = 16;
const UNKNOWN_SLOT: usize = TYPE_SLOTS - 1;
/// Heartbeat messages are not pickled; they get slots of their own.
const HEARTBEAT_INIT: usize = 1;
const HEARTBEAT_PING: usize = 2;
const HEARTBEAT_OTHER: usize = 3;

/// Upper bounds (seconds) of the relay latency buckets: the relay targets
/// are sub-millisecond, the Python server's are seconds.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// The slot of a message: its pickled type number read without a full
/// decode (the clients' `pickle.dumps(n, protocol=4)` of a small int is
/// always `\x80\x04K<n>.`), or the heartbeat word.
pub fn type_slot(channel: Channel, first_frame: &[u8]) -> usize {
    match channel {
        Channel::Heartbeat => match first_frame {
            crate::heartbeat::INIT => HEARTBEAT_INIT,
            crate::heartbeat::PING => HEARTBEAT_PING,
            _ => HEARTBEAT_OTHER,
        },
        _ => match first_frame {
            [0x80, 0x04, b'K', n, b'.'] if (1..UNKNOWN_SLOT as u8).contains(n) => *n as usize,
            _ => UNKNOWN_SLOT,
        },
    }
}

fn type_label(channel: Channel, slot: usize) -> &'static str {
    match (channel, slot) {
        (Channel::Heartbeat, HEARTBEAT_INIT) => "INIT",
        (Channel::Heartbeat, HEARTBEAT_PING) => "PING",
        (Channel::Heartbeat, _) => "reply",
        (_, 1) => "Commit",
        (_, 2) => "Node",
        (_, n) => crate::wire::CommandKind::from_type_num(n as i64)
            .map(|k| k.name())
            .unwrap_or("unknown"),
    }
}

#[derive(Debug, Default)]
struct Traffic {
    messages: [AtomicU64; TYPE_SLOTS],
    bytes: [AtomicU64; TYPE_SLOTS],
}

/// Why the socket side dropped a message.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    /// From a peer that has not logged in.
    Unauthenticated,
    Malformed,
    /// The recipient's queue was full.
    QueueFull,
}

/// Counted where messages pass the sockets.
#[derive(Debug, Default)]
pub struct NetMetrics {
    received: [Traffic; 3],
    sent: [Traffic; 3],
    dropped: [[AtomicU64; 3]; 3],
    heartbeat_timeouts: AtomicU64,
    /// Set when polling the sockets failed: the server stops serving.
    sockets_failed: AtomicBool,
}

impl NetMetrics {
    pub fn received(&self, channel: Channel, slot: usize, bytes: usize) {
        let t = &self.received[channel.index()];
        t.messages[slot].fetch_add(1, Ordering::Relaxed);
        t.bytes[slot].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, channel: Channel, slot: usize, bytes: usize) {
        let t = &self.sent[channel.index()];
        t.messages[slot].fetch_add(1, Ordering::Relaxed);
        t.bytes[slot].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn dropped(&self, channel: Channel, why: DropReason) {
        self.dropped[why as usize][channel.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn heartbeat_timeout(&self) {
        self.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sockets_failed(&self) {
        self.sockets_failed.store(true, Ordering::Relaxed);
    }

    pub fn sockets_up(&self) -> bool {
        !self.sockets_failed.load(Ordering::Relaxed)
    }
}

/// Why a login was refused, as the refusal message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    Malformed,
    AlreadyLoggedIn,
    WrongAdminPassword,
    WrongServerPassword,
    WrongVersion,
    ServerFull,
}

impl AuthRefusal {
    pub const ALL: [AuthRefusal; 6] = [
        AuthRefusal::Malformed,
        AuthRefusal::AlreadyLoggedIn,
        AuthRefusal::WrongAdminPassword,
        AuthRefusal::WrongServerPassword,
        AuthRefusal::WrongVersion,
        AuthRefusal::ServerFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthRefusal::Malformed => "malformed_request",
            AuthRefusal::AlreadyLoggedIn => "already_logged_in",
            AuthRefusal::WrongAdminPassword => "wrong_admin_password",
            AuthRefusal::WrongServerPassword => "wrong_server_password",
            AuthRefusal::WrongVersion => "wrong_version",
            AuthRefusal::ServerFull => "server_full",
        }
    }
}

/// Why a commit was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitRejection {
    UnknownNode,
    /// The delta does not apply to the stored node, or the node is unreadable.
    BadDelta,
}

impl CommitRejection {
    pub const ALL: [CommitRejection; 2] = [CommitRejection::UnknownNode, CommitRejection::BadDelta];

    pub fn label(self) -> &'static str {
        match self {
            CommitRejection::UnknownNode => "unknown_node",
            CommitRejection::BadDelta => "bad_delta",
        }
    }
}

/// Counted by the session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionStats {
    pub commits_applied: u64,
    pub commits_rejected: [u64; CommitRejection::ALL.len()],
    pub auth_refusals: [u64; AuthRefusal::ALL.len()],
    pub kicks: u64,
}

/// A cumulative latency histogram in the Prometheus sense.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Count per bucket of `LATENCY_BUCKETS_S`, not cumulative; the last
    /// entry counts what is above every bound.
    counts: [u64; LATENCY_BUCKETS_S.len() + 1],
    sum_s: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i] += 1;
        self.sum_s += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What the last saves did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SaveStats {
    pub last_success_at: Option<f64>,
    pub last_duration_s: f64,
    pub last_bytes: u64,
    /// Why the last attempt failed; None when it succeeded.
    pub last_error: Option<String>,
    pub succeeded: u64,
    pub failed: u64,
    pub journal_bytes: u64,
    pub journal_failing: bool,
}

/// Everything `/metrics` shows that the server loop owns.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub users: usize,
    pub nodes: usize,
    pub bytes_held: u64,
    pub active: bool,
    pub session: SessionStats,
    pub relay_latency: Histogram,
    /// Time the server spends answering one Snapshot request (a joining
    /// client's catalog or node GET).
    pub snapshot_requests: Histogram,
    pub save: SaveStats,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP replication_{name} {help}");
        let _ = writeln!(self.0, "# TYPE replication_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "replication_{name}");
        if !labels.is_empty() {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn traffic(out: &mut Out, name: &str, help: &str, traffic: &[Traffic; 3], bytes: bool) {
    out.family(name, "counter", help);
    for channel in Channel::ALL {
        let label = channel.name();
        let t = &traffic[channel.index()];
        let counters = if bytes { &t.bytes } else { &t.messages };
        for (slot, c) in counters.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                out.sample(name, &[("channel", label), ("type", type_label(channel, slot))], v);
            }
        }
    }
}

fn histogram(out: &mut Out, name: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS_S.iter().zip(h.counts) {
        cumulative += n;
        out.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], cumulative);
    }
    out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count());
    out.sample(&format!("{name}_sum"), &[], h.sum_s);
    out.sample(&format!("{name}_count"), &[], h.count());
}

/// The Prometheus text exposition of everything counted.
pub fn render(net: &NetMetrics, g: &Gauges) -> String {
    let mut out = Out(String::new());
    out.single(
        "up",
        "gauge",
        "1 while the ZeroMQ sockets run.",
        u8::from(net.sockets_up()),
    );
    out.single(
        "session_active",
        "gauge",
        "1 once the session is initialised (ACTIVE).",
        u8::from(g.active),
    );
    out.single("users_connected", "gauge", "Users logged in.", g.users);
    out.single("nodes", "gauge", "Nodes in the repository.", g.nodes);
    out.single(
        "bytes_held",
        "gauge",
        "Bytes of node data held in memory.",
        g.bytes_held,
    );
    traffic(
        &mut out,
        "messages_received_total",
        "Messages received, by channel and type.",
        &net.received,
        false,
    );
    traffic(
        &mut out,
        "bytes_received_total",
        "Bytes received, by channel and type.",
        &net.received,
        true,
    );
    traffic(
        &mut out,
        "messages_sent_total",
        "Messages sent, by channel and type.",
        &net.sent,
        false,
    );
    traffic(
        &mut out,
        "bytes_sent_total",
        "Bytes sent, by channel and type.",
        &net.sent,
        true,
    );
    out.family(
        "messages_dropped_total",
        "counter",
        "Messages dropped, by channel and reason.",
    );
    for (reason, name) in [
        (DropReason::Unauthenticated, "unauthenticated"),
        (DropReason::Malformed, "malformed"),
        (DropReason::QueueFull, "queue_full"),
    ] {
        for channel in Channel::ALL {
            let label = channel.name();
            let v = net.dropped[reason as usize][channel.index()].load(Ordering::Relaxed);
            out.sample("messages_dropped_total", &[("channel", label), ("reason", name)], v);
        }
    }
    out.single(
        "heartbeat_timeouts_total",
        "counter",
        "Clients dropped because their heartbeat stopped.",
        net.heartbeat_timeouts.load(Ordering::Relaxed),
    );
    out.single(
        "commits_applied_total",
        "counter",
        "Commits applied to the repository.",
        g.session.commits_applied,
    );
    out.family(
        "commits_rejected_total",
        "counter",
        "Commits not applied nor relayed, by reason.",
    );
    for (r, v) in CommitRejection::ALL.iter().zip(g.session.commits_rejected) {
        out.sample("commits_rejected_total", &[("reason", r.label())], v);
    }
    out.family("auth_refusals_total", "counter", "Refused logins, by reason.");
    for (r, v) in AuthRefusal::ALL.iter().zip(g.session.auth_refusals) {
        out.sample("auth_refusals_total", &[("reason", r.label())], v);
    }
    out.single("kicks_total", "counter", "Users kicked by an admin.", g.session.kicks);
    out.family(
        "relay_latency_seconds",
        "histogram",
        "Time from receiving a Node or Commit to handing it to the sockets of its recipients.",
    );
    histogram(&mut out, "relay_latency_seconds", &g.relay_latency);
    out.family(
        "snapshot_request_seconds",
        "histogram",
        "Time spent answering one Snapshot request (catalog or node GET of a joining client).",
    );
    histogram(&mut out, "snapshot_request_seconds", &g.snapshot_requests);
    out.family("saves_total", "counter", "Snapshot saves, by result.");
    out.sample("saves_total", &[("result", "ok")], g.save.succeeded);
    out.sample("saves_total", &[("result", "failed")], g.save.failed);
    out.single(
        "last_save_ok",
        "gauge",
        "1 when the last save attempt succeeded (or none was needed yet).",
        u8::from(g.save.last_error.is_none()),
    );
    out.single(
        "last_save_timestamp_seconds",
        "gauge",
        "Unix time of the last successful save (0: none yet).",
        g.save.last_success_at.unwrap_or(0.0),
    );
    out.single(
        "snapshot_duration_seconds",
        "gauge",
        "Time the last successful snapshot took to write.",
        g.save.last_duration_s,
    );
    out.single(
        "snapshot_bytes",
        "gauge",
        "Size of the last successful snapshot.",
        g.save.last_bytes,
    );
    out.single(
        "journal_bytes",
        "gauge",
        "Size of the journal since the last snapshot.",
        g.save.journal_bytes,
    );
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_slots_read_the_pickled_type_number() {
        assert_eq!(type_slot(Channel::Data, &crate::wire::type_frame(2)), 2);
        assert_eq!(type_slot(Channel::Command, &crate::wire::type_frame(9)), 9);
        assert_eq!(type_slot(Channel::Command, b"junk"), UNKNOWN_SLOT);
        assert_eq!(type_slot(Channel::Command, &crate::wire::type_frame(99)), UNKNOWN_SLOT);
        assert_eq!(type_label(Channel::Command, 9), "Auth");
        assert_eq!(type_label(Channel::Data, 1), "Commit");
        assert_eq!(
            type_label(Channel::Heartbeat, type_slot(Channel::Heartbeat, b"PONG")),
            "reply"
        );
    }

    #[test]
    fn histogram_is_cumulative_in_the_rendering() {
        let mut g = Gauges::default();
        for s in [0.000_01, 0.000_3, 0.000_3, 10.0] {
            g.relay_latency.observe(s);
        }
        let text = render(&NetMetrics::default(), &g);
        assert!(
            text.contains("replication_relay_latency_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("replication_relay_latency_seconds_bucket{le=\"0.0005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("replication_relay_latency_seconds_bucket{le=\"5\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("replication_relay_latency_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("replication_relay_latency_seconds_count 4\n"), "{text}");
    }

    #[test]
    fn traffic_is_labelled_by_channel_and_type() {
        let net = NetMetrics::default();
        net.received(Channel::Data, 1, 100);
        net.received(Channel::Data, 1, 50);
        net.dropped(Channel::Command, DropReason::Unauthenticated);
        let text = render(&net, &Gauges::default());
        assert!(text.contains("replication_messages_received_total{channel=\"data\",type=\"Commit\"} 2\n"));
        assert!(text.contains("replication_bytes_received_total{channel=\"data\",type=\"Commit\"} 150\n"));
        assert!(
            text.contains("replication_messages_dropped_total{channel=\"command\",reason=\"unauthenticated\"} 1\n")
        );
    }
}
