//! The reconciler: the I/O shell around the pure core. It wakes at the earliest due time of any
//! certificate (or when an action completes, or on shutdown), asks `state::plan` what to do, runs
//! the action with bounded concurrency, and feeds the results back through `state::apply`,
//! persisting each new record (flushed) before the next ACME request.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haproxy_acme_state::machine::FailureReport;
use haproxy_acme_state::{
    apply, plan, Action, Challenge, Event, FailureKind, Plan, Record, Step, UnixTime,
};
use tokio::sync::{mpsc, watch, OnceCell};
use tokio::task::JoinSet;

use crate::acme::{AcmeClient, AcmeError, OrderHooks};
use crate::config::{CertSpec, Config, WantedSet};
use crate::installer::Installer;
use crate::responder::Tokens;
use crate::store::{Store, StoreError};
use haproxy_acme_state::dump::rfc3339;
use haproxy_acme_state::ledger::Entry;

/// At most this many certificates are worked on at once.
const MAX_CONCURRENT: usize = 8;
/// After a store error (disk full, say) a certificate is looked at again after this delay.
const STORE_RETRY_SECS: i64 = 30;
/// Bound on consecutive actions for one certificate in one wake-up; a guard against a loop that
/// makes no progress, never reached in normal operation (an issuance is about five steps).
const MAX_STEPS_PER_WAKE: usize = 32;
/// How long shutdown waits for in-flight steps to reach a durable point.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// After a reload trigger, wait this long for the writer to finish before reading.
const RELOAD_SETTLE: Duration = Duration::from_millis(100);
/// The reconciler completes a pass at least this often, even with nothing due; `/healthz`
/// fails when it has not for `STALL_AFTER`.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
pub const STALL_AFTER: i64 = 4 * HEARTBEAT.as_secs() as i64;

pub fn unix_now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Everything the reconciler's tasks share.
pub struct Shared {
    pub config: Config,
    /// Where the wanted certificates are read from (with the store's additions).
    pub wanted: WantedSet,
    pub store: Store,
    pub installer: Installer,
    /// The responder's challenge map, kept in step with the records' published challenges.
    pub tokens: Tokens,
    /// The ACME account, connected on first use (so an unreachable CA is a recorded, retried
    /// failure rather than a start-up error).
    acme: OnceCell<AcmeClient>,
    /// Set once the store is in line with the configuration (start-up done; the daemon may still
    /// be waiting for HAProxy, which in compose starts only once we are healthy); `/healthz`
    /// fails before.
    pub ready: std::sync::atomic::AtomicBool,
    /// When the reconciler last completed a pass (0: not started; it starts once HAProxy's
    /// runtime API answers).
    pub last_pass: std::sync::atomic::AtomicI64,
    /// The reload channel SIGHUP and DOMAINS_FILE changes bump (`domains` commands use
    /// `reload_now` instead: the store is already written, nothing to wait for).
    pub reload: Arc<watch::Sender<u64>>,
    /// Look at this certificate now (operator commands).
    wake: mpsc::UnboundedSender<String>,
    /// Re-read the wanted certificates now, without waiting for a writer to settle.
    reload_now: tokio::sync::Notify,
    /// When the order in flight of a certificate was created, for the issuance-duration metric
    /// (in memory: an issuance resumed after a restart is timed from the restart).
    order_started: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl Shared {
    /// Also returns the receiving end of the wake-ups, for `run`.
    pub fn new(
        config: Config,
        wanted: WantedSet,
        store: Store,
        installer: Installer,
        tokens: Tokens,
        reload: Arc<watch::Sender<u64>>,
    ) -> (Shared, mpsc::UnboundedReceiver<String>) {
        let (wake, woken) = mpsc::unbounded_channel();
        let shared = Shared {
            config,
            wanted,
            store,
            installer,
            tokens,
            acme: OnceCell::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
            last_pass: std::sync::atomic::AtomicI64::new(0),
            reload,
            wake,
            reload_now: tokio::sync::Notify::new(),
            order_started: std::sync::Mutex::new(HashMap::new()),
        };
        (shared, woken)
    }

    /// Asks the reconciler to look at certificate `id` now.
    pub fn wake(&self, id: String) {
        let _ = self.wake.send(id);
    }

    /// Asks the reconciler to re-read the wanted certificates now (the store changed).
    pub fn request_reload(&self) {
        self.reload_now.notify_one();
    }

    /// The certificates wanted now (DOMAINS, DOMAINS_FILE, and those added at runtime) and a
    /// digest of what they were read from; `None` when that is `unchanged_from`.
    pub fn wanted_specs_since(
        &self,
        unchanged_from: Option<u64>,
    ) -> Result<(u64, Option<Vec<CertSpec>>), Vec<String>> {
        let added = self
            .store
            .added_domains()
            .map_err(|e| vec![e.to_string()])?;
        self.wanted.read_since(&added, unchanged_from)
    }

    async fn acme(&self) -> Result<&AcmeClient, AcmeError> {
        self.acme
            .get_or_try_init(|| AcmeClient::connect(&self.config, &self.store))
            .await
    }

    /// Applies `event` to the stored record `id` and persists the result with `write` (a plain
    /// put unless given), keeping the responder's tokens in step. Returns the new record.
    fn commit(
        &self,
        id: &str,
        event: Event,
        write: impl FnOnce(&Store, &Record) -> Result<(), StoreError>,
    ) -> Result<Record, StoreError> {
        let _guard = self.store.lock_records();
        let old = self
            .store
            .get(id)?
            .ok_or_else(|| StoreError::Write(format!("record {id:?} vanished")))?;
        let (new, _) = apply(&old, event, unix_now());
        if new != old {
            // Publish new tokens before the record says they are published; withdraw old ones
            // only after the record no longer needs them.
            sync_tokens(&self.tokens, None, Some(&new));
            write(&self.store, &new)?;
            sync_tokens(&self.tokens, Some(&old), Some(&new));
            tracing::debug!(cert = id, phase = new.phase.as_str(), "record updated");
        }
        Ok(new)
    }

    fn record(&self, id: &str, event: Event) -> Result<Record, StoreError> {
        self.commit(id, event, |s, r| s.put(r))
    }

    fn fail(
        &self,
        id: &str,
        step: Step,
        kind: FailureKind,
        message: String,
        retry_after: Option<UnixTime>,
        order_dead: bool,
    ) -> Result<Record, StoreError> {
        let r = self.record(
            id,
            Event::Failed(FailureReport {
                step,
                kind,
                error: message.clone(),
                retry_after,
                jitter_permille: rand::random::<u16>() % 1001,
                order_dead,
            }),
        )?;
        let next = r.failure.as_ref().and_then(|f| f.next_attempt_at);
        crate::metrics::global().failure(step.as_str(), kind.as_str());
        tracing::warn!(
            cert = id,
            step = step.as_str(),
            kind = kind.as_str(),
            next_attempt_at = next.map(rfc3339),
            "{message}"
        );
        Ok(r)
    }

    /// Notes in the rate-limit ledger something the CA counts.
    fn note(&self, entry: Entry) -> Result<(), StoreError> {
        crate::budget::note(
            &self.store,
            &self.config.acme_directory,
            self.config.rate_limits.as_ref(),
            entry,
        )
    }

    fn fail_acme(&self, id: &str, e: AcmeError) -> Result<Record, StoreError> {
        self.fail(id, e.step, e.kind, e.message, e.retry_after, e.order_dead)
    }
}

/// Adds the challenges of `new` to the responder and, when `old` is given, removes those of
/// `old` that `new` no longer has.
fn sync_tokens(tokens: &Tokens, old: Option<&Record>, new: Option<&Record>) {
    let chs = |r: Option<&Record>| -> Vec<Challenge> {
        r.and_then(|r| r.order.as_ref())
            .map(|o| o.challenges.clone())
            .unwrap_or_default()
    };
    let new_chs = chs(new);
    for c in &new_chs {
        tokens.insert(c.token.clone(), c.key_authorization.clone());
    }
    for c in chs(old) {
        if !new_chs.iter().any(|n| n.token == c.token) {
            tokens.remove(&c.token);
        }
    }
}

/// Brings the store in line with the wanted certificates (at start and after a configuration
/// change): new certificates get a record, changed ones an event, and the responder gets every
/// published challenge back. Returns when each wanted certificate is due and the stored ids no
/// longer wanted (in id order).
/// Changed records are written in one batch (one flush), so a start with many new certificates
/// is not one fsync each.
pub fn sync_specs(
    shared: &Shared,
    specs: &[CertSpec],
) -> Result<(Vec<Wanted>, Vec<String>), StoreError> {
    let now = unix_now();
    let _guard = shared.store.lock_records();
    let by_id: HashMap<&str, &CertSpec> = specs.iter().map(|s| (s.id().as_str(), s)).collect();
    let mut found: HashSet<&str> = HashSet::with_capacity(specs.len());
    let mut wanted = Vec::with_capacity(specs.len());
    let mut changed = Vec::new();
    let mut unwanted = Vec::new();
    // The record's schedule, and the record when it changed.
    let reconcile = |spec: &CertSpec, old: Option<Record>| -> (Wanted, Option<Record>) {
        let configured = Event::Configured {
            names: spec.names().to_vec(),
            key_type: shared.config.key_type,
            acme_directory: shared.config.acme_directory.clone(),
            deploy_hook: shared.config.deploy_hook.is_some(),
        };
        // No copy of the stored record (one per certificate at start-up): only a new one is made.
        let fresh;
        let base = match &old {
            Some(r) => r,
            None => {
                fresh = Record::new(spec.names().to_vec(), shared.config.key_type, now);
                &fresh
            }
        };
        let (new, _) = apply(base, configured, now);
        sync_tokens(&shared.tokens, None, Some(&new));
        let due = Wanted::of(&new, now);
        if old.as_ref() == Some(&new) {
            return (due, None);
        }
        match old {
            None => {
                tracing::info!(cert = %spec.id(), names = ?spec.names(), "new certificate wanted")
            }
            Some(_) => {
                tracing::info!(cert = %spec.id(), names = ?spec.names(), "certificate names, key type or CA changed: re-issuing")
            }
        }
        (due, Some(new))
    };
    // One pass over the store, one record at a time: at 100,000 certificates, holding them all
    // at once is what set the daemon's peak memory (BENCHMARKS.md, scenario 3).
    shared
        .store
        .for_each_record(|old| match by_id.get(old.id.as_str()) {
            Some(spec) => {
                found.insert(spec.id().as_str());
                let (due, new) = reconcile(spec, Some(old));
                wanted.push(due);
                changed.extend(new);
            }
            None => {
                // No longer listed: marked (status, dump and metrics say it is not renewed).
                if !old.unconfigured {
                    changed.push(apply(&old, Event::Unconfigured, now).0);
                }
                unwanted.push(old.id);
            }
        })?;
    for spec in specs.iter().filter(|s| !found.contains(s.id().as_str())) {
        let (due, new) = reconcile(spec, None);
        wanted.push(due);
        changed.extend(new);
    }
    shared.store.put_many(&changed)?;
    Ok((wanted, unwanted))
}

/// A wanted certificate and when its plan next has work.
pub struct Wanted {
    /// Shared with the reconciler's schedule and set of wanted ids.
    pub id: Arc<str>,
    /// `None`: nothing to do until something changes (an event, the configuration).
    pub due: Option<UnixTime>,
}

impl Wanted {
    fn of(r: &Record, now: UnixTime) -> Wanted {
        let due = match plan(r, now) {
            Plan::Now(_) => Some(now),
            Plan::At(t) => Some(t),
            Plan::Idle => None,
        };
        Wanted {
            id: r.id.as_str().into(),
            due,
        }
    }
}

/// Schedules each certificate at the time its plan says (never for an idle one).
fn schedule_wanted(schedule: &mut Schedule, wanted: Vec<Wanted>) {
    for w in wanted {
        match w.due {
            Some(t) => schedule.set(w.id, t),
            None => schedule.remove(&w.id),
        }
    }
}

/// Due times of the certificates, earliest first, at most one entry per certificate. Both maps
/// (and the reconciler's set of wanted ids) share one allocation per id.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(UnixTime, Arc<str>)>,
    at: HashMap<Arc<str>, UnixTime>,
}

impl Schedule {
    /// Sets (or moves) the due time of `id`.
    fn set(&mut self, id: impl Into<Arc<str>>, t: UnixTime) {
        let id: Arc<str> = id.into();
        if let Some(old) = self.at.insert(id.clone(), t) {
            self.due.remove(&(old, id.clone()));
        }
        self.due.insert((t, id));
    }

    fn remove(&mut self, id: &str) {
        if let Some((id, old)) = self.at.remove_entry(id) {
            self.due.remove(&(old, id));
        }
    }

    /// Takes the earliest entry if it is due at `now`.
    fn pop_due(&mut self, now: UnixTime) -> Option<String> {
        match self.due.first() {
            Some((t, _)) if *t <= now => {
                let (_, id) = self.due.pop_first().expect("first exists");
                self.at.remove(&id);
                Some(id.to_string())
            }
            _ => None,
        }
    }

    /// How many entries are due at `now`.
    fn due_at(&self, now: UnixTime) -> usize {
        self.due.range(..(now + 1, Arc::from(""))).count()
    }

    fn next(&self) -> Option<UnixTime> {
        self.due.first().map(|(t, _)| *t)
    }
}

/// Runs until `shutdown` turns true, then lets in-flight steps finish (bounded) and returns.
/// `unwanted` are stored certificates no longer configured (pruned with `--prune`); a change of
/// `reload` (SIGHUP, DOMAINS_FILE edited) re-reads the wanted certificates.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    shared: Arc<Shared>,
    (sources, specs): (u64, Vec<CertSpec>),
    wanted_due: Vec<Wanted>,
    unwanted: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
    mut reload: watch::Receiver<u64>,
    mut woken: mpsc::UnboundedReceiver<String>,
) {
    for id in &unwanted {
        tracing::info!(cert = %id, prune = shared.config.prune, "in the store but not configured: not renewed");
        if shared.config.prune {
            prune(&shared, id).await;
        }
    }
    let started = std::time::Instant::now();
    let mut wanted: HashSet<Arc<str>> = wanted_due.iter().map(|w| w.id.clone()).collect();
    // Each certificate is scheduled from its record's plan (no second store read, no task for
    // one with nothing to do).
    let mut schedule = Schedule::default();
    schedule_wanted(&mut schedule, wanted_due);
    tracing::info!(
        certificates = wanted.len(),
        due_now = schedule.due_at(unix_now()),
        ms = started.elapsed().as_millis() as u64,
        "reconciler ready"
    );
    // Certificates a task is working on, and those to prune once their task is done.
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut prune_when_done: HashSet<String> = HashSet::new();
    // Certificates that came due while a task was on them: that task may have planned from a
    // record older than the change that made them due, so they are looked at again at once.
    let mut look_again: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, Option<UnixTime>)> = JoinSet::new();
    // A digest of the wanted certificates as last applied: a reload that reads the same is a
    // no-op. (A digest, not a copy: with 100,000 certificates a copy costs tens of MiB.)
    let mut applied = digest(&specs);
    drop(specs);
    // And of what they were read from: a re-read of the same bytes is not parsed again.
    let mut applied_sources = sources;
    loop {
        let now = unix_now();
        shared
            .last_pass
            .store(now, std::sync::atomic::Ordering::Release);
        while tasks.len() < MAX_CONCURRENT {
            let Some(id) = schedule.pop_due(now) else {
                break;
            };
            if in_flight.insert(id.clone()) {
                tasks.spawn(drive(shared.clone(), id));
            } else {
                look_again.insert(id);
            }
        }
        let wait = match schedule.next() {
            Some(t) if tasks.len() < MAX_CONCURRENT => Duration::from_secs((t - now).max(1) as u64),
            _ => HEARTBEAT,
        }
        .min(HEARTBEAT);
        let mut reread = false;
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok((id, next)) => {
                    in_flight.remove(&id);
                    let again = look_again.remove(&id);
                    if prune_when_done.remove(&id) {
                        prune(&shared, &id).await;
                    } else if !wanted.contains(id.as_str()) {
                        // Removed from the configuration meanwhile: no longer scheduled.
                    } else if again {
                        schedule.set(id, unix_now());
                    } else if let Some(t) = next {
                        schedule.set(id, t);
                    }
                }
                Err(e) => tracing::error!(error = %e, "a certificate task failed unexpectedly"),
            },
            Some(id) = woken.recv() => {
                if !wanted.contains(id.as_str()) {
                    tracing::info!(cert = %id, "not configured: an operator's request changes its state but nothing is done until it is");
                } else if in_flight.contains(&id) {
                    look_again.insert(id);
                } else {
                    schedule.set(id, unix_now());
                }
            }
            Ok(()) = reload.changed() => {
                // Editors and ConfigMaps write in several steps: let them finish.
                tokio::time::sleep(RELOAD_SETTLE).await;
                reload.borrow_and_update();
                reread = true;
            }
            // `domains add/remove`: the store is already written, no need to wait.
            _ = shared.reload_now.notified() => reread = true,
            _ = tokio::time::sleep(wait) => {}
        }
        if reread {
            let reread_at = std::time::Instant::now();
            let unchanged = |certificates: usize| {
                let ms = reread_at.elapsed().as_millis() as u64;
                tracing::info!(certificates, ms, "configuration re-read: unchanged");
            };
            let (sources, specs) = match shared.wanted_specs_since(Some(applied_sources)) {
                Ok((_, None)) => {
                    unchanged(wanted.len());
                    continue;
                }
                Ok((sources, Some(specs))) => (sources, specs),
                Err(errors) => {
                    for e in errors {
                        tracing::error!(
                            "configuration change refused, the running configuration stays: {e}"
                        );
                    }
                    continue;
                }
            };
            let specs_digest = digest(&specs);
            if specs_digest == applied {
                // Only spelling changed (a comment, spaces).
                applied_sources = sources;
                unchanged(specs.len());
                continue;
            }
            let (now_wanted, gone) = match sync_specs(&shared, &specs) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "configuration change not applied (store error)");
                    continue;
                }
            };
            let ms = reread_at.elapsed().as_millis() as u64;
            tracing::info!(
                certificates = now_wanted.len(),
                ms,
                "configuration reloaded"
            );
            applied = specs_digest;
            applied_sources = sources;
            for id in &gone {
                if wanted.remove(id.as_str()) {
                    schedule.remove(id);
                    tracing::info!(cert = %id, prune = shared.config.prune, "removed from the configuration: no longer renewed");
                    if shared.config.prune {
                        if in_flight.contains(id) {
                            prune_when_done.insert(id.clone());
                        } else {
                            prune(&shared, id).await;
                        }
                    }
                }
            }
            for w in &now_wanted {
                prune_when_done.remove(&*w.id);
                wanted.insert(w.id.clone());
            }
            schedule_wanted(&mut schedule, now_wanted);
        }
    }
    tracing::info!(
        in_flight = tasks.len(),
        "shutting down: letting in-flight steps finish"
    );
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            "in-flight steps did not finish in time; they resume from the store at next start"
        );
    }
}

fn digest(specs: &[CertSpec]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    specs.hash(&mut h);
    h.finish()
}

/// Removes a certificate no longer configured from HAProxy, the certificate directory and the
/// store (`--prune`). On an HAProxy error the state is kept, so nothing is half-forgotten.
async fn prune(shared: &Shared, id: &str) {
    if let Err(e) = shared.installer.remove(id).await {
        tracing::error!(cert = %id, error = %e, "prune failed; the certificate and its state are kept");
        return;
    }
    let old = shared.store.get(id).ok().flatten();
    match shared.store.delete(id) {
        Ok(()) => {
            sync_tokens(&shared.tokens, old.as_ref(), None);
            tracing::info!(cert = %id, "pruned: removed from HAProxy, the certificate directory and the store");
        }
        Err(e) => tracing::error!(cert = %id, error = %e, "prune: the store kept the record"),
    }
}

/// Works on one certificate until it has nothing to do now; returns when to look again.
async fn drive(shared: Arc<Shared>, id: String) -> (String, Option<UnixTime>) {
    for _ in 0..MAX_STEPS_PER_WAKE {
        let step = async {
            let r = shared.record(&id, Event::Tick)?;
            match plan(&r, unix_now()) {
                Plan::At(t) => Ok(Some(Some(t))),
                Plan::Idle => Ok(Some(None)),
                Plan::Now(action) => execute(&shared, &r, action).await.map(|()| None),
            }
        };
        match step.await {
            Ok(Some(next)) => return (id, next),
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(cert = %id, error = %e, "store error");
                return (id, Some(unix_now() + STORE_RETRY_SECS));
            }
        }
    }
    tracing::error!(cert = %id, "no progress after {MAX_STEPS_PER_WAKE} steps; looking again in a minute");
    (id, Some(unix_now() + 60))
}

/// Runs one action and records its outcome.
async fn execute(shared: &Shared, r: &Record, action: Action) -> Result<(), StoreError> {
    let id = r.id.as_str();
    match action {
        Action::CreateOrder => {
            // Stay inside the CA's limits rather than be refused (and locked out) by it.
            let directory = shared.config.acme_directory.as_str();
            if let Some(limits) = &shared.config.rate_limits {
                let renewal = r.cert.is_some();
                if let Some(d) = crate::budget::check(
                    &shared.store,
                    directory,
                    limits,
                    &r.names,
                    renewal,
                    unix_now(),
                )? {
                    let message = format!(
                        "local rate-limit budget: {}; the order waits until {}",
                        d.reason,
                        rfc3339(d.until)
                    );
                    return shared
                        .fail(
                            id,
                            Step::Order,
                            FailureKind::RateLimited,
                            message,
                            Some(d.until),
                            false,
                        )
                        .map(drop);
                }
            }
            let acme = match shared.acme().await {
                Ok(a) => a,
                Err(e) => return shared.fail_acme(id, e).map(drop),
            };
            // A renewal from a CA with renewal information names the certificate it replaces.
            let replaces = match (&r.ari_window, r.cert.is_some()) {
                (Some(_), true) => shared.store.certificate(id)?.map(|(chain, _)| chain),
                _ => None,
            };
            match acme.new_order(&r.names, replaces.as_deref()).await {
                Ok(url) => {
                    tracing::info!(cert = id, order = %url, "order created");
                    shared
                        .order_started
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id.to_string(), std::time::Instant::now());
                    shared.record(id, Event::OrderCreated { url })?;
                    shared.note(Entry::Order { at: unix_now() })?;
                }
                Err(e) => {
                    shared.fail_acme(id, e)?;
                }
            }
        }
        Action::DriveOrder { url, key_generated } => {
            let acme = match shared.acme().await {
                Ok(a) => a,
                Err(e) => return shared.fail_acme(id, e).map(drop),
            };
            let hooks = Hooks {
                shared,
                id,
                key_generated,
                key_type: r.key_type,
            };
            let started = std::time::Instant::now();
            match acme.drive_order(&url, &r.names, &hooks).await {
                Ok(chain) => match crate::pki::chain_meta(&chain, unix_now()) {
                    Ok(meta) => {
                        let serial = meta.serial.clone();
                        shared.commit(id, Event::CertificateStored { meta }, |s, rec| {
                            s.put_certificate(rec, &chain)
                        })?;
                        let since_order = shared
                            .order_started
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(id);
                        crate::metrics::global()
                            .issued(since_order.map_or(started.elapsed(), |t| t.elapsed()));
                        tracing::info!(cert = id, serial = %serial, ms = started.elapsed().as_millis() as u64, "certificate issued and stored");
                        shared.note(crate::budget::certificate(&r.names, unix_now()))?;
                    }
                    Err(e) => {
                        shared.fail(
                            id,
                            Step::Finalize,
                            FailureKind::Retryable,
                            e.to_string(),
                            None,
                            false,
                        )?;
                    }
                },
                Err(e) => {
                    if e.step == Step::Validation && e.order_dead {
                        // The CA counts failed validations per name; the error does not say
                        // which name failed, so every name of the order is counted.
                        for name in &r.names {
                            let at = unix_now();
                            shared.note(Entry::FailedValidation {
                                at,
                                name: name.clone(),
                            })?;
                        }
                    }
                    shared.fail_acme(id, e)?;
                }
            }
        }
        Action::CheckRenewalInfo => {
            let event = match (shared.acme().await, shared.store.certificate(id)?) {
                (_, None) => Event::RenewalInfoUnavailable { retry_at: None },
                (Err(e), _) => {
                    tracing::warn!(cert = id, error = %e, "renewal information: no ACME account; asking again in an hour");
                    Event::RenewalInfoUnavailable {
                        retry_at: Some(unix_now() + 3600),
                    }
                }
                (Ok(acme), Some((chain, _))) => match acme.renewal_info(&chain).await {
                    Ok(Some((window, retry_after))) => {
                        tracing::info!(cert = id, start = %rfc3339(window.0), end = %rfc3339(window.1), "renewal window from the CA");
                        Event::RenewalInfo {
                            window,
                            retry_after,
                            jitter_permille: rand::random::<u16>() % 1001,
                        }
                    }
                    Ok(None) => Event::RenewalInfoUnavailable { retry_at: None },
                    Err(e) => {
                        tracing::warn!(cert = id, error = %e, "renewal information unavailable; asking again in an hour");
                        Event::RenewalInfoUnavailable {
                            retry_at: Some(unix_now() + 3600),
                        }
                    }
                },
            };
            shared.record(id, event)?;
        }
        Action::Install { fingerprint } => {
            let Some(meta) = r.cert.clone().filter(|c| c.fingerprint == fingerprint) else {
                return Ok(());
            };
            let Some((chain, key)) = shared.store.certificate(id)? else {
                shared.fail(
                    id,
                    Step::Install,
                    FailureKind::Permanent,
                    "the stored certificate or its key is missing from the store".into(),
                    None,
                    false,
                )?;
                return Ok(());
            };
            match shared.installer.install(id, &chain, &key, &meta).await {
                Ok(method) => {
                    shared.record(id, Event::Installed { fingerprint })?;
                    crate::metrics::global()
                        .installed(method == crate::installer::Method::RuntimeApi);
                    tracing::info!(cert = id, serial = %meta.serial, method = ?method, "certificate installed");
                }
                Err(e) => {
                    if !matches!(e, crate::installer::InstallError::File { .. }) {
                        crate::metrics::global().runtime_api_error();
                    }
                    shared.fail(
                        id,
                        Step::Install,
                        FailureKind::Retryable,
                        e.to_string(),
                        None,
                        false,
                    )?;
                }
            }
        }
        Action::RunHook { fingerprint } => {
            let Some(command) = &shared.config.deploy_hook else {
                // Configured off since the plan was made: the next reload clears the flag.
                return shared
                    .record(
                        id,
                        Event::HookRan {
                            fingerprint,
                            error: Some("DEPLOY_HOOK is no longer set".into()),
                        },
                    )
                    .map(drop);
            };
            let error = match shared.store.certificate(id)? {
                None => Some("the stored certificate or its key is missing".to_string()),
                Some((chain, key)) => {
                    let lineage = crate::hook::lineage_dir(&shared.config.data_dir, id);
                    let written = tokio::task::spawn_blocking({
                        let lineage = lineage.clone();
                        move || crate::hook::write_lineage(&lineage, &chain, &key)
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                    match written {
                        Err(e) => Some(format!("cannot write {}: {e}", lineage.display())),
                        Ok(()) => {
                            let out = crate::hook::run(
                                command,
                                &lineage,
                                &r.names,
                                shared.config.deploy_hook_timeout,
                            )
                            .await;
                            for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
                                tracing::info!(cert = id, stream = "stdout", "deploy hook: {line}");
                            }
                            for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
                                tracing::info!(cert = id, stream = "stderr", "deploy hook: {line}");
                            }
                            let ms = out.took.as_millis() as u64;
                            match &out.error {
                                None => tracing::info!(cert = id, ms, "deploy hook succeeded"),
                                Some(e) => {
                                    tracing::error!(cert = id, ms, error = %e, "deploy hook failed (`retry {id}` runs it again)")
                                }
                            }
                            out.error
                        }
                    }
                }
            };
            crate::metrics::global().hook(error.is_none());
            shared.record(id, Event::HookRan { fingerprint, error })?;
        }
    }
    Ok(())
}

/// The durable points inside an order, wired to the store.
struct Hooks<'a> {
    shared: &'a Shared,
    id: &'a str,
    key_generated: bool,
    key_type: haproxy_acme_state::KeyType,
}

impl OrderHooks for Hooks<'_> {
    async fn publish(&self, challenges: Vec<Challenge>) -> Result<(), AcmeError> {
        self.shared
            .record(self.id, Event::ChallengesPublished { challenges })
            .map(drop)
            .map_err(|e| store_failure(Step::Validation, e))
    }

    async fn key_pem(&self) -> Result<String, AcmeError> {
        let store_err = |e| store_failure(Step::Finalize, e);
        if self.key_generated {
            if let Some(k) = self.shared.store.pending_key(self.id).map_err(store_err)? {
                return Ok(k);
            }
        }
        let kt = self.key_type;
        // A key generation failure is not a store failure: say what it is.
        let keygen_err = |m: String| AcmeError::new(Step::Finalize, FailureKind::Retryable, m);
        let key = tokio::task::spawn_blocking(move || crate::pki::generate_key(kt))
            .await
            .map_err(|e| keygen_err(format!("key generation task failed: {e}")))?
            .map_err(|e| keygen_err(e.to_string()))?;
        self.shared
            .commit(self.id, Event::KeyStored, |s, r| {
                s.put_with_pending_key(r, &key)
            })
            .map_err(store_err)?;
        Ok(key)
    }
}

fn store_failure(step: Step, e: StoreError) -> AcmeError {
    AcmeError::new(step, FailureKind::Retryable, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_keeps_one_entry_per_certificate() {
        let mut s = Schedule::default();
        s.set("a", 50);
        s.set("b", 10);
        s.set("a", 5); // moved, not duplicated
        assert_eq!(s.next(), Some(5));
        assert_eq!(s.due_at(10), 2);
        assert_eq!(s.pop_due(4), None, "nothing due before 5");
        assert_eq!(s.pop_due(10).as_deref(), Some("a"));
        assert_eq!(s.pop_due(10).as_deref(), Some("b"));
        assert_eq!(s.pop_due(1000), None, "a's old entry at 50 is gone");
        s.set("c", 7);
        s.remove("c");
        assert_eq!(s.next(), None);
    }

    #[test]
    fn records_are_scheduled_by_their_plan() {
        let mut s = Schedule::default();
        let pending = Record::new(
            vec!["p.test".into()],
            haproxy_acme_state::KeyType::EcdsaP256,
            0,
        );
        let mut waiting = pending.clone();
        waiting.id = "w.test".into();
        waiting.failure = Some(haproxy_acme_state::Failure {
            step: Step::Order,
            kind: FailureKind::Retryable,
            error: "x".into(),
            attempts: 1,
            at: 0,
            next_attempt_at: Some(500),
        });
        let mut idle = waiting.clone();
        idle.id = "i.test".into();
        idle.failure.as_mut().unwrap().next_attempt_at = None;
        let records = [pending, waiting, idle];
        schedule_wanted(&mut s, records.iter().map(|r| Wanted::of(r, 100)).collect());
        assert_eq!(s.pop_due(100).as_deref(), Some("p.test"));
        assert_eq!(s.next(), Some(500));
        assert_eq!(s.at.len(), 1, "an idle record is not scheduled");
    }
}
