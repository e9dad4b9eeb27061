//! `replication-server health`: asks a server for its info over the
//! protocol, as a client's "refresh server list" does.

use std::time::Duration;

use crate::pickle::Value;
use crate::wire::{Command, CommandKind};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("ZeroMQ error: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("invalid answer from {0}: {1}")]
    Invalid(String, String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    pub private: bool,
    pub version: String,
}

/// Sends RequestServerInfo to `host:port` and waits for the answer.
pub fn request_server_info(host: &str, port: u16, timeout: Duration) -> Result<ServerInfo, HealthError> {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    let endpoint = format!("tcp://{host}:{port}");
    socket.connect(&endpoint)?;
    let request = Command::frames(CommandKind::RequestServerInfo, "health", &Value::str("RQ_INFO"));
    let parts: Vec<&[u8]> = request.iter().map(|b| &b[..]).collect();
    socket.send_multipart(parts, 0)?;
    if socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
        return Err(HealthError::Timeout(endpoint, timeout));
    }
    let frames: Vec<bytes::Bytes> = socket.recv_multipart(0)?.into_iter().map(bytes::Bytes::from).collect();
    let cmd = Command::decode(&frames).map_err(|e| HealthError::Invalid(endpoint.clone(), e.to_string()))?;
    if cmd.kind != CommandKind::RequestServerInfo {
        return Err(HealthError::Invalid(
            endpoint,
            format!("unexpected {}", cmd.kind.name()),
        ));
    }
    match (cmd.data.get("private"), cmd.data.get("version").and_then(Value::as_str)) {
        (Some(Value::Bool(private)), Some(version)) => Ok(ServerInfo {
            private: *private,
            version: version.to_string(),
        }),
        _ => Err(HealthError::Invalid(endpoint, "missing private/version".into())),
    }
}
