//! The schedule: each wanted certificate's next due time, earliest first, at most one entry per
//! certificate, from the record's own plan.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use haproxy_acme_state::{plan_with_alerts, Plan, Record, UnixTime};

/// A wanted certificate and when its plan next has work.
pub struct Wanted {
    /// Shared with the reconciler's schedule and set of wanted ids.
    pub id: Arc<str>,
    /// `None`: nothing to do until something changes (an event, the configuration).
    pub due: Option<UnixTime>,
}

impl Wanted {
    pub fn of(r: &Record, now: UnixTime) -> Wanted {
        let due = match plan_with_alerts(r, now) {
            Plan::Now(_) => Some(now),
            Plan::At(t) => Some(t),
            Plan::Idle => None,
        };
        Wanted {
            id: r.id.as_str().into(),
            due,
        }
    }
}

/// Schedules each certificate at the time its plan says (never for an idle one).
pub fn schedule_wanted(schedule: &mut Schedule, wanted: Vec<Wanted>) {
    for w in wanted {
        match w.due {
            Some(t) => schedule.set(w.id, t),
            None => schedule.remove(&w.id),
        }
    }
}

/// Due times of the certificates, earliest first, at most one entry per certificate. Both maps
/// (and the reconciler's set of wanted ids) share one allocation per id.
#[derive(Default)]
pub struct Schedule {
    due: BTreeSet<(UnixTime, Arc<str>)>,
    at: HashMap<Arc<str>, UnixTime>,
}

impl Schedule {
    /// Sets (or moves) the due time of `id`.
    pub fn set(&mut self, id: impl Into<Arc<str>>, t: UnixTime) {
        let id: Arc<str> = id.into();
        if let Some(old) = self.at.insert(id.clone(), t) {
            self.due.remove(&(old, id.clone()));
        }
        self.due.insert((t, id));
    }

    pub fn remove(&mut self, id: &str) {
        if let Some((id, old)) = self.at.remove_entry(id) {
            self.due.remove(&(old, id));
        }
    }

    /// Takes the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: UnixTime) -> Option<String> {
        match self.due.first() {
            Some((t, _)) if *t <= now => {
                let (_, id) = self.due.pop_first().expect("first exists");
                self.at.remove(&id);
                Some(id.to_string())
            }
            _ => None,
        }
    }

    /// How many entries are due at `now`.
    pub fn due_at(&self, now: UnixTime) -> usize {
        self.due.range(..(now + 1, Arc::from(""))).count()
    }

    pub fn next(&self) -> Option<UnixTime> {
        self.due.first().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haproxy_acme_state::{FailureKind, Step};

    #[test]
    fn schedule_keeps_one_entry_per_certificate() {
        let mut s = Schedule::default();
        s.set("a", 50);
        s.set("b", 10);
        s.set("a", 5); // moved, not duplicated
        assert_eq!(s.next(), Some(5));
        assert_eq!(s.due_at(10), 2);
        assert_eq!(s.pop_due(4), None, "nothing due before 5");
        assert_eq!(s.pop_due(10).as_deref(), Some("a"));
        assert_eq!(s.pop_due(10).as_deref(), Some("b"));
        assert_eq!(s.pop_due(1000), None, "a's old entry at 50 is gone");
        s.set("c", 7);
        s.remove("c");
        assert_eq!(s.next(), None);
    }

    #[test]
    fn records_are_scheduled_by_their_plan() {
        let mut s = Schedule::default();
        let pending = Record::new(
            vec!["p.test".into()],
            haproxy_acme_state::KeyType::EcdsaP256,
            0,
        );
        let mut waiting = pending.clone();
        waiting.id = "w.test".into();
        waiting.failure = Some(haproxy_acme_state::Failure {
            step: Step::Order,
            kind: FailureKind::Retryable,
            error: "x".into(),
            attempts: 1,
            at: 0,
            next_attempt_at: Some(500),
        });
        // A failing record not alerted yet is due at once (the alert step), then waits.
        let mut alerting = waiting.clone();
        alerting.id = "a.test".into();
        alerting.failure.as_mut().unwrap().attempts =
            haproxy_acme_state::attention::FAILING_AFTER_ATTEMPTS;
        waiting.alert = Some(haproxy_acme_state::Alerted {
            conditions: vec![haproxy_acme_state::Condition::Failing],
            at: 0,
        });
        let mut idle = waiting.clone();
        idle.id = "i.test".into();
        idle.failure.as_mut().unwrap().next_attempt_at = None;
        let records = [pending, waiting, idle, alerting];
        schedule_wanted(&mut s, records.iter().map(|r| Wanted::of(r, 100)).collect());
        assert_eq!(s.pop_due(100).as_deref(), Some("a.test"));
        assert_eq!(s.pop_due(100).as_deref(), Some("p.test"));
        assert_eq!(s.next(), Some(500));
        assert_eq!(s.at.len(), 1, "an idle record is not scheduled");
    }
}
