//! The wanted set in the store: at start-up and after each configuration change, new
//! certificates get a record, changed ones an event, those no longer listed are marked (or, with
//! PRUNE, removed from HAProxy, the certificate directory and the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use haproxy_acme_state::{apply, Event, Record, UnixTime};

use super::configure::Configure;
use super::ids::{digest as nonzero, Ids};
use super::schedule::Wanted;
use super::tokens::sync_tokens;
use super::Reconciler;
use crate::config::wanted::{Changes, Reading};
use crate::config::CertSpec;
use crate::store::{Change, StoreError};

/// What one re-read found: the digests of its sources and of the set, when each wanted
/// certificate is due, and the stored ids no longer wanted.
type Reread = (u64, u64, Vec<Wanted>, Vec<String>);

/// Above this many changed or removed certificates a reload makes one pass over the store.
const INCREMENTAL_MAX: usize = 1000;
/// Specs looked up or set per hold of the table's lock.
const LOCKED_BATCH: usize = 4096;

/// A hash of `v` (the whole wanted set, one spec, one id), the same for the same value within
/// the process.
fn hash_of<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Each spec's (hash of its id, hash of the spec), in order: hashed once per re-read, for the
/// set's [`digest`] and for [`changes`](Reconciler::changes).
fn spec_hashes(specs: &[CertSpec]) -> Vec<(u64, u64)> {
    specs
        .iter()
        .map(|s| (hash_of(s.id().as_str()), hash_of(s)))
        .collect()
}

/// A digest of the wanted set (of its specs' hashes, in order).
pub fn digest(specs: &[CertSpec]) -> u64 {
    hash_of(&spec_hashes(specs))
}

impl Reconciler {
    /// The certificates wanted now (DOMAINS, DOMAINS_FILE, and those added at runtime) and a
    /// digest of what they were read from; `None` when that is `unchanged_from`. The outer error
    /// is the store's, the inner one the configuration's (one line per problem).
    pub(super) async fn read_wanted(
        &self,
        unchanged_from: Option<u64>,
    ) -> Result<Result<(u64, Option<Vec<CertSpec>>), Vec<String>>, StoreError> {
        let added = self.store.added().await?;
        Ok(self.wanted.read_since(&added, unchanged_from))
    }

    /// Re-reads the wanted set after a reload trigger; `None` when nothing changed or the change
    /// is refused (logged; the running set stays).
    pub(super) async fn reread(&self, applied_sources: u64, applied: u64) -> Option<Reread> {
        let reread_at = std::time::Instant::now();
        let unchanged = |certificates: Option<usize>| {
            let ms = reread_at.elapsed().as_millis() as u64;
            tracing::info!(certificates, ms, "configuration re-read: unchanged");
        };
        let read = match self.store.added().await {
            Ok(added) => self
                .wanted
                .read_changes(&added, applied_sources, INCREMENTAL_MAX),
            Err(e) => {
                tracing::error!(error = %e, "configuration change not read (store error)");
                return None;
            }
        };
        let (sources, read) = match read {
            Ok(read) => read,
            Err(errors) => {
                for e in errors {
                    tracing::error!(
                        "configuration change refused, the running configuration stays: {e}"
                    );
                }
                return None;
            }
        };
        // The certificates read, how many are wanted, the set's digest, and which of them
        // changed (`None`: a pass over the whole store).
        let (specs, total, specs_digest, changes) = match read {
            Reading::Unchanged => {
                unchanged(None);
                return None;
            }
            Reading::All(specs) => {
                let hashes = spec_hashes(&specs);
                let specs_digest = hash_of(&hashes);
                if specs_digest == applied {
                    // Only spelling changed (a comment, spaces).
                    unchanged(Some(specs.len()));
                    return Some((sources, applied, Vec::new(), Vec::new()));
                }
                let changes = self.changes(&specs, &hashes);
                let total = specs.len();
                (specs, total, specs_digest, changes)
            }
            Reading::Changes(read) => {
                let (changed, removed) = self.changed(&read);
                if changed.is_empty() && removed.is_empty() {
                    unchanged(Some(read.total));
                    return Some((sources, applied, Vec::new(), Vec::new()));
                }
                // The set's digest is not known from its changes: a value no set's digest has
                // (but by a 2^-64 chance) stands for it, so a later read in full compares each
                // certificate.
                (read.specs, read.total, !sources, Some((changed, removed)))
            }
        };
        let sync_at = std::time::Instant::now();
        let (synced, pass) = match changes {
            Some((changed, removed)) => (
                self.sync_changed(&specs, changed, removed).await,
                "changed certificates",
            ),
            None => (self.sync_specs(specs).await, "whole store"),
        };
        match synced {
            Ok((now_wanted, gone, _)) => {
                // `store_ms`: the store's part, mostly its flush (which on ext4 waits for the
                // disk to take any file renamed over another since, a new DOMAINS_FILE too).
                let ms = reread_at.elapsed().as_millis() as u64;
                let store_ms = sync_at.elapsed().as_millis() as u64;
                tracing::info!(
                    certificates = total,
                    pass,
                    looked_at = now_wanted.len() + gone.len(),
                    ms,
                    store_ms,
                    "configuration reloaded"
                );
                Some((sources, specs_digest, now_wanted, gone))
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration change not applied (store error)");
                None
            }
        }
    }

    /// Brings the store in line with the wanted certificates, and gives the responder every
    /// published challenge back. Returns when each wanted certificate is due, the stored ids
    /// no longer wanted (in id order), and the ids whose records owe a DNS cleanup. One pass over the store, one record at a time, under the
    /// record lock; changed records are written in one batch (one flush), so a start with many
    /// new certificates is not one fsync each.
    pub(super) async fn sync_specs(
        &self,
        specs: Vec<CertSpec>,
    ) -> Result<(Vec<Wanted>, Vec<String>, Vec<String>), StoreError> {
        let now = self.clock.now();
        {
            let bytes: usize = specs.iter().map(|s| s.id().as_str().len()).sum();
            let mut ids = self.ids.lock();
            let new = specs.len().saturating_sub(ids.len());
            ids.reserve(new, bytes.min(new * 64));
        }
        // The specs are moved into the store's closures, not copied (100,000 certificates at
        // start-up); a stored record finds its spec by binary search over their positions in
        // id order.
        let specs = Arc::new(specs);
        let mut by_id: Vec<usize> = (0..specs.len()).collect();
        by_id.sort_unstable_by(|&a, &b| specs[a].id().cmp(specs[b].id()));
        struct Found {
            /// Per spec (in the given order): when it is due, once its record was seen
            /// (`None`: not yet).
            due: Vec<Option<Option<UnixTime>>>,
            unwanted: Vec<String>,
            /// Ids whose record owes a DNS cleanup.
            dns_owed: Vec<String>,
        }
        let found = Arc::new(Mutex::new(Found {
            due: vec![None; specs.len()],
            unwanted: Vec::new(),
            dns_owed: Vec::new(),
        }));
        let configured = {
            let this = Configure::of(self, now);
            move |spec: &CertSpec, old: Option<&Record>| this.apply(spec, old)
        };
        let sweep = {
            let (found, specs, configured) = (found.clone(), specs.clone(), configured.clone());
            let ids = self.ids.clone();
            move |old: &Record| -> Option<Record> {
                let mut f = found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let spec = by_id
                    .binary_search_by(|&i| specs[i].id().as_str().cmp(old.id.as_str()))
                    .map(|k| by_id[k]);
                if !old.dns_to_clean().is_empty() {
                    f.dns_owed.push(old.id.clone());
                }
                match spec {
                    Ok(i) => {
                        let (due, new) = configured(&specs[i], Some(old));
                        f.due[i] = Some(due);
                        new
                    }
                    Err(_) => {
                        // No longer listed: marked (status, dump and metrics say it is not
                        // renewed).
                        f.unwanted.push(old.id.clone());
                        ids.lock().watch(&old.id, None);
                        unconfigured(old, now)
                    }
                }
            }
        };
        let more = {
            let (found, specs) = (found.clone(), specs.clone());
            move || -> Vec<Record> {
                let mut f = found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut new_records = Vec::new();
                for (spec, due) in specs.iter().zip(&mut f.due) {
                    if due.is_none() {
                        let (d, new) = configured(spec, None);
                        *due = Some(d);
                        new_records.extend(new);
                    }
                }
                new_records
            }
        };
        self.store
            .update_all(Box::new(sweep), Box::new(more))
            .await?;
        let mut f = found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = std::mem::take(&mut f.due);
        // The specs' digests as synced: each spec's id gets its handle here (kept live by the
        // digest until the loop has marked it wanted), and the digests of ids no longer listed
        // go.
        let mut listed = Vec::new();
        let mut wanted = Vec::with_capacity(specs.len());
        for (specs, due) in specs.chunks(LOCKED_BATCH).zip(due.chunks(LOCKED_BATCH)) {
            let mut ids = self.ids.lock();
            for (spec, due) in specs.iter().zip(due) {
                let h = ids.set_spec(spec.id().as_str(), nonzero(hash_of(spec)));
                mark(&mut listed, &ids, h);
                let due = due.expect("every spec's record is seen or made");
                wanted.push(Wanted { id: h, due });
            }
        }
        self.ids
            .lock()
            .retain_specs(|h| listed.get(h as usize).copied().unwrap_or(false));
        Ok((
            wanted,
            std::mem::take(&mut f.unwanted),
            std::mem::take(&mut f.dns_owed),
        ))
    }

    /// The positions in `read.specs` of the certificates whose spec is new or changed since the
    /// last sync, and the ids of `read.gone` still wanted.
    fn changed(&self, read: &Changes) -> (Vec<usize>, Vec<String>) {
        let ids = self.ids.lock();
        let changed = read
            .specs
            .iter()
            .enumerate()
            .filter(|(_, spec)| !synced(&ids, spec, hash_of(spec)))
            .map(|(i, _)| i)
            .collect();
        let removed = read
            .gone
            .iter()
            .filter(|id| ids.is_wanted(id.as_str()))
            .map(|id| id.to_string())
            .collect();
        (changed, removed)
    }

    /// The positions in `specs` (whose hashes are `hashes`, see [`spec_hashes`]) of the
    /// certificates whose spec is new or changed since the last sync, and the wanted ids no
    /// longer listed; `None` when a pass over the whole store is due (no sync yet, or so many
    /// changes that one batch beats one write each).
    fn changes(
        &self,
        specs: &[CertSpec],
        hashes: &[(u64, u64)],
    ) -> Option<(Vec<usize>, Vec<String>)> {
        if !self.ids.lock().has_specs() {
            return None;
        }
        // The handles of the listed ids. Only the loop (which awaits this) changes the wanted
        // and spec columns, so a wanted handle stays the same between two holds of the lock.
        let mut listed = Vec::new();
        let mut changed = Vec::new();
        for (k, (specs, hashes)) in specs
            .chunks(LOCKED_BATCH)
            .zip(hashes.chunks(LOCKED_BATCH))
            .enumerate()
        {
            let ids = self.ids.lock();
            for (j, (spec, &(_, hash))) in specs.iter().zip(hashes).enumerate() {
                if let Some(h) = ids.handle(spec.id().as_str()) {
                    mark(&mut listed, &ids, h);
                }
                if !synced(&ids, spec, hash) {
                    changed.push(k * LOCKED_BATCH + j);
                    if changed.len() > INCREMENTAL_MAX {
                        return None;
                    }
                }
            }
        }
        let ids = self.ids.lock();
        let removed: Vec<String> = ids
            .wanted_from(0)
            .filter(|&h| !listed.get(h as usize).copied().unwrap_or(false))
            .map(|h| ids.id(h).to_string())
            .take(INCREMENTAL_MAX + 1)
            .collect();
        (changed.len() + removed.len() <= INCREMENTAL_MAX).then_some((changed, removed))
    }

    /// Brings the records of the changed specs and of the ids no longer listed in line, in one
    /// durable batch ([`Store::update_some`]: a reload that changes one line of DOMAINS_FILE,
    /// a certificate wanted and one no longer, costs two records and one flush, not a pass
    /// over the store). Returns as [`sync_specs`](Self::sync_specs) does, for those only.
    ///
    /// [`Store::update_some`]: crate::store::Store::update_some
    async fn sync_changed(
        &self,
        specs: &[CertSpec],
        changed: Vec<usize>,
        removed: Vec<String>,
    ) -> Result<(Vec<Wanted>, Vec<String>, Vec<String>), StoreError> {
        let now = self.clock.now();
        let configure = Configure::of(self, now);
        for id in &removed {
            self.unwatch(id);
        }
        // Each id to its changed spec (its position among them), or to none: no longer listed.
        let targets: HashMap<String, Option<usize>> = changed
            .iter()
            .enumerate()
            .map(|(k, &i)| (specs[i].id().as_str().to_string(), Some(k)))
            .chain(removed.iter().map(|id| (id.clone(), None)))
            .collect();
        let ids: Vec<String> = targets.keys().cloned().collect();
        let wanted: Vec<CertSpec> = changed.iter().map(|&i| specs[i].clone()).collect();
        let dues = Arc::new(Mutex::new(vec![None; wanted.len()]));
        let out = dues.clone();
        self.store
            .update_some(
                ids,
                Box::new(move |id, old| match targets.get(id).copied().flatten() {
                    Some(k) => {
                        let (due, new) = configure.apply(&wanted[k], old);
                        out.lock().unwrap_or_else(PoisonError::into_inner)[k] = Some(due);
                        new
                    }
                    None => old.and_then(|old| unconfigured(old, now)),
                }),
            )
            .await?;
        let dues = std::mem::take(&mut *dues.lock().unwrap_or_else(PoisonError::into_inner));
        let mut ids = self.ids.lock();
        let now_wanted = changed
            .iter()
            .zip(dues)
            .map(|(&i, due)| {
                let h = ids.set_spec(specs[i].id().as_str(), nonzero(hash_of(&specs[i])));
                let due = due.expect("every changed spec's record is seen or made");
                Wanted { id: h, due }
            })
            .collect();
        for id in &removed {
            ids.clear_spec(id);
        }
        Ok((now_wanted, removed, Vec::new()))
    }

    /// Removes a certificate no longer configured from HAProxy, the certificate directory and
    /// the store (`PRUNE`). On an HAProxy error the state is kept, so nothing is half-forgotten.
    pub(super) async fn prune(&self, id: &str) {
        self.unwatch(id);
        let removed = self.haproxy.remove(id).await;
        self.saw_haproxy(removed.as_ref().err());
        if let Err(e) = removed {
            tracing::error!(cert = %id, error = %e, "prune failed; the certificate and its state are kept");
            return;
        }
        match self.store.update(id, |old| (Change::Delete, old)).await {
            Ok(old) => {
                sync_tokens(&self.tokens, old.as_ref(), None);
                tracing::info!(cert = %id, "pruned: removed from HAProxy, the certificate directory and the store");
            }
            Err(e) => tracing::error!(cert = %id, error = %e, "prune: the store kept the record"),
        }
    }
}

/// The record of a certificate no longer listed, marked so (status, dump and metrics say it is
/// not renewed); `None` when it already is. The start-up pass and a reload mark it alike.
fn unconfigured(old: &Record, now: UnixTime) -> Option<Record> {
    (!old.unconfigured).then(|| apply(old, Event::Unconfigured, now))
}

/// Whether the spec of `spec`'s id as last synced has the hash `hash`.
fn synced(ids: &Ids, spec: &CertSpec, hash: u64) -> bool {
    ids.handle(spec.id().as_str())
        .and_then(|h| ids.spec(h))
        .is_some_and(|d| d == nonzero(hash))
}

/// Sets handle `h`'s bit in `bits`, a bit per handle of `ids`.
fn mark(bits: &mut Vec<bool>, ids: &Ids, h: super::ids::Handle) {
    bits.resize(ids.handles(), false);
    bits[h as usize] = true;
}
