//! The view's table: entries sorted by id in one vector, plus a small sorted map of ids added
//! since it was last merged. At 1,000,000 certificates a `BTreeMap` of the same entries spent
//! ~200 bytes a certificate on its nodes (two thirds full) and a walk over it chased a pointer
//! per node; the vector holds each entry once, and `/metrics` and `status` walk it in order.
//!
//! The start-up pass visits the records in id order, so its entries are appended. An id added
//! later goes into `recent`, merged into the vector (one stable sort of two sorted runs: a
//! linear merge) once `recent` holds more than an eighth of it, so an insert never moves the
//! whole vector. A deletion (a pruned certificate) leaves a hole in the vector, which the same
//! id fills if it comes back, and the holes are dropped in one pass once they are more than an
//! eighth of it: pruning many certificates never moves the vector once per certificate.

use std::collections::BTreeMap;
use std::iter::Peekable;

/// Entries by id, in id order.
pub struct Table<V> {
    /// `None`: a hole left by a removal.
    sorted: Vec<(Box<str>, Option<V>)>,
    holes: usize,
    recent: BTreeMap<Box<str>, V>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            sorted: Vec::new(),
            holes: 0,
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

    fn position(&self, id: &str) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(k, _)| (**k).cmp(id))
    }

    pub fn get(&self, id: &str) -> Option<(&str, &V)> {
        match self.position(id) {
            Ok(i) => self.sorted[i].1.as_ref().map(|v| (&*self.sorted[i].0, v)),
            Err(_) => self.recent.get_key_value(id).map(|(k, v)| (&**k, v)),
        }
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        match self.position(id) {
            Ok(i) => self.sorted[i].1.as_mut(),
            Err(_) => self.recent.get_mut(id),
        }
    }

    /// Adds `id`, which is not in the table.
    pub fn insert_new(&mut self, id: &str, value: V) {
        debug_assert!(self.get(id).is_none(), "{id} is in the table already");
        if let Ok(i) = self.position(id) {
            // A hole the same id left.
            self.sorted[i].1 = Some(value);
            self.holes -= 1;
            return;
        }
        if self.sorted.last().is_none_or(|(last, _)| **last < *id) {
            self.sorted.push((id.into(), Some(value)));
            return;
        }
        self.recent.insert(id.into(), value);
        if self.recent.len() > RECENT_MIN.max(self.sorted.len() / 8) {
            self.compact();
            let recent = std::mem::take(&mut self.recent);
            self.sorted
                .extend(recent.into_iter().map(|(k, v)| (k, Some(v))));
            // Two sorted runs: the stable sort finds them and merges them in one pass.
            self.sorted.sort_by(|(a, _), (b, _)| a.cmp(b));
        }
    }

    /// Drops the holes.
    fn compact(&mut self) {
        if self.holes > 0 {
            self.sorted.retain(|(_, v)| v.is_some());
            self.holes = 0;
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<V> {
        let removed = match self.position(id) {
            Ok(i) => self.sorted[i].1.take(),
            Err(_) => return self.recent.remove(id),
        };
        if removed.is_some() {
            self.holes += 1;
            if self.holes > RECENT_MIN.max(self.sorted.len() / 8) {
                self.compact();
            }
        }
        removed
    }

    /// Every entry in id order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            sorted: self
                .sorted
                .iter()
                .filter_map(entry as fn(&(Box<str>, Option<V>)) -> Option<(&str, &V)>)
                .peekable(),
            recent: self.recent.iter().peekable(),
        }
    }

    /// Gives back the spare capacity once it is over a quarter of the entries (after the
    /// start-up pass filled the table by doubling it), not after every pass: at 1,000,000
    /// certificates each shrink copies 72 MB.
    pub fn shrink_to_fit(&mut self) {
        self.compact();
        if self.sorted.capacity() - self.sorted.len() > self.sorted.len() / 4 {
            self.sorted.shrink_to_fit();
        }
    }
}

/// The vector's entries, holes left out.
type Entries<'a, V> = std::iter::FilterMap<
    std::slice::Iter<'a, (Box<str>, Option<V>)>,
    fn(&(Box<str>, Option<V>)) -> Option<(&str, &V)>,
>;

fn entry<V>((k, v): &(Box<str>, Option<V>)) -> Option<(&str, &V)> {
    v.as_ref().map(|v| (&**k, v))
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
        Insert(u16),
        Remove(u16),
        Set(u16, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..3000).prop_map(Op::Insert),
            (0u16..3000).prop_map(Op::Remove),
            (0u16..3000, any::<u32>()).prop_map(|(k, v)| Op::Set(k, v)),
        ]
    }

    proptest! {
        // 64 cases of up to 3,000 operations (3,000 cases passed once, by PROPTEST_CASES): the
        // default 256 kept a core busy for 10 s beside the store's timing-sensitive tests.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The table answers as a `BTreeMap` does, whatever the order of inserts, removals
        /// and updates (3,000 ids: past RECENT_MIN, so merges happen).
        #[test]
        fn the_table_is_a_sorted_map(
            ascending in 0usize..2000,
            ops in proptest::collection::vec(op(), 0..3000),
        ) {
            let mut table = Table::default();
            let mut model = BTreeMap::new();
            // The start-up pass: ids in order.
            for i in 0..ascending {
                let id = format!("{:05}.test", i * 3);
                table.insert_new(&id, 0u32);
                model.insert(id, 0u32);
            }
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let id = format!("{:05}.test", k);
                        if let std::collections::btree_map::Entry::Vacant(e) = model.entry(id) {
                            table.insert_new(e.key(), 1);
                            e.insert(1);
                        }
                    }
                    Op::Remove(k) => {
                        let id = format!("{:05}.test", k);
                        prop_assert_eq!(table.remove(&id), model.remove(&id));
                    }
                    Op::Set(k, v) => {
                        let id = format!("{:05}.test", k);
                        if let (Some(t), Some(m)) = (table.get_mut(&id), model.get_mut(&id)) {
                            *t = v;
                            *m = v;
                        }
                    }
                }
            }
            prop_assert_eq!(table.len(), model.len());
            let got: Vec<(&str, &u32)> = table.iter().collect();
            let want: Vec<(&str, &u32)> = model.iter().map(|(k, v)| (k.as_str(), v)).collect();
            prop_assert_eq!(got, want);
            for k in (0..3000).step_by(7) {
                let id = format!("{:05}.test", k);
                prop_assert_eq!(table.get(&id).map(|(_, v)| *v), model.get(&id).copied());
            }
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
        assert!(t.sorted.windows(2).all(|w| w[0].0 < w[1].0));
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
}
