//! The watchdog: every `WATCHDOG_INTERVAL` (±10 %), HAProxy is asked which certificate it
//! serves for each installed one and each file is read (`Haproxy::observe`, batched: one
//! runtime-API connection per batch). A certificate served, or on disk, differently from the
//! store (HAProxy reloaded with old files, a node restarted without them, a file replaced) is
//! recorded (`Event::Drifted`: no longer installed, so its plan installs it again at once),
//! counted, and woken.
//!
//! Which certificates are installed, with a digest of their serial, is kept in memory (a column
//! of the reconciler's table of ids, `ids.rs`) from the records the reconciler reads and writes
//! anyway (the start-up scan, reloads, every commit): the watchdog
//! does no store scan of its own and writes only when it finds something.

use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::Arc;

use haproxy_acme_state::{Event, Record};
use tokio::sync::watch;

use super::ids::{digest, SharedIds};
use super::Reconciler;
use crate::installer::Observed;

/// A digest of a serial's value: leading zeros and case are spelling (as `same_serial`). The
/// table of ids keeps it for each installed certificate ([`note`]): 8 bytes, not the serial.
fn serial_key(serial: &str) -> NonZeroU64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in serial.trim_start_matches('0').bytes() {
        b.to_ascii_uppercase().hash(&mut h);
    }
    digest(h.finish())
}

/// Certificates compared per `Haproxy::observe` call (it cuts them into runtime-API batches).
const CHUNK: usize = 512;

/// Brings the watchdog's entry of `r` in line with it: watched while its stored certificate is
/// the installed one and it is configured.
pub(super) fn note(ids: &SharedIds, r: &Record) {
    let key = r
        .cert
        .as_ref()
        .filter(|_| r.is_installed() && !r.unconfigured)
        .map(|c| serial_key(&c.serial));
    ids.lock().watch(&r.id, key);
}

impl Reconciler {
    /// No longer checks `id` (removed from the configuration).
    pub(super) fn unwatch(&self, id: &str) {
        self.ids.lock().watch(id, None);
    }

    /// Checks every `WATCHDOG_INTERVAL` (with up to 10 % jitter either way) until shutdown.
    pub(super) async fn watchdog(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(interval) = self.config.watchdog_interval else {
            return;
        };
        loop {
            let jitter = 0.9 + f64::from(self.dice.permille()) / 5000.0;
            tokio::select! {
                _ = tokio::time::sleep(interval.mul_f64(jitter)) => {}
                _ = shutdown.changed() => return,
            }
            self.check_served().await;
        }
    }

    /// Compares what HAProxy serves and the files hold with every installed certificate;
    /// records, counts and wakes each one that differs. Returns how many did.
    pub(super) async fn check_served(&self) -> usize {
        let (mut drifted, mut checked, mut from) = (0, 0, Some(0));
        // A chunk at a time, in handle order: the table is not copied, nor held across a call.
        while let Some(start) = from {
            let (chunk, next) = self.ids.lock().watched_from(start, CHUNK);
            from = next;
            if chunk.is_empty() {
                break;
            }
            checked += chunk.len();
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
            let observed = match self.haproxy.observe(&ids).await {
                Ok(o) => o,
                Err(e) => {
                    crate::metrics::global().runtime_api_error();
                    tracing::warn!(error = %e, "watchdog: cannot see what HAProxy serves; looking again at the next check");
                    return drifted;
                }
            };
            for ((id, key), seen) in chunk.iter().zip(observed) {
                let holds =
                    |s: &Option<String>| s.as_deref().is_some_and(|s| serial_key(s) == *key);
                if holds(&seen.served) && holds(&seen.file) {
                    continue;
                }
                if self.drifted(id, *key, seen).await {
                    drifted += 1;
                }
            }
        }
        crate::metrics::global().watchdog_checked(checked as u64, self.clock.now());
        tracing::debug!(certificates = checked, drifted, "watchdog: checked");
        drifted
    }

    /// Records that `id`, installed with the serial of digest `key`, was not what the watchdog
    /// `saw`; wakes it to be installed again. False when the finding is stale (a renewal was
    /// installed meanwhile) or the store fails.
    async fn drifted(&self, id: &str, key: NonZeroU64, saw: Observed) -> bool {
        let stored = match self.store.get(id).await {
            Ok(r) => r.and_then(|r| r.cert).map(|c| c.serial),
            Err(e) => {
                tracing::error!(cert = %id, error = %e, "watchdog: store error");
                return false;
            }
        };
        // The record's own spelling of the serial the finding is about, or nothing to say.
        let Some(serial) = stored.filter(|s| serial_key(s) == key) else {
            return false;
        };
        let event = Event::Drifted {
            serial: serial.clone(),
            served: saw.served.clone(),
            file: saw.file.clone(),
        };
        let count = |r: &Record| r.drift.as_ref().map(|d| d.count);
        match self.commit_both(id, event).await {
            // Applied only if that certificate is still the installed one.
            Ok((old, new)) if count(&old) != count(&new) => {
                crate::metrics::global().drift();
                tracing::warn!(
                    cert = %id,
                    stored = %serial,
                    served = saw.served.as_deref().unwrap_or("none"),
                    file = saw.file.as_deref().unwrap_or("none"),
                    "watchdog: HAProxy or the certificate file does not hold the stored certificate; installing it again"
                );
                self.control.wake(id.to_string());
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(cert = %id, error = %e, "watchdog: store error");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serial_key;

    #[test]
    fn a_serial_digest_ignores_leading_zeros_and_case() {
        assert_eq!(serial_key("0A1B"), serial_key("a1b"));
        assert_eq!(serial_key("00FF"), serial_key("ff"));
        assert_ne!(serial_key("0A1B"), serial_key("0A1C"));
        assert_ne!(serial_key("1A"), serial_key("1A0"));
    }
}
