//! Signals -> an orderly stop.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Calls `stop` on the first SIGINT or SIGTERM. A second signal while the
/// first is being handled ends the process at once.
pub fn listen(stop: impl Fn(&'static str) + Send + 'static) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut seen = false;
        for sig in signals.forever() {
            let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
            if seen {
                tracing::warn!(signal = name, "second signal: exiting immediately");
                std::process::exit(128 + sig);
            }
            seen = true;
            stop(name);
        }
    })?;
    Ok(())
}
