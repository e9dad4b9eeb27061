//! Liveness and latency of clients, measured on the heartbeat port the way
//! the Python server measures them, so the latencies users see match.

use std::collections::{HashMap, HashSet};

use crate::session::PeerId;

/// How often latencies are computed and clients checked for timeout.
pub const CHECK_INTERVAL_MS: u64 = 1_000;
/// A client silent for this long (both ways) is pinged.
pub const PING_INTERVAL_MS: u64 = 1_000;
/// Most identities watched before they log in. A client starts its
/// heartbeat right after sending Auth, so some must be watched early; the
/// bound stops a flood of INITs from growing the table.
pub const MAX_UNAUTHENTICATED_WATCHES: usize = 1_024;
/// How long an identity that never logs in is watched.
pub const UNAUTHENTICATED_GRACE_MS: u64 = 30_000;

pub const INIT: &[u8] = b"INIT";
pub const PING: &[u8] = b"PING";

#[derive(Debug, Clone)]
struct Watch {
    last_received: u64,
    last_sent: u64,
    latency: u64,
    since: u64,
}

#[derive(Debug, Default, PartialEq)]
pub struct Tick {
    /// Latency of every authenticated watched client.
    pub latencies: Vec<(PeerId, i64)>,
    /// Clients whose latency went over the timeout; no longer watched.
    pub lost: Vec<PeerId>,
}

#[derive(Debug)]
pub struct HeartbeatMonitor {
    timeout_ms: u64,
    watches: HashMap<PeerId, Watch>,
    authenticated: HashSet<PeerId>,
    last_check: u64,
}

impl HeartbeatMonitor {
    pub fn new(timeout_ms: u64, now: u64) -> Self {
        HeartbeatMonitor {
            timeout_ms,
            watches: HashMap::new(),
            authenticated: HashSet::new(),
            last_check: now,
        }
    }

    /// A frame from a peer. Returns true when a PING must be sent back.
    pub fn on_frame(&mut self, peer: &PeerId, frame: &[u8], now: u64) -> bool {
        if frame == INIT {
            let unauthenticated = self.watches.len().saturating_sub(self.authenticated.len());
            if !self.authenticated.contains(peer)
                && !self.watches.contains_key(peer)
                && unauthenticated >= MAX_UNAUTHENTICATED_WATCHES
            {
                return false;
            }
            self.watches.insert(
                peer.clone(),
                Watch {
                    last_received: now,
                    last_sent: now,
                    latency: 0,
                    since: now,
                },
            );
            return true;
        }
        if let Some(w) = self.watches.get_mut(peer) {
            w.last_received = now;
        }
        false
    }

    /// The peer logged in. It is watched from now on even if its INIT has
    /// not come yet, so a client whose heartbeat never starts is still
    /// dropped after the timeout.
    pub fn admit(&mut self, peer: &PeerId, now: u64) {
        self.authenticated.insert(peer.clone());
        self.watches.entry(peer.clone()).or_insert(Watch {
            last_received: now,
            last_sent: now,
            latency: 0,
            since: now,
        });
    }

    /// The peer left or was kicked: stop watching it.
    pub fn evict(&mut self, peer: &PeerId) {
        self.authenticated.remove(peer);
        self.watches.remove(peer);
    }

    pub fn is_watched(&self, peer: &PeerId) -> bool {
        self.watches.contains_key(peer)
    }

    /// Peers to ping now; marks them pinged.
    pub fn due_pings(&mut self, now: u64) -> Vec<PeerId> {
        let mut due = Vec::new();
        for (peer, w) in self.watches.iter_mut() {
            if now.saturating_sub(w.last_received) > PING_INTERVAL_MS
                && now.saturating_sub(w.last_sent) > PING_INTERVAL_MS
            {
                w.last_sent = now;
                due.push(peer.clone());
            }
        }
        due
    }

    /// Runs the once-a-second check when it is due.
    pub fn tick(&mut self, now: u64) -> Option<Tick> {
        if now.saturating_sub(self.last_check) <= CHECK_INTERVAL_MS {
            return None;
        }
        self.last_check = now;
        let mut tick = Tick::default();
        let timeout = self.timeout_ms;
        let authenticated = &self.authenticated;
        self.watches.retain(|peer, w| {
            w.latency = w.last_received.abs_diff(w.last_sent);
            let known = authenticated.contains(peer);
            if w.latency > timeout {
                if known {
                    tick.lost.push(peer.clone());
                }
                return false;
            }
            if !known {
                return now.saturating_sub(w.since) <= UNAUTHENTICATED_GRACE_MS;
            }
            tick.latencies.push((peer.clone(), w.latency as i64));
            true
        });
        for peer in &tick.lost {
            self.authenticated.remove(peer);
        }
        Some(tick)
    }

    /// Milliseconds until the next thing to do, for the poll timeout.
    pub fn next_deadline(&self, now: u64) -> u64 {
        let check = (self.last_check + CHECK_INTERVAL_MS + 1).saturating_sub(now);
        check.clamp(1, PING_INTERVAL_MS / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from(vec![n; 16])
    }

    #[test]
    fn init_is_answered_with_ping() {
        let mut m = HeartbeatMonitor::new(5_000, 0);
        assert!(m.on_frame(&peer(1), INIT, 0));
        assert!(!m.on_frame(&peer(1), b"PONG", 10));
        assert!(!m.on_frame(&peer(2), b"PONG", 10), "unknown peers are not answered");
        assert!(!m.is_watched(&peer(2)));
    }

    #[test]
    fn silent_client_is_pinged_then_lost_after_timeout() {
        let mut m = HeartbeatMonitor::new(3_000, 0);
        let p = peer(1);
        m.on_frame(&p, INIT, 0);
        m.admit(&p, 0);
        m.on_frame(&p, b"PONG", 5);
        let mut lost_at = None;
        let mut now = 0;
        while now < 10_000 && lost_at.is_none() {
            now += 50;
            m.due_pings(now);
            if let Some(t) = m.tick(now)
                && t.lost.contains(&p)
            {
                lost_at = Some(now);
            }
        }
        let lost_at = lost_at.expect("client declared lost");
        assert!((3_000..=5_100).contains(&lost_at), "lost at {lost_at}");
        assert!(!m.is_watched(&p));
    }

    #[test]
    fn answering_client_stays_and_reports_latency() {
        let mut m = HeartbeatMonitor::new(3_000, 0);
        let p = peer(1);
        m.on_frame(&p, INIT, 0);
        m.admit(&p, 0);
        let mut latencies = Vec::new();
        let mut now = 0;
        while now < 20_000 {
            now += 10;
            for q in m.due_pings(now) {
                assert_eq!(q, p);
                m.on_frame(&p, b"PONG", now + 20);
            }
            if let Some(t) = m.tick(now) {
                assert!(t.lost.is_empty());
                latencies.extend(t.latencies);
            }
        }
        assert!(latencies.iter().all(|(_, l)| *l <= 20), "{latencies:?}");
        assert!(latencies.len() >= 15);
    }

    #[test]
    fn client_without_heartbeat_is_lost() {
        let mut m = HeartbeatMonitor::new(3_000, 0);
        let p = peer(7);
        m.admit(&p, 0);
        let mut now = 0;
        let mut lost = false;
        while now < 8_000 && !lost {
            now += 100;
            m.due_pings(now);
            lost = m.tick(now).is_some_and(|t| t.lost.contains(&p));
        }
        assert!(lost, "a client that never sent INIT must time out");
    }

    #[test]
    fn unauthenticated_watch_expires_and_is_bounded() {
        let mut m = HeartbeatMonitor::new(100_000, 0);
        for i in 0..(MAX_UNAUTHENTICATED_WATCHES + 10) {
            let id = PeerId::from((i as u64).to_le_bytes().to_vec());
            m.on_frame(&id, INIT, 0);
        }
        assert_eq!(m.watches.len(), MAX_UNAUTHENTICATED_WATCHES);
        let mut now = 0;
        while now <= UNAUTHENTICATED_GRACE_MS + 2 * CHECK_INTERVAL_MS {
            now += 100;
            for q in m.due_pings(now) {
                m.on_frame(&q, b"PONG", now);
            }
            m.tick(now);
        }
        assert!(m.watches.is_empty());
    }
}
