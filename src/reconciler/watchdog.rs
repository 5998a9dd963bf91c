//! The watchdog: every `WATCHDOG_INTERVAL` (±10 %), HAProxy is asked which certificate it
//! serves for each installed one and each file is read (`Haproxy::observe`, batched: one
//! runtime-API connection per batch). A certificate served, or on disk, differently from the
//! store (HAProxy reloaded with old files, a node restarted without them, a file replaced) is
//! recorded (`Event::Drifted`: no longer installed, so its plan installs it again at once),
//! counted, and woken.
//!
//! Which certificates are installed, with which serial, is kept in memory from the records the
//! reconciler reads and writes anyway (the start-up scan, reloads, every commit): the watchdog
//! does no store scan of its own and writes only when it finds something.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use haproxy_acme_state::{Event, Record};
use tokio::sync::watch;

use super::Reconciler;
use crate::installer::Observed;

/// Installed certificate ids (shared with the schedule where possible) and a 64-bit digest of
/// their serials ([`serial_key`]): 100,000 certificates cost ~3 MiB, not the ~7 of the serials.
#[derive(Clone, Default)]
pub(super) struct Watched(Arc<Mutex<HashMap<Arc<str>, u64>>>);

/// A digest of a serial's value: leading zeros and case are spelling (as `same_serial`).
fn serial_key(serial: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in serial.trim_start_matches('0').bytes() {
        b.to_ascii_uppercase().hash(&mut h);
    }
    h.finish()
}

/// Certificates compared per `Haproxy::observe` call (it cuts them into runtime-API batches).
const CHUNK: usize = 512;

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Brings the entry of `r` in line with it: watched while its stored certificate is the
    /// installed one and it is configured. `id` is the record's id, shared if the caller has it.
    pub(super) fn note(&self, id: impl FnOnce() -> Arc<str>, r: &Record) {
        let mut w = self.lock();
        match r
            .cert
            .as_ref()
            .filter(|_| r.is_installed() && !r.unconfigured)
        {
            Some(c) => {
                let key = serial_key(&c.serial);
                match w.get_mut(r.id.as_str()) {
                    Some(k) => *k = key,
                    None => {
                        w.insert(id(), key);
                    }
                }
            }
            None => {
                w.remove(r.id.as_str());
            }
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl Reconciler {
    /// No longer checks `id` (removed from the configuration).
    pub(super) fn unwatch(&self, id: &str) {
        self.watched.forget(id);
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
        let watched: Vec<(Arc<str>, u64)> = self
            .watched
            .lock()
            .iter()
            .map(|(id, key)| (id.clone(), *key))
            .collect();
        let mut drifted = 0;
        for chunk in watched.chunks(CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| &**id).collect();
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
        crate::metrics::global().watchdog_checked(watched.len() as u64, self.clock.now());
        tracing::debug!(certificates = watched.len(), drifted, "watchdog: checked");
        drifted
    }

    /// Records that `id`, installed with the serial of digest `key`, was not what the watchdog
    /// `saw`; wakes it to be installed again. False when the finding is stale (a renewal was
    /// installed meanwhile) or the store fails.
    async fn drifted(&self, id: &str, key: u64, saw: Observed) -> bool {
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
