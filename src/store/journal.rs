//! The journal: every accepted change, appended as it is relayed, so a
//! crash loses at most what the fsync policy allows.
//!
//! A journal file starts with `MAGIC` and its generation (u64 LE). Each
//! record is `[payload length u32 LE][CRC-32 u32 LE][payload]`, the payload
//! a `JournalEntry` as MessagePack. A torn or corrupt tail fails its length
//! or checksum; replay stops there and the tail is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{StoreError, io_err};

pub const MAGIC: &[u8; 8] = b"RPLJRNL\x01";
const FILE_HEADER_LEN: usize = 16;
/// No honest record is larger than the largest message plus framing; a
/// length beyond this is a torn or corrupt record.
pub const MAX_RECORD: u32 = 1 << 30;

/// How often the journal reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch of changes, before they are relayed.
    Always,
    /// Once a second, from a thread of its own.
    EverySec,
    /// Never; the kernel decides.
    Off,
}

impl FsyncPolicy {
    pub const ACCEPTED: &'static str = "always, everysec, off";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "always" => FsyncPolicy::Always,
            "everysec" => FsyncPolicy::EverySec,
            "off" | "no" => FsyncPolicy::Off,
            _ => return None,
        })
    }
}

/// One accepted change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JournalEntry {
    /// A full node: from the initial upload or a Node update.
    PutNode {
        uuid: String,
        owner: String,
        dependencies: Option<Vec<String>>,
        raw_dependencies: Bytes,
        raw_data: Bytes,
    },
    /// An applied commit: replaying the delta gives the same result.
    Commit {
        uuid: String,
        dependencies: Option<Vec<String>>,
        raw_dependencies: Bytes,
        raw_delta: Bytes,
    },
    Delete {
        uuid: String,
    },
    Right {
        uuids: Vec<String>,
        owner: String,
    },
    /// The initial upload finished: the session is ACTIVE.
    Initialized,
    /// A partial upload was discarded: the session waits for init again.
    Reset,
    /// A durable metadata value (tasks, chat) of a user.
    Retain {
        user: String,
        key: String,
        value: ByteBuf,
        seq: u64,
    },
}

pub fn encode_record(entry: &JournalEntry, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let payload = rmp_serde::to_vec(entry).map_err(|e| StoreError::Encode(e.to_string()))?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// What a journal file held.
#[derive(Debug, Default)]
pub struct Replay {
    pub generation: u64,
    pub entries: Vec<JournalEntry>,
    /// Bytes of valid records (after the header).
    pub valid_len: u64,
    /// Why the tail was dropped, if it was.
    pub dropped_tail: Option<String>,
}

/// Makes the journal closed by a rotation durable; a snapshot writer calls
/// it first, off the server thread.
pub fn sync_closed(path: &Path) -> Result<(), StoreError> {
    match File::open(path) {
        Ok(f) => f.sync_all().map_err(io_err(path, "fsync the closed journal")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            what: "open the closed journal",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The generation of a journal from its header alone: checking whether a
/// snapshot covers a journal must not read the whole journal (after an
/// upload it is as large as the session).
pub fn read_generation(path: &Path) -> Result<Option<u64>, StoreError> {
    let mut header = [0u8; FILE_HEADER_LEN];
    match File::open(path) {
        Ok(mut f) => match f.read_exact(&mut header) {
            Ok(()) if &header[..8] == MAGIC => {
                let mut g = [0u8; 8];
                g.copy_from_slice(&header[8..16]);
                Ok(Some(u64::from_le_bytes(g)))
            }
            // A journal without its header holds nothing to replay.
            _ => Ok(Some(0)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            what: "open the journal",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Reads a journal, stopping at the first torn or corrupt record.
pub fn read(path: &Path) -> Result<Option<Replay>, StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io_err(path, "read the journal"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                what: "open the journal",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut replay = Replay::default();
    if bytes.len() < FILE_HEADER_LEN || &bytes[..8] != MAGIC {
        replay.dropped_tail = Some(format!("{} bytes without a valid journal header", bytes.len()));
        return Ok(Some(replay));
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&bytes[8..16]);
    replay.generation = u64::from_le_bytes(g);
    let mut pos = FILE_HEADER_LEN;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 8 {
            replay.dropped_tail = Some(format!("torn record header ({} bytes) at offset {pos}", rest.len()));
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD || rest.len() < 8 + len as usize {
            replay.dropped_tail = Some(format!("torn record of {len} bytes at offset {pos}"));
            break;
        }
        let payload = &rest[8..8 + len as usize];
        if crc32fast::hash(payload) != crc {
            replay.dropped_tail = Some(format!("checksum mismatch at offset {pos}"));
            break;
        }
        match rmp_serde::from_slice::<JournalEntry>(payload) {
            Ok(entry) => replay.entries.push(entry),
            Err(e) => {
                replay.dropped_tail = Some(format!("undecodable record at offset {pos}: {e}"));
                break;
            }
        }
        pos += 8 + len as usize;
    }
    replay.valid_len = (pos - FILE_HEADER_LEN) as u64;
    Ok(Some(replay))
}

/// The open journal of a running server.
pub struct JournalWriter {
    path: PathBuf,
    file: File,
    generation: u64,
    policy: FsyncPolicy,
    buffer: Vec<u8>,
    bytes: u64,
}

impl JournalWriter {
    /// Opens `path` for appending. A journal of another generation, or one
    /// with a torn tail, is cut back to its valid part first.
    pub fn open(
        path: &Path,
        generation: u64,
        policy: FsyncPolicy,
        keep_valid: Option<u64>,
    ) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path, "open the journal"))?;
        let mut w = JournalWriter {
            path: path.to_path_buf(),
            file,
            generation,
            policy,
            buffer: Vec::new(),
            bytes: 0,
        };
        match keep_valid {
            Some(valid) => {
                w.file
                    .set_len(FILE_HEADER_LEN as u64 + valid)
                    .map_err(io_err(path, "cut the journal's torn tail"))?;
                w.bytes = valid;
            }
            None => {
                w.start_file()?;
                w.file.sync_all().map_err(io_err(path, "start the journal"))?;
            }
        }
        use std::io::Seek;
        w.file
            .seek(io::SeekFrom::End(0))
            .map_err(io_err(path, "open the journal"))?;
        Ok(w)
    }

    fn start_file(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(io_err(&self.path, "start the journal"))?;
        use std::io::Seek;
        self.file
            .seek(io::SeekFrom::Start(0))
            .map_err(io_err(&self.path, "start the journal"))?;
        let mut header = Vec::with_capacity(FILE_HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.generation.to_le_bytes());
        self.file
            .write_all(&header)
            .map_err(io_err(&self.path, "start the journal"))?;
        self.bytes = 0;
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn append(&mut self, entry: &JournalEntry) -> Result<(), StoreError> {
        encode_record(entry, &mut self.buffer)
    }

    /// Writes what was appended; with `always`, also waits for the disk.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&self.buffer)
            .map_err(io_err(&self.path, "append to the journal"));
        if result.is_ok() {
            self.bytes += self.buffer.len() as u64;
        } else {
            // Do not leave half a record behind a later good one.
            let _ = self.file.set_len(FILE_HEADER_LEN as u64 + self.bytes);
        }
        self.buffer.clear();
        result?;
        if self.policy == FsyncPolicy::Always {
            self.file.sync_data().map_err(io_err(&self.path, "fsync the journal"))?;
        }
        Ok(())
    }

    /// A handle the everysec thread fsyncs.
    pub fn sync_handle(&self) -> Result<File, StoreError> {
        self.file.try_clone().map_err(io_err(&self.path, "open the journal"))
    }

    /// Moves the current journal to `prev` (or onto its end, when an
    /// earlier save failed and `prev` still waits) and starts a new
    /// generation. Returns the generation that was closed.
    pub fn rotate(&mut self, prev: &Path) -> Result<u64, StoreError> {
        self.commit()?;
        let closed = self.generation;
        if prev.exists() {
            let mut records = Vec::new();
            File::open(&self.path)
                .and_then(|mut f| f.read_to_end(&mut records))
                .map_err(io_err(&self.path, "read the journal"))?;
            let mut p = OpenOptions::new()
                .append(true)
                .open(prev)
                .map_err(io_err(prev, "extend the previous journal"))?;
            p.write_all(records.get(FILE_HEADER_LEN..).unwrap_or_default())
                .and_then(|_| p.sync_all())
                .map_err(io_err(prev, "extend the previous journal"))?;
        } else {
            // No fsync here: rotation runs on the server thread, and after
            // an upload the journal is as large as the session. The
            // snapshot writer syncs the closed journal before anything
            // else (see `sync_closed`).
            fs::rename(&self.path, prev).map_err(io_err(prev, "rotate the journal"))?;
            self.file = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&self.path)
                .map_err(io_err(&self.path, "open the journal"))?;
        }
        self.generation += 1;
        // Not fsynced here: on the server thread, while a snapshot floods
        // the disk, an fsync takes tens of milliseconds of relaying. The
        // header reaches the disk with the first fsync of a record (every
        // commit with `always`, each second with `everysec`); a file cut
        // before it holds no record, and replays as empty.
        self.start_file()?;
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rs-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entry(i: u64) -> JournalEntry {
        JournalEntry::Retain {
            user: "u".into(),
            key: "tasks".into(),
            value: ByteBuf::from(vec![i as u8; 10]),
            seq: i,
        }
    }

    #[test]
    fn append_replay_and_torn_tail() {
        let d = tmp("torn");
        let p = d.join("journal");
        let mut w = JournalWriter::open(&p, 3, FsyncPolicy::Always, None).unwrap();
        for i in 0..5 {
            w.append(&entry(i)).unwrap();
            w.commit().unwrap();
        }
        drop(w);
        let r = read(&p).unwrap().unwrap();
        assert_eq!((r.generation, r.entries.len(), r.dropped_tail.is_none()), (3, 5, true));
        assert_eq!(read_generation(&p).unwrap(), Some(3));
        assert_eq!(read_generation(&d.join("absent")).unwrap(), None);
        // A torn last record and garbage after it.
        let mut bytes = fs::read(&p).unwrap();
        let full = bytes.len();
        bytes.truncate(full - 3);
        bytes.extend_from_slice(b"\xde\xad");
        fs::write(&p, &bytes).unwrap();
        let r = read(&p).unwrap().unwrap();
        assert_eq!(r.entries.len(), 4);
        assert!(r.dropped_tail.is_some());
        // Reopening cuts the tail so new records follow valid ones.
        let mut w = JournalWriter::open(&p, 3, FsyncPolicy::Off, Some(r.valid_len)).unwrap();
        w.append(&entry(9)).unwrap();
        w.commit().unwrap();
        let r = read(&p).unwrap().unwrap();
        assert_eq!(r.entries.len(), 5);
        assert_eq!(r.entries[4], entry(9));
        assert!(r.dropped_tail.is_none());
    }

    #[test]
    fn flipped_byte_stops_replay_there() {
        let d = tmp("flip");
        let p = d.join("journal");
        let mut w = JournalWriter::open(&p, 1, FsyncPolicy::Off, None).unwrap();
        for i in 0..3 {
            w.append(&entry(i)).unwrap();
        }
        w.commit().unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let r = read(&p).unwrap().unwrap();
        assert_eq!(r.entries.len(), 2);
        assert!(r.dropped_tail.unwrap().contains("checksum"));
    }

    #[test]
    fn rotation_keeps_unsaved_records_together() {
        let d = tmp("rotate");
        let (p, prev) = (d.join("journal"), d.join("journal.prev"));
        let mut w = JournalWriter::open(&p, 1, FsyncPolicy::Off, None).unwrap();
        w.append(&entry(1)).unwrap();
        assert_eq!(w.rotate(&prev).unwrap(), 1);
        w.append(&entry(2)).unwrap();
        // The save of generation 1 failed: prev is still there.
        assert_eq!(w.rotate(&prev).unwrap(), 2);
        w.append(&entry(3)).unwrap();
        w.commit().unwrap();
        let old = read(&prev).unwrap().unwrap();
        assert_eq!(old.generation, 1);
        assert_eq!(old.entries, vec![entry(1), entry(2)]);
        let cur = read(&p).unwrap().unwrap();
        assert_eq!((cur.generation, cur.entries.clone()), (3, vec![entry(3)]));
    }

    /// A rotation does not fsync the new file's header: a crash before the
    /// next fsync can leave the file empty or cut inside the header. Such a
    /// file held no durable record; it must replay as empty, with a reason.
    #[test]
    fn journal_cut_inside_its_header_replays_as_empty() {
        let d = tmp("cut-header");
        let (p, prev) = (d.join("journal"), d.join("journal.prev"));
        let mut w = JournalWriter::open(&p, 1, FsyncPolicy::Off, None).unwrap();
        w.append(&entry(1)).unwrap();
        w.rotate(&prev).unwrap();
        drop(w);
        let header = fs::read(&p).unwrap();
        assert_eq!(header.len(), FILE_HEADER_LEN);
        for cut in [0, 5, FILE_HEADER_LEN - 1] {
            fs::write(&p, &header[..cut]).unwrap();
            let r = read(&p).unwrap().unwrap();
            assert!(r.entries.is_empty(), "cut at {cut}");
            assert!(r.dropped_tail.unwrap().contains("header"), "cut at {cut}");
        }
        assert_eq!(read(&prev).unwrap().unwrap().entries, vec![entry(1)]);
    }
}
