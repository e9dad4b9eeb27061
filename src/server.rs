//! The session task: receives decoded messages from the socket threads,
//! runs them through the session state, journals what was accepted, hands
//! the replies back, and schedules saves.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::net::{self, Inbound, InboundBudget, NetConfig, NetError, Network};
use crate::session::{Outgoing, SessionConfig, SessionState};
use crate::shutdown::Shutdown;
use crate::store::writer::{self, SaveJob, SaveOutcome};
use crate::store::{DataDir, FsyncPolicy, JournalWriter, StoreError};

/// Events handled before the replies are flushed to the socket threads;
/// batching saves wake-ups under load without delaying a lone message.
const EVENT_BATCH: usize = 128;
/// How often `JOURNAL_FSYNC=everysec` syncs the journal.
const EVERYSEC: Duration = Duration::from_secs(1);
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

fn handle(session: &mut SessionState, budget: &InboundBudget, event: Inbound) {
    match event {
        Inbound::Command { peer, command, bytes } => {
            session.handle_command(peer, command);
            budget.release(bytes);
        }
        Inbound::Update {
            peer,
            update,
            frames,
            bytes,
        } => {
            session.handle_update(peer, *update, frames);
            budget.release(bytes);
        }
        Inbound::Heartbeat(event) => session.handle_heartbeat(event),
    }
}

/// Saving: the journal, the writer thread and what is in flight.
struct Saver {
    journal: JournalWriter,
    journal_sync: Arc<Mutex<Option<File>>>,
    jobs: std::sync::mpsc::Sender<SaveJob>,
    in_flight: Option<u64>,
    pending: Option<String>,
    saved_changes: u64,
    journal_failing: bool,
    prev_journal: std::path::PathBuf,
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
                info!(
                    nodes = saved.nodes,
                    bytes = saved.bytes,
                    ms = saved.duration.as_millis() as u64,
                    backup = %saved.backup.display(),
                    "Session saved to disk (reason: {})",
                    outcome.reason
                );
            }
            Err(cause) => error!(
                "Failed to save session: {cause} (reason: {}); retrying at the next save",
                outcome.reason
            ),
        }
        if let Some(reason) = self.pending.take() {
            self.request(session, &reason, false);
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
        pending: None,
        saved_changes: session.change_count(),
        journal_failing: false,
        prev_journal: dir.prev_journal(),
    };

    let (tx, mut rx) = mpsc::channel(net::INBOUND_CAPACITY);
    let budget = Arc::new(InboundBudget::default());
    let mut net = net::start(
        &NetConfig {
            bind_address: config.bind_address.clone(),
            port: config.port,
            max_message_size: config.max_message_size,
            timeout_ms: config.timeout_ms,
        },
        tx,
        budget.clone(),
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

    let period = Duration::from_secs(config.save_interval_s);
    let mut autosave = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                handle(&mut session, &budget, event);
                for _ in 1..EVENT_BATCH {
                    match rx.try_recv() {
                        Ok(event) => handle(&mut session, &budget, event),
                        Err(_) => break,
                    }
                }
                saver.journal(&mut session);
                dispatch(&mut session, &mut net);
                for reason in session.drain_save_requests() {
                    saver.request(&mut session, &reason, false);
                }
            }
            _ = autosave.tick() => saver.request(&mut session, "auto-save", false),
            Some(outcome) = outcomes.recv() => saver.finished(&mut session, outcome),
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
