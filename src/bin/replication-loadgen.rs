//! replication-loadgen: simulated Multi-User clients that speak the real
//! protocol (auth, heartbeat, init, snapshot pull, Node updates, metadata),
//! to measure a server: deliveries per second, latency, loss, memory.
//!
//! One writer and N-1 readers, each a thread with its own three sockets.
//! Timestamps travel inside the node data, so latency is measured end to
//! end, writer to reader, on one clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use replication_server::pickle::{self, Allow, Value, dict};
use replication_server::wire::{self, Command, CommandKind, NodeFrames};

/// Payload of each update, like a small Blender datablock.
const DEFAULT_PAYLOAD: usize = 2_048;
/// Updates per second of the rate-based scenarios.
const DEFAULT_RATE: u64 = 1_000;
/// How long a send may wait for room in a server's queue.
const SEND_TIMEOUT_MS: i32 = 5_000;
/// How long a joining client waits for one node.
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a login may take before the run fails.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The churn's logins: a server that stopped answering (the Python
/// server's relay thread dies in this scenario) must not stall the run.
const CHURN_LOGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long readers keep draining after the writer stops.
const DRAIN: Duration = Duration::from_secs(2);
/// Messages the writer may have queued in libzmq before it waits, so a
/// saturating writer runs at the server's pace instead of filling memory.
const WRITER_HWM: i32 = 1_000;
/// Readers give up draining after this long, whatever still trickles in.
const MAX_DRAIN: Duration = Duration::from_secs(10);
/// The stall probe's sleep. A thread that does nothing but sleep this long
/// should wake again within a millisecond or two: any longer gap is time
/// the whole machine lost (host preemption, the kernel), not the server.
const PROBE_TICK: Duration = Duration::from_millis(1);
/// Gaps of the probe above this count as machine stalls.
const PROBE_STALL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Scenario {
    /// One writer sends Node updates as fast as it can.
    Saturate,
    /// One writer sends Node updates at --rate per second.
    Rate,
    /// One writer sends metadata updates as fast as it can.
    Metadata,
    /// An admin uploads --nodes nodes; a joining client pulls them one at a time.
    Join,
    /// Like rate, with one reader that stops reading.
    SlowReader,
    /// Like rate, while other clients log in and out.
    Churn,
    /// No server: a trivial libzmq fan-out (one ROUTER that forwards every
    /// message to every other peer) in this process, driven like saturate.
    /// The loadgen's own ceiling on this machine.
    Ceiling,
    /// No server: --nodes round trips, one at a time, to a trivial libzmq
    /// echo in this process (request the size of a GET, answer the size of
    /// a node): the fastest a join can be on this machine.
    EchoCeiling,
}

#[derive(Debug, Parser)]
#[command(
    name = "replication-loadgen",
    about = "Load generator for replication 0.9.10 servers"
)]
struct Args {
    #[arg(long, value_enum, default_value = "saturate")]
    scenario: Scenario,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5555)]
    port: u16,
    /// Simulated clients, writer included.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Updates per second for rate-based scenarios (default 1000); with
    /// ceiling, paces the writer instead of saturating.
    #[arg(long)]
    rate: Option<u64>,
    /// Bytes of node data per update.
    #[arg(long, default_value_t = DEFAULT_PAYLOAD)]
    payload: usize,
    /// Nodes for the join scenario.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Nodes the session starts with in the other scenarios (a large
    /// session makes every save long: relay latency while saving).
    #[arg(long, default_value_t = 1)]
    init_nodes: usize,
    /// Bytes of each of those nodes.
    #[arg(long, default_value_t = DEFAULT_PAYLOAD)]
    init_bytes: usize,
    #[arg(long, default_value = "admin")]
    admin_password: String,
    /// Server password; omitted means None, which both servers accept.
    #[arg(long)]
    server_password: Option<String>,
    /// Pid of the server, to report its peak memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Logins and logouts for the churn scenario.
    #[arg(long, default_value_t = 200)]
    churn: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: be the trivial server of a ceiling scenario.
    #[arg(long, value_enum, hide = true)]
    serve_trivial: Option<Trivial>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn send(socket: &zmq::Socket, frames: &[Bytes]) -> Result<(), zmq::Error> {
    let parts: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
    socket.send_multipart(parts, 0)
}

fn recv(socket: &zmq::Socket, flags: i32) -> Option<Vec<Bytes>> {
    socket
        .recv_multipart(flags)
        .ok()
        .map(|parts| parts.into_iter().map(Bytes::from).collect())
}

/// Where and how simulated clients log in.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    server_password: Option<String>,
    admin_password: String,
}

/// One simulated client: three DEALER sockets sharing an identity.
struct SimClient {
    name: String,
    command: zmq::Socket,
    data: zmq::Socket,
    heartbeat: zmq::Socket,
}

impl SimClient {
    fn connect(ctx: &zmq::Context, args: &Target, name: &str) -> Result<SimClient, String> {
        let id: Vec<u8> = (0..16)
            .map(|i| (now_ns() >> (i % 8 * 8)) as u8 ^ (i as u8 * 37) ^ name.len() as u8)
            .collect();
        let mut id = id;
        id[..name.len().min(8)].copy_from_slice(&name.as_bytes()[..name.len().min(8)]);
        let open = |port: u16| -> Result<zmq::Socket, String> {
            let s = ctx.socket(zmq::DEALER).map_err(|e| e.to_string())?;
            s.set_identity(&id).map_err(|e| e.to_string())?;
            s.set_linger(0).map_err(|e| e.to_string())?;
            s.set_rcvhwm(0).map_err(|e| e.to_string())?;
            s.set_sndhwm(WRITER_HWM).map_err(|e| e.to_string())?;
            // A server that stopped reading fails the run instead of hanging it.
            s.set_sndtimeo(SEND_TIMEOUT_MS).map_err(|e| e.to_string())?;
            s.connect(&format!("tcp://{}:{port}", args.host))
                .map_err(|e| e.to_string())?;
            Ok(s)
        };
        let c = SimClient {
            name: name.to_string(),
            command: open(args.port)?,
            data: open(args.port + 1)?,
            heartbeat: open(args.port + 2)?,
        };
        Ok(c)
    }

    fn login(&self, args: &Target, admin: bool) -> Result<String, String> {
        self.login_within(args, admin, LOGIN_TIMEOUT)
    }

    fn login_within(&self, args: &Target, admin: bool, timeout: Duration) -> Result<String, String> {
        let auth = dict([
            ("AUTH_TYPE", Value::str(if admin { "ADMIN" } else { "CLIENT" })),
            ("AUTH_ID", Value::str(&self.name)),
            (
                "S_PWD",
                args.server_password.as_deref().map(Value::str).unwrap_or(Value::None),
            ),
            (
                "A_PWD",
                if admin {
                    Value::str(&args.admin_password)
                } else {
                    Value::None
                },
            ),
            ("VERSION", Value::str("0.9.10")),
        ]);
        send(&self.command, &Command::frames(CommandKind::Auth, &self.name, &auth)).map_err(|e| e.to_string())?;
        send(&self.heartbeat, &[Bytes::from_static(b"INIT")]).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.pong();
            if self.command.poll(zmq::POLLIN, 50).unwrap_or(0) > 0
                && let Some(frames) = recv(&self.command, 0)
                && let Ok(cmd) = Command::decode(&frames)
                && cmd.kind == CommandKind::Auth
            {
                return cmd
                    .data
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "bad auth answer".into());
            }
        }
        Err(format!("{}: no auth answer", self.name))
    }

    /// Answers pings so the server keeps us.
    fn pong(&self) {
        while let Some(_f) = recv(&self.heartbeat, zmq::DONTWAIT) {
            let _ = self.heartbeat.send(&b"PONG"[..], zmq::DONTWAIT);
        }
    }

    /// Drains the command socket (client states, snapshots...).
    fn drain_commands(&self) -> Vec<Command> {
        let mut out = Vec::new();
        while let Some(frames) = recv(&self.command, zmq::DONTWAIT) {
            if let Ok(c) = Command::decode(&frames) {
                out.push(c);
            }
        }
        out
    }

    fn wait_command(&self, kind: CommandKind, timeout: Duration) -> Option<Command> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.pong();
            if self.command.poll(zmq::POLLIN, 20).unwrap_or(0) > 0 {
                for c in self.drain_commands() {
                    if c.kind == kind {
                        return Some(c);
                    }
                }
            }
        }
        None
    }
}

fn node_frames(uuid: &str, seq: u64, payload: &[u8]) -> Vec<Bytes> {
    let data = dict([
        ("ts", Value::bytes(&now_ns().to_le_bytes())),
        ("seq", Value::Int(seq as i64)),
        ("blob", Value::bytes(payload)),
        ("type_id", Value::str("Object")),
    ]);
    NodeFrames {
        uuid: uuid.into(),
        owner: "COMMON".into(),
        dependencies: Some(vec![]),
        raw_dependencies: wire::encode_dependencies(&Some(vec![])),
        raw_data: Bytes::from(pickle::encode(&data)),
    }
    .frames("COMMON")
}

/// Where the writer's pickle puts the timestamp: the dict's first key
/// `ts` (SHORT_BINUNICODE, MEMOIZE) then SHORT_BINBYTES of 8.
const TS_MARKER: &[u8] = b"\x8c\x02ts\x94C\x08";
/// How far into the pickle the marker may start.
const TS_SEARCH: usize = 48;

/// The timestamp inside a relayed node (or metadata) update: found at its
/// known place without decoding the whole pickle (readers must keep up
/// with hundreds of thousands of messages a second), else decoded.
fn timestamp_of(raw: &[u8]) -> Option<u64> {
    let head = &raw[..raw.len().min(TS_SEARCH)];
    if let Some(i) = head.windows(TS_MARKER.len()).position(|w| w == TS_MARKER) {
        let at = i + TS_MARKER.len();
        return Some(u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?));
    }
    let v = pickle::decode(raw, Allow::Data).ok()?;
    let ts = v.get("ts")?.as_bytes()?;
    Some(u64::from_le_bytes(ts.try_into().ok()?))
}

/// Initialises the session with `count` nodes through the admin path.
fn init_session(admin: &SimClient, count: usize, payload: &[u8]) -> Result<Vec<String>, String> {
    let uuids: Vec<String> = (0..count)
        .map(|i| format!("{i:08x}-0000-4000-8000-{:012x}", now_ns() % (1 << 40)))
        .collect();
    let init = dict([
        ("STATE", Value::str("INIT")),
        ("SIZE", Value::Int(count as i64)),
        ("NODES", Value::List(uuids.iter().map(|u| Value::str(u)).collect())),
    ]);
    send(
        &admin.command,
        &Command::frames(CommandKind::ServerSnapshot, "server", &init),
    )
    .map_err(|e| e.to_string())?;
    let answer = admin
        .wait_command(CommandKind::ServerSnapshot, Duration::from_secs(10))
        .ok_or("no init answer")?;
    if answer.data.get("STATE").and_then(Value::as_str) != Some("ACCEPTED") {
        return Err(format!("init refused: {:?}", answer.data));
    }
    for (i, u) in uuids.iter().enumerate() {
        let frames = node_frames(u, i as u64, payload);
        let set = dict([
            ("STATE", Value::str("SET")),
            ("DATA", Value::List(frames.iter().map(|f| Value::bytes(f)).collect())),
        ]);
        send(
            &admin.command,
            &Command::frames(CommandKind::ServerSnapshot, "server", &set),
        )
        .map_err(|e| e.to_string())?;
        if i.is_multiple_of(500) {
            admin.pong();
        }
    }
    admin
        .wait_command(CommandKind::ServerSnapshot, Duration::from_secs(60))
        .ok_or("no DONE after init")?;
    send(
        &admin.command,
        &Command::frames(
            CommandKind::ServerSnapshot,
            "server",
            &dict([("STATE", Value::str("END"))]),
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(uuids)
}

/// What a reader sends the trivial fan-out to be counted in.
const FANOUT_HELLO: &[u8] = b"HELLO";

/// The trivial servers of the ceiling scenarios.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Trivial {
    /// Forwards each message to every peer that said hello, unread.
    Fanout,
    /// Answers each message with --payload bytes.
    Echo,
}

/// Runs a trivial server in this process until it is killed. It prints
/// one line once it listens.
fn serve_trivial(kind: Trivial, host: &str, port: u16, payload: usize) -> Result<(), String> {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).map_err(|e| e.to_string())?;
    router.set_sndhwm(10_000).map_err(|e| e.to_string())?;
    router.set_linger(0).map_err(|e| e.to_string())?;
    router
        .bind(&format!("tcp://{host}:{port}"))
        .map_err(|e| format!("cannot bind the trivial server on {port}: {e}"))?;
    println!("listening");
    let answer = vec![7u8; payload];
    let mut peers: Vec<Vec<u8>> = Vec::new();
    loop {
        if router.poll(zmq::POLLIN, -1).unwrap_or(0) == 0 {
            continue;
        }
        while let Ok(parts) = router.recv_multipart(zmq::DONTWAIT) {
            if kind == Trivial::Echo {
                let _ = router.send(&parts[0][..], zmq::SNDMORE);
                let _ = router.send(&answer[..], 0);
                continue;
            }
            if parts.len() == 2 && parts[1] == FANOUT_HELLO {
                peers.push(parts[0].clone());
                continue;
            }
            for p in peers.iter().filter(|p| **p != parts[0]) {
                let _ = router.send(&p[..], zmq::SNDMORE | zmq::DONTWAIT);
                let last = parts.len() - 1;
                for (i, f) in parts.iter().enumerate().skip(1) {
                    let _ = router.send(&f[..], if i < last { zmq::SNDMORE } else { 0 } | zmq::DONTWAIT);
                }
            }
        }
    }
}

/// A trivial server in a process of its own, as a real server runs;
/// killed when dropped.
struct TrivialServer(std::process::Child);

impl TrivialServer {
    fn start(kind: Trivial, host: &str, port: u16, payload: usize) -> Result<TrivialServer, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let kind = kind
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let mut child = std::process::Command::new(exe)
            .args(["--serve-trivial", &kind, "--host", host, "--port", &port.to_string()])
            .args(["--payload", &payload.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the trivial server: {e}"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "listening" {
            let _ = child.kill();
            return Err("the trivial server did not start".into());
        }
        Ok(TrivialServer(child))
    }
}

impl Drop for TrivialServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct ReaderStats {
    received: u64,
    latency: Option<Histogram<u64>>,
}

/// How often the reader thread answers the server's pings.
const PONG_EVERY: Duration = Duration::from_millis(100);

/// Reads every reader's updates until `stop` and the drain; the stalled
/// reader (if any) keeps its heartbeat but never reads its data, and is
/// left out of the stats.
fn read_all(clients: Vec<SimClient>, metadata: bool, stalled: Option<usize>, stop: &AtomicBool) -> Vec<ReaderStats> {
    let mut stats: Vec<ReaderStats> = clients
        .iter()
        .map(|_| ReaderStats {
            received: 0,
            latency: Histogram::new(3).ok(),
        })
        .collect();
    let mut last_seen = Instant::now();
    let mut last_pong = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if at.elapsed() > MAX_DRAIN || last_seen.elapsed() > DRAIN {
                break;
            }
        }
        if last_pong.elapsed() > PONG_EVERY {
            clients.iter().for_each(SimClient::pong);
            last_pong = Instant::now();
        }
        let watched: Vec<usize> = (0..clients.len()).filter(|i| Some(*i) != stalled).collect();
        let mut items: Vec<zmq::PollItem> = watched
            .iter()
            .map(|&i| {
                let c = &clients[i];
                if metadata { &c.command } else { &c.data }.as_poll_item(zmq::POLLIN)
            })
            .collect();
        if zmq::poll(&mut items, 5).unwrap_or(0) == 0 {
            continue;
        }
        let readable: Vec<usize> = watched
            .iter()
            .zip(&items)
            .filter(|(_, item)| item.is_readable())
            .map(|(i, _)| *i)
            .collect();
        drop(items);
        for i in readable {
            let c = &clients[i];
            let socket = if metadata { &c.command } else { &c.data };
            while let Some(frames) = recv(socket, zmq::DONTWAIT) {
                let raw = if metadata {
                    match Command::decode(&frames) {
                        Ok(c) if c.kind == CommandKind::UpdateUserMetadata => Some(c.raw_data),
                        _ => None,
                    }
                } else {
                    frames.get(4).cloned()
                };
                if let Some(raw) = raw {
                    let s = &mut stats[i];
                    s.received += 1;
                    if let (Some(ts), Some(h)) = (timestamp_of(&raw), s.latency.as_mut()) {
                        let _ = h.record(now_ns().saturating_sub(ts) / 1_000);
                    }
                    last_seen = Instant::now();
                }
            }
        }
    }
    stats
        .into_iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != stalled)
        .map(|(_, s)| s)
        .collect()
}

fn peak_rss_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What the stall probe saw while the load ran.
#[derive(Debug, Default, serde::Serialize)]
struct ProbeStats {
    /// The longest gap between two wake-ups, beyond the tick.
    max_ms: f64,
    /// Gaps longer than PROBE_STALL.
    stalls: u64,
    /// Their total length.
    stalled_ms: f64,
}

/// A thread that only sleeps and measures how late it wakes: run beside
/// a latency measurement, it tells machine stalls from server stalls.
struct StallProbe {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<ProbeStats>,
}

impl StallProbe {
    fn start() -> StallProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut stats = ProbeStats::default();
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(PROBE_TICK);
                let now = Instant::now();
                let late = now.duration_since(last).saturating_sub(PROBE_TICK);
                last = now;
                let ms = late.as_secs_f64() * 1000.0;
                stats.max_ms = stats.max_ms.max(ms);
                if late > PROBE_STALL {
                    stats.stalls += 1;
                    stats.stalled_ms += ms;
                }
            }
            stats
        });
        StallProbe { stop, handle }
    }

    fn finish(self) -> Option<ProbeStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok()
    }
}

#[derive(Debug, serde::Serialize)]
struct Report {
    scenario: String,
    clients: usize,
    seconds: f64,
    sent: u64,
    delivered: u64,
    expected: u64,
    lost: u64,
    deliveries_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    join_s: Option<f64>,
    join_get_p99_us: Option<f64>,
    server_peak_rss_mb: Option<f64>,
    /// Machine stalls during the measured load (relaying scenarios).
    probe: Option<ProbeStats>,
    errors: Vec<String>,
}

/// Round trips to a trivial echo: what a join's request/answer pattern
/// costs with no server work at all.
fn echo_ceiling(ctx: &zmq::Context, args: &Args, report: &mut Report) -> Result<(), String> {
    let _echo = TrivialServer::start(Trivial::Echo, &args.host, args.port, args.payload)?;
    let client = ctx.socket(zmq::DEALER).map_err(|e| e.to_string())?;
    client.set_linger(0).map_err(|e| e.to_string())?;
    client
        .connect(&format!("tcp://{}:{}", args.host, args.port))
        .map_err(|e| e.to_string())?;
    let request = [1u8; 120];
    let mut rtt = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for _ in 0..args.nodes {
        let t = Instant::now();
        client.send(&request[..], 0).map_err(|e| e.to_string())?;
        if client.poll(zmq::POLLIN, 10_000).unwrap_or(0) == 0 {
            return Err("the echo did not answer".into());
        }
        recv(&client, 0).ok_or("the echo's answer was lost")?;
        let _ = rtt.record(t.elapsed().as_micros() as u64);
    }
    report.join_s = Some(started.elapsed().as_secs_f64());
    report.join_get_p99_us = Some(rtt.value_at_quantile(0.99) as f64);
    report.expected = args.nodes as u64;
    report.delivered = args.nodes as u64;
    Ok(())
}

fn run(args: &Args) -> Result<Report, String> {
    let ctx = zmq::Context::new();
    let target = Target {
        host: args.host.clone(),
        port: args.port,
        server_password: args.server_password.clone(),
        admin_password: args.admin_password.clone(),
    };
    let payload: Vec<u8> = (0..args.payload).map(|i| (i * 7) as u8).collect();
    let mut report = Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        clients: args.clients,
        seconds: args.seconds,
        sent: 0,
        delivered: 0,
        expected: 0,
        lost: 0,
        deliveries_per_s: 0.0,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        join_s: None,
        join_get_p99_us: None,
        server_peak_rss_mb: None,
        probe: None,
        errors: Vec::new(),
    };
    if args.scenario == Scenario::EchoCeiling {
        echo_ceiling(&ctx, args, &mut report)?;
        return Ok(report);
    }
    let run_id = now_ns() % 1_000_000;
    let ceiling = args.scenario == Scenario::Ceiling;
    let stop = Arc::new(AtomicBool::new(false));
    // The fan-out runs until the readers have drained (it is dropped last).
    let _fanout = if ceiling {
        Some(TrivialServer::start(
            Trivial::Fanout,
            &args.host,
            args.port + 1,
            args.payload,
        )?)
    } else {
        None
    };
    let admin = SimClient::connect(&ctx, &target, &format!("w{run_id}"))?;
    let uuids = if ceiling {
        // The trivial fan-out has no login and no session.
        vec![format!("{:08x}-0000-4000-8000-000000000000", run_id)]
    } else {
        let answer = admin.login(&target, true)?;
        if answer.starts_with("FAILED") {
            return Err(format!("writer login: {answer}"));
        }
        if answer != "LOBBY" {
            return Err("the server is already initialised: start it with an empty data folder".into());
        }
        let (init_count, init_payload) = if args.scenario == Scenario::Join {
            (args.nodes, payload.clone())
        } else {
            (
                args.init_nodes.max(1),
                (0..args.init_bytes).map(|i| (i * 13) as u8).collect(),
            )
        };
        init_session(&admin, init_count, &init_payload)?
    };
    if args.scenario == Scenario::Join {
        let joiner = SimClient::connect(&ctx, &target, &format!("j{run_id}"))?;
        let started = Instant::now();
        joiner.login(&target, false)?;
        send(
            &joiner.command,
            &Command::frames(
                CommandKind::Snapshot,
                &joiner.name,
                &dict([("STATE", Value::str("REQUEST_INIT"))]),
            ),
        )
        .map_err(|e| e.to_string())?;
        let catalog = joiner
            .wait_command(CommandKind::Snapshot, Duration::from_secs(30))
            .ok_or("no catalog")?;
        let Some(Value::List(ids)) = catalog.data.get("CATALOG") else {
            return Err("bad catalog".into());
        };
        let mut gets = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let mut last_pong = Instant::now();
        for id in ids {
            let t = Instant::now();
            let get = dict([("STATE", Value::str("GET")), ("ID", id.clone())]);
            send(
                &joiner.command,
                &Command::frames(CommandKind::Snapshot, &joiner.name, &get),
            )
            .map_err(|e| e.to_string())?;
            // As a client's loop does: wait on the command socket alone,
            // answer pings now and then.
            let deadline = t + GET_TIMEOUT;
            loop {
                if Instant::now() > deadline {
                    return Err("GET unanswered".into());
                }
                if joiner.command.poll(zmq::POLLIN, 100).unwrap_or(0) > 0
                    && joiner.drain_commands().iter().any(|c| c.kind == CommandKind::Snapshot)
                {
                    break;
                }
                joiner.pong();
            }
            let _ = gets.record(t.elapsed().as_micros() as u64);
            if last_pong.elapsed() > PONG_EVERY {
                joiner.pong();
                last_pong = Instant::now();
            }
        }
        report.join_s = Some(started.elapsed().as_secs_f64());
        report.join_get_p99_us = Some(gets.value_at_quantile(0.99) as f64);
        report.expected = ids.len() as u64;
        report.delivered = ids.len() as u64;
        report.server_peak_rss_mb = peak_rss_kb(args.server_pid).map(|kb| kb as f64 / 1024.0);
        return Ok(report);
    }

    // Readers: logged in here, then read by one thread that polls them
    // all, so a message costs the loadgen one wake-up, not one per reader.
    let readers = args.clients.saturating_sub(1).max(1);
    let metadata = args.scenario == Scenario::Metadata;
    let mut clients = Vec::new();
    for r in 0..readers {
        let client = SimClient::connect(&ctx, &target, &format!("r{r}-{run_id}"))?;
        if ceiling {
            send(&client.data, &[Bytes::from_static(FANOUT_HELLO)]).map_err(|e| e.to_string())?;
        } else {
            let answer = client.login(&target, false)?;
            if answer.starts_with("FAILED") {
                return Err(format!("reader login: {answer}"));
            }
        }
        clients.push(client);
    }
    let poller = {
        let stop = stop.clone();
        let stalled = if args.scenario == Scenario::SlowReader {
            Some(0)
        } else {
            None
        };
        thread::spawn(move || read_all(clients, metadata, stalled, &stop))
    };
    // Churn: other clients log in and out during the stream.
    let churned = Arc::new(AtomicU64::new(0));
    let churn_handle = if args.scenario == Scenario::Churn {
        let (stop, churned) = (stop.clone(), churned.clone());
        let ctx = ctx.clone();
        let n = args.churn;
        let a = target.clone();
        Some(thread::spawn(move || {
            for i in 0..n {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = SimClient::connect(&ctx, &a, &format!("c{i}-{run_id}"))
                    && c.login_within(&a, false, CHURN_LOGIN_TIMEOUT).is_ok()
                {
                    churned.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }))
    } else {
        None
    };
    thread::sleep(Duration::from_millis(200));
    let probe = StallProbe::start();
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.seconds);
    let interval = match (args.scenario, args.rate) {
        (Scenario::Saturate | Scenario::Metadata, _) | (Scenario::Ceiling, None) => None,
        (_, rate) => Some(Duration::from_secs_f64(
            1.0 / rate.unwrap_or(DEFAULT_RATE).max(1) as f64,
        )),
    };
    let uuid = &uuids[0];
    let mut seq = 0u64;
    let mut next = Instant::now();
    while started.elapsed() < duration {
        if let Some(iv) = interval {
            let now = Instant::now();
            if now < next {
                thread::sleep(next - now);
            }
            next += iv;
        }
        let frames = if metadata {
            let md = dict([
                ("ts", Value::bytes(&now_ns().to_le_bytes())),
                ("frame_current", Value::Int(seq as i64)),
            ]);
            send(
                &admin.command,
                &Command::frames(CommandKind::UpdateUserMetadata, &admin.name, &md),
            )
        } else {
            send(&admin.data, &node_frames(uuid, seq, &payload))
        };
        if let Err(e) = frames {
            report.errors.push(format!("send: {e}"));
            break;
        }
        seq += 1;
        if seq.is_multiple_of(256) {
            admin.pong();
            admin.drain_commands();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.sent = seq;
    // Keep the writer alive while readers drain.
    let drain_until = Instant::now() + DRAIN;
    stop.store(true, Ordering::Relaxed);
    while Instant::now() < drain_until {
        admin.pong();
        admin.drain_commands();
        thread::sleep(Duration::from_millis(20));
    }
    let all = poller.join().map_err(|_| "the reader thread panicked")?;
    report.probe = probe.finish();
    if let Some(h) = churn_handle {
        let _ = h.join();
    }
    let mut merged = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for s in all.iter() {
        report.delivered += s.received;
        if let Some(h) = &s.latency {
            let _ = merged.add(h);
        }
    }
    let live_readers = all.len() as u64;
    report.expected = report.sent * live_readers;
    report.lost = report.expected.saturating_sub(report.delivered);
    report.deliveries_per_s = report.delivered as f64 / elapsed;
    if !merged.is_empty() {
        report.p50_ms = Some(merged.value_at_quantile(0.5) as f64 / 1000.0);
        report.p99_ms = Some(merged.value_at_quantile(0.99) as f64 / 1000.0);
        report.max_ms = Some(merged.max() as f64 / 1000.0);
    }
    if args.scenario == Scenario::Churn {
        let n = churned.load(Ordering::Relaxed);
        if (n as usize) < args.churn / 2 {
            report
                .errors
                .push(format!("only {n} of {} churn logins succeeded", args.churn));
        }
    }
    report.server_peak_rss_mb = peak_rss_kb(args.server_pid).map(|kb| kb as f64 / 1024.0);
    Ok(report)
}

fn main() {
    let args = Args::parse();
    if let Some(kind) = args.serve_trivial {
        if let Err(e) = serve_trivial(kind, &args.host, args.port, args.payload) {
            eprintln!("replication-loadgen: {e}");
            std::process::exit(1);
        }
        return;
    }
    match run(&args) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
                println!("scenario            {}", r.scenario);
                println!("clients             {}", r.clients);
                println!("sent                {}", r.sent);
                println!("delivered/expected  {}/{} (lost {})", r.delivered, r.expected, r.lost);
                println!("deliveries/s        {:.0}", r.deliveries_per_s);
                println!(
                    "latency p50/p99/max {} / {} / {} ms",
                    opt(r.p50_ms),
                    opt(r.p99_ms),
                    opt(r.max_ms)
                );
                println!(
                    "join                {} s, GET p99 {} us",
                    opt(r.join_s),
                    opt(r.join_get_p99_us)
                );
                println!("server peak RSS     {} MB", opt(r.server_peak_rss_mb));
                if let Some(p) = &r.probe {
                    println!(
                        "machine stalls      longest {:.1} ms; {} over {} ms, {:.0} ms in all (an idle thread's late wake-ups)",
                        p.max_ms,
                        p.stalls,
                        PROBE_STALL.as_millis(),
                        p.stalled_ms
                    );
                }
                for e in &r.errors {
                    println!("error               {e}");
                }
            }
        }
        Err(e) => {
            eprintln!("replication-loadgen: {e}");
            std::process::exit(1);
        }
    }
}
