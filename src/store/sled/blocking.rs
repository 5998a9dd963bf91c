//! The `Store` face of the sled backend: each call moves its arguments to tokio's blocking pool
//! and runs the synchronous store there (sled reads may hit the disk, most writes fsync), so
//! no store call ever blocks an async worker. And its recovery from a failed write (a full
//! disk): sled 0.34 refuses every write after an I/O error until it is opened again, and its
//! memory may hold the write that failed, so the database is dropped and opened again from
//! the disk (what was flushed, i.e. everything a caller was told is stored) as soon as there
//! is room, without a restart. Until then writes fail at once and reads are served by the old
//! database (so `status` still shows the certificates; at most the failed write is shown).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

use super::Inner;
use crate::store::{AddedFn, SomeFn, Store, StoreError, SweepFn, UpdateFn};

/// How often a broken store tries to open again (each try first writes a probe file).
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// The probe written before a reopen: sled fills the rest of its last 512 KiB log segment with
/// zeros when it opens, so a disk without that much room cannot open it.
const ROOM_PROBE: &str = ".store-room-probe";
const ROOM_BYTES: usize = 1024 * 1024;

/// The sled store in DATA_DIR.
pub struct SledStore {
    shared: Arc<Shared>,
}

struct Shared {
    data_dir: PathBuf,
    state: RwLock<State>,
    /// Whether a pass over many records is followed by opening the store again
    /// ([`SledStore::shed_after`]): the daemon's store only (a command exits soon anyway).
    sheds: std::sync::atomic::AtomicBool,
    /// How many times it was opened again (the tests' view).
    shed_count: std::sync::atomic::AtomicU64,
    /// [`reopen::CHECKPOINT_BYTES`], lower in tests.
    checkpoint_bytes: std::sync::atomic::AtomicU64,
    /// A write found the database due to be opened again ([`Shared::note_written`]).
    checkpoint_due: std::sync::atomic::AtomicBool,
}

struct State {
    /// The open database; `None` only after a reopen failed, until one succeeds.
    inner: Option<Inner>,
    /// Set when a write failed, until the store is open again.
    broken: Option<Broken>,
}

struct Broken {
    /// The error of the failed write (then of the last reopen).
    error: String,
    last_try: Option<Instant>,
}

/// Whether a call writes (refused at once while the store is broken) or only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl SledStore {
    /// Opens (creating if needed) the store in `data_dir`, which is made private (0700).
    pub fn open(data_dir: &Path) -> Result<SledStore, StoreError> {
        let inner = Inner::open(data_dir)?;
        let _ = std::fs::remove_file(data_dir.join(ROOM_PROBE));
        Ok(SledStore {
            shared: Arc::new(Shared {
                data_dir: data_dir.to_path_buf(),
                state: RwLock::new(State {
                    inner: Some(inner),
                    broken: None,
                }),
                sheds: std::sync::atomic::AtomicBool::new(false),
                shed_count: std::sync::atomic::AtomicU64::new(0),
                checkpoint_bytes: std::sync::atomic::AtomicU64::new(reopen::CHECKPOINT_BYTES),
                checkpoint_due: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// From now on, the database is opened again after a pass over many records, to drop the
    /// pages it read ([`SledStore::shed_after`]), and after much was written since it was
    /// opened, so that the next start replays little of its log ([`Shared::note_written`]):
    /// for a long-lived process (the daemon).
    pub fn shed_pages(&self) {
        self.shared
            .sheds
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times a pass made the store open again.
    #[cfg(test)]
    pub(super) fn sheds(&self) -> u64 {
        self.shared
            .shed_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `data_dir` holds a store (`open` would create one).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(super::STORE_DIR).is_dir()
    }

    /// True while the store has no marker (see `marker`): a new store, one restored from a
    /// snapshot, one an older version wrote, or DATA_DIR wiped. Nothing tells what it should
    /// hold, so the daemon checks it against the certificate directory
    /// (`recovery::check_certs_dir`) before it [`seal`](SledStore::seal)s it.
    pub fn unmarked(&self) -> bool {
        self.shared
            .read()
            .inner
            .as_ref()
            .is_some_and(|inner| inner.unmarked.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Runs `f` on the open database, here and now (the unit tests' view of it).
    #[cfg(test)]
    pub(super) fn with_inner<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        f(self
            .shared
            .read()
            .inner
            .as_ref()
            .expect("the store is open"))
    }

    /// Every ACME directory the store knows (of an account, its key or ledger entries).
    pub async fn directories(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(Access::Read, |s| s.directories()).await
    }

    /// Writes the marker of an unmarked store (on the blocking pool: it fsyncs).
    pub async fn seal(&self) -> Result<(), StoreError> {
        self.blocking(Access::Write, |s| s.seal()).await
    }

    /// Runs `f` on the blocking pool (sled reads may hit the disk, writes fsync).
    async fn blocking<R: Send + 'static>(
        &self,
        access: Access,
        f: impl FnOnce(&Inner) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let shared = self.shared.clone();
        let result = tokio::task::spawn_blocking(move || shared.call(access, f))
            .await
            .map_err(|e| StoreError::Write(format!("store task failed: {e}")))?;
        self.checkpoint_if_due();
        result
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the open database, after a reopen if one is due; a write while the store is
    /// broken fails at once with the error that broke it.
    fn call<R>(
        &self,
        access: Access,
        f: impl FnOnce(&Inner) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.heal();
        let state = self.read();
        let inner = match (&state.inner, &state.broken) {
            (Some(inner), None) => inner,
            (Some(inner), Some(_)) if access == Access::Read => inner,
            (_, broken) => {
                let error = broken
                    .as_ref()
                    .map_or("the store is closed".into(), |b| b.error.clone());
                return Err(StoreError::Write(error));
            }
        };
        let result = f(inner);
        if access == Access::Write {
            self.note_written(inner);
        }
        let failed = inner.failed();
        drop(state);
        if let (true, Err(e)) = (failed, &result) {
            self.broke(e);
        }
        result
    }

    /// A write failed: from now on writes are refused until the database is opened again.
    fn broke(&self, e: &StoreError) {
        let mut state = self.write();
        if state.broken.is_none() && state.inner.as_ref().is_some_and(Inner::failed) {
            let error = match e {
                StoreError::Write(m) => m.clone(),
                other => other.to_string(),
            };
            tracing::warn!(error = %error, "a store write failed: the store takes no writes until it is opened again, once the disk has room");
            state.broken = Some(Broken {
                error,
                last_try: None,
            });
        }
    }

    /// Opens the store again if it is broken and a try is due: once a probe file fits on the
    /// disk, the old database is dropped (its file lock and whatever of the failed write it
    /// held in memory) and sled opens the store from the disk.
    fn heal(&self) {
        let due = |b: &Broken| b.last_try.is_none_or(|t| t.elapsed() >= REOPEN_EVERY);
        if !self.read().broken.as_ref().is_some_and(due) {
            return;
        }
        let mut state = self.write();
        let state = &mut *state;
        let Some(broken) = state.broken.as_mut().filter(|b| due(b)) else {
            return; // opened again by another call meanwhile
        };
        broken.last_try = Some(Instant::now());
        if let Err(e) = room(&self.data_dir) {
            tracing::debug!(error = %e, "no room to open the store again yet");
            return;
        }
        state.inner = None;
        match Inner::open(&self.data_dir) {
            Ok(inner) => {
                state.inner = Some(inner);
                state.broken = None;
                tracing::info!(data_dir = %self.data_dir.display(), "store opened again after a failed write");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the store again yet");
                broken.error = e.to_string();
            }
        }
    }
}

/// Writes, syncs and removes a probe file of `ROOM_BYTES` in `dir`.
fn room(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(ROOM_PROBE);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; ROOM_BYTES])?;
            f.sync_all()
        });
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

mod reopen;

#[async_trait]
impl Store for SledStore {
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_string();
        self.blocking(Access::Read, move |s| s.get(&id)).await
    }

    async fn scan(&self, mut visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError> {
        let n = self
            .blocking(Access::Read, move |s| s.for_each_record(&mut visit))
            .await?;
        self.shed_after(n);
        Ok(())
    }

    async fn some_ids(&self, n: usize) -> Result<Vec<String>, StoreError> {
        self.blocking(Access::Read, move |s| {
            let mut ids = Vec::new();
            for k in s.records.iter().keys().take(n) {
                let k = k.map_err(|e| StoreError::Corrupt {
                    id: "?".into(),
                    detail: e.to_string(),
                })?;
                ids.push(String::from_utf8_lossy(&k).into_owned());
            }
            Ok(ids)
        })
        .await
    }

    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError> {
        let id = id.to_string();
        self.blocking(Access::Write, move |s| {
            let _guard = s.lock_records();
            let change = f(s.get(&id)?);
            s.apply_change(&id, change)
        })
        .await
    }

    async fn update_all(
        &self,
        mut sweep: SweepFn,
        more: Box<dyn FnOnce() -> Vec<Record> + Send>,
    ) -> Result<(), StoreError> {
        let n = self
            .blocking(Access::Write, move |s| {
                let _guard = s.lock_records();
                let mut changed = Vec::new();
                let n = s.for_each_record(|r| changed.extend(sweep(&r)))?;
                changed.extend(more());
                s.put_many(&changed).map(|()| n)
            })
            .await?;
        self.shed_after(n);
        Ok(())
    }

    async fn update_some(&self, ids: Vec<String>, mut f: SomeFn) -> Result<(), StoreError> {
        self.blocking(Access::Write, move |s| {
            let _guard = s.lock_records();
            let mut changed = Vec::new();
            for id in &ids {
                changed.extend(f(id, s.get(id)?.as_ref()));
            }
            s.put_many(&changed)
        })
        .await
    }

    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        self.blocking(Access::Read, move |s| s.pending_key(&id))
            .await
    }

    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let id = id.to_string();
        self.blocking(Access::Read, move |s| s.certificate(&id))
            .await
    }

    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError> {
        self.blocking(Access::Read, |s| s.added_domains()).await
    }

    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
        self.blocking(Access::Write, move |s| {
            let _guard = s
                .added_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            crate::store::change_added(&s.added_domains()?, f, |new| s.put_added_domains(new))
        })
        .await
    }

    async fn ledger_append(
        &self,
        directory: &str,
        entry: &Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError> {
        let (directory, entry) = (directory.to_string(), entry.clone());
        self.blocking(Access::Write, move |s| {
            s.ledger_append(&directory, &entry, keep_since)
        })
        .await
    }

    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError> {
        let directory = directory.to_string();
        self.blocking(Access::Read, move |s| s.ledger_since(&directory, since))
            .await
    }

    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let directory = directory.to_string();
        self.blocking(Access::Read, move |s| s.account(&directory))
            .await
    }

    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        let (directory, credentials) = (directory.to_string(), credentials.to_vec());
        self.blocking(Access::Write, move |s| {
            s.put_account(&directory, &credentials)
        })
        .await
    }

    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let directory = directory.to_string();
        self.blocking(Access::Read, move |s| s.account_key(&directory))
            .await
    }

    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        let (directory, der) = (directory.to_string(), pkcs8_der.to_vec());
        self.blocking(Access::Write, move |s| s.put_account_key(&directory, &der))
            .await
    }

    async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        self.blocking(Access::Write, move |s| s.probe_write(now))
            .await
    }

    async fn snapshot(&self, now: UnixTime) -> Result<Vec<u8>, StoreError> {
        self.blocking(Access::Read, move |s| s.export(now)).await
    }
}
