//! The local rate-limit budget: what this account asked of the CA, and whether one more order
//! would exceed the CA's published limits (Let's Encrypt's by default). Pure: the shell keeps the
//! entries and supplies registered domains.

use serde::{Deserialize, Serialize};

use crate::UnixTime;

/// One thing the CA counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Entry {
    /// A new-order request.
    Order { at: UnixTime },
    /// An issued certificate: its names (sorted) and their registered domains.
    Certificate {
        at: UnixTime,
        names: Vec<String>,
        registered_domains: Vec<String>,
    },
    /// A failed validation of one name.
    FailedValidation { at: UnixTime, name: String },
}

impl Entry {
    pub fn at(&self) -> UnixTime {
        match self {
            Entry::Order { at }
            | Entry::Certificate { at, .. }
            | Entry::FailedValidation { at, .. } => *at,
        }
    }
}

/// A limit: at most `count` in any `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub count: u32,
    pub window_secs: i64,
}

/// The limits to stay under. `None` disables one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub orders: Option<Limit>,
    pub exact_set: Option<Limit>,
    pub registered_domain: Option<Limit>,
    pub failed_validations: Option<Limit>,
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

impl Limits {
    /// Let's Encrypt's published limits: 300 new orders per account per 3 hours; 5 certificates
    /// for the same exact set of names per 7 days; 50 certificates per registered domain per 7
    /// days; 5 failed validations per name per hour. Renewals are exempt from the first and the
    /// third, and a renewal ordered once its ARI window has begun, naming the certificate it
    /// replaces, from all four ([`OrderRequest`]).
    pub const LETS_ENCRYPT: Limits = Limits {
        orders: Some(Limit {
            count: 300,
            window_secs: 3 * HOUR,
        }),
        exact_set: Some(Limit {
            count: 5,
            window_secs: 7 * DAY,
        }),
        registered_domain: Some(Limit {
            count: 50,
            window_secs: 7 * DAY,
        }),
        failed_validations: Some(Limit {
            count: 5,
            window_secs: HOUR,
        }),
    };

    /// The longest window: older entries can be forgotten.
    pub fn horizon_secs(&self) -> i64 {
        [
            self.orders,
            self.exact_set,
            self.registered_domain,
            self.failed_validations,
        ]
        .into_iter()
        .flatten()
        .map(|l| l.window_secs)
        .max()
        .unwrap_or(0)
    }
}

/// A request that must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    pub until: UnixTime,
    pub reason: String,
}

/// What a new order asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest<'a> {
    pub names: &'a [String],
    pub registered_domains: &'a [String],
    /// A renewal of the same set of names: exempt from the new-orders and registered-domain
    /// limits (Let's Encrypt since 2024: boulder#7508, "Exempt renewals from
    /// NewOrdersPerAccount and CertificatesPerDomain").
    pub renewal: bool,
    /// A renewal ordered once the CA's renewal window (RFC 9773) has begun and naming the
    /// certificate it replaces: exempt from every limit (Let's Encrypt's guide to integrating
    /// ARI, 2024: renewals that use ARI are exempt from all rate limits).
    pub ari_renewal: bool,
}

/// When `times` (of the counted events in the window) already reach the limit, the time at which
/// enough of them leave the window for one more.
fn over(limit: Option<Limit>, mut times: Vec<UnixTime>, now: UnixTime) -> Option<UnixTime> {
    let limit = limit?;
    times.retain(|t| *t > now - limit.window_secs);
    let count = times.len();
    let allowed = limit.count as usize;
    if count < allowed {
        return None;
    }
    times.sort_unstable();
    // After the (count - allowed + 1) oldest leave the window, count - (that) < allowed.
    Some(times[count - allowed] + limit.window_secs)
}

/// Whether one more order for `req` fits the budget now; if not, until when to wait and why.
pub fn check(
    entries: &[Entry],
    limits: &Limits,
    req: &OrderRequest<'_>,
    now: UnixTime,
) -> Option<Deferral> {
    if req.ari_renewal {
        return None;
    }
    let mut names: Vec<&String> = req.names.iter().collect();
    names.sort();
    let mut reasons: Vec<(UnixTime, String)> = Vec::new();

    let orders = entries
        .iter()
        .filter(|e| matches!(e, Entry::Order { .. }))
        .map(Entry::at)
        .collect();
    let orders = if req.renewal {
        None
    } else {
        over(limits.orders, orders, now)
    };
    if let Some(t) = orders {
        reasons.push((
            t,
            format!(
                "{} new orders per account in {}",
                limits.orders.unwrap().count,
                span(limits.orders.unwrap())
            ),
        ));
    }
    let same_set = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Certificate { at, names: n, .. } if n.iter().collect::<Vec<_>>() == names => {
                Some(*at)
            }
            _ => None,
        })
        .collect();
    if let Some(t) = over(limits.exact_set, same_set, now) {
        let l = limits.exact_set.unwrap();
        reasons.push((
            t,
            format!(
                "{} certificates for this exact set of names in {}",
                l.count,
                span(l)
            ),
        ));
    }
    if !req.renewal {
        for rd in req.registered_domains {
            let times = entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Certificate {
                        at,
                        registered_domains,
                        ..
                    } if registered_domains.contains(rd) => Some(*at),
                    _ => None,
                })
                .collect();
            if let Some(t) = over(limits.registered_domain, times, now) {
                let l = limits.registered_domain.unwrap();
                reasons.push((
                    t,
                    format!(
                        "{} certificates for the registered domain {rd} in {}",
                        l.count,
                        span(l)
                    ),
                ));
            }
        }
    }
    for name in req.names {
        let times = entries
            .iter()
            .filter_map(|e| match e {
                Entry::FailedValidation { at, name: n } if n == name => Some(*at),
                _ => None,
            })
            .collect();
        if let Some(t) = over(limits.failed_validations, times, now) {
            let l = limits.failed_validations.unwrap();
            reasons.push((
                t,
                format!("{} failed validations of {name} in {}", l.count, span(l)),
            ));
        }
    }
    // Wait until every exceeded limit allows one more.
    let until = reasons.iter().map(|(t, _)| *t).max()?;
    Some(Deferral {
        until,
        reason: reasons
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

fn span(l: Limit) -> String {
    match l.window_secs {
        s if s % DAY == 0 => format!("{} days", s / DAY),
        s if s % HOUR == 0 => format!("{} hours", s / HOUR),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_000_000_000;

    fn cert(at: UnixTime, names: &[&str], rd: &str) -> Entry {
        let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        names.sort();
        Entry::Certificate {
            at,
            names,
            registered_domains: vec![rd.into()],
        }
    }

    fn req<'a>(names: &'a [String], rds: &'a [String], renewal: bool) -> OrderRequest<'a> {
        OrderRequest {
            names,
            registered_domains: rds,
            renewal,
            ari_renewal: false,
        }
    }

    #[test]
    fn within_budget_nothing_waits() {
        let names = vec!["a.example.com".to_string()];
        let rds = vec!["example.com".to_string()];
        let entries: Vec<Entry> = (0..4)
            .map(|i| cert(NOW - i * DAY, &["a.example.com"], "example.com"))
            .collect();
        assert_eq!(
            check(
                &entries,
                &Limits::LETS_ENCRYPT,
                &req(&names, &rds, false),
                NOW
            ),
            None
        );
        assert_eq!(
            check(&[], &Limits::LETS_ENCRYPT, &req(&names, &rds, false), NOW),
            None
        );
    }

    #[test]
    fn the_fifth_duplicate_certificate_in_a_week_is_deferred_until_the_oldest_ages_out() {
        let names = vec!["www.a.example.com".to_string(), "a.example.com".to_string()];
        let rds = vec!["example.com".to_string()];
        // Five certificates for the same set (in another order), the oldest 6 days ago.
        let entries: Vec<Entry> = (0..5)
            .map(|i| {
                cert(
                    NOW - 6 * DAY + i * HOUR,
                    &["a.example.com", "www.a.example.com"],
                    "example.com",
                )
            })
            .collect();
        let d = check(
            &entries,
            &Limits::LETS_ENCRYPT,
            &req(&names, &rds, true),
            NOW,
        )
        .unwrap();
        assert_eq!(d.until, NOW - 6 * DAY + 7 * DAY);
        assert!(
            d.reason
                .contains("5 certificates for this exact set of names in 7 days"),
            "{}",
            d.reason
        );
        // Another set of names is not affected.
        let other = vec!["b.example.com".to_string()];
        assert_eq!(
            check(
                &entries,
                &Limits::LETS_ENCRYPT,
                &req(&other, &rds, false),
                NOW
            ),
            None
        );
        // Entries older than the window do not count.
        assert_eq!(
            check(
                &entries,
                &Limits::LETS_ENCRYPT,
                &req(&names, &rds, true),
                NOW + 7 * DAY
            ),
            None
        );
    }

    #[test]
    fn registered_domain_limit_spares_renewals() {
        let rds = vec!["example.com".to_string()];
        let entries: Vec<Entry> = (0..50)
            .map(|i| {
                cert(
                    NOW - DAY + i,
                    &[&format!("h{i}.example.com")],
                    "example.com",
                )
            })
            .collect();
        let new = vec!["new.example.com".to_string()];
        let d = check(
            &entries,
            &Limits::LETS_ENCRYPT,
            &req(&new, &rds, false),
            NOW,
        )
        .unwrap();
        assert_eq!(d.until, NOW - DAY + 7 * DAY);
        assert!(d.reason.contains("registered domain example.com"));
        let renewing = vec!["h3.example.com".to_string()];
        assert_eq!(
            check(
                &entries,
                &Limits::LETS_ENCRYPT,
                &req(&renewing, &rds, true),
                NOW
            ),
            None
        );
    }

    #[test]
    fn orders_and_failed_validations() {
        let names = vec!["a.example.com".to_string()];
        let rds = vec!["example.com".to_string()];
        let orders: Vec<Entry> = (0..300)
            .map(|i| Entry::Order {
                at: NOW - 2 * HOUR + i,
            })
            .collect();
        let d = check(
            &orders,
            &Limits::LETS_ENCRYPT,
            &req(&names, &rds, false),
            NOW,
        )
        .unwrap();
        assert_eq!(d.until, NOW - 2 * HOUR + 3 * HOUR);
        let failed: Vec<Entry> = (0..5)
            .map(|i| Entry::FailedValidation {
                at: NOW - 30 * 60 + i * 60,
                name: "a.example.com".into(),
            })
            .collect();
        let d = check(
            &failed,
            &Limits::LETS_ENCRYPT,
            &req(&names, &rds, false),
            NOW,
        )
        .unwrap();
        assert_eq!(d.until, NOW - 30 * 60 + HOUR);
        assert!(d
            .reason
            .contains("5 failed validations of a.example.com in 1 hours"));
        // Several limits exceeded: wait for the last of them.
        let both: Vec<Entry> = orders.into_iter().chain(failed).collect();
        assert_eq!(
            check(&both, &Limits::LETS_ENCRYPT, &req(&names, &rds, false), NOW)
                .unwrap()
                .until,
            NOW + HOUR
        );
        let off = Limits {
            orders: None,
            exact_set: None,
            registered_domain: None,
            failed_validations: None,
        };
        assert_eq!(check(&both, &off, &req(&names, &rds, false), NOW), None);
        assert_eq!(Limits::LETS_ENCRYPT.horizon_secs(), 7 * DAY);
    }

    /// A renewal is not held back by the new-orders limit (only by the exact set's), and a
    /// renewal inside its ARI window by none: a renewal storm under Let's Encrypt's limits goes
    /// at the CA's pace, not 300 every 3 hours.
    #[test]
    fn renewals_spare_the_orders_limit_and_ari_renewals_every_limit() {
        let names = vec!["a.example.com".to_string()];
        let rds = vec!["example.com".to_string()];
        let mut entries: Vec<Entry> = (0..300)
            .map(|i| Entry::Order { at: NOW - HOUR + i })
            .collect();
        let le = &Limits::LETS_ENCRYPT;
        assert!(check(&entries, le, &req(&names, &rds, false), NOW).is_some());
        assert_eq!(check(&entries, le, &req(&names, &rds, true), NOW), None);
        // Five certificates for the set this week and five failed validations this hour: a
        // renewal waits, an ARI renewal does not.
        entries.extend((0..5).map(|i| cert(NOW - DAY + i, &["a.example.com"], "example.com")));
        entries.extend((0..5).map(|i| Entry::FailedValidation {
            at: NOW - 60 + i,
            name: "a.example.com".into(),
        }));
        let d = check(&entries, le, &req(&names, &rds, true), NOW).unwrap();
        assert!(d.reason.contains("exact set") && d.reason.contains("failed validations"));
        assert!(!d.reason.contains("new orders"), "{}", d.reason);
        let ari = OrderRequest {
            ari_renewal: true,
            ..req(&names, &rds, true)
        };
        assert_eq!(check(&entries, le, &ari, NOW), None);
    }
}
