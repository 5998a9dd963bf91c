//! The schedule: when each wanted certificate's plan next has work. The due times are a column
//! of the reconciler's table of ids ([`Ids`]: earliest first, at most one per certificate).

use haproxy_acme_state::{plan_with_alerts, Plan, Record, UnixTime};

use super::ids::{Handle, Ids, SharedIds};

/// When a record's plan next has work; `None`: nothing to do until something changes (an
/// event, the configuration).
pub(super) fn due_of(r: &Record, now: UnixTime) -> Option<UnixTime> {
    match plan_with_alerts(r, now) {
        Plan::Now(_) => Some(now),
        Plan::At(t) => Some(t),
        Plan::Idle => None,
    }
}

/// A wanted certificate and when its plan next has work.
pub(super) struct Wanted {
    /// Its id in the reconciler's table ([`Ids`]), kept live by its spec digest.
    pub(super) id: Handle,
    pub(super) due: Option<UnixTime>,
}

/// Marks each certificate wanted and schedules it at the time its plan says (never an idle one).
pub(super) fn schedule_wanted(ids: &mut Ids, wanted: &[Wanted]) {
    for w in wanted {
        ids.want(w.id);
        ids.set_due(w.id, w.due);
    }
}

/// [`schedule_wanted`] a few thousand at a time under the table's lock, so that a task's
/// commit never waits for a whole set.
pub(super) fn schedule_all(ids: &SharedIds, wanted: Vec<Wanted>) {
    for chunk in wanted.chunks(4096) {
        schedule_wanted(&mut ids.lock(), chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haproxy_acme_state::{FailureKind, Step};

    #[test]
    fn records_are_scheduled_by_their_plan() {
        let mut s = Ids::default();
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
        let wanted: Vec<Wanted> = records
            .iter()
            .map(|r| Wanted {
                id: s.set_spec(&r.id, super::super::ids::digest(1)),
                due: due_of(r, 100),
            })
            .collect();
        schedule_wanted(&mut s, &wanted);
        assert_eq!(s.wanted(), 4);
        let mut now = [s.pop_due(100), s.pop_due(100)];
        now.sort();
        assert_eq!(now, [Some("a.test".into()), Some("p.test".into())]);
        assert_eq!(s.next_due(), Some(500));
        assert_eq!(s.pop_due(500).as_deref(), Some("w.test"));
        assert_eq!(s.next_due(), None, "an idle record is not scheduled");
    }
}
