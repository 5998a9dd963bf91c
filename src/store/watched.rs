//! A [`Store`] that reports to the health registry: a failed write sets the `store` condition
//! (what `status`, the dump and the logs show while the disk is full, since the error itself
//! cannot be recorded in the store), a write that went through clears it. Every call is passed
//! on unchanged; the daemon wraps its backend in it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

use super::{AddedFn, Change, SomeFn, Store, StoreError, SweepFn, UpdateFn};
use crate::clock::Clock;
use crate::health::{Health, Part};

/// `inner`, with its write failures and recoveries noted in `health`'s conditions.
pub struct Watched {
    inner: Arc<dyn Store>,
    health: Arc<Health>,
    clock: Arc<dyn Clock>,
}

impl Watched {
    pub fn new(inner: Arc<dyn Store>, health: Arc<Health>, clock: Arc<dyn Clock>) -> Watched {
        Watched {
            inner,
            health,
            clock,
        }
    }

    /// Whether a write that goes through would end the condition: only then is it worth
    /// watching whether a call writes (the common case passes calls on as they are).
    fn failing(&self) -> bool {
        self.health.conditions().is_failing(Part::Store)
    }

    /// Notes the outcome of a call: a write error sets the condition (a read that fails because
    /// the store is closed too); `wrote`: the call wrote and flushed, so the store takes writes.
    fn saw<T>(&self, r: Result<T, StoreError>, wrote: bool) -> Result<T, StoreError> {
        let conditions = self.health.conditions();
        match &r {
            Err(e @ (StoreError::Write(_) | StoreError::Database(_))) => {
                conditions.set(Part::Store, self.clock.now(), e.to_string());
            }
            Ok(_) if wrote => {
                conditions.clear(Part::Store, self.clock.now());
            }
            _ => {}
        }
        r
    }
}

/// A flag a wrapped closure raises when it asks for a write.
fn flag() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    let f = Arc::new(AtomicBool::new(false));
    (f.clone(), f)
}

#[async_trait]
impl Store for Watched {
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.saw(self.inner.get(id).await, false)
    }

    async fn scan(&self, visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError> {
        self.saw(self.inner.scan(visit).await, false)
    }

    async fn some_ids(&self, n: usize) -> Result<Vec<String>, StoreError> {
        self.saw(self.inner.some_ids(n).await, false)
    }

    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError> {
        if !self.failing() {
            return self.saw(self.inner.update_boxed(id, f).await, false);
        }
        let (writes, seen) = flag();
        let f: UpdateFn = Box::new(move |r| {
            let change = f(r);
            writes.store(change != Change::Keep, Ordering::Relaxed);
            change
        });
        let r = self.inner.update_boxed(id, f).await;
        self.saw(r, seen.load(Ordering::Relaxed))
    }

    async fn update_all(
        &self,
        mut sweep: SweepFn,
        more: Box<dyn FnOnce() -> Vec<Record> + Send>,
    ) -> Result<(), StoreError> {
        if !self.failing() {
            return self.saw(self.inner.update_all(sweep, more).await, false);
        }
        let (writes, seen) = flag();
        let also = writes.clone();
        let sweep: SweepFn = Box::new(move |r| {
            let changed = sweep(r);
            if changed.is_some() {
                writes.store(true, Ordering::Relaxed);
            }
            changed
        });
        let more: Box<dyn FnOnce() -> Vec<Record> + Send> = Box::new(move || {
            let new = more();
            if !new.is_empty() {
                also.store(true, Ordering::Relaxed);
            }
            new
        });
        let r = self.inner.update_all(sweep, more).await;
        self.saw(r, seen.load(Ordering::Relaxed))
    }

    async fn update_some(&self, ids: Vec<String>, mut f: SomeFn) -> Result<(), StoreError> {
        if !self.failing() {
            return self.saw(self.inner.update_some(ids, f).await, false);
        }
        let (writes, seen) = flag();
        let f: SomeFn = Box::new(move |id, r| {
            let changed = f(id, r);
            if changed.is_some() {
                writes.store(true, Ordering::Relaxed);
            }
            changed
        });
        let r = self.inner.update_some(ids, f).await;
        self.saw(r, seen.load(Ordering::Relaxed))
    }

    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.saw(self.inner.pending_key(id).await, false)
    }

    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        self.saw(self.inner.certificate(id).await, false)
    }

    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError> {
        self.saw(self.inner.added().await, false)
    }

    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
        if !self.failing() {
            return self.saw(self.inner.update_added(f).await, false);
        }
        let (writes, seen) = flag();
        let f: AddedFn = Box::new(move |old| {
            let new = f(old);
            writes.store(
                matches!(&new, Ok(new) if new.as_slice() != old),
                Ordering::Relaxed,
            );
            new
        });
        let r = self.inner.update_added(f).await;
        self.saw(r, seen.load(Ordering::Relaxed))
    }

    async fn ledger_append(
        &self,
        directory: &str,
        entry: &Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError> {
        let r = self.inner.ledger_append(directory, entry, keep_since).await;
        self.saw(r, true)
    }

    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError> {
        self.saw(self.inner.ledger_since(directory, since).await, false)
    }

    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.saw(self.inner.account(directory).await, false)
    }

    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        let r = self.inner.put_account(directory, credentials).await;
        self.saw(r, true)
    }

    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.saw(self.inner.account_key(directory).await, false)
    }

    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        let r = self.inner.put_account_key(directory, pkcs8_der).await;
        self.saw(r, true)
    }

    async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        let r = self.inner.probe_write(now).await;
        self.saw(r, true)
    }

    async fn snapshot(&self, now: UnixTime) -> Result<Vec<u8>, StoreError> {
        self.inner.snapshot(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use haproxy_acme_state::KeyType;

    struct At(UnixTime);
    impl Clock for At {
        fn now(&self) -> UnixTime {
            self.0
        }
    }

    #[tokio::test]
    async fn a_failed_write_sets_the_condition_and_only_a_real_write_clears_it() {
        let memory = Arc::new(MemoryStore::new());
        let health = Arc::new(Health::default());
        let store: Arc<dyn Store> = Arc::new(Watched::new(
            memory.clone(),
            health.clone(),
            Arc::new(At(50)),
        ));
        let conditions = || health.conditions().get(Part::Store);
        let r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 0);
        store.put_all(vec![r.clone()]).await.unwrap();
        assert_eq!(conditions(), None);

        memory.set_failing(true);
        let put = r.clone();
        let e = store
            .update("a.test", move |_| (Change::Put(put), ()))
            .await
            .unwrap_err();
        let c = conditions().expect("a failed write is a condition");
        assert_eq!(c.since, 50);
        assert!(
            c.error.contains("No space left") && c.error == e.to_string(),
            "{c:?}"
        );
        assert!(store.probe_write(60).await.is_err());

        memory.set_failing(false);
        // Reads and writes that change nothing prove nothing.
        assert!(store.get("a.test").await.unwrap().is_some());
        store
            .update("a.test", |_| (Change::Keep, ()))
            .await
            .unwrap();
        store.put_all(Vec::new()).await.unwrap();
        store
            .update_added(Box::new(|old| Ok(old.to_vec())))
            .await
            .unwrap()
            .unwrap();
        assert!(conditions().is_some(), "no write happened yet");
        store
            .update("a.test", move |_| (Change::Put(r), ()))
            .await
            .unwrap();
        assert_eq!(conditions(), None, "a write went through");

        memory.set_failing(true);
        assert!(store
            .ledger_append("d", &Entry::Order { at: 1 }, 0)
            .await
            .is_err());
        assert!(conditions().is_some());
        memory.set_failing(false);
        store.probe_write(70).await.unwrap();
        assert_eq!(
            conditions(),
            None,
            "the health check's probe write clears it too"
        );
    }
}
