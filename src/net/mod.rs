//! The three ZeroMQ ROUTER sockets, read and written by the server loop.
//!
//! One thread owns them and the session together: a message is decoded,
//! handled and relayed without crossing a thread, which on a two-core
//! machine is worth more than any parallelism (every hand-off between
//! threads costs a wake-up, about as much as relaying the message).

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{debug, warn};

use crate::metrics::{DropReason, NetMetrics, type_slot};
use crate::session::{Channel, PeerId, peer_name};
use crate::wire::{self, Command, CommandKind, Update};

mod frames;
use frames::Frame;

/// Messages read from one socket before the loop looks at the others, so a
/// flood on one port cannot starve the rest.
pub const RECV_BATCH: usize = 256;
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
}

/// A message that passed the checks at the edge, decoded once.
#[derive(Debug)]
pub enum Received {
    Command {
        peer: PeerId,
        command: Command,
    },
    Update {
        peer: PeerId,
        update: Box<Update>,
        /// The frames as received, relayed byte for byte.
        frames: Arc<Vec<Bytes>>,
        /// When it was read, before decoding, for the relay latency.
        received_at: Instant,
    },
    Heartbeat {
        peer: PeerId,
        frame: Bytes,
    },
}

/// What one read gave.
#[derive(Debug)]
pub enum Recv {
    /// Nothing waits on that socket.
    Nothing,
    /// A message was dropped (and counted, and logged within limits).
    Skipped,
    Message(Received),
}

/// Which sockets have something to read, and whether the control pipe does.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    pub sockets: [bool; 3],
    pub control: bool,
}

pub struct NetConfig {
    pub bind_address: String,
    pub port: u16,
    pub max_message_size: i64,
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

/// The three sockets and what the server remembers about sending.
pub struct Net {
    sockets: [zmq::Socket; 3],
    metrics: Arc<NetMetrics>,
    /// Peers whose queue was full, per port, logged once until they catch up.
    stalled: [HashSet<PeerId>; 3],
    /// Separate budgets, so a flood from strangers cannot hide the
    /// problems of logged-in users.
    stranger_log: RateLimitedLog,
    client_log: RateLimitedLog,
    /// The frames last sent and their libzmq messages, so a broadcast
    /// (the same `Arc` to each recipient in turn) wraps its buffers once.
    shared: Option<(Arc<Vec<Bytes>>, Vec<Frame>)>,
    _context: zmq::Context,
}

impl Net {
    /// Binds the three ports.
    pub fn bind(cfg: &NetConfig, metrics: Arc<NetMetrics>) -> Result<Net, NetError> {
        let ctx = zmq::Context::new();
        let command = router(&ctx, cfg, "command", cfg.port)?;
        let data = router(&ctx, cfg, "data", cfg.port + 1)?;
        let heartbeat = router(&ctx, cfg, "heartbeat", cfg.port + 2)?;
        Ok(Net {
            sockets: [command, data, heartbeat],
            metrics,
            stalled: Default::default(),
            stranger_log: RateLimitedLog::default(),
            client_log: RateLimitedLog::default(),
            shared: None,
            _context: ctx,
        })
    }

    /// Waits until a socket or the control pipe is readable, or the timeout.
    pub fn poll(&self, control: RawFd, timeout_ms: i64) -> Result<Ready, zmq::Error> {
        let mut items = [
            self.sockets[0].as_poll_item(zmq::POLLIN),
            self.sockets[1].as_poll_item(zmq::POLLIN),
            self.sockets[2].as_poll_item(zmq::POLLIN),
            zmq::PollItem::from_fd(control, zmq::POLLIN),
        ];
        zmq::poll(&mut items, timeout_ms)?;
        Ok(Ready {
            sockets: [items[0].is_readable(), items[1].is_readable(), items[2].is_readable()],
            control: items[3].is_readable(),
        })
    }

    /// Reads one message from `channel` and checks it: strangers (peers
    /// `is_client` does not know) may only ask for info and log in.
    pub fn recv(&mut self, channel: Channel, is_client: impl Fn(&PeerId) -> bool) -> Recv {
        let parts = match recv_frames(&self.sockets[channel.index()]) {
            Ok(parts) => parts,
            Err(zmq::Error::EAGAIN) => return Recv::Nothing,
            Err(e) => {
                warn!(port = channel.name(), error = %e, "receive failed");
                return Recv::Nothing;
            }
        };
        let received_at = Instant::now();
        let mut parts = parts.into_iter();
        let Some(peer) = parts.next() else {
            return Recv::Skipped;
        };
        let frames: Vec<Bytes> = parts.collect();
        if frames.is_empty() {
            return self.skip(channel, &peer, false, DropReason::Malformed, "empty message");
        }
        self.metrics.received(
            channel,
            type_slot(channel, &frames[0]),
            frames.iter().map(Bytes::len).sum(),
        );
        let client = is_client(&peer);
        match channel {
            Channel::Heartbeat => match <[Bytes; 1]>::try_from(frames) {
                Ok([frame]) => Recv::Message(Received::Heartbeat { peer, frame }),
                Err(frames) => {
                    let reason = format!("heartbeat of {} frames (one expected)", frames.len());
                    self.skip(channel, &peer, client, DropReason::Malformed, &reason)
                }
            },
            Channel::Command => {
                if !client {
                    let allowed = matches!(
                        wire::read_type(&frames[0]).ok().and_then(CommandKind::from_type_num),
                        Some(CommandKind::Auth | CommandKind::RequestServerInfo)
                    );
                    if !allowed {
                        return self.skip(
                            channel,
                            &peer,
                            client,
                            DropReason::Unauthenticated,
                            "not logged in: only Auth and RequestServerInfo are accepted",
                        );
                    }
                }
                match Command::decode(&frames) {
                    Ok(command) => Recv::Message(Received::Command { peer, command }),
                    Err(e) => {
                        let reason = format!("malformed command: {e}");
                        self.skip(channel, &peer, client, DropReason::Malformed, &reason)
                    }
                }
            }
            Channel::Data => {
                if !client {
                    return self.skip(
                        channel,
                        &peer,
                        client,
                        DropReason::Unauthenticated,
                        "not logged in: data is only accepted from logged-in users",
                    );
                }
                match Update::decode(&frames) {
                    Ok(update) => Recv::Message(Received::Update {
                        peer,
                        update: Box::new(update),
                        frames: Arc::new(frames),
                        received_at,
                    }),
                    Err(e) => {
                        let reason = format!("malformed update: {e}");
                        self.skip(channel, &peer, client, DropReason::Malformed, &reason)
                    }
                }
            }
        }
    }

    fn skip(&mut self, channel: Channel, peer: &[u8], client: bool, why: DropReason, reason: &str) -> Recv {
        self.metrics.dropped(channel, why);
        let log = if client {
            &mut self.client_log
        } else {
            &mut self.stranger_log
        };
        if log.allow() {
            warn!(port = channel.name(), peer = %peer_name(peer), reason, "dropped a message");
        }
        Recv::Skipped
    }

    /// Sends without waiting: a peer whose queue is full loses the message
    /// (logged once until it catches up), as libzmq's high-water mark wants.
    pub fn send(&mut self, channel: Channel, to: &PeerId, frames: &Arc<Vec<Bytes>>) {
        let i = channel.index();
        let result = self.enqueue(i, to, frames);
        match result {
            Ok(()) => {
                let slot = frames.first().map(|f| type_slot(channel, f)).unwrap_or(0);
                self.metrics.sent(channel, slot, frames.iter().map(Bytes::len).sum());
                if !self.stalled[i].is_empty() {
                    self.stalled[i].remove(to);
                }
            }
            Err(zmq::Error::EAGAIN) => {
                self.metrics.dropped(channel, DropReason::QueueFull);
                if self.stalled[i].insert(to.clone()) {
                    warn!(
                        port = channel.name(),
                        peer = %peer_name(to),
                        "a client is not reading: its queue is full, messages to it are dropped until it catches up"
                    );
                }
            }
            Err(zmq::Error::EHOSTUNREACH) => {
                debug!(port = channel.name(), peer = %peer_name(to), "message for a peer that is not connected, dropped");
            }
            Err(e) => warn!(port = channel.name(), peer = %peer_name(to), error = %e, "send failed"),
        }
    }

    /// Queues `frames` for `to` on socket `i`, sharing their buffers with
    /// the previous send's when it was the same message.
    fn enqueue(&mut self, i: usize, to: &PeerId, frames: &Arc<Vec<Bytes>>) -> Result<(), zmq::Error> {
        if !matches!(&self.shared, Some((last, _)) if Arc::ptr_eq(last, frames)) {
            self.shared = None;
            let wrapped = frames.iter().map(Frame::share).collect::<Result<Vec<_>, _>>()?;
            self.shared = Some((frames.clone(), wrapped));
        }
        let Some((_, shared)) = &mut self.shared else {
            return Ok(());
        };
        let socket = &mut self.sockets[i];
        let flags = zmq::DONTWAIT | if shared.is_empty() { 0 } else { zmq::SNDMORE };
        Frame::share(to)?.send(socket, flags)?;
        // ROUTER queues a message whole once its first frame is accepted,
        // so only the identity frame can fail with EAGAIN.
        let last = shared.len().saturating_sub(1);
        for (n, frame) in shared.iter_mut().enumerate() {
            let more = if n < last { zmq::SNDMORE } else { 0 };
            frame.copy()?.send(socket, more | zmq::DONTWAIT)?;
        }
        Ok(())
    }

    /// Lets go of the buffers kept for the last broadcast, so a large
    /// update is freed once its recipients' queues have sent it.
    pub fn release_shared(&mut self) {
        self.shared = None;
    }

    /// The peer left: forget its state.
    pub fn forget(&mut self, peer: &PeerId) {
        for s in &mut self.stalled {
            s.remove(peer);
        }
    }
}

/// Reads one multipart message, keeping libzmq's buffers (no copy out).
fn recv_frames(socket: &zmq::Socket) -> Result<Vec<Bytes>, zmq::Error> {
    let mut parts = Vec::with_capacity(4);
    loop {
        let mut msg = zmq::Message::new();
        socket.recv(&mut msg, zmq::DONTWAIT)?;
        let more = msg.get_more();
        parts.push(frames::into_bytes(msg));
        if !more {
            return Ok(parts);
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
