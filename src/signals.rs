//! Process signals: SIGTERM and SIGINT ask for a graceful shutdown (a second one exits at once);
//! SIGHUP asks for the configuration to be read again. The only user of signal-hook.

use std::io;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::watch;

/// Starts a thread that turns the returned receiver to `true` on the first SIGTERM or SIGINT,
/// and bumps `reload` on each SIGHUP.
pub fn install(reload: Arc<watch::Sender<u64>>) -> io::Result<watch::Receiver<bool>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!("SIGHUP: reading the configuration again");
                    reload.send_modify(|n| *n = n.wrapping_add(1));
                    continue;
                }
                stops += 1;
                if stops > 1 {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(130);
                }
                tracing::info!(signal = sig, "signal received: shutting down");
                let _ = tx.send(true);
            }
        })?;
    Ok(rx)
}
