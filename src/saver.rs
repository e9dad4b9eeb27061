//! Saving: the journal of accepted changes, and the snapshots the writer
//! thread makes, with the admins waiting for them.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::admin::SaveReport;
use crate::metrics::SaveStats;
use crate::session::SessionState;
use crate::store::writer::{SaveJob, SaveOutcome};
use crate::store::{DataDir, FsyncPolicy, JournalWriter};

/// How often `JOURNAL_FSYNC=everysec` syncs the journal.
const EVERYSEC: Duration = Duration::from_secs(1);

type SaveWaiter = oneshot::Sender<Result<SaveReport, String>>;

/// Saving: the journal, the writer thread and what is in flight.
pub struct Saver {
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
    prev_journal: std::path::PathBuf,
    snapshot: std::path::PathBuf,
    stats: SaveStats,
}

impl Saver {
    pub fn new(
        journal: JournalWriter,
        jobs: std::sync::mpsc::Sender<SaveJob>,
        dir: &DataDir,
        saved_changes: u64,
        fsync: FsyncPolicy,
    ) -> Saver {
        let journal_sync = Arc::new(Mutex::new(journal.sync_handle().ok()));
        if fsync == FsyncPolicy::EverySec {
            start_everysec(journal_sync.clone());
        }
        Saver {
            journal,
            journal_sync,
            jobs,
            in_flight: None,
            waiters: Vec::new(),
            pending: None,
            pending_waiters: Vec::new(),
            saved_changes,
            prev_journal: dir.prev_journal(),
            snapshot: dir.snapshot(),
            stats: SaveStats::default(),
        }
    }

    /// A save is being written or waits for its turn.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some() || self.pending.is_some()
    }

    /// Appends the accepted changes; with `always`, they are on disk before
    /// anything is relayed.
    pub fn journal(&mut self, session: &mut SessionState) {
        let entries = session.drain_journal();
        if entries.is_empty() {
            return;
        }
        let result = entries
            .iter()
            .try_for_each(|e| self.journal.append(e))
            .and_then(|_| self.journal.commit());
        match result {
            Ok(()) if self.stats.journal_failing => {
                self.stats.journal_failing = false;
                info!("journal writes work again");
            }
            Ok(()) => {}
            Err(e) if !self.stats.journal_failing => {
                self.stats.journal_failing = true;
                error!("Failed to append to the journal: {e}; changes stay in memory until the next successful save");
            }
            Err(_) => {}
        }
    }

    pub fn stats(&self) -> SaveStats {
        SaveStats {
            journal_bytes: self.journal.bytes(),
            ..self.stats.clone()
        }
    }

    /// A save an admin asked for: written even without changes, answered
    /// once it is on disk.
    pub fn request_for(&mut self, session: &mut SessionState, waiter: SaveWaiter) {
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

    pub fn request(&mut self, session: &mut SessionState, reason: &str, force: bool) {
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
    pub fn finished(&mut self, session: &mut SessionState, outcome: SaveOutcome) {
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
