//! Persistence: snapshots, the journal, backups, restore, the Python
//! server's leftovers and the replication library's session dumps.

pub mod direct;
pub mod dump;
pub mod journal;
pub mod legacy;
pub mod snapshot;
pub mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use journal::{FsyncPolicy, JournalEntry, JournalWriter};
pub use snapshot::{NodeImage, RetainedImage, SessionImage};

pub const SNAPSHOT_FILE: &str = "session_snapshot.msgpack";
pub const METADATA_FILE: &str = "session_metadata.json";
pub const JOURNAL_FILE: &str = "journal";
pub const PREV_JOURNAL_FILE: &str = "journal.prev";
pub const BACKUP_DIR: &str = "backups";
pub const LOCK_FILE: &str = ".lock";
/// What the Python deployment left behind.
pub const LEGACY_SNAPSHOT_FILE: &str = "session_snapshot.pkl";
/// Version of `session_metadata.json`'s layout.
pub const METADATA_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot encode the session: {0}")]
    Encode(String),
    #[error("another server is already using {0} (it holds {LOCK_FILE})")]
    Locked(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// The folder a file is in; `.` for a bare file name.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Wraps an I/O error with what was being done to which file.
pub(crate) fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The data folder, locked for the lifetime of a server.
#[derive(Debug)]
pub struct DataDir {
    pub root: PathBuf,
    _lock: Option<File>,
}

impl DataDir {
    /// Creates the folder if missing, checks it can be written, and takes
    /// its lock so two servers never share one.
    pub fn open(root: &Path) -> Result<DataDir, StoreError> {
        fs::create_dir_all(root.join(BACKUP_DIR)).map_err(|source| StoreError::Io {
            what: "create the data folder",
            path: root.to_path_buf(),
            source,
        })?;
        let probe = root.join(format!(".write-test-{}", std::process::id()));
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(|source| StoreError::Io {
                what: "write into the data folder",
                path: root.to_path_buf(),
                source,
            })?;
        let _ = fs::remove_file(&probe);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK_FILE))
            .map_err(|source| StoreError::Io {
                what: "open the lock file in",
                path: root.to_path_buf(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(root.to_path_buf())),
            Err(fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    what: "lock",
                    path: root.join(LOCK_FILE),
                    source,
                });
            }
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// The folder without its lock, for reading while a server may run.
    pub fn unlocked(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
            _lock: None,
        }
    }

    /// True when some server holds the folder's lock.
    pub fn is_locked(root: &Path) -> bool {
        match OpenOptions::new().write(true).open(root.join(LOCK_FILE)) {
            Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }

    pub fn snapshot(&self) -> PathBuf {
        self.root.join(SNAPSHOT_FILE)
    }
    pub fn metadata(&self) -> PathBuf {
        self.root.join(METADATA_FILE)
    }
    pub fn journal(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }
    pub fn prev_journal(&self) -> PathBuf {
        self.root.join(PREV_JOURNAL_FILE)
    }
    pub fn backups(&self) -> PathBuf {
        self.root.join(BACKUP_DIR)
    }
    pub fn legacy_snapshot(&self) -> PathBuf {
        self.root.join(LEGACY_SNAPSHOT_FILE)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn utc_parts(epoch: f64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = epoch.floor() as i64;
    let micros = ((epoch - epoch.floor()) * 1e6).round().min(999_999.0) as u32;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400) as u32;
    (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60, micros)
}

/// ISO 8601 in UTC, e.g. `2026-11-22T02:05:31.025679+00:00`.
pub fn format_iso_utc(epoch: f64) -> String {
    let (y, mo, d, h, mi, s, us) = utc_parts(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}+00:00")
}

/// `YYYYMMDD_HHMMSS` in UTC, for backup names.
pub fn format_compact_utc(epoch: f64) -> String {
    let (y, mo, d, h, mi, s, _) = utc_parts(epoch);
    format!("{y:04}{mo:02}{d:02}_{h:02}{mi:02}{s:02}")
}

pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes a small file atomically (temporary file, fsync, rename, fsync).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| fs::rename(&tmp, path));
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io {
            what: "write",
            path: path.to_path_buf(),
            source,
        });
    }
    snapshot::sync_dir(dir)
}

/// `session_metadata.json`, for admins.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionMetadata {
    pub timestamp: f64,
    pub datetime: String,
    pub reason: String,
    pub initialized: bool,
    pub user_count: usize,
    pub node_count: usize,
    pub snapshot_bytes: u64,
    pub users: Vec<String>,
    pub format_version: u32,
}

/// A minimal JSON writer for the metadata file: one flat object.
pub fn metadata_json(m: &SessionMetadata) -> String {
    fn s(v: &str) -> String {
        let mut out = String::from("\"");
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
    let users: Vec<String> = m.users.iter().map(|u| s(u)).collect();
    format!(
        "{{\n  \"timestamp\": {},\n  \"datetime\": {},\n  \"reason\": {},\n  \"initialized\": {},\n  \"user_count\": {},\n  \"node_count\": {},\n  \"snapshot_bytes\": {},\n  \"users\": [{}],\n  \"format_version\": {}\n}}\n",
        m.timestamp,
        s(&m.datetime),
        s(&m.reason),
        m.initialized,
        m.user_count,
        m.node_count,
        m.snapshot_bytes,
        users.join(", "),
        m.format_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_utc() {
        assert_eq!(format_iso_utc(0.0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(format_compact_utc(1_795_313_131.0256786), "20261122_020531");
        assert_eq!(format_iso_utc(951_782_400.5), "2000-02-29T00:00:00.500000+00:00");
    }

    #[test]
    fn second_server_on_a_folder_is_refused() {
        let d = std::env::temp_dir().join(format!("rs-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let first = DataDir::open(&d).unwrap();
        assert!(DataDir::is_locked(&d));
        assert!(matches!(DataDir::open(&d), Err(StoreError::Locked(_))));
        drop(first);
        assert!(!DataDir::is_locked(&d));
        assert!(DataDir::open(&d).is_ok());
    }
}
