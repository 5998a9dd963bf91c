//! The reconciler: the I/O shell around the pure core. It wakes at the earliest due time of any
//! certificate (or when a task ends, an operator asks, the configuration changes, or on
//! shutdown), asks `state::plan` what to do, runs the action with bounded concurrency, and feeds
//! the outcome back through `state::apply`, persisting each new record before the next step.
//!
//! - this file: the [`Reconciler`] (what it talks to), its [`Control`] handle, and the loop;
//! - [`ids`]: the table of the certificate ids the reconciler keeps something about, one
//!   handle each, with its columns: due time, wanted, the serial served, the spec synced;
//! - [`schedule`]: when a record's plan next has work;
//! - [`start`]: the wanted set read and checked at start-up, before the daemon is healthy;
//! - [`wanted`]: the wanted set brought into the store (start-up, reloads) and pruning;
//! - [`execute`]: one certificate's task (`Tick → plan → action → apply` until it waits), and
//!   the record updates every action goes through;
//! - [`actions`]: one function per action of the core; [`order_hooks`]: the durable points
//!   inside an order and the DNS records owed a cleanup; [`alert`]: the alert step;
//! - [`watchdog`]: every `WATCHDOG_INTERVAL`, what HAProxy serves compared with the store, a
//!   drift recorded and installed again.
//! - [`waits`]: certificates waiting for the store or the certificate directory, looked at
//!   again as soon as a probe shows it works.
//!
//! Everything it talks to is a trait object ([`Store`], [`Ca`], [`Haproxy`], [`Clock`]), so the
//! simulated-time tests run this very code against an in-memory CA and HAProxy.

mod actions;
mod alert;
mod configure;
mod execute;
mod ids;
mod order_hooks;
pub mod schedule;
mod start;
pub mod tokens;
mod waits;
mod wanted;
mod watchdog;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use haproxy_acme_state::UnixTime;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::acme::Ca;
use crate::budget::Budget;
use crate::clock::{Clock, Dice};
use crate::config::{Config, WantedSet};
use crate::health::{Health, Part};
use crate::installer::Haproxy;
use crate::responder::Tokens;
use crate::store::{Store, StoreError};
use schedule::{schedule_all, Wanted};
pub use start::WantedNow;

/// After a store error (disk full, say) a certificate is looked at again after this delay, or
/// as soon as the store takes a write again ([`waits`]).
const STORE_RETRY_SECS: i64 = 30;
/// Bound on consecutive actions for one certificate in one wake-up; a guard against a loop that
/// makes no progress, never reached in normal operation (an issuance is about five steps).
const MAX_STEPS_PER_WAKE: usize = 32;
/// How long shutdown waits for in-flight steps to reach a durable point.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// After a reload trigger, wait this long for the writer to finish before reading.
const RELOAD_SETTLE: Duration = Duration::from_millis(100);

/// What the reconciler talks to.
pub struct Parts {
    pub config: Arc<Config>,
    /// Where the wanted certificates are read from (with the store's runtime additions).
    pub wanted: Arc<WantedSet>,
    pub store: Arc<dyn Store>,
    pub ca: Arc<dyn Ca>,
    pub haproxy: Arc<dyn Haproxy>,
    pub clock: Arc<dyn Clock>,
    pub dice: Dice,
    /// The responder's challenge map, kept in step with the records' published challenges.
    pub tokens: Tokens,
    pub health: Arc<Health>,
}

/// Limits of the loop.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// At most this many certificates are worked on at once.
    pub max_concurrent: usize,
    /// A pass at least this often, even with nothing due (`/healthz` watches it).
    pub heartbeat: Duration,
}

impl Tuning {
    /// The defaults with `CONCURRENCY` from the configuration.
    pub fn for_config(config: &Config) -> Tuning {
        Tuning {
            max_concurrent: config.concurrency,
            ..Tuning::default()
        }
    }
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            max_concurrent: crate::config::DEFAULT_CONCURRENCY,
            heartbeat: crate::health::HEARTBEAT,
        }
    }
}

pub struct Reconciler {
    config: Arc<Config>,
    wanted: Arc<WantedSet>,
    store: Arc<dyn Store>,
    ca: Arc<dyn Ca>,
    haproxy: Arc<dyn Haproxy>,
    clock: Arc<dyn Clock>,
    dice: Dice,
    tokens: Tokens,
    health: Arc<Health>,
    budget: Budget,
    tuning: Tuning,
    /// When the order in flight of a certificate was created, for the issuance-duration metric
    /// (in memory: an issuance resumed after a restart is timed from the restart).
    order_started: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// The certificates the reconciler keeps something about: due times (the loop's schedule),
    /// the wanted set, the digests of the serials the watchdog checks served and of the specs
    /// as last synced ([`wanted`]: a reload writes only the records whose spec changed).
    ids: ids::SharedIds,
    /// Chains downloaded whose write to the store failed (a full disk), by certificate id with
    /// their order's URL: the next try stores them without asking the CA, which may have
    /// forgotten the order by then (restored from a backup) and would have to issue another.
    downloaded: std::sync::Mutex<HashMap<String, (String, String)>>,
    /// What DNS_HOOK printed, by challenge token, for DNS_CLEANUP_HOOK's `CERTBOT_AUTH_OUTPUT`
    /// (in memory: empty for records a restart cleans up).
    dns_auth_output: std::sync::Mutex<HashMap<String, String>>,
    /// Alert transitions whose hook ran but whose record write failed: not run again.
    alerts_unrecorded: std::sync::Mutex<HashMap<String, Vec<haproxy_acme_state::Condition>>>,
    /// Wakes a certificate (the watchdog's repairs).
    control: Control,
}

/// The handle operator commands use: look at a certificate now, or re-read the wanted set now
/// (the store is already written, nothing to wait for). Cheap to clone.
#[derive(Clone)]
pub struct Control {
    wake: mpsc::UnboundedSender<String>,
    reload: Arc<Notify>,
}

impl Control {
    /// Asks the reconciler to look at certificate `id` now.
    pub fn wake(&self, id: String) {
        let _ = self.wake.send(id);
    }

    /// Asks the reconciler to re-read the wanted certificates now.
    pub fn reload(&self) {
        self.reload.notify_one();
    }
}

/// A [`Control`] and the [`Inbox`] it sends to.
pub fn channel() -> (Control, Inbox) {
    let (wake, woken) = mpsc::unbounded_channel();
    let reload = Arc::new(Notify::new());
    let control = Control {
        wake,
        reload: reload.clone(),
    };
    (control, Inbox { woken, reload })
}

/// The receiving end of a [`Control`].
pub struct Inbox {
    woken: mpsc::UnboundedReceiver<String>,
    reload: Arc<Notify>,
}

impl Inbox {
    /// Forgets the certificates asked for so far (a fleet's follower: they are the leader's).
    pub fn drain(&mut self) {
        while self.woken.try_recv().is_ok() {}
    }
}

/// The wanted set as brought into the store at start-up, for [`Reconciler::run`].
pub struct Started {
    /// Digest of what the wanted set was read from, and of the set itself.
    sources: u64,
    specs: u64,
    wanted: Vec<Wanted>,
    unwanted: Vec<String>,
}

impl Started {
    /// How many certificates are wanted.
    pub fn wanted(&self) -> usize {
        self.wanted.len()
    }
}

/// How a certificate's task ended: when to look at it again, and what it waits for (the store
/// after a store error, the certificate directory after a file that could not be written).
struct Ended {
    id: String,
    next: Option<UnixTime>,
    waits_for: Option<Part>,
}

/// Why the reconciler cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The wanted set is invalid or empty (exit code 2).
    #[error("{0}")]
    Config(crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Reconciler {
    pub fn new(parts: Parts, tuning: Tuning) -> (Arc<Reconciler>, Control, Inbox) {
        let (control, inbox) = channel();
        (
            Reconciler::new_with(parts, tuning, control.clone()),
            control,
            inbox,
        )
    }

    /// A reconciler whose watchdog wakes certificates through `control` (a fleet's leader: one
    /// [`Control`] for the admin socket across its terms as leader).
    pub fn new_with(parts: Parts, tuning: Tuning, control: Control) -> Arc<Reconciler> {
        let budget = Budget::new(
            parts.store.clone(),
            parts.config.acme_directory.clone(),
            parts.config.rate_limits,
        );
        let r = Reconciler {
            config: parts.config,
            wanted: parts.wanted,
            store: parts.store,
            ca: parts.ca,
            haproxy: parts.haproxy,
            clock: parts.clock,
            dice: parts.dice,
            tokens: parts.tokens,
            health: parts.health,
            budget,
            tuning,
            order_started: std::sync::Mutex::new(HashMap::new()),
            ids: ids::SharedIds::default(),
            downloaded: std::sync::Mutex::new(HashMap::new()),
            alerts_unrecorded: std::sync::Mutex::new(HashMap::new()),
            dns_auth_output: std::sync::Mutex::new(HashMap::new()),
            control,
        };
        Arc::new(r)
    }

    /// Brings the store in line with the wanted set (DOMAINS, DOMAINS_FILE and the certificates
    /// added at runtime) and publishes every stored challenge again: [`Reconciler::wanted_now`],
    /// then [`Reconciler::start_with`].
    pub async fn start(&self) -> Result<Started, StartError> {
        let wanted = self.wanted_now().await?;
        self.start_with(wanted).await
    }

    /// Brings the store in line with `wanted` in one pass over every record (which also fills
    /// the daemon's view, `store::view`), and publishes every stored challenge again.
    pub async fn start_with(&self, wanted: WantedNow) -> Result<Started, StartError> {
        let WantedNow { sources, specs } = wanted;
        let specs_digest = wanted::digest(&specs);
        let (wanted, unwanted, dns_owed) = self.sync_specs(specs).await?;
        // DNS records a crash left published (recorded before their hook ran): removed before
        // any order is driven again.
        for id in dns_owed {
            tracing::info!(cert = %id, "removing the DNS records an earlier run left published");
            self.clean_dns(&id).await?;
        }
        Ok(Started {
            sources,
            specs: specs_digest,
            wanted,
            unwanted,
        })
    }

    /// Runs until `shutdown` turns true, then lets in-flight steps finish (bounded) and returns
    /// the inbox (a fleet's next term as leader reads it again).
    /// A change of `reload` (SIGHUP, DOMAINS_FILE edited) re-reads the wanted certificates after a
    /// short settle delay; [`Control`] asks through `inbox`.
    pub async fn run(
        self: Arc<Self>,
        started: Started,
        mut shutdown: watch::Receiver<bool>,
        mut reload: watch::Receiver<u64>,
        mut inbox: Inbox,
    ) -> Inbox {
        let shared = self;
        // A JoinSet aborts its task when dropped: the watchdog ends with this future, however
        // it ends (a simulated crash drops it wherever it waits).
        let mut watchdog = JoinSet::new();
        watchdog.spawn(shared.clone().watchdog(shutdown.clone()));
        let Started {
            sources,
            specs,
            wanted: wanted_due,
            unwanted,
        } = started;
        for id in &unwanted {
            tracing::info!(cert = %id, prune = shared.config.prune, "in the store but not configured: not renewed");
            if shared.config.prune {
                shared.prune(id).await;
            }
        }
        let started = std::time::Instant::now();
        // Each certificate is scheduled from its record's plan (no second store read, no task for
        // one with nothing to do).
        schedule_all(&shared.ids, wanted_due);
        let due_now = shared.ids.lock().due_at(shared.clock.now());
        tracing::info!(
            certificates = shared.ids.lock().wanted(),
            due_now,
            ms = started.elapsed().as_millis() as u64,
            "reconciler ready"
        );
        // The start-up's transient allocations (every record decoded once) are freed by now.
        crate::memory::trim();
        // Certificates a task is working on, and those to prune once their task is done.
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut prune_when_done: HashSet<String> = HashSet::new();
        // Certificates that came due while a task was on them: that task may have planned from a
        // record older than the change that made them due, so they are looked at again at once.
        let mut look_again: HashSet<String> = HashSet::new();
        // Certificates waiting for the store or the certificate directory (a full disk).
        let mut waits = waits::Waits::default();
        let mut tasks: JoinSet<Ended> = JoinSet::new();
        // A digest of the wanted certificates as last applied: a reload that reads the same is a
        // no-op. (A digest, not a copy: with 100,000 certificates a copy costs tens of MiB.)
        let mut applied = specs;
        // And of what they were read from: a re-read of the same bytes is not parsed again.
        let mut applied_sources = sources;
        loop {
            let now = shared.clock.now();
            shared.health.passed(now);
            for id in waits.recovered(&shared, now).await {
                if !in_flight.contains(&id) {
                    shared.ids.lock().schedule_if_wanted(&id, Some(now));
                }
            }
            while tasks.len() < shared.tuning.max_concurrent {
                let Some(id) = shared.ids.lock().pop_due(now) else {
                    break;
                };
                if in_flight.insert(id.clone()) {
                    tasks.spawn(shared.clone().drive(id));
                } else {
                    look_again.insert(id);
                }
            }
            let heartbeat = shared.tuning.heartbeat;
            let next = shared.ids.lock().next_due();
            let mut wait = match next {
                Some(t) if tasks.len() < shared.tuning.max_concurrent => {
                    Duration::from_secs((t - now).max(1) as u64)
                }
                _ => heartbeat,
            }
            .min(heartbeat);
            wait = waits.cap(wait, now);
            let mut reread = false;
            // `biased`: the same order every time, so a simulated schedule replays from its seed.
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                    Ok(Ended { id, next, waits_for }) => {
                        in_flight.remove(&id);
                        waits.ended(&shared, &id, waits_for);
                        let again = look_again.remove(&id);
                        if prune_when_done.remove(&id) {
                            shared.prune(&id).await;
                        } else {
                            // Not if removed from the configuration meanwhile.
                            let t = if again { Some(shared.clock.now()) } else { next };
                            shared.ids.lock().schedule_if_wanted(&id, t);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "a certificate task failed unexpectedly"),
                },
                Some(id) = inbox.woken.recv() => {
                    let mut ids = shared.ids.lock();
                    if !ids.is_wanted(&id) {
                        tracing::info!(cert = %id, "not configured: an operator's request changes its state but nothing is done until it is");
                    } else if in_flight.contains(&id) {
                        look_again.insert(id);
                    } else {
                        ids.schedule(&id, shared.clock.now());
                    }
                }
                Ok(()) = reload.changed() => {
                    // Editors and ConfigMaps write in several steps: let them finish.
                    tokio::time::sleep(RELOAD_SETTLE).await;
                    reload.borrow_and_update();
                    reread = true;
                }
                _ = inbox.reload.notified() => reread = true,
                _ = tokio::time::sleep(wait) => {}
            }
            if !reread {
                continue;
            }
            let Some((sources, specs_digest, now_wanted, gone)) =
                shared.reread(applied_sources, applied).await
            else {
                continue;
            };
            applied = specs_digest;
            applied_sources = sources;
            for id in &gone {
                shared.unwatch(id);
                if shared.ids.lock().unwant(id) {
                    shared.ids.lock().unschedule(id);
                    tracing::info!(cert = %id, prune = shared.config.prune, "removed from the configuration: no longer renewed");
                    if shared.config.prune {
                        if in_flight.contains(id) {
                            prune_when_done.insert(id.clone());
                        } else {
                            shared.prune(id).await;
                        }
                    }
                }
            }
            if !prune_when_done.is_empty() {
                let ids = shared.ids.lock();
                for w in &now_wanted {
                    prune_when_done.remove(ids.id(w.id));
                }
            }
            schedule_all(&shared.ids, now_wanted);
        }
        watchdog.abort_all();
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
        inbox
    }
}
