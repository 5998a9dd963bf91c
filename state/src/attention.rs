//! Which certificates need an operator, now that CAs no longer send expiry e-mail: the
//! conditions (`failing`, `expiring`, `not-served`), the alert step the reconciler takes when a
//! certificate's conditions change ([`plan_with_alerts`]), and the `status --check` report.
//!
//! The alert step is planned from the record alone (its conditions now against those last
//! alerted, [`Record::alert`]), so it runs once per transition, survives restarts without
//! alerting again, and a transition that happened while the daemon was down is told at start.

use serde::{Deserialize, Serialize};

use crate::dump::{human, rfc3339, Waiting};
use crate::machine::{plan, Action, Plan};
use crate::timing::renewal_time_of;
use crate::{Record, Step, UnixTime};

/// Why a certificate needs an operator's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Its last step (issuance, renewal or install) failed and the failure is not a passing
    /// blip (see [`failing`]).
    Failing,
    /// Less than a third of its lifetime is left and its renewal is overdue (see
    /// [`expiring_at`]), or it has expired.
    Expiring,
    /// The watchdog found HAProxy (or the certificate file) holding another certificate, and
    /// the stored one is not confirmed served again yet.
    NotServed,
}

impl Condition {
    /// Every condition, in declaration order (`condition as usize` is its index).
    pub const ALL: [Condition; 3] = [
        Condition::Failing,
        Condition::Expiring,
        Condition::NotServed,
    ];

    /// The spelling of the dump, the metrics' `condition` label and `ALERT_CONDITIONS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Failing => "failing",
            Condition::Expiring => "expiring",
            Condition::NotServed => "not-served",
        }
    }
}

/// Whether two serials (upper- or lower-case hex) are the same number: leading zeros are
/// spelling (HAProxy prints the serial's bytes; one may start with a `0` digit).
pub fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0')
        .eq_ignore_ascii_case(b.trim_start_matches('0'))
}

/// A retryable failure is a `failing` condition only from this many attempts in a row: the
/// first failures after a CA restart, a network blip or a HAProxy reload heal on their own in
/// seconds (backoff 2-5 s, then 5-10 s), and an alert hook must not page for them.
pub const FAILING_AFTER_ATTEMPTS: u32 = 3;

/// Whether `r`'s recorded failure is a `failing` condition: one the step will not get over on
/// its own soon (permanent, rate-limited), a retryable one that failed
/// [`FAILING_AFTER_ATTEMPTS`] times in a row, or any failure while `failing` is what was last
/// alerted (so a `retry` that fails again is no "ok" followed by "failing").
pub fn failing(r: &Record) -> bool {
    r.failure.as_ref().is_some_and(|f| {
        f.kind != crate::FailureKind::Retryable
            || f.attempts >= FAILING_AFTER_ATTEMPTS
            || alerted(r).contains(&Condition::Failing)
    })
}

/// When the stored certificate starts to need attention for its expiry: once less than a third
/// of its lifetime is left *and* its renewal time passed more than 1 % of the lifetime ago (a
/// renewal that happens on time never raises it: the lifetime rule renews at two thirds), and
/// at the latest when it expires. `None` without a certificate.
pub fn expiring_at(r: &Record) -> Option<UnixTime> {
    let c = r.cert.as_ref()?;
    let lifetime = (c.not_after - c.not_before).max(0);
    let renew = r.renew_at.unwrap_or_else(|| renewal_time_of(c));
    let third_left = c.not_after - lifetime / 3;
    Some(third_left.max(renew + lifetime / 100).min(c.not_after))
}

/// The conditions of `r` at `now`, in a fixed order; empty when it needs no attention. A
/// certificate no longer configured needs none (it is kept, not renewed).
pub fn conditions(r: &Record, now: UnixTime) -> Vec<Condition> {
    let mut found = Vec::new();
    if r.unconfigured {
        return found;
    }
    if failing(r) {
        found.push(Condition::Failing);
    }
    if expiring_at(r).is_some_and(|t| t <= now) {
        found.push(Condition::Expiring);
    }
    if r.drift.as_ref().is_some_and(|d| d.repaired_at.is_none()) {
        found.push(Condition::NotServed);
    }
    found
}

/// The conditions the alert step last ran for (none if it never ran).
pub fn alerted(r: &Record) -> &[Condition] {
    r.alert.as_ref().map_or(&[], |a| a.conditions.as_slice())
}

/// `plan`, with the alert step folded in: what the reconciler follows. Installing the stored
/// certificate comes first (a drift repaired at once needs no alert). Then `Alert` when the
/// conditions differ from those last alerted: at once when one is new; when some only went
/// away, once the record has nothing to do now (a `retry` clears the failure, but the
/// certificate is fine only if the steps it starts succeed: no "ok" followed by the same
/// failure). A record waiting for a time wakes up when its expiry starts to need attention.
pub fn plan_with_alerts(r: &Record, now: UnixTime) -> Plan {
    let p = plan(r, now);
    if r.unconfigured || matches!(p, Plan::Now(Action::Install { .. })) {
        return p;
    }
    let conditions = conditions(r, now);
    let last = alerted(r);
    let gained = conditions.iter().any(|c| !last.contains(c));
    if conditions != last && (gained || !matches!(p, Plan::Now(_))) {
        return Plan::Now(Action::Alert { conditions });
    }
    match (p, expiring_at(r).filter(|&t| t > now)) {
        (Plan::At(t), Some(c)) => Plan::At(t.min(c)),
        (Plan::Idle, Some(c)) => Plan::At(c),
        (p, _) => p,
    }
}

/// One line per condition of `r` at `now`: what is wrong, in words (no key material: records
/// hold none).
pub fn problems(r: &Record, now: UnixTime) -> Vec<(Condition, String)> {
    conditions(r, now)
        .into_iter()
        .map(|c| (c, describe(r, c, now)))
        .collect()
}

fn describe(r: &Record, c: Condition, now: UnixTime) -> String {
    match c {
        Condition::Failing => {
            let Some(f) = &r.failure else {
                return "failing".into();
            };
            let what = match (&r.cert, f.step) {
                (None, _) => "issuance",
                (Some(_), Step::Install) => "install",
                (Some(_), _) => "renewal",
            };
            let next = match f.next_attempt_at {
                None => format!("no retry until `retry {}`", r.id),
                Some(t) if t > now => format!("retry in {}", human(t - now)),
                Some(_) => "retrying".into(),
            };
            let plural = if f.attempts == 1 { "" } else { "s" };
            format!(
                "{what} failing: {} {} after {} attempt{plural} ({next}): {}",
                f.step.as_str(),
                f.kind.as_str(),
                f.attempts,
                f.error
            )
        }
        Condition::Expiring => {
            let Some(cert) = &r.cert else {
                return "expiring".into();
            };
            let left = cert.not_after - now;
            if left <= 0 {
                format!("EXPIRED {} ({})", human(left), rfc3339(cert.not_after))
            } else {
                let due = r.renew_at.unwrap_or_else(|| renewal_time_of(cert));
                let due = if due <= now {
                    format!("renewal due {}", human(due - now))
                } else {
                    format!("renewal due in {}", human(due - now))
                };
                format!(
                    "expires in {} ({}): less than a third of its lifetime left, {due}",
                    human(left),
                    rfc3339(cert.not_after),
                )
            }
        }
        Condition::NotServed => {
            let serial = |s: &Option<String>| {
                s.as_deref()
                    .map_or_else(|| "no certificate".to_string(), |s| format!("serial {s}"))
            };
            let (served, file, at) = r.drift.as_ref().map_or((None, None, now), |d| {
                (d.served.clone(), d.file.clone(), d.at)
            });
            format!(
                "served ≠ stored: HAProxy served {}, the file held {}, the stored certificate is \
                 serial {} (found {}; installing it again)",
                serial(&served),
                serial(&file),
                r.cert.as_ref().map_or("-", |c| c.serial.as_str()),
                human(at - now)
            )
        }
    }
}

/// The first word of every `status --check` report.
pub const CHECK_PREFIX: &str = "HAPROXY-ACME";

/// The `status --check` report: a Nagios-style first line (`HAPROXY-ACME OK|WARNING|UNKNOWN -
/// ... | perfdata`), then one line per problem, `<id>: <problem>`, sorted by id.
pub fn check_report<'a>(records: impl IntoIterator<Item = &'a Record>, now: UnixTime) -> String {
    let records: Vec<&Record> = records.into_iter().filter(|r| !r.unconfigured).collect();
    check_report_of(records.len(), records, now)
}

/// [`check_report`] of `configured` certificates (not counting those no longer configured) of
/// which only `records` may need attention: the others are known to need none (the daemon's
/// view of their summaries said so), so only these are read whole.
pub fn check_report_of<'a>(
    configured: usize,
    records: impl IntoIterator<Item = &'a Record>,
    now: UnixTime,
) -> String {
    let mut records: Vec<&Record> = records.into_iter().filter(|r| !r.unconfigured).collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let mut lines = Vec::new();
    let mut ids = Vec::new();
    for r in &records {
        let found = problems(r, now);
        if !found.is_empty() {
            ids.push(r.id.as_str());
        }
        lines.extend(found.into_iter().map(|(_, p)| format!("{}: {p}", r.id)));
    }
    let n = configured;
    let perf = format!("| certificates={n} attention={}", ids.len());
    let first = if n == 0 {
        format!("{CHECK_PREFIX} UNKNOWN - no configured certificate in the store {perf}")
    } else if ids.is_empty() {
        format!("{CHECK_PREFIX} OK - {n} certificates, none needs attention {perf}")
    } else {
        let verb = if ids.len() == 1 { "needs" } else { "need" };
        format!(
            "{CHECK_PREFIX} WARNING - {} of {n} certificates {verb} attention: {} {perf}",
            ids.len(),
            ids.join(", ")
        )
    };
    std::iter::once(first)
        .chain(lines)
        .map(|l| l + "\n")
        .collect()
}

/// How long the daemon may wait for a part (the store, the certificate directory, HAProxy's
/// runtime API, the CA) before `status --check` warns: a CA or HAProxy restart is routine, a
/// disk full for five minutes is not.
pub const WAIT_GRACE: i64 = 300;

/// `check_report` of the running daemon: also a warning when it has been waiting for a part
/// longer than [`WAIT_GRACE`], one line per part (`daemon: waiting for ...`).
pub fn check_report_waiting<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    waiting: &[Waiting],
    now: UnixTime,
) -> String {
    with_waiting(check_report(records, now), waiting, now)
}

/// `report` (a [`check_report`]) with what the daemon has waited for longer than
/// [`WAIT_GRACE`] (see [`check_report_waiting`]).
pub fn with_waiting(report: String, waiting: &[Waiting], now: UnixTime) -> String {
    let long: Vec<&Waiting> = waiting
        .iter()
        .filter(|w| now - w.since >= WAIT_GRACE)
        .collect();
    if long.is_empty() {
        return report;
    }
    let mut lines = report.lines();
    let first = lines.next().unwrap_or("");
    let parts: Vec<&str> = long.iter().map(|w| w.part).collect();
    let waits = format!("the daemon waits for {}", parts.join(", "));
    let first = match first.strip_prefix(&format!("{CHECK_PREFIX} OK - ")) {
        Some(rest) => format!("{CHECK_PREFIX} WARNING - {waits}; {rest}"),
        None => match first.strip_prefix(&format!("{CHECK_PREFIX} WARNING - ")) {
            Some(rest) => format!("{CHECK_PREFIX} WARNING - {waits}; {rest}"),
            None => first.to_string(),
        },
    };
    let waited = long.iter().map(|w| {
        format!(
            "daemon: waiting for {} for {}: {}",
            w.what,
            human(now - w.since),
            w.error
        )
    });
    std::iter::once(first)
        .chain(waited)
        .chain(lines.map(String::from))
        .map(|l| l + "\n")
        .collect()
}

/// The exit code a report stands for: 0 OK, 1 WARNING (attention needed), 3 anything else
/// (UNKNOWN: not a report, no certificate).
pub fn check_exit_code(report: &str) -> u8 {
    let first = report.lines().next().unwrap_or("");
    match first.strip_prefix(CHECK_PREFIX).map(str::trim_start) {
        Some(rest) if rest.starts_with("OK ") => 0,
        Some(rest) if rest.starts_with("WARNING ") => 1,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{apply, Event, FailureReport};
    use crate::{CertMeta, FailureKind, KeyType};

    const T0: UnixTime = 1_700_000_000;
    const DAY: i64 = 86_400;

    /// An installed 90-day certificate from a CA without renewal information (renews at day 60).
    fn installed(id: &str) -> Record {
        let r = Record::new(vec![id.into()], KeyType::EcdsaP256, T0);
        let events = [
            Event::OrderCreated { url: "u".into() },
            Event::CertificateStored {
                meta: CertMeta {
                    serial: "0A1B".into(),
                    not_before: T0,
                    not_after: T0 + 90 * DAY,
                    fingerprint: format!("{id}-f"),
                    issued_at: T0,
                },
            },
            Event::Installed {
                fingerprint: format!("{id}-f"),
            },
            Event::RenewalInfoUnavailable { retry_at: None },
        ];
        events.into_iter().fold(r, |r, e| apply(&r, e, T0))
    }

    fn failed(kind: FailureKind) -> Event {
        Event::Failed(FailureReport {
            step: Step::Order,
            kind,
            error: "rejectedIdentifier".into(),
            retry_after: None,
            jitter_permille: 1000,
            order_dead: false,
        })
    }

    /// `r` after a step failed `n` times in a row.
    fn failed_times(r: &Record, kind: FailureKind, n: u32, now: UnixTime) -> Record {
        (0..n).fold(r.clone(), |r, _| apply(&r, failed(kind), now))
    }

    /// Follows `plan_with_alerts` like the reconciler does for the alert step only.
    fn alert_due(r: &Record, now: UnixTime) -> Option<Vec<Condition>> {
        match plan_with_alerts(r, now) {
            Plan::Now(Action::Alert { conditions }) => Some(conditions),
            _ => None,
        }
    }

    fn alerted_now(r: &Record, now: UnixTime) -> Record {
        let conditions = alert_due(r, now).expect("an alert is due");
        apply(r, Event::Alerted { conditions }, now)
    }

    #[test]
    fn expiry_needs_attention_only_when_the_renewal_is_overdue() {
        let r = installed("a.test");
        // Day 60, brought forward by serial 0A1B's spread (`timing::renewal_spread`).
        let renew = T0 + 60 * DAY - 0x0A1B;
        assert_eq!(r.renew_at, Some(renew));
        let at = expiring_at(&r).unwrap();
        assert_eq!(at, renew + 90 * DAY / 100, "a third left, and 1 % late");
        assert!(conditions(&r, at - 1).is_empty());
        assert_eq!(conditions(&r, at), vec![Condition::Expiring]);
        // A renewal window later than two thirds (ARI) moves it; expiry itself is the limit.
        let mut late = r.clone();
        late.renew_at = Some(T0 + 80 * DAY);
        assert_eq!(expiring_at(&late), Some(T0 + 80 * DAY + 90 * DAY / 100));
        late.renew_at = Some(T0 + 200 * DAY);
        assert_eq!(expiring_at(&late), Some(T0 + 90 * DAY));
        // A short-lived certificate renews at half its life: attention at a third left.
        let mut short = r.clone();
        let c = short.cert.as_mut().unwrap();
        c.not_after = T0 + 6 * DAY;
        short.renew_at = Some(T0 + 3 * DAY);
        assert_eq!(expiring_at(&short), Some(T0 + 4 * DAY));
        // Not configured: kept, not renewed, no attention.
        let gone = apply(&r, Event::Unconfigured, T0);
        assert!(conditions(&gone, T0 + 100 * DAY).is_empty());
        assert!(expiring_at(&Record::new(vec!["p.test".into()], KeyType::EcdsaP256, T0)).is_none());
    }

    #[test]
    fn the_alert_step_runs_once_per_transition() {
        let r = installed("a.test");
        assert_eq!(
            alert_due(&r, T0),
            None,
            "a healthy certificate never alerts"
        );
        // A record that waits for its renewal wakes when its expiry needs attention.
        assert_eq!(plan_with_alerts(&r, T0), Plan::At(T0 + 60 * DAY - 0x0A1B));
        let r = apply(&r, failed(FailureKind::Permanent), T0 + DAY);
        assert_eq!(plan(&r, T0 + DAY), Plan::Idle);
        assert_eq!(alert_due(&r, T0 + DAY), Some(vec![Condition::Failing]));
        let r = alerted_now(&r, T0 + DAY);
        assert_eq!(alert_due(&r, T0 + DAY), None, "told once");
        let expiring = expiring_at(&r).unwrap();
        assert_eq!(
            plan_with_alerts(&r, T0 + DAY),
            Plan::At(expiring),
            "an idle record wakes when its expiry needs attention"
        );
        assert_eq!(
            alert_due(&r, expiring),
            Some(vec![Condition::Failing, Condition::Expiring]),
            "a new condition is a new transition"
        );
        let r = alerted_now(&r, expiring);
        let json = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(
            alert_due(&back, expiring + 1),
            None,
            "a restart does not alert again"
        );
        // The operator's retry clears the failure; the expiry still needs attention.
        let r = apply(&r, Event::Retry, expiring + 2);
        assert_eq!(alert_due(&r, expiring + 2), Some(vec![Condition::Expiring]));
        let r = alerted_now(&r, expiring + 2);
        // A new certificate: out of attention, told once.
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, expiring + 3);
        let mut meta = r.cert.clone().unwrap();
        meta.fingerprint = "f2".into();
        meta.not_before = expiring + 3;
        meta.not_after = expiring + 3 + 90 * DAY;
        let r = apply(&r, Event::CertificateStored { meta }, expiring + 3);
        assert!(
            matches!(
                plan_with_alerts(&r, expiring + 3),
                Plan::Now(Action::Install { .. })
            ),
            "installing comes first"
        );
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f2".into(),
            },
            expiring + 4,
        );
        assert_eq!(alert_due(&r, expiring + 4), None, "not while work is due");
        let r = apply(
            &r,
            Event::RenewalInfoUnavailable { retry_at: None },
            expiring + 4,
        );
        assert_eq!(alert_due(&r, expiring + 4), Some(vec![]));
        let r = alerted_now(&r, expiring + 4);
        assert_eq!(alert_due(&r, expiring + 4), None);
        assert_eq!(r.alert.as_ref().unwrap().at, expiring + 4);
    }

    #[test]
    fn a_retry_that_fails_again_is_no_transition_one_that_succeeds_is() {
        let r = Record::new(vec!["b.test".into()], KeyType::EcdsaP256, T0);
        let r = apply(&r, Event::OrderCreated { url: "u".into() }, T0);
        // The first failures of a retryable step are no condition: they heal on their own.
        let once = apply(&r, failed(FailureKind::Retryable), T0);
        assert!(conditions(&once, T0).is_empty());
        assert_eq!(alert_due(&once, T0), None);
        let r = failed_times(&r, FailureKind::Retryable, FAILING_AFTER_ATTEMPTS, T0);
        let r = alerted_now(&r, T0);
        assert_eq!(alerted(&r), [Condition::Failing]);
        let r = apply(&r, Event::Retry, T0 + 1);
        assert!(conditions(&r, T0 + 1).is_empty());
        assert!(
            matches!(
                plan_with_alerts(&r, T0 + 1),
                Plan::Now(Action::DriveOrder { .. })
            ),
            "the retried step first"
        );
        let again = apply(&r, failed(FailureKind::Retryable), T0 + 2);
        assert_eq!(
            alert_due(&again, T0 + 2),
            None,
            "failing still: nothing to tell"
        );
        let r = apply(
            &r,
            Event::CertificateStored {
                meta: CertMeta {
                    serial: "01".into(),
                    not_before: T0,
                    not_after: T0 + 90 * DAY,
                    fingerprint: "f".into(),
                    issued_at: T0,
                },
            },
            T0 + 3,
        );
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f".into(),
            },
            T0 + 3,
        );
        assert!(matches!(
            plan_with_alerts(&r, T0 + 3),
            Plan::Now(Action::CheckRenewalInfo)
        ));
        let r = apply(&r, Event::RenewalInfoUnavailable { retry_at: None }, T0 + 4);
        assert_eq!(
            alert_due(&r, T0 + 4),
            Some(vec![]),
            "settled: it no longer needs attention"
        );
    }

    #[test]
    fn a_drift_repaired_at_once_needs_no_alert_one_that_fails_does() {
        let r = installed("a.test");
        let r = apply(
            &r,
            Event::Drifted {
                serial: "A1B".into(),
                served: None,
                file: Some("0A1B".into()),
            },
            T0 + 5,
        );
        assert_eq!(conditions(&r, T0 + 5), vec![Condition::NotServed]);
        assert!(matches!(
            plan_with_alerts(&r, T0 + 5),
            Plan::Now(Action::Install { .. })
        ));
        let repaired = apply(
            &r,
            Event::Installed {
                fingerprint: "a.test-f".into(),
            },
            T0 + 6,
        );
        assert_eq!(alert_due(&repaired, T0 + 6), None);
        let install_failed = Event::Failed(FailureReport {
            step: Step::Install,
            kind: FailureKind::Retryable,
            error: "cannot write".into(),
            retry_after: None,
            jitter_permille: 0,
            order_dead: false,
        });
        let once = apply(&r, install_failed.clone(), T0 + 6);
        assert_eq!(conditions(&once, T0 + 6), [Condition::NotServed]);
        // Tried again as soon as the directory works: the attempts still count.
        let once = apply(&once, Event::RetryNow, T0 + 7);
        assert_eq!(
            once.failure.as_ref().map(|f| f.next_attempt_at),
            Some(Some(T0 + 7))
        );
        let broken = (1..FAILING_AFTER_ATTEMPTS)
            .fold(once, |r, _| apply(&r, install_failed.clone(), T0 + 6));
        assert_eq!(
            alert_due(&broken, T0 + 6),
            Some(vec![Condition::Failing, Condition::NotServed])
        );
        let text = problems(&broken, T0 + 6)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(
                "install failing: install retryable after 3 attempts (retry in 10s): cannot write"
            ),
            "{text}"
        );
        assert!(
            text.contains("HAProxy served no certificate, the file held serial 0A1B, the stored certificate is serial 0A1B"),
            "{text}"
        );
    }

    #[test]
    fn the_check_report_is_nagios_shaped() {
        let ok = installed("a.test");
        let report = check_report([&ok], T0);
        assert_eq!(
            report,
            "HAPROXY-ACME OK - 1 certificates, none needs attention | certificates=1 attention=0\n"
        );
        assert_eq!(check_exit_code(&report), 0);
        let failing = failed_times(
            &installed("b.test"),
            FailureKind::Retryable,
            FAILING_AFTER_ATTEMPTS,
            T0 + DAY,
        );
        let expired = installed("c.test");
        let gone = apply(&installed("d.test"), Event::Unconfigured, T0);
        let report = check_report([&failing, &expired, &ok, &gone], T0 + 91 * DAY);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "HAPROXY-ACME WARNING - 3 of 3 certificates need attention: a.test, b.test, c.test | certificates=3 attention=3"
        );
        assert_eq!(check_exit_code(&report), 1);
        assert!(
            lines[1].starts_with("a.test: EXPIRED 24h ago (2024-02-12T22:13:20Z)"),
            "{report}"
        );
        assert!(
            lines[2].starts_with("b.test: renewal failing: order retryable after 3 attempts (retrying): rejectedIdentifier"),
            "{report}"
        );
        assert!(lines[3].starts_with("b.test: EXPIRED"), "{report}");
        assert!(lines[4].starts_with("c.test: EXPIRED"), "{report}");
        assert_eq!(lines.len(), 5, "the unconfigured certificate is left out");
        // The daemon's way: the count and only the records its view says need attention.
        let healthy = installed("e.test");
        let all = [&failing, &expired, &ok, &gone, &healthy];
        let at = T0 + 30 * DAY;
        let needing: Vec<&Record> = all
            .iter()
            .copied()
            .filter(|r| !conditions(r, at).is_empty())
            .collect();
        assert_eq!(needing.len(), 1);
        assert_eq!(check_report_of(4, needing, at), check_report(all, at));
        assert_eq!(
            check_report_of(4, all, T0 + 91 * DAY),
            check_report(all, T0 + 91 * DAY)
        );
        let soon = check_report([&ok], T0 + 61 * DAY);
        assert!(
            soon.contains("a.test: expires in 29d (2024-02-12T22:13:20Z): less than a third of its lifetime left, renewal due 24h ago"),
            "{soon}"
        );
        let empty = check_report([&gone], T0);
        assert!(empty.starts_with("HAPROXY-ACME UNKNOWN - "));
        assert_eq!(check_exit_code(&empty), 3);
        assert_eq!(check_exit_code("error: no daemon"), 3);
    }

    #[test]
    fn a_long_wait_of_the_daemon_is_a_warning_a_short_one_is_not() {
        let r = installed("a.test");
        let waiting = |since| Waiting {
            part: "store",
            what: "the store (DATA_DIR)",
            since,
            error: "No space left on device".into(),
            error_at: T0 + DAY,
        };
        let now = T0 + DAY;
        let short = check_report_waiting([&r], &[waiting(now - 60)], now);
        assert_eq!(short, check_report([&r], now));
        assert_eq!(check_exit_code(&short), 0);
        let long = check_report_waiting([&r], &[waiting(now - WAIT_GRACE)], now);
        assert_eq!(check_exit_code(&long), 1, "{long}");
        assert!(
            long.starts_with("HAPROXY-ACME WARNING - the daemon waits for store; 1 certificates"),
            "{long}"
        );
        assert!(
            long.contains(
                "daemon: waiting for the store (DATA_DIR) for 5m: No space left on device"
            ),
            "{long}"
        );
    }
}
