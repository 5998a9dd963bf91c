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
use std::sync::{Arc, Mutex};

use haproxy_acme_state::attention::same_serial;
use haproxy_acme_state::{Event, Record};
use tokio::sync::watch;

use super::Reconciler;

/// Installed certificate ids (shared with the schedule where possible) and their serials.
#[derive(Clone, Default)]
pub(super) struct Watched(Arc<Mutex<HashMap<Arc<str>, Box<str>>>>);

/// Certificates compared per `Haproxy::observe` call (it cuts them into runtime-API batches).
const CHUNK: usize = 512;

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Box<str>>> {
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
            Some(c) if w.get(r.id.as_str()).map(|s| &**s) != Some(c.serial.as_str()) => {
                w.insert(id(), c.serial.clone().into_boxed_str());
            }
            Some(_) => {}
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
        let watched: Vec<(Arc<str>, Box<str>)> = self
            .watched
            .lock()
            .iter()
            .map(|(id, serial)| (id.clone(), serial.clone()))
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
            for ((id, serial), seen) in chunk.iter().zip(observed) {
                let holds =
                    |s: &Option<String>| s.as_deref().is_some_and(|s| same_serial(s, serial));
                if holds(&seen.served) && holds(&seen.file) {
                    continue;
                }
                let event = Event::Drifted {
                    serial: serial.to_string(),
                    served: seen.served.clone(),
                    file: seen.file.clone(),
                };
                let count = |r: &Record| r.drift.as_ref().map(|d| d.count);
                match self.commit_both(id, event).await {
                    Ok((old, new)) if count(&old) != count(&new) => {
                        drifted += 1;
                        crate::metrics::global().drift();
                        tracing::warn!(
                            cert = %id,
                            stored = %serial,
                            served = seen.served.as_deref().unwrap_or("none"),
                            file = seen.file.as_deref().unwrap_or("none"),
                            "watchdog: HAProxy or the certificate file does not hold the stored certificate; installing it again"
                        );
                        self.control.wake(id.to_string());
                    }
                    // Installed anew meanwhile: the finding was about an older certificate.
                    Ok(_) => {}
                    Err(e) => tracing::error!(cert = %id, error = %e, "watchdog: store error"),
                }
            }
        }
        crate::metrics::global().watchdog_checked(watched.len() as u64, self.clock.now());
        tracing::debug!(certificates = watched.len(), drifted, "watchdog: checked");
        drifted
    }
}
