//! A certificate's summary: the few facts of a record that `status` and the per-certificate
//! gauges of `/metrics` show, small enough to keep one per certificate in memory (the daemon's
//! view, so those screens never read the store). Both screens are built from summaries only, so
//! a screen from the view and one from the records cannot differ.

use crate::attention::{expiring_at, failing, Condition};
use crate::dump::human;
use crate::{ChallengeType, Phase, Record, Step, UnixTime};

/// What `status` and `/metrics` need of one record (its id is the key it is kept under).
/// The daemon keeps one per certificate, so it is small (48 bytes): times without an `Option`'s
/// word each, and what few records have (a profile, a failure, a deploy hook's error) behind
/// one pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Names beyond the id.
    pub more_names: u32,
    pub phase: Phase,
    pub challenge: ChallengeType,
    pub unconfigured: bool,
    /// The stored certificate is the one HAProxy was last confirmed to serve.
    pub installed: bool,
    /// [`crate::attention::failing`] of the record.
    pub failing: bool,
    /// A drift found and not repaired yet (the `not-served` condition).
    pub not_served: bool,
    not_after: When,
    renew_at: When,
    expiring_at: When,
    rare: Option<Box<Rare>>,
}

/// A time or none, in one word: `i64::MIN` (before any certificate's time) is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct When(i64);

impl When {
    fn of(t: Option<UnixTime>) -> When {
        When(t.unwrap_or(i64::MIN))
    }

    fn get(self) -> Option<UnixTime> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

/// The parts of a summary that most certificates do not have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rare {
    profile: Option<Box<str>>,
    failure: Option<FailureSummary>,
    hook_error: Option<Box<str>>,
}

/// The recorded failure, as `status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSummary {
    pub step: Step,
    pub kind: crate::FailureKind,
    pub error: Box<str>,
    pub attempts: u32,
    pub next_attempt_at: Option<UnixTime>,
}

impl Summary {
    pub fn from_record(r: &Record) -> Summary {
        let rare = Rare {
            profile: r.profile.as_deref().map(Box::from),
            failure: r.failure.as_ref().map(|f| FailureSummary {
                step: f.step,
                kind: f.kind,
                error: f.error.as_str().into(),
                attempts: f.attempts,
                next_attempt_at: f.next_attempt_at,
            }),
            hook_error: r
                .hook
                .as_ref()
                .and_then(|h| h.error.as_deref())
                .map(Box::from),
        };
        Summary {
            more_names: r.names.len().saturating_sub(1) as u32,
            phase: r.phase(),
            challenge: r.challenge,
            unconfigured: r.unconfigured,
            installed: r.is_installed(),
            failing: failing(r),
            not_served: r.drift.as_ref().is_some_and(|d| d.repaired_at.is_none()),
            not_after: When::of(r.cert.as_ref().map(|c| c.not_after)),
            renew_at: When::of(r.renew_at),
            expiring_at: When::of(expiring_at(r)),
            rare: (rare != Rare::default()).then(|| Box::new(rare)),
        }
    }

    /// An issued, installed certificate's summary (the screens' tests build many).
    #[cfg(test)]
    pub(crate) fn issued(
        not_after: UnixTime,
        renew_at: UnixTime,
        expiring_at: UnixTime,
        failure: Option<FailureSummary>,
    ) -> Summary {
        Summary {
            more_names: 0,
            phase: Phase::Issued,
            challenge: Default::default(),
            unconfigured: false,
            installed: true,
            failing: failure.is_some(),
            not_served: false,
            not_after: When::of(Some(not_after)),
            renew_at: When::of(Some(renew_at)),
            expiring_at: When::of(Some(expiring_at)),
            rare: failure.map(|f| {
                Box::new(Rare {
                    failure: Some(f),
                    ..Rare::default()
                })
            }),
        }
    }

    /// Sets the times (the screens' tests).
    #[cfg(test)]
    pub(crate) fn set_times(
        &mut self,
        not_after: Option<UnixTime>,
        renew_at: Option<UnixTime>,
        expiring_at: Option<UnixTime>,
    ) {
        self.not_after = When::of(not_after);
        self.renew_at = When::of(renew_at);
        self.expiring_at = When::of(expiring_at);
    }

    /// The stored certificate's `not_after`.
    pub fn not_after(&self) -> Option<UnixTime> {
        self.not_after.get()
    }

    pub fn renew_at(&self) -> Option<UnixTime> {
        self.renew_at.get()
    }

    /// [`crate::attention::expiring_at`] of the record.
    pub fn expiring_at(&self) -> Option<UnixTime> {
        self.expiring_at.get()
    }

    /// The certificate's own ACME profile.
    pub fn profile(&self) -> Option<&str> {
        self.rare.as_ref()?.profile.as_deref()
    }

    pub fn failure(&self) -> Option<&FailureSummary> {
        self.rare.as_ref()?.failure.as_ref()
    }

    /// Why the deploy hook's last run failed.
    pub fn hook_error(&self) -> Option<&str> {
        self.rare.as_ref()?.hook_error.as_deref()
    }

    /// [`crate::attention::conditions`] of the record at `now`.
    pub fn conditions(&self, now: UnixTime) -> Vec<Condition> {
        self.conditions_at(now).collect()
    }

    /// [`Summary::conditions`] without a vector, for a pass over every certificate.
    pub fn conditions_at(&self, now: UnixTime) -> impl Iterator<Item = Condition> {
        let on = !self.unconfigured;
        [
            (Condition::Failing, self.failing),
            (
                Condition::Expiring,
                self.expiring_at().is_some_and(|t| t <= now),
            ),
            (Condition::NotServed, self.not_served),
        ]
        .into_iter()
        .filter_map(move |(c, yes)| (on && yes).then_some(c))
    }

    /// Whether the certificate has a condition at `now` (needs an operator).
    pub fn needs_attention(&self, now: UnixTime) -> bool {
        self.conditions_at(now).next().is_some()
    }

    /// Served by HAProxy: the stored certificate, installed and unexpired at `now`.
    pub fn served(&self, now: UnixTime) -> bool {
        self.installed && self.not_after().is_some_and(|t| t > now)
    }

    /// The `status` line's cells: more names, phase, via, expires in, renews in, last error.
    pub(super) fn cells(&self, id: &str, now: UnixTime) -> [String; 7] {
        let expires = self.not_after().map_or("-".into(), |not_after| {
            let left = not_after - now;
            if left < 0 {
                format!("EXPIRED {}", human(left))
            } else {
                human(left)
            }
        });
        let renews = match (self.phase, self.renew_at()) {
            _ if self.unconfigured => "never (not configured)".into(),
            (Phase::Issued, Some(t)) if t > now => human(t - now),
            (Phase::Issued, Some(_)) | (Phase::Expiring, _) => "now".into(),
            (Phase::Pending | Phase::Validating, _) => "-".into(),
            (Phase::Issued, None) => "-".into(),
        };
        let error = self.failure().map_or(String::new(), |f| {
            let next = f.next_attempt_at.map_or("no retry until told".into(), |t| {
                if t > now {
                    format!("retry in {}", human(t - now))
                } else {
                    "retrying".into()
                }
            });
            format!(
                "{} {} ({next}): {}",
                f.step.as_str(),
                f.kind.as_str(),
                f.error
            )
        });
        let error = match self.hook_error() {
            Some(h) if error.is_empty() => format!("deploy-hook: {h}"),
            _ => error,
        };
        let names = if self.more_names > 0 {
            format!("+{}", self.more_names)
        } else {
            String::new()
        };
        let via = match self.profile() {
            Some(p) => format!("{}/{p}", self.challenge.as_str()),
            None => self.challenge.as_str().to_string(),
        };
        [
            id.to_string(),
            names,
            self.phase.as_str().into(),
            via,
            expires,
            renews,
            error,
        ]
    }
}

/// The `status` screen of `summaries`, given in id order (see [`crate::dump::status_table`]).
pub fn status_table_of<'a>(
    summaries: impl IntoIterator<Item = (&'a str, &'a Summary)>,
    now: UnixTime,
    color: bool,
) -> String {
    let rows: Vec<[String; 7]> = summaries
        .into_iter()
        .map(|(id, s)| s.cells(id, now))
        .collect();
    let header = [
        "ID",
        "MORE",
        "PHASE",
        "VIA",
        "EXPIRES IN",
        "RENEWS IN",
        "LAST ERROR",
    ]
    .map(String::from);
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, row) in std::iter::once(&header).chain(rows.iter()).enumerate() {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(6) {
            line.push_str(&format!("{:w$}  ", cell, w = widths[i]));
        }
        line.push_str(&row[6]);
        let line = line.trim_end().to_string();
        let paint = |code: &str| format!("\x1b[{code}m{line}\x1b[0m");
        let line = match (color, n) {
            (false, _) => line,
            (true, 0) => paint("1"),
            (true, _) if !row[6].is_empty() => paint("31"),
            (true, _) if row[2] != "issued" => paint("33"),
            (true, _) => line,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{apply, Event};
    use crate::{CertMeta, KeyType};

    /// An installed certificate of `lifetime` seconds issued at 0, from a CA without renewal
    /// information (the lifetime rule).
    fn issued(lifetime: i64) -> Record {
        let r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 0);
        let meta = CertMeta {
            serial: "0A1B".into(),
            not_before: 0,
            not_after: lifetime,
            fingerprint: "f".into(),
            issued_at: 0,
        };
        [
            Event::OrderCreated { url: "u".into() },
            Event::CertificateStored { meta },
            Event::Installed {
                fingerprint: "f".into(),
            },
            Event::RenewalInfoUnavailable { retry_at: None },
        ]
        .into_iter()
        .fold(r, |r, e| apply(&r, e, 0))
    }

    /// `/metrics` in attention mode writes the expiry gauge only of certificates with a
    /// condition: an alert on `expiry - time() < N days` still fires for every configured
    /// certificate, whose renewal is overdue once about a third of its lifetime is left (the
    /// lifetime rule), if N is less than that: 7 days for 90- and 45-day certificates, the shipped 2 days
    /// for Let's Encrypt's 160-hour `shortlived` ones. And an expired one always has it.
    #[test]
    fn an_expiring_certificate_has_the_expiring_condition_in_time_for_an_expiry_alert() {
        let day = 86_400;
        for (lifetime, alert_days) in [(90 * day, 7), (45 * day, 7), (160 * 3600, 2)] {
            let s = Summary::from_record(&issued(lifetime));
            assert!(!s.needs_attention(0), "a new certificate needs none");
            // From a third of the lifetime left, or 1 % of it after a renewal time drawn up to a
            // thirtieth earlier than two thirds in.
            let (from, latest) = (
                lifetime - lifetime / 3,
                lifetime - lifetime / 3 + lifetime / 100,
            );
            assert!(s
                .expiring_at()
                .is_some_and(|t| (from..=latest).contains(&t)));
            assert!(!s.needs_attention(from - 1));
            assert!(lifetime - latest >= alert_days * day);
            let window = (lifetime - alert_days * day)..=(lifetime + 400 * day);
            for now in window.step_by(3600) {
                assert_eq!(
                    s.conditions(now),
                    vec![Condition::Expiring],
                    "lifetime {lifetime}, {} s before expiry",
                    lifetime - now
                );
                assert!(s.conditions_at(now).eq(s.conditions(now)));
            }
        }
        // No longer configured: kept, not renewed, never a condition (nor an expiry series).
        let mut gone = issued(90 * day);
        gone.unconfigured = true;
        assert!(!Summary::from_record(&gone).needs_attention(100 * day));
    }

    #[test]
    fn a_summary_has_the_conditions_of_its_record() {
        for r in crate::fixtures::records() {
            let s = Summary::from_record(&r);
            for now in [0, 1000, 1000 + 70 * 86_400, 1000 + 200 * 86_400] {
                assert_eq!(
                    s.conditions(now),
                    crate::attention::conditions(&r, now),
                    "{}",
                    r.id
                );
            }
        }
    }

    /// The daemon keeps one summary per certificate: 48 bytes (at 1,000,000 certificates the
    /// 112 of a summary of `Option`s were ~64 MiB more), and what it reads back is the record's.
    #[test]
    fn a_summary_is_small_and_keeps_what_it_was_made_of() {
        assert!(std::mem::size_of::<Summary>() <= 48);
        for r in crate::fixtures::records() {
            let s = Summary::from_record(&r);
            assert_eq!(
                s.not_after(),
                r.cert.as_ref().map(|c| c.not_after),
                "{}",
                r.id
            );
            assert_eq!(s.renew_at(), r.renew_at, "{}", r.id);
            assert_eq!(s.expiring_at(), expiring_at(&r), "{}", r.id);
            assert_eq!(s.profile(), r.profile.as_deref(), "{}", r.id);
            assert_eq!(
                s.failure()
                    .map(|f| (&*f.error, f.attempts, f.next_attempt_at)),
                r.failure
                    .as_ref()
                    .map(|f| (f.error.as_str(), f.attempts, f.next_attempt_at)),
                "{}",
                r.id
            );
            assert_eq!(
                s.hook_error(),
                r.hook.as_ref().and_then(|h| h.error.as_deref()),
                "{}",
                r.id
            );
        }
    }
}
