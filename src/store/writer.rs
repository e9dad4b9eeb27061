//! The snapshot writer: a thread of its own that serialises a view of the
//! session and writes it, so saving never stalls relaying.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_bytes::ByteBuf;

use super::direct::Mode;
use super::snapshot::{self, NodeImage, RetainedImage, SessionImage};
use super::{DataDir, METADATA_FORMAT_VERSION, SessionMetadata, StoreError, journal, metadata_json};
use crate::pickle::{self, Value};

/// A node's data as the session hands it over: the bytes when it has them,
/// else the patched value, encoded here rather than on the server loop.
#[derive(Debug, Clone)]
pub enum NodeData {
    Raw(Bytes),
    Value(Value),
}

#[derive(Debug, Clone)]
pub struct NodeView {
    pub uuid: String,
    pub owner: String,
    pub dependencies: Option<Vec<String>>,
    pub raw_dependencies: Bytes,
    pub data: NodeData,
}

/// A consistent view of the session at one moment.
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    pub initialized: bool,
    pub nodes: Vec<NodeView>,
    pub retained: Vec<RetainedImage>,
    pub users: Vec<String>,
}

pub struct SaveJob {
    pub reason: String,
    pub view: SessionView,
    /// The journal generation this snapshot closes.
    pub generation: u64,
}

#[derive(Debug, Clone)]
pub struct Saved {
    pub bytes: u64,
    pub nodes: usize,
    pub at: f64,
    pub backup: PathBuf,
    pub duration: Duration,
}

#[derive(Debug)]
pub struct SaveOutcome {
    pub reason: String,
    pub result: Result<Saved, String>,
}

/// Builds the on-disk image of a view.
pub fn image_of(view: SessionView, reason: &str, at: f64, generation: u64) -> SessionImage {
    SessionImage {
        saved_at: at,
        reason: reason.to_string(),
        initialized: view.initialized,
        nodes: view
            .nodes
            .into_iter()
            .map(|n| NodeImage {
                uuid: n.uuid,
                owner: n.owner,
                dependencies: n.dependencies,
                raw_dependencies: ByteBuf::from(n.raw_dependencies.to_vec()),
                raw_data: ByteBuf::from(match n.data {
                    NodeData::Raw(b) => b.to_vec(),
                    NodeData::Value(v) => pickle::encode(&v),
                }),
            })
            .collect(),
        retained: view.retained,
        journal_generation: generation,
    }
}

/// The snapshot's layout borrowing the view's buffers, so a save does not
/// copy the session (it serialises exactly like `SessionImage`).
#[derive(serde::Serialize)]
struct NodeRef<'a> {
    uuid: &'a str,
    owner: &'a str,
    dependencies: &'a Option<Vec<String>>,
    #[serde(with = "serde_bytes")]
    raw_dependencies: &'a [u8],
    #[serde(with = "serde_bytes")]
    raw_data: &'a [u8],
}

#[derive(serde::Serialize)]
struct ImageRef<'a> {
    saved_at: f64,
    reason: &'a str,
    initialized: bool,
    nodes: Vec<NodeRef<'a>>,
    retained: &'a [RetainedImage],
    journal_generation: u64,
}

fn save(dir: &DataDir, max_backups: usize, job: SaveJob) -> Result<Saved, StoreError> {
    let started = Instant::now();
    journal::sync_closed(&dir.prev_journal())?;
    let at = super::now_epoch();
    let view = &job.view;
    // Only patched nodes need encoding; the others are shared bytes.
    let encoded: Vec<Option<Vec<u8>>> = view
        .nodes
        .iter()
        .map(|n| match &n.data {
            NodeData::Value(v) => Some(pickle::encode(v)),
            NodeData::Raw(_) => None,
        })
        .collect();
    let image = ImageRef {
        saved_at: at,
        reason: &job.reason,
        initialized: view.initialized,
        nodes: view
            .nodes
            .iter()
            .zip(&encoded)
            .map(|(n, e)| NodeRef {
                uuid: &n.uuid,
                owner: &n.owner,
                dependencies: &n.dependencies,
                raw_dependencies: &n.raw_dependencies,
                raw_data: match (&n.data, e) {
                    (NodeData::Raw(b), _) => b,
                    (_, Some(e)) => e,
                    _ => &[],
                },
            })
            .collect(),
        retained: &view.retained,
        journal_generation: job.generation,
    };
    let nodes = image.nodes.len();
    let initialized = image.initialized;
    let users = view.users.clone();
    // A copy, not a link: a backup must survive damage to the snapshot.
    // It is written in the same pass as the snapshot.
    let backup = dir.backups().join(snapshot::backup_name(at));
    let keep = (max_backups > 0).then_some(backup.as_path());
    let (bytes, backup_failed) = snapshot::write_atomic_with_backup(&dir.snapshot(), &image, keep, Mode::Direct)?;
    drop(image);
    // The snapshot holds every change of the closed journal now.
    let prev = dir.prev_journal();
    if let Some(generation) = journal::read_generation(&prev)?
        && generation <= job.generation
    {
        std::fs::remove_file(&prev).map_err(|source| StoreError::Io {
            what: "remove the saved journal",
            path: prev.clone(),
            source,
        })?;
    }
    if let Some(e) = backup_failed {
        return Err(e);
    }
    snapshot::prune_backups(&dir.backups(), max_backups)?;
    let meta = SessionMetadata {
        timestamp: at,
        datetime: super::format_iso_utc(at),
        reason: job.reason,
        initialized,
        user_count: users.len(),
        node_count: nodes,
        snapshot_bytes: bytes,
        users,
        format_version: METADATA_FORMAT_VERSION,
    };
    super::write_file_atomic(&dir.metadata(), metadata_json(&meta).as_bytes())?;
    Ok(Saved {
        bytes,
        nodes,
        at,
        backup,
        duration: started.elapsed(),
    })
}

/// Starts the writer thread. Jobs go in, outcomes come back in order.
pub fn start(
    dir: DataDir,
    max_backups: usize,
    outcomes: impl Fn(SaveOutcome) + Send + 'static,
) -> std::io::Result<(mpsc::Sender<SaveJob>, std::thread::JoinHandle<DataDir>)> {
    let (tx, rx) = mpsc::channel::<SaveJob>();
    let handle = std::thread::Builder::new()
        .name("snapshot-writer".into())
        .spawn(move || {
            for job in rx {
                let reason = job.reason.clone();
                let result = save(&dir, max_backups, job).map_err(|e| e.to_string());
                outcomes(SaveOutcome { reason, result });
            }
            dir
        })?;
    Ok((tx, handle))
}
