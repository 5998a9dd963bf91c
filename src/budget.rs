//! The local rate-limit budget, wired to the store: before an order, ask whether the CA's
//! limits allow it (deferring it otherwise, instead of letting the CA refuse), and note what the
//! CA counts. Registered domains come from the Public Suffix List (psl, compiled in): the only
//! user of psl.

use haproxy_acme_state::ledger::{self, Deferral, Entry, Limits, OrderRequest};
use haproxy_acme_state::UnixTime;

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

fn horizon(limits: Option<&Limits>) -> i64 {
    limits.map_or(DEFAULT_HORIZON_SECS, |l| {
        l.horizon_secs().max(DEFAULT_HORIZON_SECS)
    })
}

/// Whether one more order for `names` fits; `renewal` when a certificate for the id exists.
pub fn check(
    store: &Store,
    directory: &str,
    limits: &Limits,
    names: &[String],
    renewal: bool,
    now: UnixTime,
) -> Result<Option<Deferral>, StoreError> {
    let entries = store.ledger_since(directory, now - limits.horizon_secs())?;
    let rds = registered_domains(names);
    Ok(ledger::check(
        &entries,
        limits,
        &OrderRequest {
            names,
            registered_domains: &rds,
            renewal,
        },
        now,
    ))
}

/// Notes something the CA counts (kept whether or not limits are on, so turning them on finds
/// the history).
pub fn note(
    store: &Store,
    directory: &str,
    limits: Option<&Limits>,
    entry: Entry,
) -> Result<(), StoreError> {
    let keep_since = entry.at() - horizon(limits);
    store.ledger_append(directory, &entry, keep_since)
}

/// The entry for an issued certificate.
pub fn certificate(names: &[String], at: UnixTime) -> Entry {
    let mut sorted = names.to_vec();
    sorted.sort();
    Entry::Certificate {
        at,
        names: sorted,
        registered_domains: registered_domains(names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
