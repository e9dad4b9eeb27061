//! What reaches the server loop from outside its sockets: admin requests,
//! finished saves and signals. The loop sleeps in `zmq::poll`, so a sender
//! queues its message and writes a byte to a socket pair the poll watches.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc;

use crate::admin::AdminRequest;
use crate::store::writer::SaveOutcome;

#[derive(Debug)]
pub enum Control {
    Admin(AdminRequest),
    Saved(SaveOutcome),
    Signal(&'static str),
}

/// A cloneable handle any thread may send through.
#[derive(Clone)]
pub struct ControlSender {
    queue: mpsc::Sender<Control>,
    wake: Arc<UnixStream>,
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlSender")
    }
}

impl ControlSender {
    /// False when the server loop has ended.
    pub fn send(&self, message: Control) -> bool {
        if self.queue.send(message).is_err() {
            return false;
        }
        // A full pipe already holds a wake-up; nothing is lost.
        let _ = (&*self.wake).write(&[1]);
        true
    }
}

pub struct ControlReceiver {
    queue: mpsc::Receiver<Control>,
    wake: UnixStream,
}

impl ControlReceiver {
    /// The descriptor to poll next to the sockets.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Takes what is queued, without waiting.
    pub fn drain(&mut self) -> Vec<Control> {
        let mut sink = [0u8; 256];
        while matches!(self.wake.read(&mut sink), Ok(n) if n > 0) {}
        self.queue.try_iter().collect()
    }

    /// Waits for one message (used while stopping, when the sockets are gone).
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Control> {
        self.queue.recv_timeout(timeout).ok()
    }
}

pub fn channel() -> std::io::Result<(ControlSender, ControlReceiver)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        ControlSender {
            queue: tx,
            wake: Arc::new(a),
        },
        ControlReceiver { queue: rx, wake: b },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_wakes_the_poll() {
        let (tx, mut rx) = channel().unwrap();
        let mut items = [zmq::PollItem::from_fd(rx.fd(), zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 0);
        let other = tx.clone();
        std::thread::spawn(move || other.send(Control::Signal("SIGTERM")))
            .join()
            .unwrap();
        assert_eq!(zmq::poll(&mut items, 1_000).unwrap(), 1);
        assert!(matches!(rx.drain()[..], [Control::Signal("SIGTERM")]));
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 0, "drained");
        drop(rx);
        assert!(!tx.send(Control::Signal("SIGINT")), "the loop is gone");
    }
}
