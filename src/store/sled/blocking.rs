//! The `Store` face of the sled backend: each call moves its arguments to tokio's blocking pool
//! and runs the synchronous store there (sled reads may hit the disk, every write fsyncs), so
//! no store call ever blocks an async worker.

use async_trait::async_trait;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

use super::SledStore;
use crate::store::{AddedFn, Store, StoreError, SweepFn, UpdateFn};

#[async_trait]
impl Store for SledStore {
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_string();
        self.blocking(move |s| s.get(&id)).await
    }

    async fn scan(&self, mut visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError> {
        self.blocking(move |s| s.for_each_record(&mut visit)).await
    }

    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError> {
        let id = id.to_string();
        self.blocking(move |s| {
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
        self.blocking(move |s| {
            let _guard = s.lock_records();
            let mut changed = Vec::new();
            s.for_each_record(|r| changed.extend(sweep(&r)))?;
            changed.extend(more());
            s.put_many(&changed)
        })
        .await
    }

    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        self.blocking(move |s| s.pending_key(&id)).await
    }

    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let id = id.to_string();
        self.blocking(move |s| s.certificate(&id)).await
    }

    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError> {
        self.blocking(|s| s.added_domains()).await
    }

    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
        self.blocking(move |s| {
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
        self.blocking(move |s| s.ledger_append(&directory, &entry, keep_since))
            .await
    }

    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError> {
        let directory = directory.to_string();
        self.blocking(move |s| s.ledger_since(&directory, since))
            .await
    }

    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let directory = directory.to_string();
        self.blocking(move |s| s.account(&directory)).await
    }

    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        let (directory, credentials) = (directory.to_string(), credentials.to_vec());
        self.blocking(move |s| s.put_account(&directory, &credentials))
            .await
    }

    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let directory = directory.to_string();
        self.blocking(move |s| s.account_key(&directory)).await
    }

    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        let (directory, der) = (directory.to_string(), pkcs8_der.to_vec());
        self.blocking(move |s| s.put_account_key(&directory, &der))
            .await
    }

    async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        self.blocking(move |s| s.probe_write(now)).await
    }

    async fn snapshot(&self, now: UnixTime) -> Result<Vec<u8>, StoreError> {
        self.blocking(move |s| s.export(now)).await
    }
}
