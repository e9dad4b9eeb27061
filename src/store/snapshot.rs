//! The snapshot file: the whole session, written atomically.
//!
//! Layout: `MAGIC` (8 bytes), format version (u32 LE), payload length
//! (u64 LE), CRC-32 of the payload (u32 LE), then the payload: the
//! `SessionImage` as MessagePack. The payload is streamed to a temporary
//! file in the same folder, which is fsynced, renamed over the snapshot,
//! and the folder fsynced, so a crash leaves either the old or the new
//! snapshot, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{StoreError, io_err, parent_dir};

pub const MAGIC: &[u8; 8] = b"RPLSNAP\x01";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 8 + 4 + 8 + 4;
/// Buffer of the snapshot writer and reader; large sessions are streamed.
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
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("snapshot"),
        std::process::id()
    ));
    let result = write_to(&tmp, image);
    match result {
        Ok(size) => {
            fs::rename(&tmp, path).map_err(io_err(path, "rename the new snapshot into place"))?;
            sync_dir(dir)?;
            Ok(size)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_to<T: Serialize>(tmp: &Path, image: &T) -> Result<u64, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(tmp)
        .map_err(io_err(tmp, "create the temporary snapshot"))?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, file);
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
    let mut out = crc.inner;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&checksum.to_le_bytes());
    out.flush().map_err(io_err(tmp, "write the snapshot"))?;
    let mut file = out.into_inner().map_err(|e| StoreError::Io {
        what: "write the snapshot",
        path: tmp.to_path_buf(),
        source: e.into_error(),
    })?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err(tmp, "write the snapshot header"))?;
    file.write_all(&header)
        .map_err(io_err(tmp, "write the snapshot header"))?;
    file.sync_all().map_err(io_err(tmp, "fsync the snapshot"))?;
    Ok(HEADER_LEN + len)
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
