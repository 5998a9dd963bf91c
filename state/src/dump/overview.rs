//! The `status` screen of many certificates, and the counts behind it and behind `/metrics`'
//! aggregate gauges ([`Tally`]), each from one pass over the certificates' summaries. Up to
//! [`TABLE_UP_TO`] certificates (or with `status --all`) the screen is the table of every one;
//! above, a summary: counts by phase, how many need attention, the rows of those (at most
//! [`ATTENTION_ROWS`]), the [`NEXT_RENEWALS`] next renewals due, and how to see the rest. A
//! table of 100,000 lines is 6 MiB that nobody reads.

use std::collections::BinaryHeap;

use crate::attention::Condition;
use crate::{Phase, UnixTime};

use super::summary::{status_table_of, Summary};

/// Up to this many certificates, `status` prints the table of every one.
pub const TABLE_UP_TO: usize = 100;
/// The summary lists at most this many certificates that need attention.
pub const ATTENTION_ROWS: usize = 50;
/// The summary lists this many of the next renewals due.
pub const NEXT_RENEWALS: usize = 5;

/// Certificates counted in one pass over their summaries at some `now`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub total: usize,
    /// By phase, indexed as [`Phase::ALL`].
    pub phases: [usize; 4],
    /// Kept but no longer configured (counted in their phase too).
    pub unconfigured: usize,
    /// Certificates with at least one condition.
    pub attention: usize,
    /// Certificates with each condition, indexed as [`Condition::ALL`].
    pub conditions: [usize; 3],
    /// The earliest expiry of a configured certificate's stored certificate (`None`: none
    /// has one).
    pub earliest_expiry: Option<UnixTime>,
}

impl Tally {
    /// Counts `s` at `now`; returns whether it needs attention.
    pub fn add(&mut self, s: &Summary, now: UnixTime) -> bool {
        self.total += 1;
        self.phases[s.phase as usize] += 1;
        if s.unconfigured {
            self.unconfigured += 1;
        } else if let Some(t) = s.not_after() {
            self.earliest_expiry = Some(self.earliest_expiry.map_or(t, |e| e.min(t)));
        }
        let mut needs = false;
        for c in s.conditions_at(now) {
            self.conditions[c as usize] += 1;
            needs = true;
        }
        self.attention += usize::from(needs);
        needs
    }

    /// The tally of `summaries` at `now`.
    pub fn of<'a>(summaries: impl IntoIterator<Item = &'a Summary>, now: UnixTime) -> Tally {
        let mut t = Tally::default();
        for s in summaries {
            t.add(s, now);
        }
        t
    }
}

/// A renewal due, ordered by time then id (the heap of the next ones keeps the earliest).
struct Due<'a> {
    at: UnixTime,
    id: &'a str,
    summary: &'a Summary,
}

impl PartialEq for Due<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}

impl Eq for Due<'_> {}

impl PartialOrd for Due<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.id).cmp(&(other.at, other.id))
    }
}

/// The `status` screen of `summaries` (in id order) at `now`: the table of every certificate
/// when `all` or when there are at most [`TABLE_UP_TO`], else the summary (see the module).
pub fn status_screen<'a>(
    summaries: impl Iterator<Item = (&'a str, &'a Summary)> + Clone,
    now: UnixTime,
    color: bool,
    all: bool,
) -> String {
    if all {
        return status_table_of(summaries, now, color);
    }
    let mut tally = Tally::default();
    let mut attention = Vec::new();
    // The next renewals: a max-heap of the earliest NEXT_RENEWALS seen so far.
    let mut next = BinaryHeap::with_capacity(NEXT_RENEWALS + 1);
    for (id, s) in summaries.clone() {
        if tally.add(s, now) && attention.len() < ATTENTION_ROWS {
            attention.push((id, s));
        }
        let renews = matches!(s.phase, Phase::Issued | Phase::Expiring) && !s.unconfigured;
        if let Some(at) = s.renew_at().filter(|_| renews) {
            // Only one earlier than the latest kept goes in: at 1,000,000 certificates a push
            // and a pop each (an id compared on every tie of times) was most of the pass.
            let due = Due { at, id, summary: s };
            if next.len() < NEXT_RENEWALS || next.peek().is_some_and(|last| due < *last) {
                next.push(due);
                if next.len() > NEXT_RENEWALS {
                    next.pop();
                }
            }
        }
    }
    if tally.total <= TABLE_UP_TO {
        return status_table_of(summaries, now, color);
    }
    let n = tally.total;
    let phases: Vec<String> = Phase::ALL
        .iter()
        .map(|p| format!("{} {}", tally.phases[*p as usize], p.as_str()))
        .collect();
    let mut out = format!("{n} certificates: {}", phases.join(", "));
    if tally.unconfigured > 0 {
        out += &format!(" ({} no longer configured)", tally.unconfigured);
    }
    out.push('\n');
    if tally.attention == 0 {
        out += "none needs attention\n";
    } else {
        let verb = if tally.attention == 1 {
            "needs"
        } else {
            "need"
        };
        let by: Vec<String> = Condition::ALL
            .iter()
            .filter(|c| tally.conditions[**c as usize] > 0)
            .map(|c| format!("{} {}", tally.conditions[*c as usize], c.as_str()))
            .collect();
        out += &format!(
            "{} {verb} attention ({}):\n",
            tally.attention,
            by.join(", ")
        );
        out += &status_table_of(attention.iter().copied(), now, color);
        let more = tally.attention - attention.len();
        if more > 0 {
            out += &format!("… and {more} more need attention: `haproxy-acme status --all`\n");
        }
    }
    if !next.is_empty() {
        let next = next.into_sorted_vec();
        out += "\nNext renewals:\n";
        out += &status_table_of(next.iter().map(|d| (d.id, d.summary)), now, color);
    }
    out += &format!(
        "\n{n} certificates: `haproxy-acme status --all` for every one, `status ID` for one\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::summary::FailureSummary;
    use crate::{FailureKind, Step};

    const DAY: i64 = 86_400;

    /// `n` summaries: an installed certificate each, renewing on day 60 + i (in hours), every
    /// `failing_every`-th failing for good.
    fn summaries(n: usize, failing_every: usize) -> Vec<(String, Summary)> {
        (0..n)
            .map(|i| {
                let failing = failing_every > 0 && i % failing_every == 0;
                let s = Summary::issued(
                    90 * DAY + i as i64,
                    60 * DAY + 3600 * i as i64,
                    61 * DAY,
                    failing.then(|| FailureSummary {
                        step: Step::Order,
                        kind: FailureKind::Permanent,
                        error: "rejectedIdentifier".into(),
                        attempts: 1,
                        next_attempt_at: None,
                    }),
                );
                (format!("c{i:04}.test"), s)
            })
            .collect()
    }

    fn screen(all: &[(String, Summary)], now: UnixTime, every: bool) -> String {
        status_screen(
            all.iter().map(|(id, s)| (id.as_str(), s)),
            now,
            false,
            every,
        )
    }

    #[test]
    fn up_to_a_hundred_certificates_the_screen_is_the_table() {
        let all = summaries(TABLE_UP_TO, 3);
        let table = status_table_of(all.iter().map(|(id, s)| (id.as_str(), s)), DAY, false);
        assert_eq!(screen(&all, DAY, false), table);
        assert_eq!(table.lines().count(), TABLE_UP_TO + 1);
        let more = summaries(TABLE_UP_TO + 1, 3);
        assert_ne!(screen(&more, DAY, false).lines().count(), TABLE_UP_TO + 2);
        assert_eq!(
            screen(&more, DAY, true).lines().count(),
            TABLE_UP_TO + 2,
            "--all: every one"
        );
    }

    #[test]
    fn above_a_hundred_a_summary_with_attention_first_and_the_next_renewals() {
        // 150 certificates, 60 failing (every second one of the first 120).
        let mut all = summaries(150, 0);
        for (i, (_, s)) in all
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0 && *i < 120)
        {
            *s = summaries(i + 1, 1).pop().unwrap().1;
        }
        all[149].1.unconfigured = true;
        all[148].1.phase = Phase::Pending;
        all[148].1.set_times(None, None, None);
        let t = screen(&all, DAY, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "150 certificates: 1 pending, 0 validating, 149 issued, 0 expiring (1 no longer configured)"
        );
        assert_eq!(lines[1], "60 need attention (60 failing):");
        assert!(lines[2].starts_with("ID "), "{t}");
        let rows: Vec<&str> = lines[3..3 + ATTENTION_ROWS].to_vec();
        assert!(rows.iter().all(|l| l.contains("rejectedIdentifier")), "{t}");
        assert!(rows[0].starts_with("c0000.test") && rows[49].starts_with("c0098.test"));
        assert_eq!(
            lines[3 + ATTENTION_ROWS],
            "… and 10 more need attention: `haproxy-acme status --all`"
        );
        let next = 3 + ATTENTION_ROWS + 1;
        assert_eq!(lines[next], "");
        assert_eq!(lines[next + 1], "Next renewals:");
        let due: Vec<&str> = lines[next + 3..next + 3 + NEXT_RENEWALS]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            due,
            [
                "c0000.test",
                "c0001.test",
                "c0002.test",
                "c0003.test",
                "c0004.test"
            ]
        );
        assert_eq!(
            *lines.last().unwrap(),
            "150 certificates: `haproxy-acme status --all` for every one, `status ID` for one"
        );
        assert_eq!(lines.len(), next + 3 + NEXT_RENEWALS + 2, "{t}");

        // Past the expiry threshold of every one: expiring too, counted per condition.
        let late = screen(&all, 62 * DAY, false);
        assert!(
            late.contains("\n148 need attention (60 failing, 148 expiring):\n"),
            "{late}"
        );
        let calm = screen(&summaries(120, 0), DAY, false);
        assert!(
            calm.contains("\nnone needs attention\n\nNext renewals:\n"),
            "{calm}"
        );
    }

    /// The next renewals are the earliest by time, then id, whatever the order of the pass and
    /// however many share a time.
    #[test]
    fn the_next_renewals_are_the_earliest_by_time_then_id_in_any_order() {
        // 300 certificates renewing at one of 7 times, visited in a scrambled order.
        let mut all = summaries(300, 0);
        for (i, (_, s)) in all.iter_mut().enumerate() {
            let at = 60 * DAY + ((i * 37) % 7) as i64 * 3600;
            s.set_times(Some(90 * DAY), Some(at), Some(61 * DAY));
        }
        let order: Vec<usize> = (0..300).map(|i| (i * 151) % 300).collect();
        let scrambled: Vec<(String, Summary)> = order.iter().map(|&i| all[i].clone()).collect();
        let t = screen(&scrambled, DAY, false);
        let lines: Vec<&str> = t.lines().collect();
        let next = lines.iter().position(|l| *l == "Next renewals:").unwrap();
        let due: Vec<&str> = lines[next + 2..next + 2 + NEXT_RENEWALS]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        let mut expected: Vec<(UnixTime, &str)> = all
            .iter()
            .map(|(id, s)| (s.renew_at().unwrap(), id.as_str()))
            .collect();
        expected.sort();
        let expected: Vec<&str> = expected[..NEXT_RENEWALS].iter().map(|e| e.1).collect();
        assert_eq!(due, expected, "{t}");
    }

    #[test]
    fn a_tally_counts_phases_conditions_and_the_earliest_expiry() {
        let mut all = summaries(10, 5);
        all[3].1.phase = Phase::Validating;
        all[4].1.unconfigured = true;
        let (renew, expiring) = (all[0].1.renew_at(), all[0].1.expiring_at());
        all[0].1.set_times(Some(5), renew, expiring);
        let (renew, expiring) = (all[1].1.renew_at(), all[1].1.expiring_at());
        all[1].1.set_times(Some(4), renew, expiring);
        all[1].1.unconfigured = true;
        let t = Tally::of(all.iter().map(|(_, s)| s), DAY);
        assert_eq!(t.total, 10);
        assert_eq!(t.phases, [0, 1, 9, 0]);
        assert_eq!(t.unconfigured, 2);
        assert_eq!((t.attention, t.conditions), (2, [2, 0, 0]));
        assert_eq!(
            t.earliest_expiry,
            Some(5),
            "an unconfigured one is not renewed: left out"
        );
        let t = Tally::of(all.iter().map(|(_, s)| s), 62 * DAY);
        assert_eq!((t.attention, t.conditions), (8, [2, 8, 0]));
        assert_eq!(Tally::of([], 0).earliest_expiry, None);
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
        for (i, c) in Condition::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
