//! Signals -> an orderly stop.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

pub struct Shutdown {
    rx: mpsc::UnboundedReceiver<&'static str>,
}

impl Shutdown {
    /// Listens for SIGINT and SIGTERM. A second signal while the first is
    /// being handled ends the process at once.
    pub fn listen() -> std::io::Result<Shutdown> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if seen {
                    tracing::warn!(signal = name, "second signal: exiting immediately");
                    std::process::exit(128 + sig);
                }
                seen = true;
                let _ = tx.send(name);
            }
        })?;
        Ok(Shutdown { rx })
    }

    pub async fn recv(&mut self) -> &'static str {
        self.rx.recv().await.unwrap_or("signal listener gone")
    }
}
