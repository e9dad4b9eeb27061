//! The snapshot file: the whole session, written atomically.
//!
//! Layout: `MAGIC` (8 bytes), format version (u32 LE), payload length
//! (u64 LE), CRC-32 of the payload (u32 LE), then the payload: the
//! `SessionImage` as MessagePack. The payload is streamed to a temporary
//! file in the same folder (around the page cache, see `direct`), which is
//! fsynced, renamed over the snapshot, and the folder fsynced, so a crash
//! leaves either the old or the new snapshot, never a mix.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::direct::{Mode, TeeWriter};
use super::{StoreError, io_err, parent_dir};

pub const MAGIC: &[u8; 8] = b"RPLSNAP\x01";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 8 + 4 + 8 + 4;
/// Buffer of the snapshot reader; large sessions are streamed.
const IO_BUFFER: usize = 1 << 20;

/// One node as stored: its wire fields, data as the pickle clients load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeImage {
    pub uuid: String,
    pub owner: String,
    pub dependencies: Option<Vec<String>>,
    pub raw_dependencies: ByteBuf,
    pub raw_data: ByteBuf,
}

/// A metadata value kept for a user after they leave (tasks, chat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedImage {
    pub user: String,
    pub key: String,
    /// The value, pickled as clients send it.
    pub value: ByteBuf,
    /// Order of arrival, to find the newest value of a key.
    pub seq: u64,
}

/// Everything a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SessionImage {
    pub saved_at: f64,
    pub reason: String,
    pub initialized: bool,
    pub nodes: Vec<NodeImage>,
    pub retained: Vec<RetainedImage>,
    /// Journal generations up to this one are contained in the snapshot.
    pub journal_generation: u64,
}

/// Counts and checksums what passes through.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Fsyncs a folder so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync folder"))
}

/// Writes `image` to `path` atomically; returns the file size.
pub fn write_atomic<T: Serialize>(path: &Path, image: &T) -> Result<u64, StoreError> {
    write_atomic_with_backup(path, image, None, Mode::Direct).map(|(size, _)| size)
}

/// The temporary name a file is written under before its rename: hidden,
/// so listings of backups skip it.
fn temporary(path: &Path) -> PathBuf {
    parent_dir(path).join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("snapshot"),
        std::process::id()
    ))
}

/// Writes `image` to `path` atomically and, in the same pass, to `backup`
/// (also atomically): the backup costs a second write of each chunk, not
/// a copy through the page cache. Returns the file size and, apart, why
/// the backup failed: the snapshot is in place all the same.
pub fn write_atomic_with_backup<T: Serialize>(
    path: &Path,
    image: &T,
    backup: Option<&Path>,
    mode: Mode,
) -> Result<(u64, Option<StoreError>), StoreError> {
    let tmp = temporary(path);
    let backup_tmp = backup.map(temporary);
    let (size, backup_failed) = match write_to(&tmp, backup_tmp.as_deref(), image, mode) {
        Ok(done) => done,
        Err(e) => {
            for t in std::iter::once(&tmp).chain(backup_tmp.as_ref()) {
                let _ = fs::remove_file(t);
            }
            return Err(e);
        }
    };
    fs::rename(&tmp, path).map_err(io_err(path, "rename the new snapshot into place"))?;
    sync_dir(parent_dir(path))?;
    if let (Some(backup), Some(backup_tmp)) = (backup, backup_tmp) {
        let kept = match backup_failed {
            Some((_, source)) => Err(StoreError::Io {
                what: "keep a backup at",
                path: backup.to_path_buf(),
                source,
            }),
            None => fs::rename(&backup_tmp, backup)
                .map_err(io_err(backup, "keep a backup at"))
                .and_then(|_| sync_dir(parent_dir(backup))),
        };
        if let Err(e) = kept {
            let _ = fs::remove_file(&backup_tmp);
            return Ok((size, Some(e)));
        }
    }
    Ok((size, None))
}

type Written = (u64, Option<(PathBuf, io::Error)>);

fn write_to<T: Serialize>(tmp: &Path, backup: Option<&Path>, image: &T, mode: Mode) -> Result<Written, StoreError> {
    let mut out = TeeWriter::create(tmp, backup, mode).map_err(io_err(tmp, "create the temporary snapshot"))?;
    // The header's place, filled in once the payload's length and checksum are known.
    out.write_all(&[0u8; HEADER_LEN as usize])
        .map_err(io_err(tmp, "write the snapshot"))?;
    let mut crc = Crc {
        inner: out,
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    rmp_serde::encode::write_named(&mut crc, image).map_err(|e| match e {
        rmp_serde::encode::Error::InvalidValueWrite(rmp::encode::ValueWriteError::InvalidDataWrite(source))
        | rmp_serde::encode::Error::InvalidValueWrite(rmp::encode::ValueWriteError::InvalidMarkerWrite(source)) => {
            StoreError::Io {
                what: "write the snapshot",
                path: tmp.to_path_buf(),
                source,
            }
        }
        other => StoreError::Encode(other.to_string()),
    })?;
    let (len, checksum) = (crc.len, crc.hasher.finalize());
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&checksum.to_le_bytes());
    let (size, backup_failed) = crc
        .inner
        .finish(&header)
        .map_err(io_err(tmp, "write and fsync the snapshot"))?;
    debug_assert_eq!(size, HEADER_LEN + len);
    Ok((size, backup_failed))
}

/// Reads and verifies a snapshot.
pub fn read(path: &Path) -> Result<SessionImage, StoreError> {
    let file = File::open(path).map_err(io_err(path, "open the snapshot"))?;
    let size = file.metadata().map_err(io_err(path, "open the snapshot"))?.len();
    let mut input = BufReader::with_capacity(IO_BUFFER, file);
    let corrupt = |why: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    if size < HEADER_LEN {
        return Err(corrupt(format!("{size} bytes is shorter than the header")));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    input
        .read_exact(&mut header)
        .map_err(io_err(path, "read the snapshot"))?;
    if &header[..8] != MAGIC {
        return Err(corrupt("not a snapshot of this server (bad magic)".into()));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this server reads {FORMAT_VERSION}"
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len8);
    let checksum = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    if HEADER_LEN + len != size {
        return Err(corrupt(format!(
            "payload of {len} bytes announced, file holds {}",
            size - HEADER_LEN
        )));
    }
    let mut crc = Crc {
        inner: input.take(len),
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    let image: Result<SessionImage, _> = rmp_serde::decode::from_read(&mut crc);
    // Hash whatever the decoder did not read, so the check covers it all.
    io::copy(&mut crc, &mut io::sink()).map_err(io_err(path, "read the snapshot"))?;
    if crc.hasher.finalize() != checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    image.map_err(|e| corrupt(format!("undecodable payload: {e}")))
}

/// The backup file name of a save at `epoch` seconds (UTC).
pub fn backup_name(epoch: f64) -> String {
    format!("snapshot_{}.msgpack", super::format_compact_utc(epoch))
}

/// Keeps the newest `max` backups in `dir`, deleting the rest.
pub fn prune_backups(dir: &Path, max: usize) -> Result<Vec<PathBuf>, StoreError> {
    let mut backups = list_backups(dir)?;
    let mut removed = Vec::new();
    while backups.len() > max {
        let oldest = backups.remove(0);
        fs::remove_file(&oldest).map_err(io_err(&oldest, "delete an old backup"))?;
        removed.push(oldest);
    }
    Ok(removed)
}

/// Backups, oldest first.
pub fn list_backups(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut backups: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("snapshot_") && n.ends_with(".msgpack"))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(StoreError::Io {
                what: "list backups",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    backups.sort();
    Ok(backups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> SessionImage {
        SessionImage {
            saved_at: 1_795_313_131.5,
            reason: "auto-save".into(),
            initialized: true,
            nodes: vec![NodeImage {
                uuid: "u1".into(),
                owner: "COMMON".into(),
                dependencies: Some(vec!["u2".into()]),
                raw_dependencies: ByteBuf::from(b"\x80\x04]\x94\x8c\x02u2\x94a.".to_vec()),
                raw_data: ByteBuf::from(vec![7u8; 100_000]),
            }],
            retained: vec![RetainedImage {
                user: "bob".into(),
                key: "tasks".into(),
                value: ByteBuf::from(b"x".to_vec()),
                seq: 3,
            }],
            journal_generation: 4,
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rs-snap-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = tmpdir("rt");
        let p = d.join("session_snapshot.msgpack");
        let size = write_atomic(&p, &image()).unwrap();
        assert_eq!(size, fs::metadata(&p).unwrap().len());
        assert_eq!(read(&p).unwrap(), image());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn the_backup_is_written_in_the_same_pass_and_matches() {
        let d = tmpdir("tee");
        fs::create_dir_all(d.join("backups")).unwrap();
        let (p, b) = (
            d.join("session_snapshot.msgpack"),
            d.join("backups").join(backup_name(1.0)),
        );
        let (size, failed) = write_atomic_with_backup(&p, &image(), Some(&b), Mode::Direct).unwrap();
        assert!(failed.is_none());
        assert_eq!(size, fs::metadata(&b).unwrap().len());
        assert!(fs::read(&p).unwrap() == fs::read(&b).unwrap());
        assert_eq!(read(&b).unwrap(), image());
        // The page cache path writes the same bytes.
        let q = d.join("buffered.msgpack");
        write_atomic_with_backup(&q, &image(), None, Mode::Buffered).unwrap();
        assert!(fs::read(&p).unwrap() == fs::read(&q).unwrap());
        assert_eq!(list_backups(&d.join("backups")).unwrap(), vec![b]);
        assert_eq!(
            fs::read_dir(d.join("backups")).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_failed_backup_is_reported_with_the_snapshot_in_place() {
        let d = tmpdir("tee-fail");
        let p = d.join("session_snapshot.msgpack");
        let b = d.join("no-such-folder").join(backup_name(1.0));
        let (_, failed) = write_atomic_with_backup(&p, &image(), Some(&b), Mode::Direct).unwrap();
        let err = failed.expect("the backup's failure is reported");
        assert!(err.to_string().contains("keep a backup at"), "{err}");
        assert_eq!(read(&p).unwrap(), image());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn corruption_is_detected() {
        let d = tmpdir("corrupt");
        let p = d.join("s.msgpack");
        write_atomic(&p, &image()).unwrap();
        let good = fs::read(&p).unwrap();
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        for bad in [
            flipped,
            good[..good.len() - 10].to_vec(),
            Vec::new(),
            b"garbage garbage garbage".to_vec(),
        ] {
            fs::write(&p, &bad).unwrap();
            assert!(matches!(read(&p), Err(StoreError::Corrupt { .. })), "{:?}", read(&p));
        }
    }

    #[test]
    fn backups_are_pruned_oldest_first() {
        let d = tmpdir("prune");
        for t in 0..5 {
            fs::write(d.join(backup_name(1_700_000_000.0 + 86_400.0 * f64::from(t))), b"x").unwrap();
        }
        let removed = prune_backups(&d, 3).unwrap();
        assert_eq!(removed.len(), 2);
        let left = list_backups(&d).unwrap();
        assert_eq!(left.len(), 3);
        assert!(left[0].to_string_lossy().contains("20231116"), "{left:?}");
    }
}
