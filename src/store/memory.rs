//! An in-memory store backend with the same semantics as sled's (one lock per read-modify-write,
//! atomic multi-part writes, a pending key required to store a certificate), and a switch that
//! makes every write fail like a full disk. For the simulated-time tests, where the store
//! outlives each simulated crash of the daemon; never used by the daemon itself.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use haproxy_acme_state::ledger::Entry;
use haproxy_acme_state::{Record, UnixTime};

use super::{AddedFn, Change, Store, StoreError, SweepFn, UpdateFn};

#[derive(Default, Clone)]
pub struct Contents {
    pub records: BTreeMap<String, Record>,
    pub chains: BTreeMap<String, String>,
    pub current_keys: BTreeMap<String, String>,
    pub pending_keys: BTreeMap<String, String>,
    pub accounts: BTreeMap<String, Vec<u8>>,
    pub account_keys: BTreeMap<String, Vec<u8>>,
    pub ledger: BTreeMap<String, Vec<Entry>>,
    pub added: Vec<Vec<String>>,
}

#[derive(Default)]
pub struct MemoryStore {
    contents: Mutex<Contents>,
    failing: std::sync::atomic::AtomicBool,
    chains_failing: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// While `true`, every write fails (as on a full disk) and changes nothing.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// While `true`, writes that store a certificate chain fail, others succeed: a disk with a
    /// little room left, enough for a record update, not for a chain.
    pub fn set_chains_failing(&self, failing: bool) {
        self.chains_failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// The record of `id` as stored now (no await: for a fake's checks in the middle of a call).
    pub fn record_now(&self, id: &str) -> Option<Record> {
        self.lock().records.get(id).cloned()
    }

    /// The pending key of `id` as stored now.
    pub fn pending_key_now(&self, id: &str) -> Option<String> {
        self.lock().pending_keys.get(id).cloned()
    }

    /// Runs `f` on everything stored (no copy), for a test's invariant checks.
    pub fn inspect<R>(&self, f: impl FnOnce(&Contents) -> R) -> R {
        f(&self.lock())
    }

    /// A copy of everything stored, for a test's invariant checks.
    pub fn snapshot(&self) -> Contents {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Write(
                "No space left on device (simulated)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Contents {
    fn apply(&mut self, id: &str, change: Change) -> Result<(), StoreError> {
        debug_assert!(super::change_id_matches(id, &change));
        match change {
            Change::Keep => {}
            Change::Put(r) | Change::PutObservation(r) => {
                self.records.insert(id.to_string(), r);
            }
            Change::PutWithPendingKey(r, key) => {
                self.pending_keys.insert(id.to_string(), key);
                self.records.insert(id.to_string(), r);
            }
            Change::PutCertificate(r, chain) => {
                let key = self.pending_keys.remove(id).ok_or_else(|| {
                    StoreError::Write(format!(
                        "no stored key for the order of {id:?}: refusing to store a certificate \
                         without its key"
                    ))
                })?;
                self.current_keys.insert(id.to_string(), key);
                self.chains.insert(id.to_string(), chain);
                self.records.insert(id.to_string(), r);
            }
            Change::PutAdopted {
                record,
                chain_pem,
                key_pem,
            } => {
                self.pending_keys.remove(id);
                self.current_keys.insert(id.to_string(), key_pem);
                self.chains.insert(id.to_string(), chain_pem);
                self.records.insert(id.to_string(), record);
            }
            Change::Delete => {
                self.records.remove(id);
                self.chains.remove(id);
                self.current_keys.remove(id);
                self.pending_keys.remove(id);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().records.get(id).cloned())
    }

    async fn scan(&self, mut visit: Box<dyn FnMut(Record) + Send>) -> Result<(), StoreError> {
        let all: Vec<Record> = self.lock().records.values().cloned().collect();
        all.into_iter().for_each(&mut visit);
        Ok(())
    }

    async fn update_boxed(&self, id: &str, f: UpdateFn) -> Result<(), StoreError> {
        let mut c = self.lock();
        let change = f(c.records.get(id).cloned());
        if change != Change::Keep {
            self.writable()?;
        }
        if matches!(
            change,
            Change::PutCertificate(..) | Change::PutAdopted { .. }
        ) && self
            .chains_failing
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Write(
                "No space left on device (simulated, a chain's write)".into(),
            ));
        }
        // All or nothing: `apply` checks before it changes anything.
        c.apply(id, change)
    }

    async fn update_all(
        &self,
        mut sweep: SweepFn,
        more: Box<dyn FnOnce() -> Vec<Record> + Send>,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let mut changed: Vec<Record> = c.records.values().filter_map(&mut sweep).collect();
        changed.extend(more());
        if changed.is_empty() {
            return Ok(());
        }
        self.writable()?;
        for r in changed {
            c.records.insert(r.id.clone(), r);
        }
        Ok(())
    }

    async fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().pending_keys.get(id).cloned())
    }

    async fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let c = self.lock();
        Ok(c.chains
            .get(id)
            .cloned()
            .zip(c.current_keys.get(id).cloned()))
    }

    async fn added(&self) -> Result<Vec<Vec<String>>, StoreError> {
        Ok(self.lock().added.clone())
    }

    async fn update_added(
        &self,
        f: AddedFn,
    ) -> Result<Result<Vec<Vec<String>>, String>, StoreError> {
        let mut c = self.lock();
        let old = c.added.clone();
        super::change_added(&old, f, |new| {
            self.writable()?;
            c.added = new.to_vec();
            Ok(())
        })
    }

    async fn ledger_append(
        &self,
        directory: &str,
        entry: &Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError> {
        self.writable()?;
        let mut c = self.lock();
        let list = c.ledger.entry(directory.to_string()).or_default();
        list.push(entry.clone());
        list.retain(|e| e.at() >= keep_since);
        list.sort_by_key(Entry::at);
        Ok(())
    }

    async fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .lock()
            .ledger
            .get(directory)
            .map(|l| l.iter().filter(|e| e.at() >= since).cloned().collect())
            .unwrap_or_default())
    }

    async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().accounts.get(directory).cloned())
    }

    async fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.lock()
            .accounts
            .insert(directory.to_string(), credentials.to_vec());
        Ok(())
    }

    async fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().account_keys.get(directory).cloned())
    }

    async fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.lock()
            .account_keys
            .insert(directory.to_string(), pkcs8_der.to_vec());
        Ok(())
    }

    async fn probe_write(&self, _now: UnixTime) -> Result<(), StoreError> {
        self.writable()
    }

    async fn snapshot(&self, _now: UnixTime) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Unsupported("snapshots"))
    }
}
