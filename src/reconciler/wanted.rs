//! The wanted set in the store: at start-up and after each configuration change, new
//! certificates get a record, changed ones an event, those no longer listed are marked (or, with
//! PRUNE, removed from HAProxy, the certificate directory and the store).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use haproxy_acme_state::{apply, Event, Record};

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
    pub(super) async fn reread(
        &self,
        applied_sources: u64,
        applied: u64,
        wanted: &HashSet<Arc<str>>,
    ) -> Option<Reread> {
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
                let changes = self.changes(&hashes, wanted);
                let total = specs.len();
                (specs, total, specs_digest, changes)
            }
            Reading::Changes(read) => {
                let (changed, removed) = self.changed(&read, wanted);
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
        let (synced, pass) = match changes {
            Some((changed, removed)) => (
                self.sync_changed(&specs, changed, removed).await,
                "changed certificates",
            ),
            None => (self.sync_specs(specs).await, "whole store"),
        };
        match synced {
            Ok((now_wanted, gone, _)) => {
                let ms = reread_at.elapsed().as_millis() as u64;
                tracing::info!(
                    certificates = total,
                    pass,
                    looked_at = now_wanted.len() + gone.len(),
                    ms,
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
        let digests: HashMap<u64, u64> = specs
            .iter()
            .map(|s| (hash_of(s.id().as_str()), hash_of(s)))
            .collect();
        // The specs are moved into the store's closures, not copied (100,000 certificates at
        // start-up); a stored record finds its spec by binary search over their positions in
        // id order.
        let specs = Arc::new(specs);
        let mut by_id: Vec<usize> = (0..specs.len()).collect();
        by_id.sort_unstable_by(|&a, &b| specs[a].id().cmp(specs[b].id()));
        struct Found {
            /// Per spec (in the given order): a stored record was found for it.
            seen: Vec<bool>,
            wanted: Vec<Wanted>,
            unwanted: Vec<String>,
            /// Ids whose record owes a DNS cleanup.
            dns_owed: Vec<String>,
        }
        let found = Arc::new(Mutex::new(Found {
            seen: vec![false; specs.len()],
            wanted: Vec::with_capacity(specs.len()),
            unwanted: Vec::new(),
            dns_owed: Vec::new(),
        }));
        let configured = {
            let this = Configure::of(self, now);
            move |spec: &CertSpec, old: Option<&Record>| this.apply(spec, old)
        };
        let sweep = {
            let (found, specs, configured) = (found.clone(), specs.clone(), configured.clone());
            let watched = self.watched.clone();
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
                        f.seen[i] = true;
                        let (due, new) = configured(&specs[i], Some(old));
                        f.wanted.push(due);
                        new
                    }
                    Err(_) => {
                        // No longer listed: marked (status, dump and metrics say it is not
                        // renewed).
                        f.unwanted.push(old.id.clone());
                        watched.forget(&old.id);
                        (!old.unconfigured).then(|| apply(old, Event::Unconfigured, now))
                    }
                }
            }
        };
        let more = {
            let found = found.clone();
            move || -> Vec<Record> {
                let mut f = found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut new_records = Vec::new();
                let seen = std::mem::take(&mut f.seen);
                for (spec, _) in specs.iter().zip(seen).filter(|(_, seen)| !seen) {
                    let (due, new) = configured(spec, None);
                    f.wanted.push(due);
                    new_records.extend(new);
                }
                new_records
            }
        };
        self.store
            .update_all(Box::new(sweep), Box::new(more))
            .await?;
        *self
            .spec_digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = digests;
        let mut f = found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok((
            std::mem::take(&mut f.wanted),
            std::mem::take(&mut f.unwanted),
            std::mem::take(&mut f.dns_owed),
        ))
    }

    /// The positions in `read.specs` of the certificates whose spec is new or changed since the
    /// last sync, and the ids of `read.gone` still in `wanted`.
    fn changed(&self, read: &Changes, wanted: &HashSet<Arc<str>>) -> (Vec<usize>, Vec<String>) {
        let digests = self
            .spec_digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = spec_hashes(&read.specs)
            .into_iter()
            .enumerate()
            .filter(|(_, (id, spec))| digests.get(id) != Some(spec))
            .map(|(i, _)| i)
            .collect();
        let removed = read
            .gone
            .iter()
            .filter(|id| wanted.contains(id.as_str()))
            .map(|id| id.to_string())
            .collect();
        (changed, removed)
    }

    /// The positions (in the specs `hashes` are of, see [`spec_hashes`]) of the certificates
    /// whose spec is new or changed since the last sync, and the ids in `wanted` no longer
    /// listed; `None` when a pass over the whole store is due (no sync yet, or so many changes
    /// that one batch beats one write each).
    fn changes(
        &self,
        hashes: &[(u64, u64)],
        wanted: &HashSet<Arc<str>>,
    ) -> Option<(Vec<usize>, Vec<String>)> {
        let digests = self
            .spec_digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if digests.is_empty() {
            return None;
        }
        // Hashes of the ids: already well mixed, the map's own hasher need not be SipHash.
        let mut present =
            fxhash::FxHashSet::with_capacity_and_hasher(hashes.len(), Default::default());
        let mut changed = Vec::new();
        for (i, &(id, spec)) in hashes.iter().enumerate() {
            present.insert(id);
            if digests.get(&id) != Some(&spec) {
                changed.push(i);
                if changed.len() > INCREMENTAL_MAX {
                    return None;
                }
            }
        }
        let removed: Vec<String> = wanted
            .iter()
            .filter(|id| !present.contains(&hash_of(&***id)))
            .map(|id| id.to_string())
            .collect();
        (changed.len() + removed.len() <= INCREMENTAL_MAX).then_some((changed, removed))
    }

    /// Brings the records of the changed specs and of the ids no longer listed in line, one
    /// update each (a reload that changes one certificate costs one record, not a pass over
    /// the store). Returns as [`sync_specs`](Self::sync_specs) does, for those only.
    async fn sync_changed(
        &self,
        specs: &[CertSpec],
        changed: Vec<usize>,
        removed: Vec<String>,
    ) -> Result<(Vec<Wanted>, Vec<String>, Vec<String>), StoreError> {
        let now = self.clock.now();
        let configure = Configure::of(self, now);
        let mut now_wanted = Vec::with_capacity(changed.len());
        for i in changed {
            let (spec, c) = (specs[i].clone(), configure.clone());
            let id = spec.id().as_str().to_string();
            let due = self
                .store
                .update(&id, move |old| {
                    let (due, new) = c.apply(&spec, old.as_ref());
                    (new.map_or(Change::Keep, Change::Put), due)
                })
                .await?;
            now_wanted.push(due);
            self.spec_digests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(hash_of(id.as_str()), hash_of(&specs[i]));
        }
        for id in &removed {
            self.watched.forget(id);
            self.store
                .update(id, move |old| match old {
                    Some(old) if !old.unconfigured => {
                        (Change::Put(apply(&old, Event::Unconfigured, now)), ())
                    }
                    _ => (Change::Keep, ()),
                })
                .await?;
            self.spec_digests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&hash_of(id.as_str()));
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

/// What a wanted certificate's spec makes of its stored record: its schedule, and the record
/// when it changed (and the responder's challenges of it, the watchdog's entry).
#[derive(Clone)]
struct Configure {
    config: Arc<crate::config::Config>,
    tokens: crate::responder::Tokens,
    watched: super::watchdog::Watched,
    now: haproxy_acme_state::UnixTime,
}

impl Configure {
    fn of(r: &Reconciler, now: haproxy_acme_state::UnixTime) -> Configure {
        Configure {
            config: r.config.clone(),
            tokens: r.tokens.clone(),
            watched: r.watched.clone(),
            now,
        }
    }

    /// Whether `r` is already what `spec` and the configuration make of it
    /// (`machine::is_configured_as`; checked against the events in debug builds). The start-up
    /// pass takes this path for every unchanged certificate without building the events or a
    /// new record (three allocations and a record's copy each, at 100,000 certificates).
    fn unchanged(&self, spec: &CertSpec, r: &Record) -> bool {
        let c = haproxy_acme_state::machine::Configuration {
            names: spec.names().as_slice(),
            key_type: self.config.key_type,
            acme_directory: &self.config.acme_directory,
            deploy_hook: self.config.deploy_hook.is_some(),
            profile: spec.profile_or(self.config.acme_profile.as_deref()),
            challenge: spec.challenge(),
        };
        haproxy_acme_state::machine::is_configured_as(r, &c)
    }

    /// `base` after the configuration's events: `Configured` (names, key type, CA, hook,
    /// profile), then `ChallengeChosen`.
    fn events(&self, spec: &CertSpec, base: &Record) -> Record {
        let configured = Event::Configured {
            names: spec.names().to_vec(),
            key_type: self.config.key_type,
            acme_directory: self.config.acme_directory.clone(),
            deploy_hook: self.config.deploy_hook.is_some(),
            profile: spec
                .profile_or(self.config.acme_profile.as_deref())
                .map(String::from),
        };
        let new = apply(base, configured, self.now);
        let challenge = spec.challenge();
        apply(&new, Event::ChallengeChosen { challenge }, self.now)
    }

    fn apply(&self, spec: &CertSpec, old: Option<&Record>) -> (Wanted, Option<Record>) {
        if let Some(r) = old.filter(|r| self.unchanged(spec, r)) {
            debug_assert!(
                self.events(spec, r) == *r,
                "unchanged, yet the events change it"
            );
            sync_tokens(&self.tokens, None, Some(r));
            let due = Wanted::of(r, self.now);
            self.watched.note(|| due.id.clone(), r);
            return (due, None);
        }
        let (id, names) = (spec.id().as_str(), spec.names().as_slice());
        // No copy of the stored record (one per certificate at start-up): only a new
        // one is made.
        let fresh;
        let base = match old {
            Some(r) => r,
            None => {
                fresh = Record::new(names.to_vec(), self.config.key_type, self.now);
                &fresh
            }
        };
        let new = self.events(spec, base);
        sync_tokens(&self.tokens, None, Some(&new));
        let due = Wanted::of(&new, self.now);
        self.watched.note(|| due.id.clone(), &new);
        if old == Some(&new) {
            return (due, None);
        }
        match old {
            None => tracing::info!(cert = %id, names = ?names, "new certificate wanted"),
            Some(old) => {
                if old.challenge != new.challenge {
                    tracing::info!(cert = %id, challenge = new.challenge.as_str(), "challenge type changed: its next order answers it");
                }
                let other = Record {
                    challenge: new.challenge,
                    ..old.clone()
                };
                if other != new {
                    tracing::info!(cert = %id, names = ?names, profile = ?new.profile, "certificate names, key type, CA or profile changed: re-issuing")
                }
            }
        }
        (due, Some(new))
    }
}
