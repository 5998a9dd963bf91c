//! Certificates waiting for a full disk: a step that failed on the store (its outcome could not
//! be recorded) or an install whose file could not be written. While any waits, the loop probes
//! that part every [`PROBE_SECS`] (a store write; a file in the certificate directory) and looks
//! at the certificate again as soon as a probe succeeds, instead of after its retry delay or
//! its install backoff, which a long outage grows to a day.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use haproxy_acme_state::{apply, Event, Record, Step, UnixTime};

use super::Reconciler;
use crate::health::Part;
use crate::store::Change;

/// How often an awaited part is probed.
pub(super) const PROBE_SECS: i64 = 2;

/// The certificates waiting, by what they wait for.
#[derive(Default)]
pub(super) struct Waits {
    by_part: BTreeMap<Part, HashSet<String>>,
    probe_at: UnixTime,
}

impl Waits {
    /// Certificate `id`'s task ended waiting for `part`, or for nothing. It waits for the store
    /// only while the store is failing (a store error can also be a record that vanished).
    pub(super) fn ended(&mut self, r: &Reconciler, id: &str, part: Option<Part>) {
        for ids in self.by_part.values_mut() {
            ids.remove(id);
        }
        self.by_part.retain(|_, ids| !ids.is_empty());
        let failing = |p: Part| p != Part::Store || r.health.conditions().get(p).is_some();
        if let Some(p) = part.filter(|&p| failing(p)) {
            self.by_part.entry(p).or_default().insert(id.to_string());
        }
    }

    /// The longest the loop may sleep: until the next probe while anything waits.
    pub(super) fn cap(&self, wait: Duration) -> Duration {
        if self.by_part.is_empty() {
            wait
        } else {
            wait.min(Duration::from_secs(PROBE_SECS as u64))
        }
    }

    /// Probes every awaited part if a probe is due; returns the certificates whose part works
    /// again (an install that failed on the certificate directory has its backoff ended).
    pub(super) async fn recovered(&mut self, r: &Reconciler, now: UnixTime) -> Vec<String> {
        if self.by_part.is_empty() || now < self.probe_at {
            return Vec::new();
        }
        self.probe_at = now + PROBE_SECS;
        let mut back = Vec::new();
        let parts: Vec<Part> = self.by_part.keys().copied().collect();
        for part in parts {
            if !r.probe(part, now).await {
                continue;
            }
            let ids = self.by_part.remove(&part).unwrap_or_default();
            if part == Part::CertsDir {
                for id in &ids {
                    r.end_install_backoff(id, now).await;
                }
            }
            back.extend(ids);
        }
        back
    }
}

impl Reconciler {
    /// Whether `part` works now (the probe's outcome is noted in the conditions).
    async fn probe(&self, part: Part, now: UnixTime) -> bool {
        match part {
            // Through the store wrapper, which notes it.
            Part::Store => self.store.probe_write(now).await.is_ok(),
            Part::CertsDir => {
                let dir = self.config.certs_dir.clone();
                let probed = tokio::task::spawn_blocking(move || crate::health::probe_dir(&dir))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(|e| format!("{}: {e}", self.config.certs_dir.display()));
                let ok = probed.is_ok();
                self.health.conditions().record(part, now, probed);
                ok
            }
            Part::RuntimeApi | Part::Ca => false,
        }
    }

    /// The certificate directory takes files again: an install that failed is tried now rather
    /// than after its backoff (the `retry` an operator would do). Not when a deploy hook failed:
    /// that is retried only when an operator says so.
    async fn end_install_backoff(&self, id: &str, now: UnixTime) {
        let install_failed = |r: &Record| {
            r.failure.as_ref().is_some_and(|f| f.step == Step::Install)
                && r.hook.as_ref().is_none_or(|h| h.error.is_none())
        };
        let ended = self
            .store
            .update(id, move |r| match r {
                Some(r) if install_failed(&r) => (Change::Put(apply(&r, Event::Retry, now)), ()),
                _ => (Change::Keep, ()),
            })
            .await;
        if let Err(e) = ended {
            tracing::warn!(cert = id, error = %e, "cannot end the install backoff; it runs out");
        }
    }
}
