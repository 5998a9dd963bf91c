//! The daemon's health as `/healthz` reports it: start-up done, the store takes writes, and the
//! reconciler completes passes. Written by the daemon and the reconciler, read by admin.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use haproxy_acme_state::UnixTime;

/// The reconciler completes a pass at least this often, even with nothing due; `/healthz`
/// fails when it has not for [`STALL_AFTER`].
pub const HEARTBEAT: Duration = Duration::from_secs(30);
pub const STALL_AFTER: i64 = 4 * HEARTBEAT.as_secs() as i64;

#[derive(Default)]
pub struct Health {
    /// Set once the store is in line with the configuration (the daemon may still be waiting for
    /// HAProxy, which in compose starts only once we are healthy).
    ready: AtomicBool,
    /// When the reconciler last completed a pass (0: not started; it starts once HAProxy's
    /// runtime API answers).
    last_pass: AtomicI64,
    /// Passes completed since start (the simulated-time tests bound wake-ups with it).
    passes: AtomicU64,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn passed(&self, now: UnixTime) {
        self.last_pass.store(now, Ordering::Release);
        self.passes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    pub fn last_pass(&self) -> UnixTime {
        self.last_pass.load(Ordering::Acquire)
    }

    /// The verdict, given whether a store write just succeeded.
    pub fn verdict(&self, probe: Result<(), String>, now: UnixTime) -> (bool, String) {
        verdict(self.ready(), probe, self.last_pass(), now)
    }
}

/// The health verdict from its inputs. `last_pass` 0: the reconciler has not started (it waits
/// for HAProxy, which in compose waits for us to be healthy).
fn verdict(ready: bool, probe: Result<(), String>, last_pass: i64, now: i64) -> (bool, String) {
    if !ready {
        return (false, "starting".into());
    }
    if let Err(e) = probe {
        return (false, format!("the store does not take writes: {e}"));
    }
    match last_pass {
        0 => (true, "ok (waiting for HAProxy's runtime API)".into()),
        t if now - t > STALL_AFTER => (
            false,
            format!(
                "the reconciler has not completed a pass for {}s (expected every {}s)",
                now - t,
                HEARTBEAT.as_secs()
            ),
        ),
        _ => (true, "ok".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_when_starting_unwritable_or_stalled() {
        let now = 1_000_000;
        assert_eq!(verdict(false, Ok(()), 0, now), (false, "starting".into()));
        assert!(
            verdict(true, Ok(()), 0, now).0,
            "waiting for HAProxy is healthy"
        );
        assert_eq!(verdict(true, Ok(()), now - 5, now), (true, "ok".into()));
        let (ok, why) = verdict(true, Err("No space left on device".into()), now, now);
        assert!(!ok && why.contains("No space left"), "{why}");
        let stalled = now - STALL_AFTER - 1;
        let (ok, why) = verdict(true, Ok(()), stalled, now);
        assert!(!ok && why.contains("has not completed a pass"), "{why}");
    }
}
