//! Operator commands that change state: `renew`, `retry`, `domains add`, `domains remove` (and
//! `revoke`, in [`crate::revoke`], which also asks the CA). Each
//! works on the store, so the same code serves the daemon (through its admin socket, which then
//! wakes the reconciler) and the CLI when no daemon runs (the change takes effect at next start).

use std::sync::Arc;

use haproxy_acme_state::dump::rfc3339;
use haproxy_acme_state::{apply, Event, Phase, Record, UnixTime};

use crate::config::{parse_domains, CertId, Config, WantedSet};
use crate::store::{Change, Store, StoreError};

/// Why a command was refused. Each maps to an HTTP status on the admin socket and to an exit
/// code of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// No such certificate (exit code 3).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done as asked (exit code 2).
    #[error("{0}")]
    Refused(String),
    /// The CA could not be reached (exit code 1).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a command did: a message for the operator, and whether a certificate should be looked at
/// now (`wake`) or the wanted set re-read (`reload`).
#[derive(Debug, Default)]
pub struct Done {
    pub message: String,
    pub wake: Vec<String>,
    pub reload: bool,
}

/// The id an operator gave, normalized as the configuration's names are (`A.test.` is
/// `a.test`); one that cannot be a certificate's id is refused.
pub(crate) fn parse_id(raw: &str) -> Result<CertId, OpError> {
    CertId::parse(raw).map_err(|e| OpError::Refused(format!("not a certificate id: {e}")))
}

async fn unknown(store: &dyn Store, id: &str) -> OpError {
    let known = store.some_ids(5).await.unwrap_or_default();
    OpError::NotFound(format!(
        "no certificate {id:?} (certificates are named by their first name{}; see `haproxy-acme status`)",
        if known.is_empty() {
            String::new()
        } else {
            format!(", e.g. {}", known.join(", "))
        }
    ))
}

/// Applies `event` to record `id` in one `Store::update`.
pub(crate) async fn update(
    store: &dyn Store,
    id: &str,
    event: Event,
    now: UnixTime,
) -> Result<Record, OpError> {
    let new = store
        .update(id, move |old| match old {
            None => (Change::Keep, None),
            Some(old) => {
                let new = apply(&old, event, now);
                let change = if new == old {
                    Change::Keep
                } else {
                    Change::Put(new.clone())
                };
                (change, Some(new))
            }
        })
        .await?;
    match new {
        Some(r) => Ok(r),
        None => Err(unknown(store, id).await),
    }
}

/// The record of `id`, or the error naming some that exist.
pub(crate) async fn get(store: &dyn Store, id: &str) -> Result<Record, OpError> {
    match store.get(id).await? {
        Some(r) => Ok(r),
        None => Err(unknown(store, id).await),
    }
}

/// `renew ID [--force]`: with `force`, orders a new certificate now (the current one keeps
/// serving); without, asks the CA for its renewal window again (RFC 9773; at the daemon's next
/// step, or its next start) and says when the certificate renews and whether anything stands in
/// the way.
pub async fn renew(
    store: &dyn Store,
    id: &str,
    force: bool,
    now: UnixTime,
) -> Result<Done, OpError> {
    let id = parse_id(id)?;
    let id = id.as_str();
    if force {
        let r = update(store, id, Event::ForceRenew, now).await?;
        let message = match r.phase() {
            Phase::Expiring => format!(
                "{id}: renewing now; the current certificate keeps serving until the new one is installed"
            ),
            Phase::Pending => format!("{id}: ordering now"),
            Phase::Validating => format!("{id}: an order is already in flight; driving it now"),
            Phase::Issued => format!("{id}: renewing now"),
        };
        return Ok(Done {
            message,
            wake: vec![id.to_string()],
            reload: false,
        });
    }
    // The CA's window is asked for again now (a no-op before the first certificate and during
    // an order): a window the CA moved since the last check counts at once.
    let r = update(store, id, Event::RenewalInfoWanted, now).await?;
    let asking = if r.ari_check_at == Some(now) {
        "; asking the CA for its renewal window now (`status` shows the answer)"
    } else {
        ""
    };
    let message = if let Some(f) = &r.failure {
        match f.next_attempt_at {
            Some(t) if t > now => format!(
                "{id}: the last attempt failed ({} {}: {}); next attempt at {}. `retry {id}` tries now",
                f.step.as_str(), f.kind.as_str(), f.error, rfc3339(t)
            ),
            Some(_) => format!("{id}: retrying now after a failure ({})", f.error),
            None => format!(
                "{id}: stopped after a permanent failure ({} : {}); fix the cause, then `retry {id}`",
                f.step.as_str(),
                f.error
            ),
        }
    } else {
        match (r.phase(), r.renew_at) {
            (Phase::Issued, Some(t)) if t > now => format!(
                "{id}: not due; renews at {}{asking} (use --force to renew now)",
                rfc3339(t)
            ),
            (Phase::Issued, _) | (Phase::Expiring, _) => format!("{id}: due; renewing now"),
            (Phase::Pending | Phase::Validating, _) => format!("{id}: being issued now"),
        }
    };
    Ok(Done {
        message,
        wake: vec![id.to_string()],
        reload: false,
    })
}

/// `retry ID`: clears a recorded failure (permanent or in backoff) so the next step runs now, and
/// runs a failed deploy hook again.
pub async fn retry(store: &dyn Store, id: &str, now: UnixTime) -> Result<Done, OpError> {
    let id = parse_id(id)?;
    let id = id.as_str();
    let before = get(store, id).await?;
    let hook_failed = before.hook.as_ref().and_then(|h| h.error.clone());
    if before.failure.is_none() && hook_failed.is_none() {
        return Ok(Done {
            message: format!("{id}: no failure recorded; nothing to retry"),
            wake: Vec::new(),
            reload: false,
        });
    }
    update(store, id, Event::Retry, now).await?;
    let mut what = Vec::new();
    if let Some(f) = &before.failure {
        what.push(format!(
            "cleared the {} failure of step {} ({})",
            f.kind.as_str(),
            f.step.as_str(),
            f.error
        ));
    }
    if let Some(e) = hook_failed {
        what.push(format!("the deploy hook runs again (it failed: {e})"));
    }
    Ok(Done {
        message: format!("{id}: {}; trying now", what.join("; ")),
        wake: vec![id.to_string()],
        reload: false,
    })
}

/// `domains add SPEC`: one certificate in DOMAINS syntax (`a.com,www.a.com`, options such as
/// `profile=shortlived` after the names), kept in the store beside DOMAINS and DOMAINS_FILE.
pub async fn domains_add(
    store: &dyn Store,
    wanted: &Arc<WantedSet>,
    spec: &str,
) -> Result<Done, OpError> {
    let specs = parse_domains(spec.trim()).map_err(|e| OpError::Refused(e.join("; ")))?;
    let [new] = specs.as_slice() else {
        return Err(OpError::Refused(format!(
            "{spec:?}: give one certificate (names separated by commas); add others one by one"
        )));
    };
    let new = new.clone();
    let wanted = wanted.clone();
    let names = new.names().to_vec();
    let profile = new
        .profile()
        .map(|p| format!(", profile {p}"))
        .unwrap_or_default();
    // Read, checked and written under the store's lock of the additions: two `domains add` at
    // once never lose one.
    store
        .update_added(Box::new(move |added| {
            if added.iter().any(|names| *new.id() == *names[0]) {
                return Err(format!(
                    "{:?} is already added; `domains remove {}` first to change its names",
                    new.id(),
                    new.id()
                ));
            }
            let mut added = added.to_vec();
            // The names, then the entry's options (`profile=NAME`) as tokens.
            added.push(new.entry_tokens());
            // The whole wanted set must stay valid: no name twice across DOMAINS, DOMAINS_FILE
            // and here.
            wanted.check(&added).map_err(|e| e.join("; "))?;
            Ok(added)
        }))
        .await?
        .map_err(OpError::Refused)?;
    Ok(Done {
        message: format!(
            "added certificate {} ({}{profile})",
            names[0],
            names.join(", ")
        ),
        wake: Vec::new(),
        reload: true,
    })
}

/// `domains remove ID`: removes a certificate added with `domains add`. Its certificate is kept
/// and no longer renewed (removed entirely with PRUNE=true), as for DOMAINS_FILE edits.
pub async fn domains_remove(
    store: &dyn Store,
    config: &Config,
    wanted: &WantedSet,
    id: &str,
) -> Result<Done, OpError> {
    let id = parse_id(id)?;
    let id = id.as_str();
    let target = id.to_string();
    let removed = store
        .update_added(Box::new(move |added| {
            let kept: Vec<Vec<String>> = added
                .iter()
                .filter(|names| names[0] != target)
                .cloned()
                .collect();
            if kept.len() == added.len() {
                Err("not added".to_string())
            } else {
                Ok(kept)
            }
        }))
        .await?;
    if removed.is_err() {
        let configured = wanted
            .read(&[])
            .unwrap_or_default()
            .into_iter()
            .any(|s| *s.id() == *id);
        return Err(if configured {
            OpError::Refused(format!(
                "{id:?} comes from DOMAINS or DOMAINS_FILE, not from `domains add`: remove it there"
            ))
        } else {
            OpError::NotFound(format!(
                "no certificate {id:?} was added with `domains add`"
            ))
        });
    }
    let kept = if config.prune {
        "its certificate, file and state are removed (PRUNE)"
    } else {
        "its certificate keeps serving until it expires and is no longer renewed"
    };
    Ok(Done {
        message: format!("removed certificate {id}; {kept}"),
        wake: Vec::new(),
        reload: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RawSettings;
    use crate::config::Need;
    use haproxy_acme_state::{CertMeta, KeyType};

    fn config(domains: &str) -> (Config, WantedSet) {
        let raw = RawSettings {
            domains: Some(domains.into()),
            ..RawSettings::default()
        };
        Config::from_raw(&raw, Need::Daemon).unwrap()
    }

    fn issued(id: &str, now: UnixTime) -> Record {
        let r = Record::new(vec![id.into()], KeyType::EcdsaP256, now);
        let r = apply(&r, Event::OrderCreated { url: "u".into() }, now);
        let meta = CertMeta {
            serial: "01".into(),
            not_before: now,
            not_after: now + 90 * 86_400,
            fingerprint: "f".into(),
            issued_at: now,
        };
        apply(&r, Event::CertificateStored { meta }, now)
    }

    #[tokio::test]
    async fn renew_retry_and_domains_on_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sled::SledStore::open(dir.path()).unwrap());
        let store = store.as_ref();
        let now = 1_700_000_000;
        let a = issued("a.test", now);
        store
            .update("a.test", move |_| (Change::Put(a), ()))
            .await
            .unwrap();

        let e = renew(store, "nope.test", false, now).await.unwrap_err();
        assert!(matches!(e, OpError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("a.test"), "{e}");
        let d = renew(store, "A.test.", false, now + 10).await.unwrap();
        assert!(d.message.contains("not due"), "{}", d.message);
        assert!(d.message.starts_with("a.test: "), "{}", d.message);
        // Asking when it renews asks the CA for its window again, at once.
        assert!(d.message.contains("asking the CA"), "{}", d.message);
        let asked = store.get("a.test").await.unwrap().unwrap();
        assert_eq!(asked.ari_check_at, Some(now + 10));
        // An id that cannot be a certificate's is refused as such, by every command.
        let (c, w) = config("a.test");
        for bad in ["*.a.test", "a.test/../x", "localhost"] {
            let refused = |r: Result<Done, OpError>| match r {
                Err(OpError::Refused(m)) => assert!(m.contains("not a certificate id"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            };
            refused(renew(store, bad, true, now).await);
            refused(retry(store, bad, now).await);
            refused(domains_remove(store, &c, &w, bad).await);
        }
        assert_eq!(
            store.get("a.test").await.unwrap().unwrap().phase(),
            Phase::Issued
        );
        let d = renew(store, "a.test", true, now).await.unwrap();
        assert!(d.message.contains("renewing now"), "{}", d.message);
        assert_eq!(d.wake, vec!["a.test".to_string()]);
        assert_eq!(
            store.get("a.test").await.unwrap().unwrap().phase(),
            Phase::Expiring
        );

        assert!(retry(store, "a.test", now)
            .await
            .unwrap()
            .message
            .contains("nothing to retry"));

        let w = Arc::new(w);
        let e = domains_add(store, &w, "a.test,b.test").await.unwrap_err();
        assert!(matches!(e, OpError::Refused(_)));
        assert!(e.to_string().contains("\"a.test\""), "{e}");
        let e = domains_add(store, &w, "x.test;y.test").await.unwrap_err();
        assert!(e.to_string().contains("one certificate"), "{e}");
        assert!(domains_add(store, &w, "*.bad.test").await.is_err());
        let d = domains_add(store, &w, "B.test, www.b.test").await.unwrap();
        assert!(d.reload);
        assert_eq!(
            store.added().await.unwrap(),
            vec![vec!["b.test".to_string(), "www.b.test".to_string()]]
        );
        assert!(
            domains_add(store, &w, "b.test").await.is_err(),
            "added twice"
        );
        assert_eq!(w.read(&store.added().await.unwrap()).unwrap().len(), 2);
        let e = domains_remove(store, &c, &w, "a.test").await.unwrap_err();
        assert!(e.to_string().contains("DOMAINS"), "{e}");
        assert!(matches!(
            domains_remove(store, &c, &w, "zzz.test").await,
            Err(OpError::NotFound(_))
        ));
        domains_remove(store, &c, &w, "b.test").await.unwrap();
        assert!(store.added().await.unwrap().is_empty());
    }

    /// The lost update of runtime additions: every concurrent `domains add` is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_additions_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sled::SledStore::open(dir.path()).unwrap());
        let c = Arc::new(config("a.test").1);
        let adds: Vec<_> = (0..24)
            .map(|i| {
                let (store, c) = (store.clone(), c.clone());
                tokio::spawn(
                    async move { domains_add(store.as_ref(), &c, &format!("n{i}.test")).await },
                )
            })
            .collect();
        for a in adds {
            a.await.unwrap().unwrap();
        }
        assert_eq!(store.added().await.unwrap().len(), 24);
    }
}
