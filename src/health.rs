//! The daemon's health as `/healthz` reports it: start-up done, the store and the certificate
//! directory take writes, and the reconciler completes passes. And what the daemon is waiting
//! for ([`Conditions`]: the store, the certificate directory, HAProxy's runtime API, the CA),
//! kept in memory because a full disk cannot record its own error: `status` and the dump show
//! it. Written by the daemon, the store wrapper and the reconciler, read by admin.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use haproxy_acme_state::dump::Waiting;
use haproxy_acme_state::UnixTime;

/// The reconciler completes a pass at least this often, even with nothing due; `/healthz`
/// fails when it has not for [`STALL_AFTER`].
pub const HEARTBEAT: Duration = Duration::from_secs(30);
pub const STALL_AFTER: i64 = 4 * HEARTBEAT.as_secs() as i64;

/// What the daemon depends on and may have to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Store,
    CertsDir,
    RuntimeApi,
    Ca,
}

impl Part {
    /// Its key in the dump's `waiting_for`.
    pub fn key(self) -> &'static str {
        match self {
            Part::Store => "store",
            Part::CertsDir => "certs_dir",
            Part::RuntimeApi => "runtime_api",
            Part::Ca => "ca",
        }
    }

    /// What it is, for people.
    pub fn what(self) -> &'static str {
        match self {
            Part::Store => "the store (DATA_DIR)",
            Part::CertsDir => "the certificate directory (CERTS_DIR)",
            Part::RuntimeApi => "HAProxy's runtime API",
            Part::Ca => "the ACME CA",
        }
    }
}

/// A part that is failing: since when, and its latest error and when it was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub part: Part,
    pub since: UnixTime,
    pub error: String,
    pub error_at: UnixTime,
}

/// What the daemon is waiting for right now, each part set by whoever sees it fail and cleared
/// by whoever sees it work: the store wrapper (`store::watched`), the reconciler (installs, CA
/// calls), the start-up wait for HAProxy, the health check's probes.
#[derive(Default)]
pub struct Conditions {
    current: Mutex<BTreeMap<Part, Condition>>,
    /// How many parts are failing: clearing one that is not (every write, every install) reads
    /// only this.
    failing: AtomicUsize,
}

impl Conditions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Part, Condition>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `part` failed with `error` at `now`. A part already failing keeps its `since` and takes
    /// the new error and time. Returns whether it was working before (the change is logged
    /// once).
    pub fn set(&self, part: Part, now: UnixTime, error: impl Into<String>) -> bool {
        let error = error.into();
        let mut current = self.lock();
        match current.get_mut(&part) {
            Some(c) => {
                c.error = error;
                c.error_at = now;
                false
            }
            None => {
                tracing::warn!(part = part.key(), "waiting for {}: {error}", part.what());
                self.failing.fetch_add(1, Ordering::AcqRel);
                current.insert(
                    part,
                    Condition {
                        part,
                        since: now,
                        error,
                        error_at: now,
                    },
                );
                true
            }
        }
    }

    /// `part` works (again) at `now`. Returns the condition it ends, if any (logged with how
    /// long it lasted).
    pub fn clear(&self, part: Part, now: UnixTime) -> Option<Condition> {
        if self.failing.load(Ordering::Acquire) == 0 {
            return None;
        }
        let ended = self.lock().remove(&part)?;
        self.failing.fetch_sub(1, Ordering::AcqRel);
        tracing::info!(
            part = part.key(),
            secs = now - ended.since,
            "{} works again after {}s",
            part.what(),
            now - ended.since
        );
        Some(ended)
    }

    /// Sets or clears `part` from the outcome of an operation that used it.
    pub fn record<E: std::fmt::Display>(&self, part: Part, now: UnixTime, outcome: Result<(), E>) {
        match outcome {
            Ok(()) => {
                self.clear(part, now);
            }
            Err(e) => {
                self.set(part, now, e.to_string());
            }
        }
    }

    pub fn get(&self, part: Part) -> Option<Condition> {
        if self.failing.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.lock().get(&part).cloned()
    }

    /// Whether `part` is failing (cheap when nothing is).
    pub fn is_failing(&self, part: Part) -> bool {
        self.failing.load(Ordering::Acquire) != 0 && self.lock().contains_key(&part)
    }

    /// Every current condition, in `Part` order.
    pub fn current(&self) -> Vec<Condition> {
        self.lock().values().cloned().collect()
    }

    /// The current conditions as the dump and `status` show them.
    pub fn waiting(&self) -> Vec<Waiting> {
        self.current()
            .into_iter()
            .map(|c| Waiting {
                part: c.part.key(),
                what: c.part.what(),
                since: c.since,
                error: c.error,
                error_at: c.error_at,
            })
            .collect()
    }
}

/// About the size of a certificate bundle (chain and key).
const PROBE_BYTES: usize = 8192;

/// Writes, syncs and removes a small file in `dir`: proves it takes a certificate file now. The
/// file's name is its own per call (the health check and the reconciler may probe at once) and
/// matches what start-up removes as a crash's leftover (`.*.pem.tmp`); HAProxy skips dotfiles.
pub fn probe_dir(dir: &Path) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".probe-{n}.pem.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&[0u8; PROBE_BYTES])?;
            f.sync_all()
        });
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

/// The outcome of the health check's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probes {
    pub store: Result<(), String>,
    pub certs_dir: Result<(), String>,
}

impl Probes {
    /// Nothing probed (start-up not done).
    pub fn skipped() -> Probes {
        Probes {
            store: Ok(()),
            certs_dir: Ok(()),
        }
    }
}

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
    /// What the daemon is waiting for.
    conditions: Conditions,
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

    pub fn conditions(&self) -> &Conditions {
        &self.conditions
    }

    /// The verdict, given whether a store write and a certificate-directory write just
    /// succeeded.
    pub fn verdict(&self, probes: Probes, now: UnixTime) -> (bool, String) {
        verdict(self.ready(), probes, self.last_pass(), now)
    }
}

/// The health verdict from its inputs. `last_pass` 0: the reconciler has not started (it waits
/// for HAProxy, which in compose waits for us to be healthy). HAProxy or the CA being down
/// does not make the daemon unhealthy (it keeps serving what it has, and HAProxy in compose
/// starts only once we are healthy); a store or certificate directory that refuses writes does.
fn verdict(ready: bool, probes: Probes, last_pass: i64, now: i64) -> (bool, String) {
    if !ready {
        return (false, "starting".into());
    }
    let mut broken = Vec::new();
    if let Err(e) = probes.store {
        broken.push(format!("the store does not take writes: {e}"));
    }
    if let Err(e) = probes.certs_dir {
        broken.push(format!(
            "the certificate directory does not take writes: {e}"
        ));
    }
    if !broken.is_empty() {
        return (false, broken.join("; "));
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

    fn probes(store: Result<(), &str>, certs_dir: Result<(), &str>) -> Probes {
        Probes {
            store: store.map_err(String::from),
            certs_dir: certs_dir.map_err(String::from),
        }
    }

    #[test]
    fn health_fails_when_starting_unwritable_or_stalled() {
        let now = 1_000_000;
        let fine = || Probes::skipped();
        assert_eq!(verdict(false, fine(), 0, now), (false, "starting".into()));
        assert!(
            verdict(true, fine(), 0, now).0,
            "waiting for HAProxy is healthy"
        );
        assert_eq!(verdict(true, fine(), now - 5, now), (true, "ok".into()));
        let full = "No space left on device";
        let (ok, why) = verdict(true, probes(Err(full), Ok(())), now, now);
        assert!(
            !ok && why.contains("the store does not take writes: No space"),
            "{why}"
        );
        let (ok, why) = verdict(true, probes(Ok(()), Err(full)), now, now);
        assert!(
            !ok && why.contains("certificate directory does not take writes"),
            "{why}"
        );
        let (ok, why) = verdict(true, probes(Err(full), Err(full)), now, now);
        assert!(
            !ok && why.contains("the store") && why.contains("certificate directory"),
            "both are named: {why}"
        );
        let stalled = now - STALL_AFTER - 1;
        let (ok, why) = verdict(true, fine(), stalled, now);
        assert!(!ok && why.contains("has not completed a pass"), "{why}");
    }

    #[test]
    fn a_condition_keeps_its_start_takes_the_latest_error_and_clears() {
        let c = Conditions::default();
        assert!(c.set(Part::Store, 100, "disk full"));
        assert!(!c.set(Part::Store, 160, "still full"), "already failing");
        assert_eq!(c.get(Part::Store).map(|c| c.error_at), Some(160));
        assert!(c.set(Part::Ca, 150, "connection refused"));
        assert_eq!(
            c.get(Part::Store),
            Some(Condition {
                part: Part::Store,
                since: 100,
                error: "still full".into(),
                error_at: 160,
            })
        );
        let parts: Vec<Part> = c.current().iter().map(|c| c.part).collect();
        assert_eq!(parts, vec![Part::Store, Part::Ca], "in Part order");
        let w = c.waiting();
        assert_eq!((w[0].part, w[0].since), ("store", 100));
        assert_eq!(c.clear(Part::Store, 200).map(|c| c.since), Some(100));
        assert_eq!(c.clear(Part::Store, 201), None, "clearing twice is a no-op");
        c.record(Part::Ca, 210, Ok::<(), String>(()));
        assert!(c.current().is_empty());
        c.record(Part::RuntimeApi, 220, Err("refused"));
        assert_eq!(c.get(Part::RuntimeApi).unwrap().error, "refused");
    }

    #[test]
    fn the_directory_probe_leaves_nothing_behind_and_fails_on_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        probe_dir(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(probe_dir(&dir.path().join("gone")).is_err());
    }
}
