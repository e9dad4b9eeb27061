//! Replication objects <-> ZeroMQ frames.
//!
//! Frame 0 of every message is `pickle.dumps(type_num, protocol=4)`; the
//! rest depends on the type (see the protocol contract). Decoding happens
//! once, at the edge; the raw frames are kept so that unchanged messages are
//! forwarded byte for byte.

use bytes::Bytes;

use crate::delta::{Delta, DeltaError};
use crate::pickle::{self, Allow, DecodeError, Value};

pub const TYPE_COMMIT: i64 = 1;
pub const TYPE_NODE: i64 = 2;

/// Length of a UUID string as the clients write it (`str(uuid4())`); node
/// ids longer than this cannot come from an honest client.
pub const MAX_UUID_LEN: usize = 64;
/// Longest user name accepted, in bytes.
pub const MAX_USERNAME_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Command = 3,
    Delete = 4,
    Right = 5,
    Config = 6,
    Snapshot = 7,
    ServerSnapshot = 8,
    Auth = 9,
    Disconnect = 10,
    Kick = 11,
    UpdateClientsState = 12,
    UpdateUserMetadata = 13,
    RequestServerInfo = 14,
}

impl CommandKind {
    pub fn from_type_num(n: i64) -> Option<Self> {
        use CommandKind::*;
        Some(match n {
            3 => Command,
            4 => Delete,
            5 => Right,
            6 => Config,
            7 => Snapshot,
            8 => ServerSnapshot,
            9 => Auth,
            10 => Disconnect,
            11 => Kick,
            12 => UpdateClientsState,
            13 => UpdateUserMetadata,
            14 => RequestServerInfo,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use CommandKind::*;
        match self {
            Command => "Command",
            Delete => "Delete",
            Right => "Right",
            Config => "Config",
            Snapshot => "Snapshot",
            ServerSnapshot => "ServerSnapshot",
            Auth => "Auth",
            Disconnect => "Disconnect",
            Kick => "Kick",
            UpdateClientsState => "UpdateClientsState",
            UpdateUserMetadata => "UpdateUserMetadata",
            RequestServerInfo => "RequestServerInfo",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("expected {expected} frames for {what}, got {got}")]
    FrameCount {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("empty message")]
    Empty,
    #[error("frame 0 is not a type number: {0}")]
    BadType(String),
    #[error("unknown message type {0}")]
    UnknownType(i64),
    #[error("{what} is not valid utf-8")]
    Utf8 { what: &'static str },
    #[error("{what} is too long ({len} bytes)")]
    TooLong { what: &'static str, len: usize },
    #[error("bad {what} pickle: {source}")]
    Pickle { what: &'static str, source: DecodeError },
    #[error("dependencies must be a list of str or None, got {0}")]
    BadDependencies(&'static str),
    #[error("{0}")]
    Delta(String),
}

/// The pickled type number frame, as the clients write it.
pub fn type_frame(type_num: i64) -> Bytes {
    Bytes::from(pickle::encode(&Value::Int(type_num)))
}

/// Reads frame 0.
pub fn read_type(frame: &[u8]) -> Result<i64, WireError> {
    match pickle::decode(frame, Allow::Data) {
        Ok(Value::Int(n)) => Ok(n),
        Ok(other) => Err(WireError::BadType(other.type_name().to_string())),
        Err(e) => Err(WireError::BadType(e.to_string())),
    }
}

fn utf8(frame: &[u8], what: &'static str, max: usize) -> Result<String, WireError> {
    if frame.len() > max {
        return Err(WireError::TooLong { what, len: frame.len() });
    }
    std::str::from_utf8(frame)
        .map(str::to_owned)
        .map_err(|_| WireError::Utf8 { what })
}

fn expect_frames(frames: &[Bytes], what: &'static str, expected: usize) -> Result<(), WireError> {
    if frames.len() != expected {
        return Err(WireError::FrameCount {
            what,
            expected,
            got: frames.len(),
        });
    }
    Ok(())
}

/// A command-family message.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub kind: CommandKind,
    pub owner: String,
    pub data: Value,
    /// The pickled data exactly as received, for forwarding.
    pub raw_data: Bytes,
}

impl Command {
    pub fn decode(frames: &[Bytes]) -> Result<Command, WireError> {
        let first = frames.first().ok_or(WireError::Empty)?;
        let type_num = read_type(first)?;
        let kind = CommandKind::from_type_num(type_num).ok_or(WireError::UnknownType(type_num))?;
        expect_frames(frames, kind.name(), 3)?;
        let owner = utf8(&frames[1], "owner", MAX_USERNAME_LEN)?;
        let data = pickle::decode(&frames[2], Allow::Data).map_err(|source| WireError::Pickle {
            what: "command data",
            source,
        })?;
        Ok(Command {
            kind,
            owner,
            data,
            raw_data: frames[2].clone(),
        })
    }

    /// Frames of a command the server writes.
    pub fn frames(kind: CommandKind, owner: &str, data: &Value) -> Vec<Bytes> {
        Self::frames_raw(kind, owner, Bytes::from(pickle::encode(data)))
    }

    /// Frames of a command whose pickled data is already at hand.
    pub fn frames_raw(kind: CommandKind, owner: &str, raw_data: Bytes) -> Vec<Bytes> {
        vec![
            type_frame(kind as i64),
            Bytes::copy_from_slice(owner.as_bytes()),
            raw_data,
        ]
    }
}

/// Dependencies of a node: a list of uuids, or None.
pub type Dependencies = Option<Vec<String>>;

fn decode_dependencies(frame: &[u8]) -> Result<Dependencies, WireError> {
    let value = pickle::decode(frame, Allow::Data).map_err(|source| WireError::Pickle {
        what: "dependencies",
        source,
    })?;
    match value {
        Value::None => Ok(None),
        Value::List(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Str(s) if s.len() <= MAX_UUID_LEN => Ok(s.to_string()),
                other => Err(WireError::BadDependencies(other.type_name())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(WireError::BadDependencies(other.type_name())),
    }
}

pub fn encode_dependencies(deps: &Dependencies) -> Bytes {
    let value = match deps {
        None => Value::None,
        Some(list) => Value::List(list.iter().map(|s| Value::str(s)).collect()),
    };
    Bytes::from(pickle::encode(&value))
}

/// The frames of a full node: `[type, uuid, owner, deps, data]`.
pub fn node_frames(uuid: &str, owner: &str, raw_dependencies: Bytes, raw_data: Bytes) -> Vec<Bytes> {
    vec![
        type_frame(TYPE_NODE),
        Bytes::copy_from_slice(uuid.as_bytes()),
        Bytes::copy_from_slice(owner.as_bytes()),
        raw_dependencies,
        raw_data,
    ]
}

/// A full node as it travels: `[type, uuid, owner, deps, data]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFrames {
    pub uuid: String,
    pub owner: String,
    pub dependencies: Dependencies,
    pub raw_dependencies: Bytes,
    pub raw_data: Bytes,
}

impl NodeFrames {
    /// Decodes and validates a node; the data pickle is checked to be plain
    /// data so no client is ever sent something it cannot load.
    pub fn decode(frames: &[Bytes]) -> Result<NodeFrames, WireError> {
        expect_frames(frames, "Node", 5)?;
        let type_num = read_type(&frames[0])?;
        if type_num != TYPE_NODE {
            return Err(WireError::UnknownType(type_num));
        }
        Self::decode_body(frames)
    }

    fn decode_body(frames: &[Bytes]) -> Result<NodeFrames, WireError> {
        let uuid = utf8(&frames[1], "node uuid", MAX_UUID_LEN)?;
        let owner = utf8(&frames[2], "node owner", MAX_USERNAME_LEN)?;
        let dependencies = decode_dependencies(&frames[3])?;
        pickle::decode(&frames[4], Allow::Data).map_err(|source| WireError::Pickle {
            what: "node data",
            source,
        })?;
        Ok(NodeFrames {
            uuid,
            owner,
            dependencies,
            raw_dependencies: frames[3].clone(),
            raw_data: frames[4].clone(),
        })
    }

    /// The node's wire frames with the given owner.
    pub fn frames(&self, owner: &str) -> Vec<Bytes> {
        node_frames(&self.uuid, owner, self.raw_dependencies.clone(), self.raw_data.clone())
    }

    /// The node frames carried inside a snapshot command (`'DATA': [bytes]`).
    pub fn from_value(v: &Value) -> Result<NodeFrames, WireError> {
        let items = match v {
            Value::List(items) | Value::Tuple(items) => items,
            other => return Err(WireError::BadType(other.type_name().to_string())),
        };
        let frames = items
            .iter()
            .map(|i| match i {
                // The decoded buffer becomes the node's, without a copy.
                Value::Bytes(b) => Some(Bytes::from_owner(b.clone())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(WireError::BadType("node frames must be bytes".into()))?;
        Self::decode(&frames)
    }
}

/// A delta update: `[type, node_id, deps, delta]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitFrames {
    pub node_id: String,
    pub dependencies: Dependencies,
    pub raw_dependencies: Bytes,
    pub raw_delta: Bytes,
    /// The delta, parsed at the edge so the session only applies it.
    pub delta: Delta,
}

impl CommitFrames {
    pub fn decode(frames: &[Bytes]) -> Result<CommitFrames, WireError> {
        expect_frames(frames, "Commit", 4)?;
        let node_id = utf8(&frames[1], "commit node id", MAX_UUID_LEN)?;
        let dependencies = decode_dependencies(&frames[2])?;
        let delta = Delta::decode(&frames[3]).map_err(|e| match e {
            DeltaError::Pickle(source) => WireError::Pickle { what: "delta", source },
            other => WireError::Delta(other.to_string()),
        })?;
        Ok(CommitFrames {
            node_id,
            dependencies,
            raw_dependencies: frames[2].clone(),
            raw_delta: frames[3].clone(),
            delta,
        })
    }
}

/// What arrives on the data port.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Node(NodeFrames),
    Commit(CommitFrames),
}

impl Update {
    pub fn decode(frames: &[Bytes]) -> Result<Update, WireError> {
        let first = frames.first().ok_or(WireError::Empty)?;
        match read_type(first)? {
            TYPE_NODE => NodeFrames::decode(frames).map(Update::Node),
            TYPE_COMMIT => CommitFrames::decode(frames).map(Update::Commit),
            other => Err(WireError::UnknownType(other)),
        }
    }

    pub fn node_id(&self) -> &str {
        match self {
            Update::Node(n) => &n.uuid,
            Update::Commit(c) => &c.node_id,
        }
    }

    /// Gives the bytes a stored node keeps their own buffers. Frames read
    /// from a socket share libzmq's receive buffer (8 KB, holding several
    /// messages): right for relaying, but a node kept for hours would keep
    /// the whole buffer alive with it. Bytes read from disk or from a
    /// decoded pickle already own theirs, so only the network path calls this.
    pub fn detach(&mut self) {
        fn own(bytes: &mut Bytes) {
            *bytes = Bytes::copy_from_slice(bytes);
        }
        match self {
            Update::Node(n) => {
                own(&mut n.raw_dependencies);
                own(&mut n.raw_data);
            }
            Update::Commit(c) => own(&mut c.raw_dependencies),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_frame_matches_cpython() {
        assert_eq!(&type_frame(14)[..], b"\x80\x04K\x0e.");
    }

    #[test]
    fn command_round_trip() {
        let data = pickle::dict([("user", Value::str("bob"))]);
        let frames = Command::frames(CommandKind::Kick, "alice", &data);
        let cmd = Command::decode(&frames).unwrap();
        assert_eq!(cmd.kind, CommandKind::Kick);
        assert_eq!(cmd.owner, "alice");
        assert_eq!(cmd.data, data);
    }

    #[test]
    fn wrong_frame_count_is_refused() {
        let mut frames = Command::frames(CommandKind::Kick, "alice", &Value::None);
        frames.pop();
        assert!(matches!(Command::decode(&frames), Err(WireError::FrameCount { .. })));
    }

    #[test]
    fn node_with_bad_dependencies_is_refused() {
        let frames = vec![
            type_frame(TYPE_NODE),
            Bytes::from_static(b"u1"),
            Bytes::from_static(b"COMMON"),
            Bytes::from(pickle::encode(&Value::Int(3))),
            Bytes::from(pickle::encode(&Value::None)),
        ];
        assert_eq!(NodeFrames::decode(&frames), Err(WireError::BadDependencies("int")));
    }

    #[test]
    fn unknown_type_is_refused() {
        let frames = vec![type_frame(99), Bytes::new(), Bytes::new()];
        assert_eq!(Command::decode(&frames), Err(WireError::UnknownType(99)));
    }
}
