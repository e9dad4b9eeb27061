//! Start-up: find the newest valid saved session (snapshot, then backups,
//! then the Python server's leftovers), replay the journal over it, and
//! say in the log what was used.

use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::session::{Restored, SessionState};
use crate::store::{self, DataDir, JournalEntry, SessionImage, StoreError, journal, legacy, snapshot};

/// What start-up found.
#[derive(Debug)]
pub struct Recovery {
    pub restored: Restored,
    /// The file the session came from, if any.
    pub source: Option<PathBuf>,
    pub image_saved_at: f64,
    pub image_reason: String,
    /// Generation and valid length of the journal to keep appending to.
    pub journal_generation: u64,
    pub journal_valid: Option<u64>,
    /// The session came from somewhere else than our snapshot: save now.
    pub needs_save: bool,
}

fn move_aside(path: &Path) -> Option<PathBuf> {
    let aside = path.with_extension(format!("corrupt-{}", store::format_compact_utc(store::now_epoch())));
    match std::fs::rename(path, &aside) {
        Ok(()) => Some(aside),
        Err(e) => {
            error!(file = %path.display(), error = %e, "cannot move the corrupt snapshot aside");
            None
        }
    }
}

/// The newest valid image: the snapshot, else the newest valid backup.
fn newest_image(dir: &DataDir, read_only: bool) -> Result<Option<(SessionImage, PathBuf, bool)>, StoreError> {
    let path = dir.snapshot();
    if path.exists() {
        match snapshot::read(&path) {
            Ok(image) => return Ok(Some((image, path, false))),
            Err(e @ StoreError::Corrupt { .. }) => {
                error!("{e}");
                if read_only {
                    warn!("reading only: the corrupt snapshot stays where it is");
                } else if let Some(aside) = move_aside(&path) {
                    warn!(file = %aside.display(), "moved the corrupt snapshot aside (kept, not deleted)");
                }
                for backup in snapshot::list_backups(&dir.backups())?.into_iter().rev() {
                    match snapshot::read(&backup) {
                        Ok(image) => {
                            warn!(file = %backup.display(), "restoring from the newest valid backup instead");
                            return Ok(Some((image, backup, true)));
                        }
                        Err(e) => warn!("skipping backup: {e}"),
                    }
                }
                warn!("no valid backup found either");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

pub fn load(dir: &DataDir, session: &mut SessionState, read_only: bool) -> Result<Recovery, StoreError> {
    let mut needs_save = false;
    let (image, source) = match newest_image(dir, read_only)? {
        Some((image, source, from_backup)) => {
            needs_save = from_backup;
            (image, Some(source))
        }
        None if dir.legacy_snapshot().exists() => {
            let legacy_path = dir.legacy_snapshot();
            let image = legacy::import(&legacy_path)?;
            info!(
                file = %legacy_path.display(),
                nodes = image.nodes.len(),
                "imported the Python server's session_snapshot.pkl (the old file is kept)"
            );
            needs_save = true;
            (image, Some(legacy_path))
        }
        None => (SessionImage::default(), None),
    };
    let covered = image.journal_generation;
    let mut entries: Vec<JournalEntry> = Vec::new();
    let mut journal_generation = covered + 1;
    let mut journal_valid = None;
    for (path, is_current) in [(dir.prev_journal(), false), (dir.journal(), true)] {
        let Some(replay) = journal::read(&path)? else { continue };
        if let Some(why) = &replay.dropped_tail {
            warn!(file = %path.display(), "journal: dropped a torn or corrupt tail ({why}); everything before it is kept");
        }
        if replay.generation <= covered {
            continue;
        }
        info!(file = %path.display(), entries = replay.entries.len(), "replaying the journal");
        entries.extend(replay.entries);
        if is_current && replay.generation > covered {
            journal_generation = replay.generation;
            journal_valid = Some(replay.valid_len);
        }
    }
    let saved_at = image.saved_at;
    let reason = image.reason.clone();
    let restored = session.restore(image, entries);
    Ok(Recovery {
        restored,
        source,
        image_saved_at: saved_at,
        image_reason: reason,
        journal_generation,
        journal_valid,
        needs_save,
    })
}

/// The session of a data folder, offline (for `export`).
pub fn image_of_dir(root: &Path, session: &mut SessionState) -> Result<SessionImage, StoreError> {
    let dir = DataDir::unlocked(root);
    let recovery = load(&dir, session, true)?;
    let view = session.view();
    Ok(store::writer::image_of(view, "export", recovery.image_saved_at, 0))
}
