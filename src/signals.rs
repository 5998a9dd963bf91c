//! Process signals: SIGTERM and SIGINT ask for a graceful shutdown (a second one exits at once).
//! The only user of signal-hook.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::watch;

/// Starts a thread that turns the returned receiver to `true` on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> io::Result<watch::Receiver<bool>> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(130);
                }
                tracing::info!(signal = sig, "signal received: shutting down");
                let _ = tx.send(true);
            }
        })?;
    Ok(rx)
}
