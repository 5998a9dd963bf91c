//! What a wanted certificate's spec makes of its stored record ([`Configure`]): the
//! configuration's events applied (names, key type, CA, hook, profile, challenge), when it is
//! due, and the responder's and the watchdog's entries of it. Used by every sync of the wanted
//! set (start-up, reloads).

use std::sync::Arc;

use haproxy_acme_state::{apply, Event, Record, UnixTime};

use super::ids::SharedIds;
use super::schedule::due_of;
use super::tokens::sync_tokens;
use super::Reconciler;
use crate::config::CertSpec;

/// What a wanted certificate's spec makes of its stored record: when it is due, and the record
/// when it changed (and the responder's challenges of it, the watchdog's entry).
#[derive(Clone)]
pub(super) struct Configure {
    config: Arc<crate::config::Config>,
    tokens: crate::responder::Tokens,
    ids: SharedIds,
    now: haproxy_acme_state::UnixTime,
}

impl Configure {
    pub(super) fn of(r: &Reconciler, now: haproxy_acme_state::UnixTime) -> Configure {
        Configure {
            config: r.config.clone(),
            tokens: r.tokens.clone(),
            ids: r.ids.clone(),
            now,
        }
    }

    /// Whether `r` is already what `spec` and the configuration make of it
    /// (`machine::is_configured_as`; checked against the events in debug builds). The start-up
    /// pass takes this path for every unchanged certificate without building the events or a
    /// new record (three allocations and a record's copy each, at 100,000 certificates).
    fn unchanged(&self, spec: &CertSpec, r: &Record) -> bool {
        let c = haproxy_acme_state::machine::Configuration {
            names: spec.names().as_slice(),
            key_type: self.config.key_type,
            acme_directory: &self.config.acme_directory,
            deploy_hook: self.config.deploy_hook.is_some(),
            profile: spec.profile_or(self.config.acme_profile.as_deref()),
            challenge: spec.challenge(),
        };
        haproxy_acme_state::machine::is_configured_as(r, &c)
    }

    /// `base` after the configuration's events: `Configured` (names, key type, CA, hook,
    /// profile), then `ChallengeChosen`.
    fn events(&self, spec: &CertSpec, base: &Record) -> Record {
        let configured = Event::Configured {
            names: spec.names().to_vec(),
            key_type: self.config.key_type,
            acme_directory: self.config.acme_directory.clone(),
            deploy_hook: self.config.deploy_hook.is_some(),
            profile: spec
                .profile_or(self.config.acme_profile.as_deref())
                .map(String::from),
        };
        let new = apply(base, configured, self.now);
        let challenge = spec.challenge();
        apply(&new, Event::ChallengeChosen { challenge }, self.now)
    }

    pub(super) fn apply(
        &self,
        spec: &CertSpec,
        old: Option<&Record>,
    ) -> (Option<UnixTime>, Option<Record>) {
        if let Some(r) = old.filter(|r| self.unchanged(spec, r)) {
            debug_assert!(
                self.events(spec, r) == *r,
                "unchanged, yet the events change it"
            );
            sync_tokens(&self.tokens, None, Some(r));
            super::watchdog::note(&self.ids, r);
            return (due_of(r, self.now), None);
        }
        let (id, names) = (spec.id().as_str(), spec.names().as_slice());
        // No copy of the stored record (one per certificate at start-up): only a new
        // one is made.
        let fresh;
        let base = match old {
            Some(r) => r,
            None => {
                fresh = Record::new(names.to_vec(), self.config.key_type, self.now);
                &fresh
            }
        };
        let new = self.events(spec, base);
        sync_tokens(&self.tokens, None, Some(&new));
        let due = due_of(&new, self.now);
        super::watchdog::note(&self.ids, &new);
        if old == Some(&new) {
            return (due, None);
        }
        match old {
            None => tracing::info!(cert = %id, names = ?names, "new certificate wanted"),
            Some(old) => {
                if old.challenge != new.challenge {
                    tracing::info!(cert = %id, challenge = new.challenge.as_str(), "challenge type changed: its next order answers it");
                }
                let other = Record {
                    challenge: new.challenge,
                    ..old.clone()
                };
                if other != new {
                    tracing::info!(cert = %id, names = ?names, profile = ?new.profile, "certificate names, key type, CA or profile changed: re-issuing")
                }
            }
        }
        (due, Some(new))
    }
}
