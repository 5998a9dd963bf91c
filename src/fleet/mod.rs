//! A fleet: one instance beside each HAProxy node, all on one PostgreSQL store. Every instance
//! answers every challenge and installs every certificate into its own HAProxy ([`mirror`]);
//! one of them, the holder of the lease, runs the reconciler, i.e. talks to the CA ([`lead`]).
//!
//! Safety rests on two things. Every write of the leader's reconciler goes through a store
//! handle fenced by the lease's epoch (`PgStore::fenced`): once another instance took the lease,
//! no write of the former leader commits, so it can record no order URL, key or account. And
//! every request that creates something at the CA (a new order, the first call of a term) is
//! sent only while the lease is valid by this instance's own monotonic clock, counted from
//! before the request that got or renewed it ([`FencedCa`]): a leader frozen past its lease
//! (SIGSTOP, a long GC-like pause, a partition) sends nothing when it wakes. Orders in flight
//! are resumed by URL by the next leader, as after a crash.

pub mod mirror;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use haproxy_acme_state::{CertMeta, FailureKind, Step};
use tokio::sync::{watch, Notify};

use crate::acme::{AcmeError, Ca, OrderHooks, RenewalInfo};
use crate::installer::{Haproxy, InstallError, Method};
use crate::reconciler::{Control, Inbox, Parts, Reconciler, StartError, Tuning};
use crate::store::postgres::lease::Held;
use crate::store::postgres::PgStore;
use crate::store::watched::Watched;
use crate::store::Store;
use crate::watchdog::Observed;

/// The lease this instance holds in its current term, shared with its [`FencedCa`].
#[derive(Clone)]
pub struct LeaseCell(Arc<Mutex<Held>>);

impl LeaseCell {
    fn set(&self, held: Held) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = held;
    }

    fn get(&self) -> Held {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the lease is still ours by our own clock, with `margin` to spare.
    pub fn valid_for(&self, margin: Duration) -> bool {
        Instant::now() + margin < self.get().valid_until
    }
}

/// A [`Ca`] that sends a creating request only while the lease is valid (see the module doc).
pub struct FencedCa {
    inner: Arc<dyn Ca>,
    lease: LeaseCell,
}

/// Time kept in hand: a request is not started with less than this left of the lease.
const MARGIN: Duration = Duration::from_millis(500);

impl FencedCa {
    fn check(&self, step: Step) -> Result<(), AcmeError> {
        if self.lease.valid_for(MARGIN) {
            Ok(())
        } else {
            Err(AcmeError::new(
                step,
                FailureKind::Retryable,
                "not sent: this instance's lease ran out (another instance may lead now)",
            ))
        }
    }
}

#[async_trait]
impl Ca for FencedCa {
    async fn new_order(
        &self,
        names: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<String, AcmeError> {
        self.check(Step::Order)?;
        self.inner.new_order(names, replaces, profile).await
    }

    async fn drive_order(
        &self,
        url: &str,
        names: &[String],
        hooks: &dyn OrderHooks,
    ) -> Result<String, AcmeError> {
        self.check(Step::Validation)?;
        self.inner.drive_order(url, names, hooks).await
    }

    async fn renewal_info(&self, chain_pem: &str) -> Result<Option<RenewalInfo>, AcmeError> {
        self.inner.renewal_info(chain_pem).await
    }
}

/// An [`Haproxy`] that notes each certificate it installed in the store, for this node.
pub struct NotingHaproxy {
    inner: Arc<dyn Haproxy>,
    pg: PgStore,
}

impl NotingHaproxy {
    pub fn new(inner: Arc<dyn Haproxy>, pg: PgStore) -> NotingHaproxy {
        NotingHaproxy { inner, pg }
    }
}

#[async_trait]
impl Haproxy for NotingHaproxy {
    async fn install(
        &self,
        id: &str,
        chain_pem: &str,
        key_pem: &str,
        meta: &CertMeta,
    ) -> Result<Method, InstallError> {
        let method = self.inner.install(id, chain_pem, key_pem, meta).await?;
        if let Err(e) = self.pg.note_installed(id, &meta.serial).await {
            tracing::debug!(cert = %id, error = %e, "cannot note the installed serial");
        }
        Ok(method)
    }

    async fn remove(&self, id: &str) -> Result<(), InstallError> {
        self.inner.remove(id).await
    }

    async fn observe(&self, ids: &[&str]) -> Result<Vec<Observed>, InstallError> {
        self.inner.observe(ids).await
    }

    async fn reachable(&self) -> Result<(), InstallError> {
        self.inner.reachable().await
    }
}

/// The reconciler's parts around a store and a CA.
pub type PartsFn = Box<dyn Fn(Arc<dyn Store>, Arc<dyn Ca>) -> Parts + Send + Sync>;

/// What a term as leader is built from.
pub struct Leader {
    pub pg: PgStore,
    /// The reconciler's parts around a store and a CA, which each term makes fenced.
    pub parts: PartsFn,
    pub config: Arc<crate::config::Config>,
    pub health: Arc<crate::health::Health>,
    pub clock: Arc<dyn crate::clock::Clock>,
    pub control: Control,
    pub reload: Arc<watch::Sender<u64>>,
    pub lease_time: Duration,
    /// Woken when another instance gave the lease up.
    pub lease_given_up: Arc<Notify>,
    /// Whether this instance leads now (metrics, `status`).
    pub leading: watch::Sender<Option<i64>>,
}

impl Leader {
    /// Tries for the lease every third of its time (at once when it was given up) and runs a
    /// term as leader each time it gets it, until `shutdown`.
    pub async fn run(self, mut inbox: Inbox, mut shutdown: watch::Receiver<bool>) {
        let every = self.lease_time / 3;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.pg.try_lead(self.lease_time).await {
                Ok(Some(held)) => {
                    inbox = self.term(held, inbox, shutdown.clone()).await;
                    // A term that ended at once (the store refused its start) is not retried
                    // in a tight loop, each try raising the epoch.
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot ask for the lease"),
            }
            // Asks made to a follower are for the leader: not kept for a later term.
            inbox.drain();
            // A follower's loop is this one: `/healthz` sees it pass.
            self.health.passed(self.clock.now());
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.lease_given_up.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One term as leader: the reconciler on a fenced store and CA, while the lease is renewed.
    async fn term(&self, held: Held, inbox: Inbox, shutdown: watch::Receiver<bool>) -> Inbox {
        tracing::info!(epoch = held.epoch, node = %self.pg.node(), "leading: this instance talks to the CA");
        let _ = self.leading.send(Some(held.epoch));
        let lease = LeaseCell(Arc::new(Mutex::new(held)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            self.pg.clone(),
            lease.clone(),
            self.lease_time,
            stop_tx,
            shutdown.clone(),
        ));
        let store: Arc<dyn Store> = Arc::new(Watched::new(
            Arc::new(self.pg.fenced(held.epoch)),
            self.health.clone(),
            self.clock.clone(),
        ));
        let acme = crate::acme::LazyAcme::new(self.config.clone(), store.clone());
        let ca = Arc::new(FencedCa {
            inner: Arc::new(acme),
            lease: lease.clone(),
        });
        let parts = (self.parts)(store, ca);
        let reconciler = Reconciler::new_with(
            parts,
            Tuning::for_config(&self.config),
            self.control.clone(),
        );
        let inbox = match reconciler.start().await {
            Ok(started) => {
                reconciler
                    .run(started, stop_rx, self.reload.subscribe(), inbox)
                    .await
            }
            Err(StartError::Config(e)) => {
                tracing::error!(error = %e, "the wanted certificates are invalid: not leading");
                inbox
            }
            Err(StartError::Store(e)) => {
                tracing::warn!(error = %e, "cannot bring the store in line: stepping down");
                inbox
            }
        };
        renewer.abort();
        let _ = self.leading.send(None);
        if *shutdown.borrow() || lease.valid_for(Duration::ZERO) {
            // Handed over at once rather than left to run out.
            if let Err(e) = self.pg.release_lead(lease.get()).await {
                tracing::warn!(error = %e, "cannot give the lease up; it runs out by itself");
            }
        }
        tracing::info!(epoch = held.epoch, "no longer leading");
        inbox
    }
}

/// Renews the lease every third of its time until it is lost (another instance took it, or it
/// ran out by our clock while PostgreSQL did not answer) or the daemon stops; then ends the term.
async fn renew(
    pg: PgStore,
    lease: LeaseCell,
    lease_time: Duration,
    stop: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = lease_time / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {
                let _ = stop.send(true);
                return;
            }
        }
        match pg.renew_lead(lease.get(), lease_time).await {
            Ok(Some(h)) => lease.set(h),
            Ok(None) => {
                tracing::warn!("the lease was taken over by another instance: stepping down");
                let _ = stop.send(true);
                return;
            }
            Err(e) if !lease.valid_for(Duration::ZERO) => {
                tracing::warn!(error = %e, "the lease ran out while PostgreSQL did not answer: stepping down");
                let _ = stop.send(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the lease; trying again"),
        }
    }
}
