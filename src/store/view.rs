//! The daemon's in-memory view of its certificates: per id the [`Summary`] that `status` and
//! `/metrics` show, so those (and the examples of a not-found error) never read the store, whatever
//! the number of certificates. [`Viewed`] is the [`Store`] that keeps it: filled by the first
//! `update_all` (the daemon's start-up pass), which visits every record; then every record
//! written through it (`update`, `update_all`) is applied to the view once the write is durable.
//! Every other call is passed on unchanged.
//!
//! Two writes of the same record can return in another order than they were made; each write
//! takes a sequence number while it holds the store's record lock (so numbers follow the order of
//! the writes) and the view keeps, per id, the summary of the highest number applied.

mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use async_trait::async_trait;
use haproxy_acme_state::dump::Summary;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

use super::{AddedFn, Change, SomeFn, Store, StoreError, SweepFn, UpdateFn};
pub use table::Table;

/// A summary and the sequence number of the write it comes from.
pub struct Seen {
    seq: u64,
    pub summary: Summary,
}

/// The summaries by certificate id.
#[derive(Default)]
pub struct View {
    map: RwLock<Table<Seen>>,
    seq: AtomicU64,
}

impl View {
    /// Reads the summaries (in id order) under the view's read lock.
    pub fn read(&self) -> RwLockReadGuard<'_, Table<Seen>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every summary in id order, from `map` as [`View::read`] gives it.
    pub fn summaries(map: &Table<Seen>) -> impl Iterator<Item = (&str, &Summary)> + Clone {
        map.iter().map(|(id, s)| (id, &s.summary))
    }

    /// The number of the next write (taken under the store's record lock).
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Applies what write `seq` left of `id` (`None`: deleted), unless a later write was applied.
    fn apply(&self, id: &str, summary: Option<Summary>, seq: u64) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (map.get_mut(id), summary) {
            (Some(old), _) if old.seq > seq => {}
            (Some(old), Some(summary)) => *old = Seen { seq, summary },
            (None, Some(summary)) => map.insert_new(id, Seen { seq, summary }),
            (_, None) => {
                map.remove(id);
            }
        }
    }
}

/// `inner`, with every record it writes applied to `view`.
pub struct Viewed {
    inner: Arc<dyn Store>,
    view: Arc<View>,
}

impl Viewed {
    /// Wraps `inner` with an empty view that its first [`Store::update_all`] fills: that pass
    /// visits every record, so the daemon's start-up (which brings every record in line with
    /// the configuration in one such pass) fills the view without a scan of its own.
    pub fn empty(inner: Arc<dyn Store>) -> (Viewed, Arc<View>) {
        let view = Arc::new(View::default());
        let viewed = Viewed {
            inner,
            view: view.clone(),
        };
        (viewed, view)
    }

    /// Wraps `inner` with a view filled as the daemon's is: by a pass over every record that
    /// changes none.
    #[cfg(test)]
    pub async fn filled(inner: Arc<dyn Store>) -> Result<(Viewed, Arc<View>), StoreError> {
        let (viewed, view) = Viewed::empty(inner);
        viewed
            .update_all(Box::new(|_| None), Box::new(Vec::new))
            .await?;
        Ok((viewed, view))
    }
}

/// What the summary of a change is, and whether it deletes (`None`: it writes nothing).
fn summary_of(change: &Change) -> Option<Option<Summary>> {
    match change {
        Change::Keep => None,
        Change::Delete => Some(None),
        Change::Put(r)
        | Change::PutObservation(r)
        | Change::PutWithPendingKey(r, _)
        | Change::PutCertificate(r, _)
        | Change::PutAdopted { record: r, .. } => Some(Some(Summary::from_record(r))),
    }
}

type Written = Arc<Mutex<Vec<(String, Option<Summary>, u64)>>>;

fn take(written: &Written) -> Vec<(String, Option<Summary>, u64)> {
    std::mem::take(
        &mut *written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

#[async_trait]
impl Store for Viewed {
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(id).await
    }

    async fn scan(&self, visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError> {
        self.inner.scan(visit).await
    }

    async fn some_ids(&self, n: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .view
            .read()
            .iter()
            .take(n)
            .map(|(k, _)| k.to_string())
            .collect())
    }

    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError> {
        let written: Written = Arc::default();
        let out = written.clone();
        let (view, key) = (self.view.clone(), id.to_string());
        let f: UpdateFn = Box::new(move |r| {
            let change = f(r);
            if let Some(summary) = summary_of(&change) {
                out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((key, summary, view.next()));
            }
            change
        });
        self.inner.update_boxed(id, f).await?;
        for (id, summary, seq) in take(&written) {
            self.view.apply(&id, summary, seq);
        }
        Ok(())
    }

    async fn update_all(
        &self,
        mut sweep: SweepFn,
        more: Box<dyn FnOnce() -> Vec<Record> + Send>,
    ) -> Result<(), StoreError> {
        let written: Written = Arc::default();
        let (out, also) = (written.clone(), written.clone());
        // One number for the batch, taken under the lock by the sweep's first call (or by
        // `more`, which runs after the sweep, when there is no record).
        let batch = Arc::new(std::sync::OnceLock::new());
        let (view, seq_of) = (self.view.clone(), batch.clone());
        let sweep: SweepFn = Box::new(move |r| {
            let changed = sweep(r);
            match &changed {
                Some(new) => out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((new.id.clone(), Some(Summary::from_record(new)), 0)),
                // Unchanged, so already durable: applied now (the pass visits every record,
                // which is how an empty view gets filled).
                None => {
                    let seq = *seq_of.get_or_init(|| view.next());
                    view.apply(&r.id, Some(Summary::from_record(r)), seq);
                }
            }
            changed
        });
        let view = self.view.clone();
        let more: Box<dyn FnOnce() -> Vec<Record> + Send> = Box::new(move || {
            let new = more();
            let seq = *batch.get_or_init(|| view.next());
            let mut w = also
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w.extend(
                new.iter()
                    .map(|r| (r.id.clone(), Some(Summary::from_record(r)), 0)),
            );
            for entry in w.iter_mut() {
                entry.2 = seq;
            }
            new
        });
        self.inner.update_all(sweep, more).await?;
        for (id, summary, seq) in take(&written) {
            self.view.apply(&id, summary, seq);
        }
        // The pass that filled the table grew its vector by doubling.
        self.view
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .shrink_to_fit();
        Ok(())
    }

    async fn update_some(&self, ids: Vec<String>, mut f: SomeFn) -> Result<(), StoreError> {
        let written: Written = Arc::default();
        let (out, view) = (written.clone(), self.view.clone());
        let f: SomeFn = Box::new(move |id, r| {
            let changed = f(id, r);
            if let Some(new) = &changed {
                out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((new.id.clone(), Some(Summary::from_record(new)), view.next()));
            }
            changed
        });
        self.inner.update_some(ids, f).await?;
        for (id, summary, seq) in take(&written) {
            self.view.apply(&id, summary, seq);
        }
        Ok(())
    }

    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.pending_key(id).await
    }

    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        self.inner.certificate(id).await
    }

    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError> {
        self.inner.added().await
    }

    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
        self.inner.update_added(f).await
    }

    async fn ledger_append(
        &self,
        directory: &str,
        entry: &Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError> {
        self.inner.ledger_append(directory, entry, keep_since).await
    }

    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.ledger_since(directory, since).await
    }

    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.account(directory).await
    }

    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        self.inner.put_account(directory, credentials).await
    }

    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.account_key(directory).await
    }

    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        self.inner.put_account_key(directory, pkcs8_der).await
    }

    async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        self.inner.probe_write(now).await
    }

    async fn snapshot(&self, now: UnixTime) -> Result<Vec<u8>, StoreError> {
        self.inner.snapshot(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use haproxy_acme_state::{apply, Event, KeyType};

    fn view_of(view: &View) -> Vec<(String, Summary)> {
        View::summaries(&view.read())
            .map(|(id, s)| (id.to_string(), s.clone()))
            .collect()
    }

    async fn store_of(store: &dyn Store) -> Vec<(String, Summary)> {
        store
            .records()
            .await
            .unwrap()
            .iter()
            .map(|r| (r.id.clone(), Summary::from_record(r)))
            .collect()
    }

    #[tokio::test]
    async fn the_view_follows_every_write() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let r = |id: &str| Record::new(vec![id.into()], KeyType::EcdsaP256, 0);
        memory
            .put_all(vec![r("a.test"), r("b.test")])
            .await
            .unwrap();
        let (viewed, view) = Viewed::filled(memory.clone()).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(viewed);
        assert_eq!(view_of(&view), store_of(memory.as_ref()).await);

        let failed = apply(&r("a.test"), Event::Retry, 5);
        let mut failed = failed;
        failed.unconfigured = true;
        let put = failed.clone();
        store
            .update("a.test", move |_| (Change::Put(put), ()))
            .await
            .unwrap();
        store
            .update("b.test", |_| (Change::Delete, ()))
            .await
            .unwrap();
        store
            .update("a.test", |_| (Change::Keep, ()))
            .await
            .unwrap();
        store
            .update_all(
                Box::new(|r| {
                    let mut r = r.clone();
                    r.renew_at = Some(77);
                    Some(r)
                }),
                Box::new(move || vec![r("c.test")]),
            )
            .await
            .unwrap();
        assert_eq!(view_of(&view), store_of(memory.as_ref()).await);
        assert_eq!(view.read().len(), 2);
        assert_eq!(store.some_ids(1).await.unwrap(), vec!["a.test".to_string()]);
        // Some records at once: a changed, e new, c kept.
        let ids = ["a.test", "e.test", "c.test"].map(String::from).to_vec();
        store
            .update_some(
                ids,
                Box::new(move |id, old| match (id, old) {
                    ("a.test", Some(old)) => Some(Record {
                        renew_at: Some(5),
                        ..old.clone()
                    }),
                    ("e.test", None) => Some(r("e.test")),
                    _ => None,
                }),
            )
            .await
            .unwrap();
        assert_eq!(view_of(&view), store_of(memory.as_ref()).await);
        assert_eq!(view.read().len(), 3);
        assert_eq!(
            view.read().get("a.test").unwrap().1.summary.renew_at(),
            Some(5)
        );

        // A write that fails leaves the view as it was.
        let memory_fails = MemoryStore::new();
        memory_fails.set_failing(true);
        let (viewed, view) = Viewed::empty(Arc::new(memory_fails));
        let store: Arc<dyn Store> = Arc::new(viewed);
        let put = r("d.test");
        assert!(store
            .update("d.test", move |_| (Change::Put(put), ()))
            .await
            .is_err());
        assert!(view.read().is_empty());
    }

    #[tokio::test]
    async fn an_empty_view_is_filled_by_the_first_pass() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let r = |id: &str| Record::new(vec![id.into()], KeyType::EcdsaP256, 0);
        memory
            .put_all(vec![r("a.test"), r("b.test"), r("c.test")])
            .await
            .unwrap();
        let (viewed, view) = Viewed::empty(memory.clone());
        assert!(view.read().is_empty());
        // b changed, a and c kept, d new: the view is the whole store after the pass.
        viewed
            .update_all(
                Box::new(|r| {
                    (r.id == "b.test").then(|| {
                        let mut r = r.clone();
                        r.renew_at = Some(9);
                        r
                    })
                }),
                Box::new(move || vec![r("d.test")]),
            )
            .await
            .unwrap();
        assert_eq!(view.read().len(), 4);
        assert_eq!(view_of(&view), store_of(memory.as_ref()).await);
        assert_eq!(
            view.read().get("b.test").unwrap().1.summary.renew_at(),
            Some(9)
        );
    }

    #[test]
    fn a_later_write_applied_first_is_kept() {
        let view = View::default();
        let s = |attempts: bool| {
            let mut r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 0);
            r.unconfigured = attempts;
            Summary::from_record(&r)
        };
        view.apply("a.test", Some(s(true)), 2);
        view.apply("a.test", Some(s(false)), 1);
        assert!(view.read().get("a.test").unwrap().1.summary.unconfigured);
    }
}
