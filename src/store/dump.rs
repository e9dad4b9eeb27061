//! The replication library's session dump (`Repository.dumps`/`loads`):
//! gzip of a protocol-4 pickle of `{'nodes': [node frames], 'users': {}}`,
//! what the add-on's "save session data" writes and "import" reads.

use std::io::{Read, Write};
use std::path::Path;

use serde_bytes::ByteBuf;

use super::StoreError;
use super::snapshot::{NodeImage, SessionImage};
use crate::pickle::{self, Allow, Value, dict};
use crate::wire::{self, NodeFrames};

/// Largest dump accepted once decompressed: a guard against gzip bombs,
/// well above any scene a studio shares.
pub const MAX_DUMP_BYTES: u64 = 8 * 1024 * 1024 * 1024;

pub fn encode(image: &SessionImage) -> Result<Vec<u8>, StoreError> {
    let nodes = image
        .nodes
        .iter()
        .map(|n| {
            Value::List(vec![
                Value::bytes(&wire::type_frame(wire::TYPE_NODE)),
                Value::bytes(n.uuid.as_bytes()),
                Value::bytes(n.owner.as_bytes()),
                Value::bytes(&n.raw_dependencies),
                Value::bytes(&n.raw_data),
            ])
        })
        .collect();
    let db = dict([("nodes", Value::List(nodes)), ("users", Value::Dict(Vec::new()))]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&pickle::encode(&db))
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    gz.finish().map_err(|e| StoreError::Encode(e.to_string()))
}

pub fn decode(path: &Path, gz: &[u8]) -> Result<SessionImage, StoreError> {
    let invalid = |why: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .take(MAX_DUMP_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| invalid(format!("not a gzip session dump: {e}")))?;
    if raw.len() as u64 > MAX_DUMP_BYTES {
        return Err(invalid(format!("larger than {MAX_DUMP_BYTES} bytes once decompressed")));
    }
    let db = pickle::decode(&raw, Allow::Data).map_err(|e| invalid(e.to_string()))?;
    let Some(Value::List(nodes)) = db.get("nodes") else {
        return Err(invalid("no 'nodes' list".into()));
    };
    let mut out = Vec::with_capacity(nodes.len());
    for (i, frames) in nodes.iter().enumerate() {
        let node = NodeFrames::from_value(frames).map_err(|e| invalid(format!("node {i}: {e}")))?;
        out.push(NodeImage {
            uuid: node.uuid,
            owner: node.owner,
            dependencies: node.dependencies,
            raw_dependencies: ByteBuf::from(node.raw_dependencies.to_vec()),
            raw_data: ByteBuf::from(node.raw_data.to_vec()),
        });
    }
    Ok(SessionImage {
        saved_at: super::now_epoch(),
        reason: format!("imported from {}", path.display()),
        initialized: !out.is_empty(),
        nodes: out,
        retained: Vec::new(),
        journal_generation: 0,
    })
}
