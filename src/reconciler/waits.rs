//! Certificates waiting for a part of the world: a step that failed on the store (a full disk:
//! its outcome could not be recorded), an install whose file could not be written or that did
//! not reach HAProxy's runtime API. While any waits, the loop probes that part (a store write; a
//! file in the certificate directory; `show info`), first after [`PROBE_FIRST`] seconds, then
//! twice as long after each failed probe up to [`PROBE_MAX`], and looks at the certificate again
//! as soon as a probe succeeds, instead of after its retry delay or its install backoff, which a
//! long outage grows to a day. The probes also end the part's condition, so `status` does not
//! show a stale one.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use haproxy_acme_state::{apply, Event, Record, Step, UnixTime};

use super::Reconciler;
use crate::health::Part;
use crate::store::Change;

/// The first probe of a part comes this many seconds after a certificate starts waiting for it.
pub(super) const PROBE_FIRST: i64 = 2;
/// The longest time between two probes of a part (a long outage costs a probe this often).
pub(super) const PROBE_MAX: i64 = 60;

/// The certificates waiting, by what they wait for.
#[derive(Default)]
pub(super) struct Waits {
    by_part: BTreeMap<Part, Waiting>,
    /// When each part's last successful probe released its certificates, and the probe interval
    /// it had then: a certificate failing on the part again soon after (a disk with room for
    /// the probe's few bytes, not for a certificate chain) resumes that interval, doubled,
    /// instead of starting over at [`PROBE_FIRST`] and retrying every few seconds.
    released: BTreeMap<Part, (UnixTime, i64)>,
}

/// The certificates waiting for one part, and when to probe it next.
struct Waiting {
    ids: HashSet<String>,
    probe_at: UnixTime,
    every: i64,
}

impl Waits {
    /// Certificate `id`'s task ended waiting for `part`, or for nothing. It waits for the store
    /// only while the store is failing (a store error can also be a record that vanished).
    pub(super) fn ended(&mut self, r: &Reconciler, id: &str, part: Option<Part>) {
        for w in self.by_part.values_mut() {
            w.ids.remove(id);
        }
        self.by_part.retain(|_, w| !w.ids.is_empty());
        let failing = |p: Part| p != Part::Store || r.health.conditions().get(p).is_some();
        if let Some(p) = part.filter(|&p| failing(p)) {
            let now = r.clock.now();
            let every = match self.released.get(&p) {
                Some(&(at, every)) if now - at <= 2 * every + PROBE_FIRST => {
                    (every * 2).min(PROBE_MAX)
                }
                _ => PROBE_FIRST,
            };
            let w = self.by_part.entry(p).or_insert_with(|| Waiting {
                ids: HashSet::new(),
                probe_at: now + every,
                every,
            });
            w.ids.insert(id.to_string());
        }
    }

    /// The longest the loop may sleep: until the next probe while anything waits.
    pub(super) fn cap(&self, wait: Duration, now: UnixTime) -> Duration {
        match self.by_part.values().map(|w| w.probe_at).min() {
            None => wait,
            Some(t) => wait.min(Duration::from_secs((t - now).max(1) as u64)),
        }
    }

    /// Probes each awaited part whose probe is due; returns the certificates whose part works
    /// again (an install that failed on it has its backoff ended).
    pub(super) async fn recovered(&mut self, r: &Reconciler, now: UnixTime) -> Vec<String> {
        let due: Vec<Part> = self
            .by_part
            .iter()
            .filter(|(_, w)| w.probe_at <= now)
            .map(|(p, _)| *p)
            .collect();
        let mut back = Vec::new();
        for part in due {
            if !r.probe(part, now).await {
                if let Some(w) = self.by_part.get_mut(&part) {
                    w.every = (w.every * 2).min(PROBE_MAX);
                    w.probe_at = now + w.every;
                }
                continue;
            }
            let Some(w) = self.by_part.remove(&part) else {
                continue;
            };
            self.released.insert(part, (now, w.every));
            let ids = w.ids;
            if part != Part::Store {
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
            Part::RuntimeApi => {
                let answered = self.haproxy.reachable().await;
                let ok = answered.is_ok();
                self.health.conditions().record(part, now, answered);
                ok
            }
            Part::Ca => false,
        }
    }

    /// The certificate directory or the runtime API works again: an install that failed is tried
    /// now rather than after its backoff, its failure (and attempt count) kept until it works.
    /// Not when a deploy hook failed: that is retried only when an operator says so.
    async fn end_install_backoff(&self, id: &str, now: UnixTime) {
        let install_failed = |r: &Record| {
            r.failure.as_ref().is_some_and(|f| f.step == Step::Install)
                && r.hook.as_ref().is_none_or(|h| h.error.is_none())
        };
        let ended = self
            .store
            .update(id, move |r| match r {
                Some(r) if install_failed(&r) => (Change::Put(apply(&r, Event::RetryNow, now)), ()),
                _ => (Change::Keep, ()),
            })
            .await;
        if let Err(e) = ended {
            tracing::warn!(cert = id, error = %e, "cannot end the install backoff; it runs out");
        }
    }
}
