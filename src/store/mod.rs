//! The durable store as a trait: records, certificate chains, private keys, ACME account
//! credentials, the rate-limit ledger and the certificates added at runtime. The reconciler, the
//! operator commands and the admin endpoint see only [`Store`]; the backend is chosen at start-up
//! ([`sled::SledStore`] on one machine; [`memory::MemoryStore`] for the simulated-time tests),
//! and the daemon wraps it in [`watched::Watched`], which reports write failures and recoveries
//! to the health registry, and on one machine in [`view::Viewed`], which keeps the in-memory view
//! `status` and `/metrics` read.
//!
//! Rules every backend keeps:
//! - every change of a record goes through [`Store::update`]: one read-modify-write under the
//!   backend's record lock, so a reconciler task, a configuration reload, an operator command
//!   and an import never overwrite each other's change;
//! - the runtime additions (`domains add`) change the same way ([`Store::update_added`]);
//! - a write returns only once it is durable (the durable-intent rule), and what goes together is
//!   written together (a record with its new key, a certificate with its key);
//! - blocking work (sled's fsync) never runs on the async runtime's worker threads.

pub mod memory;
pub mod migrate;
pub mod postgres;
pub mod sled;
pub mod view;
pub mod watched;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store in {0} is locked by another process (is the daemon running? `state dump` talks \
         to it through its admin socket)"
    )]
    Locked(PathBuf),
    #[error("cannot open the store in {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error(
        "record {id:?} in the store cannot be read ({detail}); the store is damaged or was written \
         by a newer version: restore DATA_DIR from a backup or run a newer haproxy-acme"
    )]
    Corrupt { id: String, detail: String },
    #[error(
        "store write failed: {0} (is the disk full?); nothing was lost, the step will be retried"
    )]
    Write(String),
    /// The store lost what it held, or does not match the certificate directory: refused before
    /// anything is ordered again (the daemon exits with code 4).
    #[error(
        "the store in {path} is damaged: {detail}.\nNothing was changed: starting on it would order \
         certificates again with new keys while valid ones sit in CERTS_DIR. With the daemon \
         stopped, run `haproxy-acme rebuild` to recreate the records from the certificate files in \
         CERTS_DIR (nothing is re-issued), or `haproxy-acme restore FILE` to bring back a backup; \
         either moves the damaged store aside into DATA_DIR, it is never deleted"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error("this store backend cannot make {0}")]
    Unsupported(&'static str),
    /// The shared PostgreSQL store did not answer or refused (a restart, the network): nothing
    /// was written, the step is tried again.
    #[error(
        "the PostgreSQL store failed: {0}; nothing was lost, the step will be retried once it \
         answers"
    )]
    Database(String),
    /// A write of a former leader, refused because another instance took the lease over.
    #[error(
        "write refused: this instance's lease (epoch {epoch}) was taken over by another \
         instance, which leads now; this one steps down"
    )]
    Fenced { epoch: i64 },
}

/// What one [`Store::update`] writes, atomically, for the record it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    Keep,
    /// The record.
    Put(Record),
    /// The record after an observation the daemon makes again if it is lost (the certificate
    /// was installed, the CA's renewal window): written, but a backend may make it durable only
    /// with its next durable write or when it closes: a crash may lose it, never a write made
    /// before it. sled skips its flush: a certificate's path costs three flushes, not five.
    PutObservation(Record),
    /// The record with the freshly generated key of its order (before any finalize uses it).
    PutWithPendingKey(Record, String),
    /// The record with its new certificate chain; the order's key becomes the current key in
    /// the same write. Refused when no pending key is stored (never a certificate without key).
    PutCertificate(Record, String),
    /// The record with a certificate and key obtained elsewhere (`import certbot`).
    PutAdopted {
        record: Record,
        chain_pem: String,
        key_pem: String,
    },
    /// Forget the certificate: record, chain and keys (`PRUNE`).
    Delete,
}

/// The closure of an update: the stored record (if any) to the change to write.
pub type UpdateFn = Box<dyn FnOnce(Option<Record>) -> Change + Send>;
/// The closure of an update of every record: a stored record to its replacement, if changed.
pub type SweepFn = Box<dyn FnMut(&Record) -> Option<Record> + Send>;
/// The closure of an update of some records: an id and its stored record (if any) to the record
/// to write, if changed.
pub type SomeFn = Box<dyn FnMut(&str, Option<&Record>) -> Option<Record> + Send>;
/// The runtime additions, each as its list of names, to the new list (`Err`: refused, unchanged).
pub type AddedFn = Box<dyn FnOnce(&[Vec<String>]) -> Result<Vec<Vec<String>>, String> + Send>;

/// A store backend. Shared as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The record of certificate `id`.
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError>;

    /// Every record in id order, one at a time (nothing is held but the one being looked at).
    async fn scan(&self, visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError>;

    /// Up to `n` certificate ids, in id order (the examples of a not-found error). The default
    /// scans; backends that can stop early do.
    async fn some_ids(&self, n: usize) -> Result<Vec<String>, StoreError> {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let sink = ids.clone();
        self.scan(Box::new(move |r| {
            let mut ids = sink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ids.len() < n {
                ids.push(r.id)
            }
        }))
        .await?;
        let mut ids = ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(std::mem::take(&mut *ids))
    }

    /// Reads record `id`, passes it to `f` and writes what `f` returns, all under the record
    /// lock. The typed front end is [`update`](trait.Store.html#method.update) on `dyn Store`.
    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError>;

    /// Under the record lock: passes every stored record to `sweep` (id order), then writes the
    /// records it replaced and those `more` returns (new certificates), in one durable batch.
    async fn update_all(
        &self,
        sweep: SweepFn,
        more: Box<dyn FnOnce() -> Vec<Record> + Send>,
    ) -> Result<(), StoreError>;

    /// Under the record lock: passes each record of `ids` (`None` for an id not stored) to
    /// `f`, then writes the records it returns in one durable batch, so a reload that changes
    /// two certificates costs one flush, not two. The default is one
    /// [`update_boxed`](Store::update_boxed) per id (for a backend whose batch would cost as
    /// much); the wrappers pass it on.
    async fn update_some(&self, ids: Vec<String>, f: SomeFn) -> Result<(), StoreError> {
        let f = Arc::new(Mutex::new(f));
        for id in ids {
            let (f, key) = (f.clone(), id.clone());
            self.update_boxed(
                &id,
                Box::new(move |r| {
                    let mut f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    f(&key, r.as_ref()).map_or(Change::Keep, Change::Put)
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// The stored key of the order in flight of `id`, if generated.
    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// The stored certificate chain of `id` and its key.
    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError>;

    /// The certificates added at runtime (`domains add`), each as its list of names.
    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError>;

    /// Changes the runtime additions under their own lock (two `domains add` at once never lose
    /// one). Returns the list as written, or `f`'s refusal.
    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError>;

    /// Appends to the rate-limit ledger of `directory`, forgetting entries older than `keep_since`.
    /// A backend may make it durable only with its next durable write: the reconciler writes the
    /// record of what it counts (the order, the certificate, the failure) right after it.
    async fn ledger_append(
        &self,
        directory: &str,
        entry: &Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError>;

    /// The ledger entries of `directory` at or after `since`, oldest first.
    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError>;

    /// ACME account credentials (instant-acme's JSON) for a directory.
    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError>;

    /// The account key (PKCS#8 DER) generated for a directory before the account was created.
    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError>;

    /// Writes a small value durably: proves the store takes writes (`/healthz`).
    async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError>;

    /// A consistent snapshot of everything the store holds, keys and account credentials
    /// included: the bytes of a `backup` file. Backends without one refuse. (No default: a
    /// wrapper that forgot to pass it on once made `backup` of the running daemon refuse.)
    async fn snapshot(&self, now: UnixTime) -> Result<Vec<u8>, StoreError>;
}

impl dyn Store {
    /// Reads record `id`, lets `f` decide the change (and an answer of its own), writes the
    /// change, all under the record lock; returns `f`'s answer. `f` runs exactly once unless the
    /// store fails before reading.
    pub async fn update<T: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(Option<Record>) -> (Change, T) + Send + 'static,
    ) -> Result<T, StoreError> {
        let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        self.update_boxed(
            id,
            Box::new(move |r| {
                let (change, answer) = f(r);
                *out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer);
                change
            }),
        )
        .await?;
        let answer = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        answer.ok_or_else(|| StoreError::Write("the update was not applied".into()))
    }

    /// Writes `records` (new or replacing) in one durable batch, under the record lock (seeding
    /// a store: the scale test, the benchmark).
    pub async fn put_all(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.update_all(Box::new(|_| None), Box::new(move || records))
            .await
    }

    /// All records, in id order.
    pub async fn records(&self) -> Result<Vec<Record>, StoreError> {
        let all = Arc::new(Mutex::new(Vec::new()));
        let sink = all.clone();
        self.scan(Box::new(move |r| {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(r)
        }))
        .await?;
        let mut all = all
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(std::mem::take(&mut *all))
    }
}

/// Creates DATA_DIR (and its parents) if needed, and makes it private (0700) either way: the
/// sled store, and a fleet's admin socket, live there.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing one is tightened where we may (not fatal: another owner's, a read-only bind).
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

/// What both backends do in [`Store::update_added`] once they hold its lock: ask `f`, and write
/// the new list only when it differs from `old`.
pub(crate) fn change_added(
    old: &[Vec<String>],
    f: AddedFn,
    write: impl FnOnce(&[Vec<String>]) -> Result<(), StoreError>,
) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
    match f(old) {
        Err(refused) => Ok(Err(refused)),
        Ok(new) => {
            if new != old {
                write(&new)?;
            }
            Ok(Ok(new))
        }
    }
}

/// The write a [`Change`] makes for record id `id`: what both backends apply.
pub(crate) fn change_id_matches(id: &str, change: &Change) -> bool {
    match change {
        Change::Keep | Change::Delete => true,
        Change::Put(r)
        | Change::PutObservation(r)
        | Change::PutWithPendingKey(r, _)
        | Change::PutCertificate(r, _) => r.id == id,
        Change::PutAdopted { record, .. } => record.id == id,
    }
}
