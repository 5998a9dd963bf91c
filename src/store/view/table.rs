//! The view's table: entries sorted by id in one vector, plus a small sorted map of ids added
//! since it was last merged. At 1,000,000 certificates a `BTreeMap` of the same entries spent
//! ~200 bytes a certificate on its nodes (two thirds full) and a walk over it chased a pointer
//! per node; the vector holds each entry once, and `/metrics` and `status` walk it in order.
//!
//! The vector's ids are kept in one string, their bytes one after the other, and each entry
//! holds its id's `(offset, length)` in it (as the reconciler's `ids` table does): 8 bytes
//! beside the value, where a `Box<str>` per id took 16 and a heap block of its own (jemalloc's
//! 32-byte class for a 17- to 32-byte id). With the view's value (a 56-byte `Seen`) an entry is
//! 64 bytes, so a certificate costs 64 bytes plus its id's: 84 for the 20 bytes of
//! `s123456.example.test`, against 72 plus a 32-byte block (104) before, ~19 MiB less at
//! 1,000,000 certificates.
//!
//! The start-up pass visits the records in id order, so its entries are appended. An id added
//! later goes into `recent`, merged into the vector (one stable sort of two sorted runs: a
//! linear merge; its ids' bytes appended to the string) once `recent` holds more than an eighth
//! of it, so an insert never moves the whole vector. A deletion (a pruned certificate) leaves a
//! hole in the vector, which keeps its id's bytes so the same id can fill it if it comes back;
//! the holes are dropped in one pass once they are more than an eighth of the vector, or their
//! bytes more than half the string, and the string is rebuilt from the live ids in the same
//! pass: pruning many certificates never moves the vector once per certificate.

use std::collections::BTreeMap;
use std::iter::Peekable;

/// Where an id is in [`Table`]'s string: offset and length in bytes.
type Span = (u32, u32);

fn span_str(text: &str, (start, len): Span) -> &str {
    &text[start as usize..(start + len) as usize]
}

/// Entries by id, in id order.
pub struct Table<V> {
    /// The ids of `sorted` (holes' included), one after the other.
    text: String,
    /// `None`: a hole left by a removal (its id's bytes still in `text`).
    sorted: Vec<(Span, Option<V>)>,
    holes: usize,
    /// Bytes of `text` that belong to holes.
    dead: usize,
    recent: BTreeMap<Box<str>, V>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            text: String::new(),
            sorted: Vec::new(),
            holes: 0,
            dead: 0,
            recent: BTreeMap::new(),
        }
    }
}

/// `recent` is merged into the vector, and the holes dropped from it, past this many entries
/// (or holes), or an eighth of the vector.
const RECENT_MIN: usize = 1024;

impl<V> Table<V> {
    pub fn len(&self) -> usize {
        self.sorted.len() - self.holes + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, i: usize) -> &str {
        span_str(&self.text, self.sorted[i].0)
    }

    fn position(&self, id: &str) -> Result<usize, usize> {
        self.sorted
            .binary_search_by(|&(span, _)| span_str(&self.text, span).cmp(id))
    }

    pub fn get(&self, id: &str) -> Option<(&str, &V)> {
        match self.position(id) {
            Ok(i) => self.sorted[i].1.as_ref().map(|v| (self.key(i), v)),
            Err(_) => self.recent.get_key_value(id).map(|(k, v)| (&**k, v)),
        }
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        match self.position(id) {
            Ok(i) => self.sorted[i].1.as_mut(),
            Err(_) => self.recent.get_mut(id),
        }
    }

    /// Appends `id` to the string: its span.
    fn push_id(&mut self, id: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(id);
        assert!(u32::try_from(self.text.len()).is_ok(), "ids under 4 GiB");
        (start, id.len() as u32)
    }

    /// Adds `id`, which is not in the table.
    pub fn insert_new(&mut self, id: &str, value: V) {
        debug_assert!(self.get(id).is_none(), "{id} is in the table already");
        if let Ok(i) = self.position(id) {
            // A hole the same id left.
            self.sorted[i].1 = Some(value);
            self.holes -= 1;
            self.dead -= id.len();
            return;
        }
        if self.sorted.is_empty() || self.key(self.sorted.len() - 1) < id {
            let span = self.push_id(id);
            self.sorted.push((span, Some(value)));
            return;
        }
        self.recent.insert(id.into(), value);
        if self.recent.len() > RECENT_MIN.max(self.sorted.len() / 8) {
            self.compact();
            let recent = std::mem::take(&mut self.recent);
            self.sorted.reserve(recent.len());
            for (id, v) in recent {
                let span = self.push_id(&id);
                self.sorted.push((span, Some(v)));
            }
            // Two sorted runs: the stable sort finds them and merges them in one pass.
            let text = &self.text;
            self.sorted
                .sort_by(|&(a, _), &(b, _)| span_str(text, a).cmp(span_str(text, b)));
        }
    }

    /// Drops the holes, and rebuilds the string from the live ids, in order, in the same pass.
    fn compact(&mut self) {
        if self.holes == 0 {
            return;
        }
        let old = std::mem::take(&mut self.text);
        let mut text = String::with_capacity(old.len() - self.dead);
        self.sorted.retain_mut(|(span, v)| {
            if v.is_none() {
                return false;
            }
            let id = span_str(&old, *span);
            span.0 = text.len() as u32;
            text.push_str(id);
            true
        });
        self.text = text;
        self.holes = 0;
        self.dead = 0;
    }

    pub fn remove(&mut self, id: &str) -> Option<V> {
        let removed = match self.position(id) {
            Ok(i) => self.sorted[i].1.take(),
            Err(_) => return self.recent.remove(id),
        };
        if removed.is_some() {
            self.holes += 1;
            self.dead += id.len();
            if self.holes > RECENT_MIN.max(self.sorted.len() / 8) || self.dead * 2 > self.text.len()
            {
                self.compact();
            }
        }
        removed
    }

    /// Every entry in id order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            sorted: Entries {
                text: &self.text,
                entries: self.sorted.iter(),
            }
            .peekable(),
            recent: self.recent.iter().peekable(),
        }
    }

    /// Gives back the spare capacity of the vector, and of the string, once it is over a quarter
    /// of what is used (after the start-up pass filled the table by doubling them), not after
    /// every pass: at 1,000,000 certificates each shrink copies 64 MB (and 20 MB).
    pub fn shrink_to_fit(&mut self) {
        self.compact();
        if self.sorted.capacity() - self.sorted.len() > self.sorted.len() / 4 {
            self.sorted.shrink_to_fit();
        }
        if self.text.capacity() - self.text.len() > self.text.len() / 4 {
            self.text.shrink_to_fit();
        }
    }
}

/// The vector's entries with their ids, holes left out.
struct Entries<'a, V> {
    text: &'a str,
    entries: std::slice::Iter<'a, (Span, Option<V>)>,
}

impl<V> Clone for Entries<'_, V> {
    fn clone(&self) -> Self {
        Entries {
            text: self.text,
            entries: self.entries.clone(),
        }
    }
}

impl<'a, V> Iterator for Entries<'a, V> {
    type Item = (&'a str, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let text = self.text;
        self.entries
            .find_map(|(span, v)| v.as_ref().map(|v| (span_str(text, *span), v)))
    }
}

/// [`Table::iter`]: the vector and `recent` merged by id.
pub struct Iter<'a, V> {
    sorted: Peekable<Entries<'a, V>>,
    recent: Peekable<std::collections::btree_map::Iter<'a, Box<str>, V>>,
}

impl<V> Clone for Iter<'_, V> {
    fn clone(&self) -> Self {
        Iter {
            sorted: self.sorted.clone(),
            recent: self.recent.clone(),
        }
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a str, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let from_recent = match (self.sorted.peek(), self.recent.peek()) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((a, _)), Some((b, _))) => {
                let (a, b): (&str, &str) = (a, b);
                b < a
            }
        };
        if from_recent {
            self.recent.next().map(|(k, v)| (&**k, v))
        } else {
            self.sorted.next()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// The ids from the first on, up to the second's count: mostly one; a run of removals
        /// drops the holes and rebuilds the string, and a run of inserts fills it again.
        Insert(u16, u16),
        Remove(u16, u16),
        Set(u16, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let n = || prop_oneof![40 => Just(1u16), 1 => 0u16..600];
        prop_oneof![
            (0u16..3000, n()).prop_map(|(k, n)| Op::Insert(k, n)),
            (0u16..3000, n()).prop_map(|(k, n)| Op::Remove(k, n)),
            (0u16..3000, any::<u32>()).prop_map(|(k, v)| Op::Set(k, v)),
        ]
    }

    /// Ids of 10 to 41 bytes, in the order of `k`: the holes' bytes can pass half the string
    /// before the holes pass an eighth of the vector.
    fn id(k: u16) -> String {
        format!("{k:05}.{}test", "x".repeat(k as usize * 7 % 32))
    }

    /// The table's own invariants: the vector in id order, its holes and their bytes counted,
    /// and the string holding the vector's ids and nothing else.
    fn check<V>(t: &Table<V>) {
        assert!((1..t.sorted.len()).all(|i| t.key(i - 1) < t.key(i)));
        let holes = t.sorted.iter().filter(|(_, v)| v.is_none());
        assert_eq!(t.holes, holes.clone().count());
        assert_eq!(t.dead, holes.map(|&(s, _)| s.1 as usize).sum::<usize>());
        let bytes: usize = t.sorted.iter().map(|&(s, _)| s.1 as usize).sum();
        assert_eq!(t.text.len(), bytes);
        assert!(t.dead * 2 <= t.text.len(), "rebuilt past half dead");
    }

    proptest! {
        // 64 cases of up to 3,000 operations (3,000 cases passed once, by PROPTEST_CASES): the
        // default 256 kept a core busy for 10 s beside the store's timing-sensitive tests.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The table answers as a `BTreeMap` does, whatever the order of inserts, removals
        /// and updates (3,000 ids: past RECENT_MIN, so merges happen; runs of removals and
        /// inserts: holes dropped and the string rebuilt, then filled again).
        #[test]
        fn the_table_is_a_sorted_map(
            ascending in 0usize..2000,
            ops in proptest::collection::vec(op(), 0..3000),
        ) {
            let mut table = Table::default();
            let mut model = BTreeMap::new();
            // The start-up pass: ids in order.
            for i in 0..ascending {
                let id = id(i as u16 * 3);
                table.insert_new(&id, 0u32);
                model.insert(id, 0u32);
            }
            for op in ops {
                match op {
                    Op::Insert(k, n) => {
                        for k in k..(k + n).min(3000) {
                            if let std::collections::btree_map::Entry::Vacant(e) = model.entry(id(k)) {
                                table.insert_new(e.key(), 1);
                                e.insert(1);
                            }
                        }
                    }
                    Op::Remove(k, n) => {
                        for k in k..(k + n).min(3000) {
                            prop_assert_eq!(table.remove(&id(k)), model.remove(&id(k)));
                        }
                    }
                    Op::Set(k, v) => {
                        if let (Some(t), Some(m)) = (table.get_mut(&id(k)), model.get_mut(&id(k))) {
                            *t = v;
                            *m = v;
                        }
                    }
                }
                if matches!(op, Op::Insert(_, n) | Op::Remove(_, n) if n > 1) {
                    check(&table);
                }
            }
            check(&table);
            prop_assert_eq!(table.len(), model.len());
            let got: Vec<(&str, &u32)> = table.iter().collect();
            let want: Vec<(&str, &u32)> = model.iter().map(|(k, v)| (k.as_str(), v)).collect();
            prop_assert_eq!(got, want);
            for k in (0..3000).step_by(7) {
                prop_assert_eq!(table.get(&id(k)).map(|(_, v)| *v), model.get(&id(k)).copied());
            }
            table.shrink_to_fit();
            check(&table);
            prop_assert_eq!(table.holes, 0);
            prop_assert!(table.iter().eq(model.iter().map(|(k, v)| (k.as_str(), v))));
        }
    }

    #[test]
    fn ids_in_order_are_appended_and_others_merged_later() {
        let mut t = Table::default();
        for i in 0..10 {
            t.insert_new(&format!("{i:02}"), i);
        }
        t.insert_new("05a", 99);
        assert_eq!(
            t.recent.len(),
            1,
            "an id inside the vector's range waits in recent"
        );
        for i in 0..RECENT_MIN {
            t.insert_new(&format!("00-{i:05}"), 0);
        }
        assert!(t.recent.is_empty(), "merged once recent passed RECENT_MIN");
        check(&t);
        assert_eq!(t.get("05a").map(|(_, v)| *v), Some(99));
        t.sorted.reserve(t.sorted.len());
        t.shrink_to_fit();
        assert_eq!(
            t.sorted.capacity(),
            t.sorted.len(),
            "half spare: given back"
        );
        t.sorted.reserve_exact(t.sorted.len() / 8);
        let small_spare = t.sorted.capacity();
        assert!(small_spare - t.sorted.len() <= t.sorted.len() / 4);
        t.shrink_to_fit();
        assert_eq!(t.sorted.capacity(), small_spare, "a little spare is kept");
    }

    #[test]
    fn removals_leave_holes_that_the_same_id_fills_and_many_are_dropped_at_once() {
        let mut t = Table::default();
        for i in 0..3000 {
            t.insert_new(&format!("{i:05}"), i);
        }
        assert_eq!(t.remove("00007"), Some(7));
        assert_eq!(t.remove("00007"), None);
        assert_eq!(
            (t.len(), t.sorted.len()),
            (2999, 3000),
            "a hole, not a move"
        );
        assert!(t.get("00007").is_none());
        t.insert_new("00007", 70);
        assert_eq!((t.len(), t.sorted.len(), t.holes), (3000, 3000, 0));
        assert_eq!(t.get("00007").map(|(_, v)| *v), Some(70));
        for i in (0..3000).filter(|i| i % 3 != 0) {
            assert_eq!(
                t.remove(&format!("{i:05}")),
                Some(if i == 7 { 70 } else { i })
            );
        }
        assert_eq!(t.len(), 1000);
        assert!(
            t.sorted.len() < 3000,
            "the holes were dropped past RECENT_MIN"
        );
        let ids: Vec<&str> = t.iter().map(|(k, _)| k).collect();
        let want: Vec<String> = (0..3000).step_by(3).map(|i| format!("{i:05}")).collect();
        assert_eq!(ids, want);
        t.shrink_to_fit();
        assert_eq!(
            (t.sorted.len(), t.holes),
            (1000, 0),
            "no hole after a full pass"
        );
    }

    #[test]
    fn removing_most_ids_rebuilds_the_string_and_every_id_reads_back() {
        let mut t = Table::default();
        for i in 0..10_000 {
            t.insert_new(&format!("s{i:06}.example.test"), i);
        }
        assert_eq!(
            t.text.len(),
            10_000 * 20,
            "one string: the ids' bytes, nothing else"
        );
        for i in (0..10_000).filter(|i| i % 10 != 0) {
            assert_eq!(t.remove(&format!("s{i:06}.example.test")), Some(i));
        }
        t.shrink_to_fit();
        check(&t);
        assert_eq!(
            (t.len(), t.text.len()),
            (1000, 1000 * 20),
            "the dead bytes are gone"
        );
        assert!(
            t.text.capacity() <= 1000 * 20 * 5 / 4,
            "and the spare capacity"
        );
        for i in 0..10_000 {
            let id = format!("s{i:06}.example.test");
            let want = (i % 10 == 0).then_some((id.as_str(), &i));
            assert_eq!(t.get(&id), want, "{id}");
        }
        // Holes whose bytes are over half the string, fewer than RECENT_MIN: dropped too.
        let long = |i: usize| format!("t{i:06}.{}", "x".repeat(200));
        for i in 0..1000 {
            t.insert_new(&long(i), i);
        }
        assert_eq!(t.text.len(), 1000 * 20 + 1000 * 208);
        for i in 0..600 {
            assert_eq!(t.remove(&long(i)), Some(i));
        }
        check(&t);
        assert!(
            t.holes < 100,
            "{} holes: dropped past half the bytes",
            t.holes
        );
        assert!(
            t.text.len() < 1000 * 20 + 500 * 208,
            "and the string rebuilt"
        );
        assert!((600..1000).all(|i| t.get(&long(i)) == Some((long(i).as_str(), &i))));
    }

    /// The figures in the module's header: the view's entry, and a certificate's cost.
    #[test]
    fn an_entry_of_the_view_is_64_bytes_beside_its_id() {
        use std::mem::size_of;
        let entry = size_of::<(Span, Option<crate::store::view::Seen>)>();
        assert_eq!(entry, 64);
        assert_eq!(
            size_of::<(Box<str>, Option<crate::store::view::Seen>)>(),
            72
        );
        assert_eq!(entry + "s123456.example.test".len(), 84);
    }
}
