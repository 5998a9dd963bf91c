//! Tests of the table of ids (`ids.rs`): a property test against a model of the maps it
//! replaced (a map of due times, a set of wanted ids, maps of served serials and of specs), and
//! the reuse of freed handles and bytes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// What the table holds about one id, as the maps it replaced held it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Entry {
    due: Option<i64>,
    wanted: bool,
    served: Option<NonZeroU64>,
    spec: Option<NonZeroU64>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        *self == Entry::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Schedule(String, i64),
    ScheduleIfWanted(String, Option<i64>),
    Unschedule(String),
    PopDue(i64),
    Want(String),
    Unwant(String),
    Watch(String, Option<u64>),
    SetSpec(String, u64),
    ClearSpec(String),
    /// Keeps the spec digests of the ids whose length is even.
    RetainSpecs,
}

fn id() -> impl Strategy<Value = String> {
    // Ids of different lengths, so freed bytes and the string's compaction are exercised.
    (0..24usize).prop_map(|i| format!("{}{i}.test", "x".repeat(i % 7)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (id(), 0..50i64).prop_map(|(i, t)| Op::Schedule(i, t)),
        1 => (id(), proptest::option::of(0..50i64)).prop_map(|(i, t)| Op::ScheduleIfWanted(i, t)),
        1 => id().prop_map(Op::Unschedule),
        2 => (0..60i64).prop_map(Op::PopDue),
        2 => id().prop_map(Op::Want),
        1 => id().prop_map(Op::Unwant),
        2 => (id(), proptest::option::of(0..4u64)).prop_map(|(i, k)| Op::Watch(i, k)),
        2 => (id(), 0..4u64).prop_map(|(i, d)| Op::SetSpec(i, d)),
        1 => id().prop_map(Op::ClearSpec),
        1 => Just(Op::RetainSpecs),
    ]
}

/// The table says what the model says, and holds a handle for exactly the ids the model has
/// something about.
fn check(ids: &mut Ids, model: &BTreeMap<String, Entry>) {
    let live: BTreeMap<&String, &Entry> = model.iter().filter(|(_, e)| !e.is_empty()).collect();
    assert_eq!(ids.len(), live.len());
    for (id, e) in &model.iter().collect::<Vec<_>>() {
        match ids.handle(id) {
            None => assert!(e.is_empty(), "{id} lost: {e:?}"),
            Some(h) => {
                assert!(!e.is_empty(), "{id} kept with nothing set");
                assert_eq!(ids.id(h), id.as_str());
                let due = ids.due[h as usize];
                assert_eq!((due != UNSCHEDULED).then_some(due), e.due, "{id}");
                assert_eq!(ids.is_wanted(id), e.wanted, "{id}");
                assert_eq!(ids.served[h as usize], e.served, "{id}");
                assert_eq!(ids.spec(h), e.spec, "{id}");
            }
        }
    }
    let wanted: BTreeSet<&str> = ids.wanted_from(0).map(|h| ids.id(h)).collect();
    let model_wanted: BTreeSet<&str> = live
        .iter()
        .filter(|(_, e)| e.wanted)
        .map(|(i, _)| i.as_str())
        .collect();
    assert_eq!(wanted, model_wanted);
    assert_eq!(ids.wanted(), model_wanted.len());
    let (watched, rest) = ids.watched_from(0, usize::MAX);
    assert_eq!(rest, None);
    let watched: BTreeMap<String, NonZeroU64> = watched.into_iter().collect();
    let model_watched: BTreeMap<String, NonZeroU64> = live
        .iter()
        .filter_map(|(i, e)| e.served.map(|k| ((*i).clone(), k)))
        .collect();
    assert_eq!(watched, model_watched);
    let next = live.values().filter_map(|e| e.due).min();
    assert_eq!(ids.next_due(), next);
    assert_eq!(
        ids.due_at(25),
        live.values()
            .filter(|e| e.due.is_some_and(|t| t <= 25))
            .count()
    );
    assert_eq!(ids.has_specs(), live.values().any(|e| e.spec.is_some()));
    // The heap is rebuilt before its stale entries outnumber the live ones by much.
    assert!(ids.order.len() <= 2 * ids.scheduled + REBUILD_MIN + 1);
    // The string holds at least as many live bytes as dead ones (or is compacted).
    assert!(ids.dead * 2 <= ids.text.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_table_is_the_maps_it_replaced(ops in proptest::collection::vec(op(), 0..2000)) {
        let mut ids = Ids::default();
        let mut model: BTreeMap<String, Entry> = BTreeMap::new();
        let mut most = 0;
        for op in ops {
            match op {
                Op::Schedule(id, t) => {
                    ids.schedule(&id, t);
                    model.entry(id).or_default().due = Some(t);
                }
                Op::ScheduleIfWanted(id, t) => {
                    ids.schedule_if_wanted(&id, t);
                    let e = model.entry(id).or_default();
                    if e.wanted && t.is_some() {
                        e.due = t;
                    }
                }
                Op::Unschedule(id) => {
                    ids.unschedule(&id);
                    model.entry(id).or_default().due = None;
                }
                Op::PopDue(now) => {
                    let earliest = model.values().filter_map(|e| e.due).min();
                    match ids.pop_due(now) {
                        None => prop_assert!(earliest.is_none_or(|t| t > now)),
                        Some(id) => {
                            let e = model.get_mut(&id).expect("a known id");
                            // Ties come out in any order, but the earliest time first.
                            prop_assert_eq!(e.due, earliest);
                            prop_assert!(earliest.is_some_and(|t| t <= now));
                            e.due = None;
                        }
                    }
                }
                Op::Want(id) => {
                    let h = ids.intern(&id);
                    ids.want(h);
                    model.entry(id).or_default().wanted = true;
                }
                Op::Unwant(id) => {
                    let e = model.entry(id.clone()).or_default();
                    prop_assert_eq!(ids.unwant(&id), e.wanted);
                    e.wanted = false;
                }
                Op::Watch(id, key) => {
                    let key = key.map(digest);
                    ids.watch(&id, key);
                    model.entry(id).or_default().served = key;
                }
                Op::SetSpec(id, d) => {
                    let h = ids.set_spec(&id, digest(d));
                    prop_assert_eq!(ids.id(h), id.as_str());
                    model.entry(id).or_default().spec = Some(digest(d));
                }
                Op::ClearSpec(id) => {
                    ids.clear_spec(&id);
                    model.entry(id).or_default().spec = None;
                }
                Op::RetainSpecs => {
                    let keep: Vec<bool> = (0..ids.handles())
                        .map(|h| ids.flags[h] & LIVE != 0 && ids.id(h as Handle).len() % 2 == 0)
                        .collect();
                    ids.retain_specs(|h| keep[h as usize]);
                    for (id, e) in model.iter_mut() {
                        if id.len() % 2 != 0 {
                            e.spec = None;
                        }
                    }
                }
            }
            check(&mut ids, &model);
            most = most.max(ids.len());
            // Freed handles are reused: never more than the most ids live at once.
            prop_assert!(ids.handles() <= most);
        }
    }
}

#[test]
fn one_entry_per_certificate_earliest_first() {
    let mut s = Ids::default();
    s.schedule("a", 50);
    s.schedule("b", 10);
    s.schedule("a", 5); // moved, not duplicated
    assert_eq!(s.next_due(), Some(5));
    assert_eq!(s.due_at(10), 2);
    assert_eq!(s.pop_due(4), None, "nothing due before 5");
    assert_eq!(s.pop_due(10).as_deref(), Some("a"));
    assert_eq!(s.pop_due(10).as_deref(), Some("b"));
    assert_eq!(s.pop_due(1000), None, "a's old entry at 50 is gone");
    s.schedule("c", 7);
    s.unschedule("c");
    assert_eq!(s.next_due(), None);
    assert_eq!(s.len(), 0, "nothing is kept about ids with nothing set");
}

#[test]
fn pruned_ids_leave_nothing_behind() {
    let mut s = Ids::default();
    for round in 0..50 {
        for i in 0..100 {
            let id = format!("r{round}-{i}.example.com");
            s.schedule(&id, i);
            s.watch(&id, Some(digest(1)));
        }
        for i in 0..100 {
            let id = format!("r{round}-{i}.example.com");
            s.unschedule(&id);
            s.watch(&id, None);
        }
    }
    assert_eq!(s.len(), 0);
    assert_eq!(s.handles(), 100, "handles reused");
    assert!(
        s.text.len() < 2 * 100 * "r49-99.example.com".len(),
        "bytes reused"
    );
    assert!(s.order.len() <= REBUILD_MIN + 1);
}

#[test]
fn a_reused_handle_is_not_popped_for_the_stale_entry_of_its_former_id() {
    let mut s = Ids::default();
    s.schedule("old", 10);
    s.unschedule("old");
    s.schedule("new", 20); // the same handle, with old's entry at 10 still in the heap
    assert_eq!(s.pop_due(15), None);
    assert_eq!(s.pop_due(20).as_deref(), Some("new"));
}

#[test]
fn a_reserved_table_schedules_its_ids_without_growing_the_heap() {
    let mut s = Ids::default();
    s.reserve(1000, 1000 * 16);
    for i in 0..1000 {
        s.schedule(&format!("s{i:06}.example",), i);
    }
    assert_eq!(s.order.len(), 1000);
    assert_eq!(s.order.capacity(), 1000, "reserved once, not doubled");
    assert_eq!(s.text.capacity(), 1000 * 16);
}
