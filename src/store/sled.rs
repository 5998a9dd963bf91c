//! The embedded store backend: sled in DATA_DIR. The only module that imports sled and knows the
//! on-disk encoding; every write but an observation or a ledger entry (made durable by the next)
//! is flushed before it returns (the durable-intent rule); every call runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use haproxy_acme_state::{Record, UnixTime};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{Change, StoreError};

/// Trees (sled's keyspaces) and what they hold.
const RECORDS: &str = "records"; // id -> Record as JSON (carries schema_version)
const CERTS: &str = "certs"; // id -> PEM chain of the stored certificate
const KEYS: &str = "keys"; // "current/<id>" | "pending/<id>" | "account/<directory>" -> PEM / PKCS#8
const ACCOUNTS: &str = "accounts"; // directory URL -> instant-acme credentials JSON (holds a key)
const LEDGER: &str = "ledger"; // directory \0 time(be) id(be) -> ledger::Entry as JSON
const SETTINGS: &str = "settings"; // "added-domains" -> JSON [[name]]; "heartbeat"; "generation"
const ADDED_DOMAINS: &str = "added-domains";
const GENERATION: &str = "generation";
pub const STORE_DIR: &str = "store"; // the sled directory in DATA_DIR

/// The synchronous store over one open sled database; [`SledStore`] runs each call on the
/// blocking pool, and opens a new one after a write failed.
struct Inner {
    /// DATA_DIR: the marker lives beside the sled directory.
    data_dir: PathBuf,
    /// The generation the marker was last written for; held from a bump to its marker.
    marked: std::sync::Mutex<u64>,
    /// There was no marker at open (see [`SledStore::unmarked`]).
    unmarked: std::sync::atomic::AtomicBool,
    db: sled::Db,
    records: sled::Tree,
    certs: sled::Tree,
    keys: sled::Tree,
    accounts: sled::Tree,
    ledger: sled::Tree,
    settings: sled::Tree,
    /// Held across each read-modify-write of a record, so the reconciler's tasks, a
    /// configuration reload and an operator's command never overwrite each other's change.
    record_lock: std::sync::Mutex<()>,
    /// Held across each read-modify-write of the runtime additions.
    added_lock: std::sync::Mutex<()>,
    /// Set when a write failed: after an I/O error sled refuses every later write (and its
    /// memory may hold what did not reach the disk), so this database must be opened again.
    failed: AtomicBool,
    /// The log's bytes flushed since this database was opened: what the next open replays.
    flushed: std::sync::atomic::AtomicU64,
    /// Set once this database was found to have written enough to be opened again (see
    /// `blocking/reopen.rs`).
    checkpoint_asked: AtomicBool,
}

/// A write error outside `Inner`'s own writes (the marker, a snapshot being restored).
fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

impl Inner {
    fn open(data_dir: &Path) -> Result<Inner, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: data_dir.to_path_buf(),
            detail,
        };
        super::private_dir(data_dir).map_err(|e| open_err(e.to_string()))?;
        let path = data_dir.join(STORE_DIR);
        let db = open::open(&path).map_err(|e| {
            let msg = e.to_string();
            if matches!(e, sled::Error::Corruption { .. }) {
                StoreError::Damaged {
                    path: path.clone(),
                    detail: format!("sled cannot read it: {msg}"),
                }
            } else if msg.contains("lock")
                || msg.contains("WouldBlock")
                || msg.contains("temporarily unavailable")
            {
                StoreError::Locked(data_dir.to_path_buf())
            } else {
                open_err(msg)
            }
        })?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let inner = Inner {
            data_dir: data_dir.to_path_buf(),
            marked: std::sync::Mutex::new(0),
            unmarked: std::sync::atomic::AtomicBool::new(false),
            records: tree(RECORDS)?,
            certs: tree(CERTS)?,
            keys: tree(KEYS)?,
            accounts: tree(ACCOUNTS)?,
            ledger: tree(LEDGER)?,
            settings: tree(SETTINGS)?,
            record_lock: std::sync::Mutex::new(()),
            added_lock: std::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
            flushed: std::sync::atomic::AtomicU64::new(0),
            checkpoint_asked: AtomicBool::new(false),
            db,
        };
        inner.check_marker(&path)?;
        Ok(inner)
    }

    /// A write failed: notes that this database must be opened again.
    fn write_err(&self, e: sled::Error) -> StoreError {
        self.failed.store(true, Ordering::Release);
        StoreError::Write(match e {
            // sled prints the io::Error's Debug form, and repeats an earlier I/O error as a copy
            // that lost its OS error: say it the way people know it.
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                "No space left on device".into()
            }
            sled::Error::Io(io) if io.raw_os_error().is_some() => io.to_string(),
            sled::Error::Io(io) => format!("{} ({io})", io.kind()),
            other => other.to_string(),
        })
    }

    /// Whether a write failed since it was opened.
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let bytes = self.db.flush().map_err(|e| self.write_err(e))?;
        self.flushed.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Serializes read-modify-write cycles on records (see `record_lock`). Hold it from the
    /// `get` to the write; never across an await.
    fn lock_records(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding it leaves no partial write behind (writes are atomic).
        self.record_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The certificates added at runtime (`domains add`), each as its list of names.
    fn added_domains(&self) -> Result<Vec<Vec<String>>, StoreError> {
        match self.get_bytes(&self.settings, ADDED_DOMAINS)? {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                id: "added domains".into(),
                detail: e.to_string(),
            }),
        }
    }

    fn put_added_domains(&self, added: &[Vec<String>]) -> Result<(), StoreError> {
        let value = serde_json::to_vec(added).expect("names serialize");
        let mut marked = self.lock_marked();
        self.settings
            .insert(ADDED_DOMAINS, value)
            .map_err(|e| self.write_err(e))?;
        let generation = self.bump()?;
        self.flush()?;
        self.mark(&mut marked, generation);
        Ok(())
    }

    /// Writes and flushes a small value: proves the store takes writes (`/healthz`).
    fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        self.settings
            .insert("heartbeat", &now.to_be_bytes())
            .map_err(|e| self.write_err(e))?;
        self.flush()
    }

    /// Adopts a certificate obtained elsewhere (`import certbot`): its record, chain and key in
    /// one transaction, flushed.
    fn put_adopted(&self, r: &Record, chain_pem: &str, key_pem: &str) -> Result<(), StoreError> {
        let value = encode(r);
        let mut marked = self.lock_marked();
        let generation = (&self.records, &self.certs, &self.keys, &self.settings)
            .transaction(|(records, certs, keys, settings)| {
                keys.insert(current_key(&r.id).as_bytes(), key_pem.as_bytes())?;
                keys.remove(pending_key(&r.id).as_bytes())?;
                certs.insert(r.id.as_bytes(), chain_pem.as_bytes())?;
                records.insert(r.id.as_bytes(), value.as_slice())?;
                marker::bump_in(settings)
            })
            .map_err(|e| self.tx_err(e))?;
        self.flush()?;
        self.mark(&mut marked, generation);
        Ok(())
    }

    /// Every record, in id order, one at a time (nothing is held but the one being looked at);
    /// returns how many.
    fn for_each_record(&self, mut f: impl FnMut(Record)) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.records.iter() {
            let (k, v) = kv.map_err(|e| StoreError::Corrupt {
                id: "?".into(),
                detail: e.to_string(),
            })?;
            f(decode(&String::from_utf8_lossy(&k), &v)?);
            n += 1;
        }
        Ok(n)
    }

    fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        match self.records.get(id).map_err(|e| StoreError::Corrupt {
            id: id.into(),
            detail: e.to_string(),
        })? {
            Some(v) => decode(id, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a record and flushes.
    fn put(&self, r: &Record) -> Result<(), StoreError> {
        self.put_and(r, true)
    }

    /// Writes a record and flushes when `flush` or when it is new (a new generation: `marker`).
    /// Unflushed, the next flush (sled's log is in order) or the close makes it durable.
    fn put_and(&self, r: &Record, flush: bool) -> Result<(), StoreError> {
        let mut marked = self.lock_marked();
        let old = self
            .records
            .insert(r.id.as_bytes(), encode(r))
            .map_err(|e| self.write_err(e))?;
        let generation = old.is_none().then(|| self.bump()).transpose()?;
        if flush || generation.is_some() {
            self.flush()?;
        }
        if let Some(g) = generation {
            self.mark(&mut marked, g);
        }
        Ok(())
    }

    /// Writes many records in one batch and flushes once.
    fn put_many(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for r in records {
            batch.insert(r.id.as_bytes(), encode(r));
        }
        let mut marked = self.lock_marked();
        self.records
            .apply_batch(batch)
            .map_err(|e| self.write_err(e))?;
        let generation = self.bump()?;
        self.flush()?;
        self.mark(&mut marked, generation);
        Ok(())
    }

    /// Writes what `change` says for record `id` (the caller holds the record lock).
    fn apply_change(&self, id: &str, change: Change) -> Result<(), StoreError> {
        debug_assert!(super::change_id_matches(id, &change));
        match change {
            Change::Keep => Ok(()),
            Change::Put(r) => self.put(&r),
            Change::PutObservation(r) => self.put_and(&r, false),
            Change::PutWithPendingKey(r, key) => self.put_with_pending_key(&r, &key),
            Change::PutCertificate(r, chain) => self.put_certificate(&r, &chain),
            Change::PutAdopted {
                record,
                chain_pem,
                key_pem,
            } => self.put_adopted(&record, &chain_pem, &key_pem),
            Change::Delete => self.delete(id),
        }
    }

    /// Writes a record together with the freshly generated key of its current order, atomically,
    /// and flushes: the key exists on disk before any finalize can use it.
    fn put_with_pending_key(&self, r: &Record, key_pem: &str) -> Result<(), StoreError> {
        let value = encode(r);
        (&self.records, &self.keys)
            .transaction(|(records, keys)| {
                records.insert(r.id.as_bytes(), value.as_slice())?;
                keys.insert(pending_key(&r.id).as_bytes(), key_pem.as_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_err(e))?;
        self.flush()
    }

    /// The stored key of the current order, if generated.
    fn pending_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.get_string(&self.keys, &pending_key(id))
    }

    /// Stores a downloaded certificate: the chain, its key promoted from pending to current, and
    /// the record, atomically, then flushes. The previous certificate's key is replaced only here,
    /// in the same transaction as its chain.
    fn put_certificate(&self, r: &Record, chain_pem: &str) -> Result<(), StoreError> {
        let value = encode(r);
        let mut marked = self.lock_marked();
        let generation = (&self.records, &self.certs, &self.keys, &self.settings)
            .transaction(|(records, certs, keys, settings)| {
                let key = keys.remove(pending_key(&r.id).as_bytes())?.ok_or(
                    ConflictableTransactionError::Abort(()),
                )?;
                keys.insert(current_key(&r.id).as_bytes(), key)?;
                certs.insert(r.id.as_bytes(), chain_pem.as_bytes())?;
                records.insert(r.id.as_bytes(), value.as_slice())?;
                marker::bump_in(settings)
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => StoreError::Write(format!(
                    "no stored key for the order of {:?}: refusing to store a certificate without its key",
                    r.id
                )),
                TransactionError::Storage(e) => self.write_err(e),
            })?;
        self.flush()?;
        self.mark(&mut marked, generation);
        Ok(())
    }

    /// Appends to the rate-limit ledger of `directory`, forgetting entries older than `keep_since`.
    fn ledger_append(
        &self,
        directory: &str,
        entry: &haproxy_acme_state::ledger::Entry,
        keep_since: UnixTime,
    ) -> Result<(), StoreError> {
        let id = self.db.generate_id().map_err(|e| self.write_err(e))?;
        let value = serde_json::to_vec(entry).expect("a ledger entry serializes");
        self.ledger
            .insert(ledger_key(directory, entry.at(), id), value)
            .map_err(|e| self.write_err(e))?;
        let old: Vec<sled::IVec> = self
            .ledger
            .range(ledger_key(directory, i64::MIN, 0)..ledger_key(directory, keep_since, 0))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| self.write_err(e))?;
        for k in old {
            self.ledger.remove(k).map_err(|e| self.write_err(e))?;
        }
        // Not flushed: the record written next flushes it (see `Store::ledger_append`).
        Ok(())
    }

    /// The ledger entries of `directory` at or after `since`, oldest first.
    fn ledger_since(
        &self,
        directory: &str,
        since: UnixTime,
    ) -> Result<Vec<haproxy_acme_state::ledger::Entry>, StoreError> {
        self.ledger
            .range(ledger_key(directory, since, 0)..ledger_key(directory, i64::MAX, u64::MAX))
            .values()
            .map(|v| {
                let v = v.map_err(|e| self.write_err(e))?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    id: format!("rate-limit ledger of {directory}"),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Forgets certificate `id` entirely: record, chain and keys, in one transaction (`--prune`).
    fn delete(&self, id: &str) -> Result<(), StoreError> {
        let mut marked = self.lock_marked();
        let generation = (&self.records, &self.certs, &self.keys, &self.settings)
            .transaction(|(records, certs, keys, settings)| {
                records.remove(id.as_bytes())?;
                certs.remove(id.as_bytes())?;
                keys.remove(current_key(id).as_bytes())?;
                keys.remove(pending_key(id).as_bytes())?;
                marker::bump_in(settings)
            })
            .map_err(|e| self.tx_err(e))?;
        self.flush()?;
        self.mark(&mut marked, generation);
        Ok(())
    }

    /// The stored certificate chain and its key.
    fn certificate(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let chain = self.get_string(&self.certs, id)?;
        let key = self.get_string(&self.keys, &current_key(id))?;
        Ok(chain.zip(key))
    }

    /// ACME account credentials (instant-acme's JSON) for a directory.
    fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_bytes(&self.accounts, directory)
    }

    fn put_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        self.accounts
            .insert(directory, credentials)
            .map_err(|e| self.write_err(e))?;
        self.flush()
    }

    /// The account key (PKCS#8 DER) generated for a directory before the account was created.
    fn account_key(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_bytes(&self.keys, &account_key(directory))
    }

    fn put_account_key(&self, directory: &str, pkcs8_der: &[u8]) -> Result<(), StoreError> {
        self.keys
            .insert(account_key(directory), pkcs8_der)
            .map_err(|e| self.write_err(e))?;
        self.flush()
    }

    fn tx_err(&self, e: TransactionError<()>) -> StoreError {
        match e {
            TransactionError::Abort(()) => StoreError::Write("transaction aborted".into()),
            TransactionError::Storage(e) => self.write_err(e),
        }
    }

    fn get_bytes(&self, tree: &sled::Tree, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        tree.get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Corrupt {
                id: key.into(),
                detail: e.to_string(),
            })
    }

    fn get_string(&self, tree: &sled::Tree, key: &str) -> Result<Option<String>, StoreError> {
        match self.get_bytes(tree, key)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    id: key.into(),
                    detail: "not UTF-8".into(),
                }),
        }
    }
}

/// Ledger keys sort by directory, then time, then a unique id. Times are offset so that the
/// big-endian bytes of negative and positive times sort as the numbers do.
impl Inner {
    /// Every ACME directory the store knows: of an account, an account key or ledger entries.
    fn directories(&self) -> Result<Vec<String>, StoreError> {
        let read = |e: sled::Error| StoreError::Open {
            path: self.data_dir.clone(),
            detail: e.to_string(),
        };
        let mut all = std::collections::BTreeSet::new();
        for kv in self.accounts.iter() {
            all.insert(String::from_utf8_lossy(&kv.map_err(read)?.0).into_owned());
        }
        for kv in self.keys.scan_prefix("account/") {
            let k = kv.map_err(read)?.0;
            all.insert(String::from_utf8_lossy(&k["account/".len()..]).into_owned());
        }
        for kv in self.ledger.iter() {
            let k = kv.map_err(read)?.0;
            let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            all.insert(String::from_utf8_lossy(&k[..end]).into_owned());
        }
        Ok(all.into_iter().collect())
    }
}

fn ledger_key(directory: &str, at: UnixTime, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(directory.len() + 17);
    k.extend_from_slice(directory.as_bytes());
    k.push(0);
    k.extend_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn pending_key(id: &str) -> String {
    format!("pending/{id}")
}

fn current_key(id: &str) -> String {
    format!("current/{id}")
}

fn account_key(directory: &str) -> String {
    format!("account/{directory}")
}

mod blocking;
pub(crate) mod codec;
use codec::{decode, encode};
pub mod marker;
mod open;
pub mod snapshot;
pub use blocking::SledStore;
#[cfg(test)]
mod tests;
