//! The local rate-limit budget, wired to the store: before an order, ask whether the CA's
//! limits allow it (deferring it otherwise, instead of letting the CA refuse), and note what the
//! CA counts. Registered domains come from the Public Suffix List (psl, compiled in): the only
//! user of psl.

use haproxy_acme_state::ledger::{self, Deferral, Entry, Limits, OrderRequest};
use haproxy_acme_state::UnixTime;

use std::sync::Arc;

use crate::store::{Store, StoreError};

/// How long entries are kept when no limit says longer: Let's Encrypt's longest window.
const DEFAULT_HORIZON_SECS: i64 = 7 * 86_400;

/// The registered domain ("eTLD+1") of each name, e.g. `example.co.uk` for `www.example.co.uk`;
/// a name the list does not cover counts as its own.
pub fn registered_domains(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .map(|n| psl::domain_str(n).unwrap_or(n).to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The most a deferred order's wait is lengthened by [`spread_deferral`].
const MAX_SPREAD_SECS: i64 = 3600;

/// When an order the budget defers until `until` (asked at `now`) is tried again: `until` plus
/// a random part (`permille`, 0..=1000) of the wait, at most [`MAX_SPREAD_SECS`]. Certificates
/// held back together (a renewal storm under the budget: 9,700 of 10,000 in BENCHMARKS.md,
/// "Renewal storm") are all told the same `until`, when the first slot frees; without the spread
/// they would all come due again at that instant, as one burst of admissions and writes.
pub fn spread_deferral(until: UnixTime, now: UnixTime, permille: u16) -> UnixTime {
    let wait = (until - now).clamp(0, MAX_SPREAD_SECS);
    until + wait * i64::from(permille.min(1000)) / 1000
}

fn horizon(limits: Option<&Limits>) -> i64 {
    limits.map_or(DEFAULT_HORIZON_SECS, |l| {
        l.horizon_secs().max(DEFAULT_HORIZON_SECS)
    })
}

/// The budget of one CA directory: the reconciler asks it before each order and tells it what
/// the CA counts. Entries are kept whether or not limits are on, so turning them on finds the
/// history.
pub struct Budget {
    store: Arc<dyn Store>,
    directory: String,
    limits: Option<Limits>,
    /// One admission at a time: held from `admit` until the order is noted (`ordered`), so
    /// certificates worked on at once (CONCURRENCY) cannot all be admitted on the same count.
    admission: tokio::sync::Mutex<()>,
}

impl Budget {
    pub fn new(store: Arc<dyn Store>, directory: String, limits: Option<Limits>) -> Budget {
        Budget {
            store,
            directory,
            limits,
            admission: tokio::sync::Mutex::new(()),
        }
    }

    /// The turn to be admitted, to hold until the order is noted or refused (`None` with no
    /// limits: nothing to count, so orders are not serialized).
    pub async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.limits {
            Some(_) => Some(self.admission.lock().await),
            None => None,
        }
    }

    /// `None` when one more order for `names` fits now (`renewal`: a certificate for the id
    /// exists; `ari_renewal`: and the order is made once its renewal window has begun, naming
    /// it as the one it replaces, which no limit counts); otherwise why not and until when.
    pub async fn admit(
        &self,
        names: &[String],
        renewal: bool,
        ari_renewal: bool,
        now: UnixTime,
    ) -> Result<Option<Deferral>, StoreError> {
        let Some(limits) = &self.limits else {
            return Ok(None);
        };
        if ari_renewal {
            return Ok(None);
        }
        let entries = self
            .store
            .ledger_since(&self.directory, now - limits.horizon_secs())
            .await?;
        let rds = registered_domains(names);
        Ok(ledger::check(
            &entries,
            limits,
            &OrderRequest {
                names,
                registered_domains: &rds,
                renewal,
                ari_renewal,
            },
            now,
        ))
    }

    /// An order was created.
    pub async fn ordered(&self, at: UnixTime) -> Result<(), StoreError> {
        self.note(Entry::Order { at }).await
    }

    /// A certificate for `names` was issued.
    pub async fn issued(&self, names: &[String], at: UnixTime) -> Result<(), StoreError> {
        let mut sorted = names.to_vec();
        sorted.sort();
        self.note(Entry::Certificate {
            at,
            names: sorted,
            registered_domains: registered_domains(names),
        })
        .await
    }

    /// An order's validation failed. The CA counts failed validations per name; its error does
    /// not say which name failed, so every name of the order is counted.
    pub async fn failed_validation(
        &self,
        names: &[String],
        at: UnixTime,
    ) -> Result<(), StoreError> {
        for name in names {
            self.note(Entry::FailedValidation {
                at,
                name: name.clone(),
            })
            .await?;
        }
        Ok(())
    }

    async fn note(&self, entry: Entry) -> Result<(), StoreError> {
        let keep_since = entry.at() - horizon(self.limits.as_ref());
        self.store
            .ledger_append(&self.directory, &entry, keep_since)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_deferred_together_come_back_spread_over_at_most_an_hour() {
        let (now, hour) = (1_000_000, 3600);
        // Held for three hours: spread over the hour after, one time per draw.
        let until = now + 3 * hour;
        let times: std::collections::BTreeSet<_> =
            (0..=1000).map(|p| spread_deferral(until, now, p)).collect();
        assert_eq!(times.len(), 1001);
        assert_eq!(times.first(), Some(&until));
        assert_eq!(times.last(), Some(&(until + hour)));
        // A short wait is lengthened by at most itself; none is shortened.
        assert_eq!(spread_deferral(now + 60, now, 1000), now + 120);
        assert_eq!(spread_deferral(now + 60, now, 500), now + 90);
        assert_eq!(spread_deferral(now, now, 1000), now);
        assert_eq!(spread_deferral(now - 5, now, 1000), now - 5);
    }

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            registered_domains(&names(&[
                "www.example.co.uk",
                "example.co.uk",
                "a.b.example.com"
            ])),
            names(&["example.co.uk", "example.com"])
        );
        // Each user of a public-suffix platform is a registered domain of its own.
        assert_eq!(
            registered_domains(&names(&["me.github.io"])),
            names(&["me.github.io"])
        );
    }
}
