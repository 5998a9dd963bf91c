//! The reconciler's table of certificate ids: every id it keeps something about is stored once
//! (in one string, by offset) and named by a `u32` handle, with one column per fact: when the
//! certificate is next due (the schedule), whether it is wanted, the digest of the serial the
//! watchdog expects served, and the digest of its spec as last synced. At 100,000 certificates
//! the five maps this replaces (a `BTreeSet` and a `HashMap` for the schedule, the watchdog's
//! map, the set of wanted ids, the spec digests, and an `Arc<str>` per id they shared) held
//! ~19 MiB; the table holds ~70 bytes a certificate plus its id (BENCHMARKS.md).
//!
//! - a hash table of handles (hashed by the id's bytes) finds a handle from an id;
//! - the due order is a binary heap of `(time, handle)` with lazy deletion: an entry whose time
//!   is no longer its handle's is dropped when it reaches the top, and the heap is rebuilt from
//!   the column once such entries outnumber the live ones. Certificates due at the same time
//!   come out in handle order;
//! - a handle none of whose columns is set is freed at once (its id removed from the index, its
//!   bytes left behind until they are half of the string, which is then rebuilt) and reused by
//!   the next new id, so pruned certificates leave nothing behind.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use haproxy_acme_state::UnixTime;
use hashbrown::HashTable;

/// An id's place in the table, valid while any of its columns is set.
pub(super) type Handle = u32;

/// A 64-bit digest stored in a column: never zero, so that `Option` of it is one word.
pub(super) fn digest(h: u64) -> NonZeroU64 {
    NonZeroU64::new(h).unwrap_or(NonZeroU64::MIN)
}

/// `due` of a certificate that is not scheduled.
const UNSCHEDULED: i64 = i64::MIN;
/// `flags` bits.
const LIVE: u8 = 1;
const WANTED: u8 = 2;
/// The due heap is rebuilt once its stale entries outnumber the live ones and this many.
const REBUILD_MIN: usize = 64;

fn hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// The ids and their columns (one entry per handle in each `Vec`).
#[derive(Default)]
pub(super) struct Ids {
    /// The ids' bytes, one after the other; a freed id's stay until [`Ids::compact`].
    text: String,
    /// Per handle: where its id is in `text`.
    spans: Vec<(u32, u32)>,
    flags: Vec<u8>,
    /// When it is next due; [`UNSCHEDULED`]: not scheduled.
    due: Vec<i64>,
    /// The digest of the serial the watchdog expects served; `None`: not watched.
    served: Vec<Option<NonZeroU64>>,
    /// The digest of its spec as last synced into the store.
    spec: Vec<Option<NonZeroU64>>,
    /// Freed handles, reused first.
    free: Vec<Handle>,
    index: HashTable<Handle>,
    /// Bytes of `text` that belong to no live id.
    dead: usize,
    /// `(due, handle)`, earliest first; stale entries included (see the module's header).
    order: BinaryHeap<Reverse<(i64, Handle)>>,
    scheduled: usize,
    wanted: usize,
    specs: usize,
}

fn span_str<'a>(text: &'a str, spans: &[(u32, u32)], h: Handle) -> &'a str {
    let (start, len) = spans[h as usize];
    &text[start as usize..(start + len) as usize]
}

impl Ids {
    /// How many handles exist (live or free): the size of a per-handle bit set.
    pub(super) fn handles(&self) -> usize {
        self.spans.len()
    }

    /// How many ids are live.
    pub(super) fn len(&self) -> usize {
        self.spans.len() - self.free.len()
    }

    /// Makes room for `ids` more ids of `bytes` bytes in all, each of them scheduled: the due
    /// heap is not grown by doubling either (which left up to half of it spare, 0.5 MB at
    /// 100,000 certificates).
    pub(super) fn reserve(&mut self, ids: usize, bytes: usize) {
        self.order.reserve_exact(ids);
        let new = ids.saturating_sub(self.free.len());
        self.spans.reserve_exact(new);
        self.flags.reserve_exact(new);
        self.due.reserve_exact(new);
        self.served.reserve_exact(new);
        self.spec.reserve_exact(new);
        self.text.reserve_exact(bytes);
        let Ids {
            index, text, spans, ..
        } = self;
        index.reserve(ids, |&h| hash(span_str(text, spans, h)));
    }

    pub(super) fn id(&self, h: Handle) -> &str {
        debug_assert!(self.flags[h as usize] & LIVE != 0, "handle {h} is free");
        span_str(&self.text, &self.spans, h)
    }

    /// The handle of `id`, if the table holds anything about it.
    pub(super) fn handle(&self, id: &str) -> Option<Handle> {
        self.index.find(hash(id), |&h| self.id(h) == id).copied()
    }

    /// The handle of `id`, made if needed; the caller sets one of its columns.
    fn intern(&mut self, id: &str) -> Handle {
        let hashed = hash(id);
        if let Some(&h) = self.index.find(hashed, |&h| self.id(h) == id) {
            return h;
        }
        let span = (
            u32::try_from(self.text.len()).expect("ids under 4 GiB"),
            u32::try_from(id.len()).expect("a short id"),
        );
        self.text.push_str(id);
        let h = match self.free.pop() {
            Some(h) => {
                let i = h as usize;
                self.spans[i] = span;
                self.flags[i] = LIVE;
                h
            }
            None => {
                let h = Handle::try_from(self.spans.len()).expect("under 2^32 ids");
                self.spans.push(span);
                self.flags.push(LIVE);
                self.due.push(UNSCHEDULED);
                self.served.push(None);
                self.spec.push(None);
                h
            }
        };
        let Ids {
            index, text, spans, ..
        } = self;
        index.insert_unique(hashed, h, |&k| hash(span_str(text, spans, k)));
        h
    }

    /// Frees `h` if none of its columns is set.
    fn release_if_idle(&mut self, h: Handle) {
        let i = h as usize;
        if self.flags[i] & WANTED != 0
            || self.due[i] != UNSCHEDULED
            || self.served[i].is_some()
            || self.spec[i].is_some()
        {
            return;
        }
        let Ids {
            index, text, spans, ..
        } = self;
        let entry = index.find_entry(hash(span_str(text, spans, h)), |&k| k == h);
        entry.expect("a live handle is in the index").remove();
        self.flags[i] = 0;
        self.dead += self.spans[i].1 as usize;
        self.spans[i] = (0, 0);
        self.free.push(h);
        if self.dead * 2 > self.text.len() {
            self.compact();
        }
    }

    /// Rebuilds `text` with the live ids only (the handles stay).
    fn compact(&mut self) {
        let mut text = String::with_capacity(self.text.len() - self.dead);
        for (i, span) in self.spans.iter_mut().enumerate() {
            if self.flags[i] & LIVE != 0 {
                let (start, len) = *span;
                let new = text.len() as u32;
                text.push_str(&self.text[start as usize..(start + len) as usize]);
                *span = (new, len);
            }
        }
        self.text = text;
        self.dead = 0;
    }

    // The wanted set.

    pub(super) fn is_wanted(&self, id: &str) -> bool {
        self.handle(id)
            .is_some_and(|h| self.flags[h as usize] & WANTED != 0)
    }

    /// Marks `h` wanted.
    pub(super) fn want(&mut self, h: Handle) {
        let f = &mut self.flags[h as usize];
        debug_assert!(*f & LIVE != 0, "handle {h} is free");
        if *f & WANTED == 0 {
            *f |= WANTED;
            self.wanted += 1;
        }
    }

    /// No longer wanted; whether it was.
    pub(super) fn unwant(&mut self, id: &str) -> bool {
        let Some(h) = self.handle(id) else {
            return false;
        };
        let f = &mut self.flags[h as usize];
        let was = *f & WANTED != 0;
        if was {
            *f &= !WANTED;
            self.wanted -= 1;
            self.release_if_idle(h);
        }
        was
    }

    /// How many ids are wanted.
    pub(super) fn wanted(&self) -> usize {
        self.wanted
    }

    /// The wanted handles from `from` on, in handle order.
    pub(super) fn wanted_from(&self, from: usize) -> impl Iterator<Item = Handle> + '_ {
        (from..self.flags.len())
            .filter(|&i| self.flags[i] & WANTED != 0)
            .map(|i| i as Handle)
    }

    // The schedule.

    /// Schedules `id` at `t` (moving it if it was scheduled).
    pub(super) fn schedule(&mut self, id: &str, t: UnixTime) {
        let h = self.intern(id);
        self.set_due(h, Some(t));
    }

    /// Schedules `id` at `t` if it is wanted (not at all if `t` is `None`).
    pub(super) fn schedule_if_wanted(&mut self, id: &str, t: Option<UnixTime>) {
        match (self.handle(id), t) {
            (Some(h), Some(t)) if self.flags[h as usize] & WANTED != 0 => self.set_due(h, Some(t)),
            _ => {}
        }
    }

    /// No longer scheduled.
    pub(super) fn unschedule(&mut self, id: &str) {
        if let Some(h) = self.handle(id) {
            self.set_due(h, None);
        }
    }

    /// Schedules `h` at `t`, or not at all.
    pub(super) fn set_due(&mut self, h: Handle, t: Option<UnixTime>) {
        let i = h as usize;
        debug_assert!(self.flags[i] & LIVE != 0, "handle {h} is free");
        let new = t.map_or(UNSCHEDULED, |t| t.max(UNSCHEDULED + 1));
        let old = std::mem::replace(&mut self.due[i], new);
        if old == new {
            return;
        }
        if old == UNSCHEDULED {
            self.scheduled += 1;
        }
        if new == UNSCHEDULED {
            self.scheduled -= 1;
            self.release_if_idle(h);
        } else {
            self.order.push(Reverse((new, h)));
        }
        if self.order.len() > 2 * self.scheduled + REBUILD_MIN {
            self.rebuild_order();
        }
    }

    fn rebuild_order(&mut self) {
        let mut live = Vec::with_capacity(self.scheduled);
        live.extend(
            (0..self.due.len())
                .filter(|&i| self.due[i] != UNSCHEDULED)
                .map(|i| Reverse((self.due[i], i as Handle))),
        );
        self.order = BinaryHeap::from(live);
    }

    /// Drops the stale entries at the top of the due heap.
    fn drop_stale(&mut self) {
        while let Some(&Reverse((t, h))) = self.order.peek() {
            if self.due[h as usize] == t {
                return;
            }
            self.order.pop();
        }
    }

    /// The earliest due time.
    pub(super) fn next_due(&mut self) -> Option<UnixTime> {
        self.drop_stale();
        self.order.peek().map(|&Reverse((t, _))| t)
    }

    /// Takes the earliest scheduled id if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: UnixTime) -> Option<String> {
        self.drop_stale();
        let &Reverse((t, h)) = self.order.peek()?;
        if t > now {
            return None;
        }
        self.order.pop();
        let id = self.id(h).to_string();
        self.set_due(h, None);
        Some(id)
    }

    /// How many ids are due at `now`.
    pub(super) fn due_at(&self, now: UnixTime) -> usize {
        self.due
            .iter()
            .filter(|&&t| t != UNSCHEDULED && t <= now)
            .count()
    }

    // The watchdog's served serials.

    /// Watches `id` for the serial of digest `key`, or stops watching it.
    pub(super) fn watch(&mut self, id: &str, key: Option<NonZeroU64>) {
        let h = match key {
            Some(_) => self.intern(id),
            None => match self.handle(id) {
                Some(h) => h,
                None => return,
            },
        };
        self.served[h as usize] = key;
        if key.is_none() {
            self.release_if_idle(h);
        }
    }

    /// Up to `n` watched ids with their serials' digests, from handle `from` on, and the handle
    /// to go on from (`None`: the end was reached).
    pub(super) fn watched_from(
        &self,
        from: usize,
        n: usize,
    ) -> (Vec<(String, NonZeroU64)>, Option<usize>) {
        let mut out = Vec::new();
        for i in from..self.served.len() {
            if out.len() == n {
                return (out, Some(i));
            }
            if let Some(key) = self.served[i] {
                out.push((self.id(i as Handle).to_string(), key));
            }
        }
        (out, None)
    }

    // The spec digests.

    /// Whether any spec digest is held (none before the first sync).
    pub(super) fn has_specs(&self) -> bool {
        self.specs > 0
    }

    pub(super) fn spec(&self, h: Handle) -> Option<NonZeroU64> {
        self.spec[h as usize]
    }

    /// Sets the spec digest of `id` (interned): its handle.
    pub(super) fn set_spec(&mut self, id: &str, d: NonZeroU64) -> Handle {
        let h = self.intern(id);
        if self.spec[h as usize].replace(d).is_none() {
            self.specs += 1;
        }
        h
    }

    /// Forgets the spec digest of `id`.
    pub(super) fn clear_spec(&mut self, id: &str) {
        if let Some(h) = self.handle(id) {
            self.clear_spec_of(h);
        }
    }

    fn clear_spec_of(&mut self, h: Handle) {
        if self.spec[h as usize].take().is_some() {
            self.specs -= 1;
            self.release_if_idle(h);
        }
    }

    /// Forgets the spec digests of the handles `keep` is false for.
    pub(super) fn retain_specs(&mut self, keep: impl Fn(Handle) -> bool) {
        for i in 0..self.spec.len() {
            let h = i as Handle;
            if self.spec[i].is_some() && !keep(h) {
                self.clear_spec_of(h);
            }
        }
    }
}

/// The table, shared by the loop, the tasks (each commit updates the watchdog's column) and the
/// store's closures of a sync. Held for a few lookups at a time, never across an `.await`.
#[derive(Clone, Default)]
pub(super) struct SharedIds(Arc<Mutex<Ids>>);

impl SharedIds {
    pub(super) fn lock(&self) -> MutexGuard<'_, Ids> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[path = "ids_tests.rs"]
mod tests;
