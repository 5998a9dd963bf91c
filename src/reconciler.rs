//! The reconciler: the I/O shell around the pure core. It wakes at the earliest due time of any
//! certificate (or when an action completes, or on shutdown), asks `state::plan` what to do, runs
//! the action with bounded concurrency, and feeds the results back through `state::apply`,
//! persisting each new record (flushed) before the next ACME request.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haproxy_acme_state::machine::FailureReport;
use haproxy_acme_state::{
    apply, plan, Action, Challenge, Event, FailureKind, Plan, Record, Step, UnixTime,
};
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinSet;

use crate::acme::{AcmeClient, AcmeError, OrderHooks};
use crate::config::Config;
use crate::installer::Installer;
use crate::responder::Tokens;
use crate::store::{Store, StoreError};

/// At most this many certificates are worked on at once.
const MAX_CONCURRENT: usize = 8;
/// After a store error (disk full, say) a certificate is looked at again after this delay.
const STORE_RETRY_SECS: i64 = 30;
/// Bound on consecutive actions for one certificate in one wake-up; a guard against a loop that
/// makes no progress, never reached in normal operation (an issuance is about five steps).
const MAX_STEPS_PER_WAKE: usize = 32;
/// How long shutdown waits for in-flight steps to reach a durable point.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub fn unix_now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Everything the reconciler's tasks share.
pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub installer: Installer,
    /// The responder's challenge map, kept in step with the records' published challenges.
    pub tokens: Tokens,
    /// The ACME account, connected on first use (so an unreachable CA is a recorded, retried
    /// failure rather than a start-up error).
    acme: OnceCell<AcmeClient>,
}

impl Shared {
    pub fn new(config: Config, store: Store, installer: Installer, tokens: Tokens) -> Shared {
        Shared {
            config,
            store,
            installer,
            tokens,
            acme: OnceCell::new(),
        }
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
        tracing::warn!(
            cert = id,
            step = step.as_str(),
            kind = kind.as_str(),
            next_attempt_at = next.map(haproxy_acme_state::dump::rfc3339),
            "{message}"
        );
        Ok(r)
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

/// Brings the store in line with the configuration at start-up: new certificates get a record,
/// changed ones an event; the responder gets every published challenge back. Returns the ids to
/// manage.
pub fn sync_config(shared: &Shared) -> Result<Vec<String>, StoreError> {
    let now = unix_now();
    // One pass over the store; records not in the configuration are left as they are.
    let mut stored: HashMap<String, Record> = shared
        .store
        .records()?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut wanted = Vec::new();
    for spec in &shared.config.certificates {
        let configured = Event::Configured {
            names: spec.names.clone(),
            key_type: shared.config.key_type,
            acme_directory: shared.config.acme_directory.clone(),
        };
        let old = stored.remove(&spec.id);
        let base = old
            .clone()
            .unwrap_or_else(|| Record::new(spec.names.clone(), shared.config.key_type, now));
        let (new, _) = apply(&base, configured, now);
        if old.as_ref() != Some(&new) {
            shared.store.put(&new)?;
            match old {
                None => {
                    tracing::info!(cert = %spec.id, names = ?spec.names, "new certificate wanted")
                }
                Some(_) => {
                    tracing::info!(cert = %spec.id, names = ?spec.names, "certificate names, key type or CA changed: re-issuing")
                }
            }
        }
        sync_tokens(&shared.tokens, None, Some(&new));
        wanted.push(spec.id.clone());
    }
    for id in stored.keys() {
        tracing::info!(cert = %id, "in the store but not in DOMAINS: kept as it is, not renewed");
    }
    Ok(wanted)
}

/// Runs until `shutdown` turns true, then lets in-flight steps finish (bounded) and returns.
pub async fn run(shared: Arc<Shared>, ids: Vec<String>, mut shutdown: watch::Receiver<bool>) {
    // Due times, earliest first; everything is looked at once at start.
    let mut due: BTreeSet<(UnixTime, String)> = ids.into_iter().map(|id| (0, id)).collect();
    let mut tasks: JoinSet<(String, Option<UnixTime>)> = JoinSet::new();
    loop {
        let now = unix_now();
        while tasks.len() < MAX_CONCURRENT {
            match due.first() {
                Some((t, _)) if *t <= now => {
                    let (_, id) = due.pop_first().expect("first exists");
                    tasks.spawn(drive(shared.clone(), id));
                }
                _ => break,
            }
        }
        let wait = match due.first() {
            Some((t, _)) if tasks.len() < MAX_CONCURRENT => {
                Duration::from_secs((t - now).max(1) as u64)
            }
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok((id, Some(t))) => { due.insert((t, id)); }
                Ok((_, None)) => {}
                Err(e) => tracing::error!(error = %e, "a certificate task failed unexpectedly"),
            },
            _ = tokio::time::sleep(wait) => {}
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
            let acme = match shared.acme().await {
                Ok(a) => a,
                Err(e) => return shared.fail_acme(id, e).map(drop),
            };
            match acme.new_order(&r.names).await {
                Ok(url) => {
                    tracing::info!(cert = id, order = %url, "order created");
                    shared.record(id, Event::OrderCreated { url })?;
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
                        tracing::info!(cert = id, serial = %serial, ms = started.elapsed().as_millis() as u64, "certificate issued and stored");
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
                    shared.fail_acme(id, e)?;
                }
            }
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
                    tracing::info!(cert = id, serial = %meta.serial, method = ?method, "certificate installed");
                }
                Err(e) => {
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
