//! The server: one loop that owns the sockets and the session, reads what
//! arrives, runs it through the session state, journals what was accepted
//! and sends the replies, all on one thread; saves happen on the writer
//! thread, admin requests arrive over the control channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::admin::{self, AdminRequest, Status, UserInfo};
use crate::config::Config;
use crate::control::{self, Control, ControlReceiver};
use crate::heartbeat::{self, HeartbeatMonitor};
use crate::metrics::{Gauges, Histogram, NetMetrics};
use crate::net::{self, Net, NetConfig, NetError, Received, Recv};
use crate::saver::Saver;
use crate::session::{
    Channel, HeartbeatEvent, Outgoing, STATUS_ACTIVE, ServerState, SessionConfig, SessionState, peer_name,
};
use crate::shutdown;
use crate::store::writer;
use crate::store::{DataDir, JournalWriter, StoreError};
use crate::wire::CommandKind;

/// How long shutdown waits for the final save before giving up.
const FINAL_SAVE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("data folder: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the snapshot writer: {0}")]
    Writer(std::io::Error),
    #[error(transparent)]
    Admin(#[from] admin::http::AdminError),
    #[error("cannot start the server loop: {0}")]
    Loop(std::io::Error),
    #[error("the server loop failed: {0}")]
    Poll(zmq::Error),
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Waiting => "WAITING",
        ServerState::SrvSync => "SYNCING",
        ServerState::Active => "ACTIVE",
    }
}

/// The loop's state: everything the one server thread owns.
struct Core {
    session: SessionState,
    saver: Saver,
    net: Net,
    control: ControlReceiver,
    monitor: HeartbeatMonitor,
    metrics: Arc<NetMetrics>,
    relay_latency: Histogram,
    snapshot_requests: Histogram,
    /// When the updates handled since the last flush arrived.
    received: Vec<Instant>,
    save_period: Duration,
    next_autosave: Instant,
    /// The heartbeat frame, built once.
    ping: Arc<Vec<Bytes>>,
}

impl Core {
    /// Runs until a signal or the shell's exit; then saves and returns.
    fn run(mut self, writer_thread: std::thread::JoinHandle<DataDir>) -> Result<(), ServerError> {
        let result = self.serve();
        // Whatever stopped the loop, the session is saved.
        self.flush();
        drop(self.net);
        self.saver.request(&mut self.session, "shutdown", false);
        let deadline = Instant::now() + FINAL_SAVE_TIMEOUT;
        while self.saver.busy() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.control.recv_timeout(left) {
                Some(Control::Saved(outcome)) => self.saver.finished(&mut self.session, outcome),
                Some(_) => {}
                None => {
                    error!("the final save did not finish in time; the journal still holds every change");
                    break;
                }
            }
        }
        drop(self.saver);
        let _ = writer_thread.join();
        info!("server stopped");
        result
    }

    fn serve(&mut self) -> Result<(), ServerError> {
        loop {
            let ready = match self.net.poll(self.control.fd(), self.timeout_ms()) {
                Ok(r) => r,
                Err(e) => {
                    error!("polling the sockets failed: {e}; stopping");
                    self.metrics.sockets_failed();
                    return Err(ServerError::Poll(e));
                }
            };
            if ready.control {
                for message in self.control.drain() {
                    if let Some(cause) = self.on_control(message) {
                        info!(
                            cause,
                            users = self.session.client_count(),
                            nodes = self.session.graph().len(),
                            "shutting down"
                        );
                        return Ok(());
                    }
                }
            }
            for channel in Channel::ALL {
                if ready.sockets[channel.index()] {
                    self.read(channel);
                    self.flush();
                }
            }
            self.timers();
            self.flush();
        }
    }

    /// Milliseconds the poll may sleep: until the next heartbeat check or
    /// autosave.
    fn timeout_ms(&self) -> i64 {
        let heartbeat = self.monitor.next_deadline(net::now_ms());
        let autosave = self.next_autosave.saturating_duration_since(Instant::now()).as_millis() as u64;
        heartbeat.min(autosave.max(1)) as i64
    }

    /// Handles what waits on one socket, a batch at most.
    fn read(&mut self, channel: Channel) {
        for _ in 0..net::RECV_BATCH {
            let session = &self.session;
            match self.net.recv(channel, |peer| session.is_client(peer)) {
                Recv::Nothing => break,
                Recv::Skipped => {}
                Recv::Message(Received::Command { peer, command }) => {
                    let (kind, started) = (command.kind, Instant::now());
                    self.session.handle_command(peer, command);
                    if kind == CommandKind::Snapshot {
                        self.snapshot_requests.observe(started.elapsed().as_secs_f64());
                    }
                }
                Recv::Message(Received::Update {
                    peer,
                    update,
                    frames,
                    received_at,
                }) => {
                    self.session.handle_update(peer, *update, frames);
                    self.received.push(received_at);
                }
                Recv::Message(Received::Heartbeat { peer, frame }) => {
                    if self.monitor.on_frame(&peer, &frame, net::now_ms()) {
                        self.net.send(Channel::Heartbeat, &peer, &self.ping);
                    }
                }
            }
        }
    }

    fn timers(&mut self) {
        let now = net::now_ms();
        for peer in self.monitor.due_pings(now) {
            self.net.send(Channel::Heartbeat, &peer, &self.ping);
        }
        if let Some(tick) = self.monitor.tick(now) {
            for peer in tick.lost {
                info!(peer = %peer_name(&peer), "heartbeat lost");
                self.metrics.heartbeat_timeout();
                self.session.handle_heartbeat(HeartbeatEvent::Lost(peer));
            }
            self.session.handle_heartbeat(HeartbeatEvent::Latencies(tick.latencies));
        }
        if Instant::now() >= self.next_autosave {
            self.next_autosave = Instant::now() + self.save_period;
            self.saver.request(&mut self.session, "auto-save", false);
        }
    }

    /// Journals what the handlers accepted, then sends what they queued:
    /// with `JOURNAL_FSYNC=always` a change is on disk before anyone sees it.
    fn flush(&mut self) {
        self.saver.journal(&mut self.session);
        for out in self.session.drain_out() {
            match out {
                Outgoing::Send { channel, to, frames } => self.net.send(channel, &to, &frames),
                Outgoing::Admit(peer) => self.monitor.admit(&peer, net::now_ms()),
                Outgoing::Evict(peer) => {
                    self.monitor.evict(&peer);
                    self.net.forget(&peer);
                }
            }
        }
        self.net.release_shared();
        for at in self.received.drain(..) {
            self.relay_latency.observe(at.elapsed().as_secs_f64());
        }
        for reason in self.session.drain_save_requests() {
            self.saver.request(&mut self.session, &reason, false);
        }
    }

    /// What the admin endpoint and the shell report.
    fn status(&self) -> Status {
        let (session, saver) = (&self.session, &self.saver);
        let users = session
            .clients()
            .map(|(_, c)| UserInfo {
                name: c.username.clone(),
                admin: c.admin,
                latency_ms: c.latency,
                status: if c.status == STATUS_ACTIVE { "active" } else { "lobby" }.to_string(),
            })
            .collect();
        Status {
            state: state_name(session.state()),
            users,
            gauges: Gauges {
                users: session.client_count(),
                nodes: session.graph().len(),
                bytes_held: session.graph().bytes_held(),
                active: session.state() == ServerState::Active,
                session: session.stats.clone(),
                relay_latency: self.relay_latency.clone(),
                snapshot_requests: self.snapshot_requests.clone(),
                save: saver.stats(),
            },
        }
    }

    /// One message from outside; Some(cause) when the server must stop.
    fn on_control(&mut self, message: Control) -> Option<&'static str> {
        match message {
            Control::Signal(name) => return Some(name),
            Control::Saved(outcome) => self.saver.finished(&mut self.session, outcome),
            Control::Admin(AdminRequest::Status(reply)) => {
                let _ = reply.send(self.status());
            }
            Control::Admin(AdminRequest::Kick { user, reply }) => {
                let _ = reply.send(self.session.kick(&user, "kicked by the server admin"));
            }
            Control::Admin(AdminRequest::Save(reply)) => self.saver.request_for(&mut self.session, reply),
            Control::Admin(AdminRequest::Export(reply)) => {
                let _ = reply.send(self.session.view());
            }
            Control::Admin(AdminRequest::Stop) => return Some("exit typed in the shell"),
        }
        None
    }
}

pub async fn run(config: Config) -> Result<(), ServerError> {
    let (control_tx, control_rx) = control::channel().map_err(ServerError::Loop)?;
    {
        let tx = control_tx.clone();
        shutdown::listen(move |name| {
            tx.send(Control::Signal(name));
        })
        .map_err(ServerError::Signals)?;
    }
    let dir = DataDir::open(&config.data_dir)?;
    let mut session = SessionState::new(SessionConfig {
        admin_password: config.admin_password.clone(),
        server_password: config.server_password.clone(),
        retained_keys: config.retained_keys.clone(),
    });
    let recovery = crate::recovery::load(&dir, &mut session, false)?;
    let journal = JournalWriter::open(
        &dir.journal(),
        recovery.journal_generation,
        config.journal_fsync,
        recovery.journal_valid,
    )?;
    let saved = {
        let tx = control_tx.clone();
        move |outcome| {
            tx.send(Control::Saved(outcome));
        }
    };
    let (jobs, writer_thread) =
        writer::start(DataDir::unlocked(&dir.root), config.max_backups, saved).map_err(ServerError::Writer)?;
    let mut saver = Saver::new(journal, jobs, &dir, session.change_count(), config.journal_fsync);

    let metrics = Arc::new(NetMetrics::default());
    let admin_listener = match config.admin_addr {
        Some(addr) => Some(admin::http::bind(addr, config.uses_default_admin_password()).await?),
        None => None,
    };
    let net = Net::bind(
        &NetConfig {
            bind_address: config.bind_address.clone(),
            port: config.port,
            max_message_size: config.max_message_size,
        },
        metrics.clone(),
    )?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        protocol = crate::session::PROTOCOL_VERSION,
        command = config.port,
        data = config.data_port(),
        heartbeat = config.heartbeat_port(),
        bind = %config.bind_address,
        session = if config.is_private() { "private (server password set)" } else { "public (no server password)" },
        timeout_ms = config.timeout_ms,
        max_message_size = config.max_message_size,
        data_dir = %dir.root.display(),
        "replication server listening"
    );
    if config.uses_default_admin_password() {
        warn!("ADMIN_PASSWORD is the default 'admin': anyone can log in as admin and kick users. Set ADMIN_PASSWORD.");
    }
    info!(
        journal_fsync = ?config.journal_fsync,
        max_backups = config.max_backups,
        "Auto-save enabled (interval: {}s)",
        config.save_interval_s
    );
    match &recovery.source {
        Some(source) => {
            info!(
                file = %source.display(),
                saved = %crate::store::format_iso_utc(recovery.image_saved_at),
                reason = %recovery.image_reason,
                nodes = recovery.restored.nodes,
                retained_metadata = recovery.restored.retained,
                users = %recovery.restored.users.join(","),
                journal_entries = recovery.restored.journal_entries,
                initialized = recovery.restored.initialized,
                "Previous session found"
            );
        }
        None if recovery.restored.journal_entries > 0 => {
            info!(
                entries = recovery.restored.journal_entries,
                nodes = recovery.restored.nodes,
                "Previous session found in the journal"
            );
        }
        None => info!("no previous session in the data folder; starting empty"),
    }
    if recovery.restored.initialized {
        info!(
            nodes = recovery.restored.nodes,
            "Repository automatically initialized to ACTIVE state"
        );
    } else {
        info!(state = ?session.state(), "waiting for an admin to initialise the session");
    }
    if recovery.needs_save {
        saver.request(&mut session, "restore", true);
    }
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    match admin_listener {
        Some(listener) => {
            let password = config.admin_password.clone();
            tokio::spawn(admin::http::serve(
                listener,
                control_tx.clone(),
                metrics.clone(),
                password,
                stopped_rx,
            ));
        }
        None => info!("admin endpoint disabled (ADMIN_ADDR is empty)"),
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        match admin::shell::start(control_tx.clone()) {
            Ok(()) => info!("type help at the >> prompt for the admin commands"),
            Err(e) => warn!("cannot start the admin shell: {e}"),
        }
    }
    drop(control_tx);
    let save_period = Duration::from_secs(config.save_interval_s);
    let core = Core {
        session,
        saver,
        net,
        control: control_rx,
        monitor: HeartbeatMonitor::new(config.timeout_ms, net::now_ms()),
        metrics,
        relay_latency: Histogram::default(),
        snapshot_requests: Histogram::default(),
        received: Vec::with_capacity(net::RECV_BATCH),
        save_period,
        next_autosave: Instant::now() + save_period,
        ping: Arc::new(vec![Bytes::from_static(heartbeat::PING)]),
    };
    let server = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || core.run(writer_thread))
        .map_err(ServerError::Loop)?;
    let result = tokio::task::spawn_blocking(move || server.join())
        .await
        .map_err(|e| ServerError::Loop(std::io::Error::other(e.to_string())))?
        .map_err(|_| ServerError::Loop(std::io::Error::other("the server thread panicked")))?;
    let _ = stopped_tx.send(());
    result
}
