//! The three ZeroMQ ROUTER sockets, each owned by a thread of its own.
//!
//! libzmq sockets are blocking and single-threaded, so each port gets a
//! dedicated thread that decodes what arrives (at the edge, once) and hands
//! typed messages to the session task over a bounded channel. The session
//! sends back through an `Outbox`: a queue plus an inproc wake-up socket
//! that the thread polls next to its ROUTER socket.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{debug, error, info, warn};

use crate::heartbeat::{self, HeartbeatMonitor};
use crate::metrics::{DropReason, NetMetrics, type_slot};
use crate::session::{Channel, HeartbeatEvent, PeerId, peer_name};
use crate::wire::{self, Command, CommandKind, Update};

/// Messages read from one socket before the thread looks at its outbox
/// again, so a flood on one side cannot starve replies.
const RECV_BATCH: usize = 256;
/// Capacity of the channel into the session task; when it is full the
/// socket threads wait and libzmq queues (then drops) at its high-water mark.
/// Small on purpose: each entry may hold a whole node, and an admin's
/// upload arrives as a flood of them.
pub const INBOUND_CAPACITY: usize = 1_024;
/// Messages libzmq queues per peer before it drops for that peer; bounds
/// the memory a client that stops reading can cost.
pub const SEND_HIGH_WATER_MARK: i32 = 10_000;
/// Messages libzmq buffers per peer on the way in; beyond it TCP pushes
/// back on the client. Small, because each can be a whole node.
pub const RECV_HIGH_WATER_MARK: i32 = 1_000;
/// Log lines per minute about a given kind of bad input, so a garbage
/// flood cannot fill the disk with logs.
const LOG_LINES_PER_MINUTE: u32 = 20;
/// Seconds of TCP idle before keepalive probes, as the Python server sets.
const TCP_KEEPALIVE_IDLE_S: i32 = 300;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind the {name} port tcp://{addr}:{port}: {source} (is another server running on it?)")]
    Bind {
        name: &'static str,
        addr: String,
        port: u16,
        source: zmq::Error,
    },
    #[error("cannot set up ZeroMQ: {0}")]
    Setup(#[from] zmq::Error),
    #[error("cannot start the {0} socket thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// Bytes of received messages waiting for the session at most: the bound
/// on memory when an admin uploads a session of large nodes (a count of
/// messages alone let a 500 MB upload queue up gigabytes).
pub const MAX_INBOUND_BYTES: usize = 64 * 1024 * 1024;

/// The bytes of received messages the session has not handled yet; socket
/// threads wait while it is over `MAX_INBOUND_BYTES`.
#[derive(Debug, Default)]
pub struct InboundBudget {
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl InboundBudget {
    fn acquire(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        // A message larger than the budget still passes when alone.
        while *used > 0 && *used + n > MAX_INBOUND_BYTES {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
    }

    /// The session handled messages of `n` bytes.
    pub fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// What the socket threads hand to the session task.
#[derive(Debug)]
pub enum Inbound {
    Command {
        peer: PeerId,
        command: Command,
        bytes: usize,
    },
    Update {
        peer: PeerId,
        update: Box<Update>,
        frames: Arc<Vec<Bytes>>,
        bytes: usize,
        /// When the socket thread read it, for the relay latency.
        received_at: Instant,
    },
    Heartbeat(HeartbeatEvent),
}

enum NetCommand {
    Send { to: PeerId, frames: Arc<Vec<Bytes>> },
    Admit(PeerId),
    Evict(PeerId),
    Shutdown,
}

/// The session's side of one socket thread.
pub struct Outbox {
    queue: mpsc::Sender<NetCommand>,
    wake: zmq::Socket,
    pending: Arc<AtomicBool>,
    dirty: bool,
    /// Shared with the thread: set before a Shutdown, so the thread knows
    /// its end is wanted.
    stopping: Arc<AtomicBool>,
}

impl Outbox {
    fn push(&mut self, cmd: NetCommand) {
        // The thread only stops after Shutdown, so a send error means it
        // died; it logged why.
        let _ = self.queue.send(cmd);
        self.dirty = true;
    }

    pub fn send(&mut self, to: PeerId, frames: Arc<Vec<Bytes>>) {
        self.push(NetCommand::Send { to, frames });
    }

    pub fn admit(&mut self, peer: PeerId) {
        self.push(NetCommand::Admit(peer));
    }

    pub fn evict(&mut self, peer: PeerId) {
        self.push(NetCommand::Evict(peer));
    }

    /// Wakes the thread if anything was queued since the last flush.
    pub fn flush(&mut self) {
        if self.dirty && !self.pending.swap(true, Ordering::SeqCst) {
            // A full wake queue means a wake-up is already pending.
            let _ = self.wake.send(&b""[..], zmq::DONTWAIT);
        }
        self.dirty = false;
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.push(NetCommand::Shutdown);
        self.flush();
    }
}

pub struct Network {
    pub command: Outbox,
    pub data: Outbox,
    pub heartbeat: Outbox,
    threads: Vec<JoinHandle<()>>,
    _context: zmq::Context,
}

impl Network {
    pub fn outbox(&mut self, channel: Channel) -> &mut Outbox {
        match channel {
            Channel::Command => &mut self.command,
            Channel::Data => &mut self.data,
            Channel::Heartbeat => &mut self.heartbeat,
        }
    }

    pub fn flush(&mut self) {
        self.command.flush();
        self.data.flush();
        self.heartbeat.flush();
    }

    pub fn admit(&mut self, peer: &PeerId) {
        for o in [&mut self.command, &mut self.data, &mut self.heartbeat] {
            o.admit(peer.clone());
        }
    }

    pub fn evict(&mut self, peer: &PeerId) {
        for o in [&mut self.command, &mut self.data, &mut self.heartbeat] {
            o.evict(peer.clone());
        }
    }

    /// Stops the socket threads and waits for them.
    pub fn shutdown(mut self) {
        self.command.shutdown();
        self.data.shutdown();
        self.heartbeat.shutdown();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub struct NetConfig {
    pub bind_address: String,
    pub port: u16,
    pub max_message_size: i64,
    pub timeout_ms: u64,
}

fn router(ctx: &zmq::Context, cfg: &NetConfig, name: &'static str, port: u16) -> Result<zmq::Socket, NetError> {
    let s = ctx.socket(zmq::ROUTER)?;
    s.set_linger(0)?;
    s.set_maxmsgsize(cfg.max_message_size)?;
    s.set_sndhwm(SEND_HIGH_WATER_MARK)?;
    s.set_rcvhwm(RECV_HIGH_WATER_MARK)?;
    // Report full or unknown peers instead of dropping silently, so the
    // server can log them.
    s.set_router_mandatory(true)?;
    // A client whose connection dropped and came back takes its identity
    // over instead of being refused as a duplicate.
    s.set_router_handover(true)?;
    s.set_tcp_keepalive(1)?;
    s.set_tcp_keepalive_idle(TCP_KEEPALIVE_IDLE_S)?;
    s.set_tcp_keepalive_intvl(TCP_KEEPALIVE_IDLE_S)?;
    let addr = if cfg.bind_address == "0.0.0.0" {
        "*".to_string()
    } else {
        cfg.bind_address.clone()
    };
    s.bind(&format!("tcp://{addr}:{port}"))
        .map_err(|source| NetError::Bind {
            name,
            addr: cfg.bind_address.clone(),
            port,
            source,
        })?;
    Ok(s)
}

/// Binds the three ports and starts their threads.
pub fn start(
    cfg: &NetConfig,
    inbound: tokio_mpsc::Sender<Inbound>,
    budget: Arc<InboundBudget>,
    metrics: Arc<NetMetrics>,
) -> Result<Network, NetError> {
    let ctx = zmq::Context::new();
    let sockets = [
        (Channel::Command, "command", cfg.port),
        (Channel::Data, "data", cfg.port + 1),
        (Channel::Heartbeat, "heartbeat", cfg.port + 2),
    ]
    .map(|(ch, name, port)| router(&ctx, cfg, name, port).map(|s| (ch, name, s)));
    let mut threads = Vec::new();
    let mut outboxes = Vec::new();
    for (i, bound) in sockets.into_iter().enumerate() {
        let (channel, name, socket) = bound?;
        let endpoint = format!("inproc://outbox-{i}");
        let wake_rx = ctx.socket(zmq::PULL)?;
        wake_rx.bind(&endpoint)?;
        let wake_tx = ctx.socket(zmq::PUSH)?;
        wake_tx.set_linger(0)?;
        wake_tx.connect(&endpoint)?;
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            channel,
            name,
            socket,
            wake: wake_rx,
            queue: rx,
            pending: pending.clone(),
            inbound: inbound.clone(),
            budget: budget.clone(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
            admitted: HashSet::new(),
            stalled: HashSet::new(),
            stranger_log: RateLimitedLog::default(),
            client_log: RateLimitedLog::default(),
            timeout_ms: cfg.timeout_ms,
        };
        let handle = std::thread::Builder::new()
            .name(format!("zmq-{name}"))
            .spawn(move || worker.run())
            .map_err(|e| NetError::Thread(name, e))?;
        threads.push(handle);
        outboxes.push(Outbox {
            queue: tx,
            wake: wake_tx,
            pending,
            dirty: false,
            stopping,
        });
    }
    let mut it = outboxes.into_iter();
    let (Some(command), Some(data), Some(heartbeat)) = (it.next(), it.next(), it.next()) else {
        unreachable!("three outboxes were created");
    };
    Ok(Network {
        command,
        data,
        heartbeat,
        threads,
        _context: ctx,
    })
}

/// Allows a few log lines a minute per kind of bad input, then counts.
#[derive(Default)]
struct RateLimitedLog {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(60) => {}
            _ => {
                if self.suppressed > 0 {
                    warn!(
                        suppressed = self.suppressed,
                        "more bad input was dropped in the last minute without a log line"
                    );
                }
                self.window_start = Some(now);
                self.lines = 0;
                self.suppressed = 0;
            }
        }
        if self.lines < LOG_LINES_PER_MINUTE {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Worker {
    channel: Channel,
    name: &'static str,
    socket: zmq::Socket,
    wake: zmq::Socket,
    queue: mpsc::Receiver<NetCommand>,
    pending: Arc<AtomicBool>,
    inbound: tokio_mpsc::Sender<Inbound>,
    budget: Arc<InboundBudget>,
    metrics: Arc<NetMetrics>,
    stopping: Arc<AtomicBool>,
    admitted: HashSet<PeerId>,
    /// Peers whose queue was full, logged once until they catch up.
    stalled: HashSet<PeerId>,
    /// Separate budgets, so a flood from strangers cannot hide the
    /// problems of logged-in users.
    stranger_log: RateLimitedLog,
    client_log: RateLimitedLog,
    timeout_ms: u64,
}

impl Worker {
    fn run(self) {
        let metrics = self.metrics.clone();
        let name = self.name;
        let stopping = self.stopping.clone();
        self.serve();
        // Only a shutdown may stop a socket thread; anything else makes
        // the server unhealthy.
        if !stopping.load(Ordering::SeqCst) {
            error!(
                port = name,
                "socket thread stopped; the server no longer serves this port"
            );
            metrics.thread_down();
        }
    }

    fn serve(mut self) {
        debug!(port = self.name, "socket thread started");
        let mut monitor = HeartbeatMonitor::new(self.timeout_ms, now_ms());
        loop {
            let timeout = match self.channel {
                Channel::Heartbeat => monitor.next_deadline(now_ms()) as i64,
                _ => -1,
            };
            let (socket_ready, wake_ready) = {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    self.wake.as_poll_item(zmq::POLLIN),
                ];
                if let Err(e) = zmq::poll(&mut items, timeout) {
                    error!(port = self.name, error = %e, "poll failed; the socket thread stops");
                    return;
                }
                (items[0].is_readable(), items[1].is_readable())
            };
            if wake_ready {
                while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
            }
            self.pending.store(false, Ordering::SeqCst);
            if !self.drain_queue(&mut monitor) {
                debug!(port = self.name, "socket thread stopped");
                return;
            }
            if socket_ready {
                for _ in 0..RECV_BATCH {
                    match self.socket.recv_multipart(zmq::DONTWAIT) {
                        Ok(parts) => {
                            if !self.on_message(parts, &mut monitor) {
                                return;
                            }
                        }
                        Err(zmq::Error::EAGAIN) => break,
                        Err(e) => {
                            warn!(port = self.name, error = %e, "receive failed");
                            break;
                        }
                    }
                }
            }
            if self.channel == Channel::Heartbeat && !self.heartbeat_timers(&mut monitor) {
                return;
            }
        }
    }

    /// Applies what the session queued. False on shutdown.
    fn drain_queue(&mut self, monitor: &mut HeartbeatMonitor) -> bool {
        while let Ok(cmd) = self.queue.try_recv() {
            match cmd {
                NetCommand::Send { to, frames } => self.send(&to, &frames),
                NetCommand::Admit(peer) => {
                    monitor.admit(&peer, now_ms());
                    self.admitted.insert(peer);
                }
                NetCommand::Evict(peer) => {
                    monitor.evict(&peer);
                    self.stalled.remove(&peer);
                    self.admitted.remove(&peer);
                }
                NetCommand::Shutdown => return false,
            }
        }
        true
    }

    fn send(&mut self, to: &PeerId, frames: &[Bytes]) {
        let mut result = self.socket.send(&to[..], zmq::SNDMORE | zmq::DONTWAIT);
        if result.is_ok() {
            let last = frames.len().saturating_sub(1);
            for (i, f) in frames.iter().enumerate() {
                let flags = if i < last { zmq::SNDMORE } else { 0 };
                result = self.socket.send(&f[..], flags | zmq::DONTWAIT);
                if result.is_err() {
                    break;
                }
            }
        }
        match result {
            Ok(()) => {
                let slot = frames.first().map(|f| type_slot(self.channel, f)).unwrap_or(0);
                self.metrics
                    .sent(self.channel, slot, frames.iter().map(Bytes::len).sum());
                self.stalled.remove(to);
            }
            Err(zmq::Error::EAGAIN) => {
                self.metrics.dropped(self.channel, DropReason::QueueFull);
                if self.stalled.insert(to.clone()) {
                    warn!(
                        port = self.name,
                        peer = %peer_name(to),
                        "a client is not reading: its queue is full, messages to it are dropped until it catches up"
                    );
                }
            }
            Err(zmq::Error::EHOSTUNREACH) => {
                debug!(port = self.name, peer = %peer_name(to), "message for a peer that is not connected, dropped");
            }
            Err(e) => warn!(port = self.name, peer = %peer_name(to), error = %e, "send failed"),
        }
    }

    fn forward(&self, msg: Inbound) -> bool {
        if let Inbound::Command { bytes, .. } | Inbound::Update { bytes, .. } = &msg {
            self.budget.acquire(*bytes);
        }
        // The session task is gone only when the server is stopping.
        self.inbound.blocking_send(msg).is_ok()
    }

    fn drop_bad_input(&mut self, peer: &[u8], why: DropReason, reason: &str) {
        self.metrics.dropped(self.channel, why);
        let log = if self.admitted.contains(peer) {
            &mut self.client_log
        } else {
            &mut self.stranger_log
        };
        if log.allow() {
            warn!(port = self.name, peer = %peer_name(peer), reason, "dropped a message");
        }
    }

    /// Decodes one message. False when the session is gone.
    fn on_message(&mut self, parts: Vec<Vec<u8>>, monitor: &mut HeartbeatMonitor) -> bool {
        let received_at = Instant::now();
        let mut parts = parts.into_iter().map(Bytes::from);
        let Some(peer) = parts.next() else {
            return true;
        };
        let frames: Vec<Bytes> = parts.collect();
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        if frames.is_empty() {
            self.drop_bad_input(&peer, DropReason::Malformed, "empty message");
            return true;
        }
        self.metrics
            .received(self.channel, type_slot(self.channel, &frames[0]), bytes);
        match self.channel {
            Channel::Heartbeat => {
                if frames.len() == 1 && monitor.on_frame(&peer, &frames[0], now_ms()) {
                    self.send(&peer, &[Bytes::from_static(heartbeat::PING)]);
                }
                true
            }
            Channel::Command => {
                if !self.admitted.contains(&peer) {
                    let allowed = matches!(
                        wire::read_type(&frames[0]).ok().and_then(CommandKind::from_type_num),
                        Some(CommandKind::Auth | CommandKind::RequestServerInfo)
                    );
                    if !allowed {
                        self.drop_bad_input(
                            &peer,
                            DropReason::Unauthenticated,
                            "not logged in: only Auth and RequestServerInfo are accepted",
                        );
                        return true;
                    }
                }
                match Command::decode(&frames) {
                    Ok(command) => self.forward(Inbound::Command { peer, command, bytes }),
                    Err(e) => {
                        self.drop_bad_input(&peer, DropReason::Malformed, &format!("malformed command: {e}"));
                        true
                    }
                }
            }
            Channel::Data => {
                if !self.admitted.contains(&peer) {
                    self.drop_bad_input(
                        &peer,
                        DropReason::Unauthenticated,
                        "not logged in: data is only accepted from logged-in users",
                    );
                    return true;
                }
                match Update::decode(&frames) {
                    Ok(update) => self.forward(Inbound::Update {
                        peer,
                        update: Box::new(update),
                        frames: Arc::new(frames),
                        bytes,
                        received_at,
                    }),
                    Err(e) => {
                        self.drop_bad_input(&peer, DropReason::Malformed, &format!("malformed update: {e}"));
                        true
                    }
                }
            }
        }
    }

    fn heartbeat_timers(&mut self, monitor: &mut HeartbeatMonitor) -> bool {
        let now = now_ms();
        for peer in monitor.due_pings(now) {
            self.send(&peer, &[Bytes::from_static(heartbeat::PING)]);
        }
        if let Some(tick) = monitor.tick(now) {
            for peer in tick.lost {
                info!(peer = %peer_name(&peer), "heartbeat lost");
                self.metrics.heartbeat_timeout();
                if !self.forward(Inbound::Heartbeat(HeartbeatEvent::Lost(peer))) {
                    return false;
                }
            }
            if !self.forward(Inbound::Heartbeat(HeartbeatEvent::Latencies(tick.latencies))) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_budget_holds_senders_until_the_session_catches_up() {
        let budget = Arc::new(InboundBudget::default());
        budget.acquire(MAX_INBOUND_BYTES - 10);
        let waiting = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                budget.acquire(100);
                Instant::now()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        budget.release(MAX_INBOUND_BYTES - 10);
        let got_through = waiting.join().unwrap();
        assert!(got_through >= released, "the second message waited for room");
        // A message larger than the whole budget passes when alone.
        budget.release(100);
        budget.acquire(MAX_INBOUND_BYTES * 2);
    }
}
