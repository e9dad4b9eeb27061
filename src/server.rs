//! The session task: receives decoded messages from the socket threads,
//! runs them through the session state, journals what was accepted, hands
//! the replies back, and schedules saves.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::admin::{self, AdminRequest, SaveReport, Status, UserInfo};
use crate::config::Config;
use crate::metrics::{Gauges, Histogram, NetMetrics, SaveStats};
use crate::net::{self, Inbound, InboundBudget, NetConfig, NetError, Network};
use crate::session::{Outgoing, STATUS_ACTIVE, ServerState, SessionConfig, SessionState};
use crate::shutdown::Shutdown;
use crate::store::writer::{self, SaveJob, SaveOutcome};
use crate::store::{DataDir, FsyncPolicy, JournalWriter, StoreError};

/// Events handled before the replies are flushed to the socket threads;
/// batching saves wake-ups under load without delaying a lone message.
const EVENT_BATCH: usize = 128;
/// How often `JOURNAL_FSYNC=everysec` syncs the journal.
const EVERYSEC: Duration = Duration::from_secs(1);
/// Admin requests waiting for the session task; admins are few and patient.
const ADMIN_QUEUE: usize = 64;
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
}

fn dispatch(session: &mut SessionState, net: &mut Network) {
    for out in session.drain_out() {
        match out {
            Outgoing::Send { channel, to, frames } => net.outbox(channel).send(to, frames),
            Outgoing::Admit(peer) => net.admit(&peer),
            Outgoing::Evict(peer) => net.evict(&peer),
        }
    }
    net.flush();
}

/// Handles one message; for an update, returns when it was received so the
/// relay latency can be measured once it is handed to the sockets.
fn handle(session: &mut SessionState, budget: &InboundBudget, event: Inbound) -> Option<std::time::Instant> {
    match event {
        Inbound::Command { peer, command, bytes } => {
            session.handle_command(peer, command);
            budget.release(bytes);
            None
        }
        Inbound::Update {
            peer,
            update,
            frames,
            bytes,
            received_at,
        } => {
            session.handle_update(peer, *update, frames);
            budget.release(bytes);
            Some(received_at)
        }
        Inbound::Heartbeat(event) => {
            session.handle_heartbeat(event);
            None
        }
    }
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Waiting => "WAITING",
        ServerState::SrvSync => "SYNCING",
        ServerState::Active => "ACTIVE",
    }
}

fn status(session: &SessionState, saver: &Saver, relay_latency: &Histogram) -> Status {
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
            relay_latency: relay_latency.clone(),
            save: saver.stats(),
        },
    }
}

type SaveWaiter = oneshot::Sender<Result<SaveReport, String>>;

/// Saving: the journal, the writer thread and what is in flight.
struct Saver {
    journal: JournalWriter,
    journal_sync: Arc<Mutex<Option<File>>>,
    jobs: std::sync::mpsc::Sender<SaveJob>,
    in_flight: Option<u64>,
    /// Admins waiting for the save in flight.
    waiters: Vec<SaveWaiter>,
    pending: Option<String>,
    /// Admins waiting for the pending save; it is forced.
    pending_waiters: Vec<SaveWaiter>,
    saved_changes: u64,
    journal_failing: bool,
    prev_journal: std::path::PathBuf,
    snapshot: std::path::PathBuf,
    stats: SaveStats,
}

impl Saver {
    /// Appends the accepted changes; with `always`, they are on disk before
    /// anything is relayed.
    fn journal(&mut self, session: &mut SessionState) {
        let entries = session.drain_journal();
        if entries.is_empty() {
            return;
        }
        let result = entries
            .iter()
            .try_for_each(|e| self.journal.append(e))
            .and_then(|_| self.journal.commit());
        match result {
            Ok(()) if self.journal_failing => {
                self.journal_failing = false;
                info!("journal writes work again");
            }
            Ok(()) => {}
            Err(e) if !self.journal_failing => {
                self.journal_failing = true;
                error!("Failed to append to the journal: {e}; changes stay in memory until the next successful save");
            }
            Err(_) => {}
        }
    }

    fn stats(&self) -> SaveStats {
        SaveStats {
            journal_bytes: self.journal.bytes(),
            journal_failing: self.journal_failing,
            ..self.stats.clone()
        }
    }

    /// A save an admin asked for: written even without changes, answered
    /// once it is on disk.
    fn request_for(&mut self, session: &mut SessionState, waiter: SaveWaiter) {
        if self.in_flight.is_some() {
            // The save in flight may hold an older state: wait for the next.
            self.pending = Some("admin".to_string());
            self.pending_waiters.push(waiter);
            return;
        }
        self.waiters.push(waiter);
        self.request(session, "admin", true);
    }

    fn failed(&mut self, cause: String) {
        self.stats.failed += 1;
        self.stats.last_error = Some(cause.clone());
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(cause.clone()));
        }
    }

    fn request(&mut self, session: &mut SessionState, reason: &str, force: bool) {
        if self.in_flight.is_some() {
            self.pending = Some(reason.to_string());
            return;
        }
        if !force && session.change_count() == self.saved_changes {
            info!(reason, "No changes since the last save, nothing to write");
            return;
        }
        let generation = match self.journal.rotate(&self.prev_journal) {
            Ok(g) => g,
            Err(e) => {
                error!("Failed to save session: {e}");
                self.failed(e.to_string());
                return;
            }
        };
        if let (Ok(handle), Ok(mut slot)) = (self.journal.sync_handle(), self.journal_sync.lock()) {
            *slot = Some(handle);
        }
        let view = session.view();
        info!(reason, nodes = view.nodes.len(), "saving the session");
        let job = SaveJob {
            reason: reason.to_string(),
            view,
            generation,
        };
        if self.jobs.send(job).is_err() {
            error!("Failed to save session: the snapshot writer has stopped");
            self.failed("the snapshot writer has stopped".into());
            return;
        }
        self.in_flight = Some(session.change_count());
    }

    /// A save finished: log it, and start the save that waited for it.
    fn finished(&mut self, session: &mut SessionState, outcome: SaveOutcome) {
        let changes = self.in_flight.take().unwrap_or(self.saved_changes);
        match outcome.result {
            Ok(saved) => {
                self.saved_changes = changes;
                self.stats.succeeded += 1;
                self.stats.last_error = None;
                self.stats.last_success_at = Some(saved.at);
                self.stats.last_duration_s = saved.duration.as_secs_f64();
                self.stats.last_bytes = saved.bytes;
                let report = SaveReport {
                    reason: outcome.reason.clone(),
                    nodes: saved.nodes,
                    bytes: saved.bytes,
                    duration_ms: saved.duration.as_millis() as u64,
                    saved_at: crate::store::format_iso_utc(saved.at),
                    snapshot: self.snapshot.display().to_string(),
                    backup: saved.backup.display().to_string(),
                };
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(report.clone()));
                }
                info!(
                    nodes = saved.nodes,
                    bytes = saved.bytes,
                    ms = saved.duration.as_millis() as u64,
                    backup = %saved.backup.display(),
                    "Session saved to disk (reason: {})",
                    outcome.reason
                );
            }
            Err(cause) => {
                error!(
                    "Failed to save session: {cause} (reason: {}); retrying at the next save",
                    outcome.reason
                );
                self.failed(cause);
            }
        }
        if let Some(reason) = self.pending.take() {
            let forced = !self.pending_waiters.is_empty();
            self.waiters.append(&mut self.pending_waiters);
            self.request(session, &reason, forced);
        }
    }
}

fn start_everysec(handle: Arc<Mutex<Option<File>>>) {
    let spawned = std::thread::Builder::new().name("journal-fsync".into()).spawn(move || {
        loop {
            std::thread::sleep(EVERYSEC);
            let file = handle
                .lock()
                .ok()
                .and_then(|f| f.as_ref().and_then(|f| f.try_clone().ok()));
            if let Some(f) = file
                && let Err(e) = f.sync_data()
            {
                warn!("journal fsync failed: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        warn!("cannot start the journal fsync thread ({e}); the kernel will flush the journal on its own");
    }
}

pub async fn run(config: Config) -> Result<(), ServerError> {
    let mut shutdown = Shutdown::listen().map_err(ServerError::Signals)?;
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
    let journal_sync = Arc::new(Mutex::new(journal.sync_handle().ok()));
    if config.journal_fsync == FsyncPolicy::EverySec {
        start_everysec(journal_sync.clone());
    }
    let (outcome_tx, mut outcomes) = mpsc::unbounded_channel();
    let (jobs, writer_thread) =
        writer::start(DataDir::unlocked(&dir.root), config.max_backups, outcome_tx).map_err(ServerError::Writer)?;
    let mut saver = Saver {
        journal,
        journal_sync,
        jobs,
        in_flight: None,
        waiters: Vec::new(),
        pending: None,
        pending_waiters: Vec::new(),
        saved_changes: session.change_count(),
        journal_failing: false,
        prev_journal: dir.prev_journal(),
        snapshot: dir.snapshot(),
        stats: SaveStats::default(),
    };

    let (tx, mut rx) = mpsc::channel(net::INBOUND_CAPACITY);
    let budget = Arc::new(InboundBudget::default());
    let net_metrics = Arc::new(NetMetrics::default());
    let (admin_tx, mut admin_rx) = mpsc::channel(ADMIN_QUEUE);
    let admin_listener = match config.admin_addr {
        Some(addr) => Some(admin::http::bind(addr, config.uses_default_admin_password()).await?),
        None => None,
    };
    let mut net = net::start(
        &NetConfig {
            bind_address: config.bind_address.clone(),
            port: config.port,
            max_message_size: config.max_message_size,
            timeout_ms: config.timeout_ms,
        },
        tx,
        budget.clone(),
        net_metrics.clone(),
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
    match admin_listener {
        Some(listener) => {
            let password = config.admin_password.clone();
            tokio::spawn(admin::http::serve(
                listener,
                admin_tx.clone(),
                net_metrics.clone(),
                password,
            ));
        }
        None => info!("admin endpoint disabled (ADMIN_ADDR is empty)"),
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        match admin::shell::start(admin_tx.clone()) {
            Ok(()) => info!("type help at the >> prompt for the admin commands"),
            Err(e) => warn!("cannot start the admin shell: {e}"),
        }
    }
    drop(admin_tx);
    let mut relay_latency = Histogram::default();
    let mut received = Vec::with_capacity(EVENT_BATCH);

    let period = Duration::from_secs(config.save_interval_s);
    let mut autosave = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                received.extend(handle(&mut session, &budget, event));
                for _ in 1..EVENT_BATCH {
                    match rx.try_recv() {
                        Ok(event) => received.extend(handle(&mut session, &budget, event)),
                        Err(_) => break,
                    }
                }
                saver.journal(&mut session);
                dispatch(&mut session, &mut net);
                for at in received.drain(..) {
                    relay_latency.observe(at.elapsed().as_secs_f64());
                }
                for reason in session.drain_save_requests() {
                    saver.request(&mut session, &reason, false);
                }
            }
            _ = autosave.tick() => saver.request(&mut session, "auto-save", false),
            Some(outcome) = outcomes.recv() => saver.finished(&mut session, outcome),
            Some(request) = admin_rx.recv() => {
                match request {
                    AdminRequest::Status(reply) => {
                        let _ = reply.send(status(&session, &saver, &relay_latency));
                    }
                    AdminRequest::Kick { user, reply } => {
                        let kicked = session.kick(&user, "kicked by the server admin");
                        let _ = reply.send(kicked);
                    }
                    AdminRequest::Save(reply) => saver.request_for(&mut session, reply),
                    AdminRequest::Export(reply) => {
                        let _ = reply.send(session.view());
                    }
                    AdminRequest::Stop => {
                        info!(users = session.client_count(), nodes = session.graph().len(), "shutting down (exit typed in the shell)");
                        break;
                    }
                }
                saver.journal(&mut session);
                dispatch(&mut session, &mut net);
                for reason in session.drain_save_requests() {
                    saver.request(&mut session, &reason, false);
                }
            }
            signal = shutdown.recv() => {
                info!(signal, users = session.client_count(), nodes = session.graph().len(), "shutting down");
                break;
            }
        }
    }
    drop(rx);
    // Wake socket threads waiting for room in the queue: they find it
    // closed and stop.
    budget.release(usize::MAX);
    net.shutdown();
    saver.journal(&mut session);
    saver.request(&mut session, "shutdown", false);
    let deadline = tokio::time::Instant::now() + FINAL_SAVE_TIMEOUT;
    while saver.in_flight.is_some() || saver.pending.is_some() {
        match tokio::time::timeout_at(deadline, outcomes.recv()).await {
            Ok(Some(outcome)) => saver.finished(&mut session, outcome),
            _ => {
                error!("the final save did not finish in time; the journal still holds every change");
                break;
            }
        }
    }
    drop(saver);
    let _ = writer_thread.join();
    info!("server stopped");
    Ok(())
}
