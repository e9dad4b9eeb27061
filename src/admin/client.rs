//! The command-line side of the admin endpoint: `replication-server users`,
//! `kick`, `save`, `status`, `export`. A few lines of HTTP/1.0 over a
//! socket: it only ever talks to our own endpoint, which answers every
//! request with a length or by closing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long to wait for the server to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Quick questions (users, status, kick).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(15);
/// A save or an export of a large session writes or encodes gigabytes.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no server answers on the admin endpoint {0}: {1} (is it running? is ADMIN_ADDR the same as the server's?)"
    )]
    Unreachable(SocketAddr, std::io::Error),
    #[error("the admin endpoint {0} did not answer in time: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("the admin endpoint {0} sent an invalid answer: {1}")]
    Protocol(SocketAddr, String),
    #[error("the admin endpoint refused the request: {0} (is ADMIN_PASSWORD the same as the server's?)")]
    Unauthorized(String),
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// Exit codes scripts can tell apart: 3 when nobody answered, 1 when
    /// the server answered no.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable(..) => 3,
            _ => 1,
        }
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Bytes safe in a URL path segment as they are.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if unreserved(b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Sends one request and streams the body of a successful (2xx) answer to
/// `sink`; other answers come back in the body.
pub fn call_into(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    timeout: Duration,
    sink: &mut dyn Write,
) -> Result<Response, ClientError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| ClientError::Unreachable(addr, e))?;
    let io = |e| ClientError::Io(addr, e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(QUICK_TIMEOUT)).map_err(io)?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Err(ClientError::Protocol(
                addr,
                "connection closed before the answer".into(),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(ClientError::Protocol(addr, "answer head too long".into()));
        }
    };
    let rest = head.split_off(split + 4);
    let text = String::from_utf8_lossy(&head);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ClientError::Protocol(addr, format!("bad status line in {text:?}")))?;
    let length = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<u64>().ok())?
    });
    let mut body = Vec::new();
    let target: &mut dyn Write = if (200..300).contains(&status) { sink } else { &mut body };
    target.write_all(&rest).map_err(io)?;
    let mut copied = rest.len() as u64;
    loop {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        target.write_all(&buf[..n]).map_err(io)?;
        copied += n as u64;
    }
    if let Some(expected) = length
        && copied != expected
    {
        return Err(ClientError::Protocol(
            addr,
            format!("answer cut short: {copied} of {expected} bytes"),
        ));
    }
    Ok(Response { status, body })
}

/// A request whose answer is JSON; non-2xx answers become errors with the
/// server's message.
pub fn call_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ClientError> {
    let mut ok_body = Vec::new();
    let r = call_into(addr, method, path, token, timeout, &mut ok_body)?;
    let body = if (200..300).contains(&r.status) {
        ok_body
    } else {
        r.body
    };
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(addr, format!("status {}: not JSON: {e}", r.status)))?;
    Ok((r.status, json))
}

/// The server's error message in a non-2xx answer.
pub fn refusal(status: u16, json: &serde_json::Value) -> ClientError {
    let message = json
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("no reason given")
        .to_string();
    if status == 401 {
        ClientError::Unauthorized(message)
    } else {
        ClientError::Failed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_paths() {
        assert_eq!(path_segment("alice"), "alice");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn nobody_listening_is_exit_code_3() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = call_json(addr, "GET", "/health", "", QUICK_TIMEOUT).unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(e.to_string().contains("no server answers"), "{e}");
    }
}
