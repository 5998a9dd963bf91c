//! The pure lifecycle: `apply(record, event, now)` folds what happened into a record, and
//! `plan(record, now)` says what the shell must do next for it, or when to look again.

use crate::attention::same_serial;
use crate::timing::{ari_next_check, ari_renewal_time_for, backoff_secs, renewal_time_of};
use crate::{
    Alerted, CertMeta, Challenge, ChallengeType, Condition, Drift, Failure, FailureKind,
    HookOutcome, KeyType, OrderProgress, Record, RevocationReason, Revoked, Stage, Step, UnixTime,
};

/// A failure as reported by the shell, already classified by the module that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReport {
    pub step: Step,
    pub kind: FailureKind,
    pub error: String,
    /// When the CA said to come back (`Retry-After` header or problem document): it always wins.
    pub retry_after: Option<UnixTime>,
    /// Random draw in 0..=1000 for backoff jitter; drawn by the shell so this crate stays pure.
    pub jitter_permille: u16,
    /// The order can never complete (invalid, expired, gone): forget it and order anew next time.
    pub order_dead: bool,
}

/// Something that happened to a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The configuration wants this certificate with these names and key type, from this CA.
    Configured {
        names: Vec<String>,
        key_type: KeyType,
        acme_directory: String,
        /// A deploy hook runs after each new certificate is installed.
        deploy_hook: bool,
        /// The ACME profile orders ask for (`None`: the CA's default).
        profile: Option<String>,
    },
    /// `new_order` returned this URL (persist before using it).
    OrderCreated {
        url: String,
    },
    /// The challenges of the order are published in the responder (persisted for restarts).
    ChallengesPublished {
        challenges: Vec<Challenge>,
    },
    /// The certificate key for the current order is generated and stored.
    KeyStored,
    /// The certificate chain is downloaded and stored with its key.
    CertificateStored {
        meta: CertMeta,
    },
    /// HAProxy serves the certificate with this fingerprint (or, files-only, the file is written).
    Installed {
        fingerprint: String,
    },
    Failed(FailureReport),
    /// The CA's renewal information for the current certificate (RFC 9773): its suggested
    /// window, and when to ask again (its `Retry-After`). `jitter_permille` picks the point in
    /// the window.
    RenewalInfo {
        window: (UnixTime, UnixTime),
        retry_after: Option<UnixTime>,
        jitter_permille: u16,
    },
    /// Asking for renewal information failed (`retry_at`: when to ask again) or the CA offers
    /// none (`None`: stop asking). A CA that offers none (any more) leaves no window in force:
    /// one stored earlier stops counting and the lifetime rule takes over.
    RenewalInfoUnavailable {
        retry_at: Option<UnixTime>,
    },
    /// An operator asked when the certificate renews (`renew ID` without `--force`): the CA's
    /// renewal information is asked for now rather than at the next planned check (a window
    /// can move at any time: a CA that announces a mass revocation moves it into the past).
    RenewalInfoWanted,
    /// Time passed: an issued certificate whose renewal time has come becomes `Expiring`.
    Tick,
    /// The configuration no longer lists the certificate: keep it, renew it no more.
    Unconfigured,
    /// An operator asked to renew now (`renew --force`): a new certificate is ordered even though
    /// the current one is not due, and any recorded failure is cleared.
    ForceRenew,
    /// An operator asked to retry (`retry`): the recorded failure is cleared, so the next step
    /// is taken at once; a failed deploy hook runs again.
    Retry,
    /// The part a failed step waited for works again (the reconciler's probe): the step is
    /// tried now instead of after its backoff, and the failure stays recorded with its attempt
    /// count until the step succeeds (so a failure that keeps coming back is still one that
    /// keeps coming back). Only a failure with a next attempt planned is moved.
    RetryNow,
    /// The deploy hook ran for the certificate with `fingerprint`; `error` says why it failed.
    HookRan {
        fingerprint: String,
        error: Option<String>,
    },
    /// The watchdog asked HAProxy and read the certificate file while the certificate with
    /// `serial` was the installed one, and found `served` and `file` instead (`None`: nothing).
    /// The record is no longer installed (so `plan` installs it again) and the finding is kept.
    Drifted {
        serial: String,
        served: Option<String>,
        file: Option<String>,
    },
    /// The alert step ran for these conditions (empty: the certificate no longer needs
    /// attention).
    Alerted {
        conditions: Vec<Condition>,
    },
    /// A key the store should hold is missing (a damaged store): the order's (`of_order`: the
    /// certificate the CA issues for it can never be stored, so the order is dropped) or the
    /// stored certificate's (it can never be installed again, so it is forgotten; HAProxy keeps
    /// serving what it has). Recorded as a permanent failure, never retried on its own:
    /// `retry` (or `renew --force`) then orders a new certificate with a new key.
    KeyMissing {
        of_order: bool,
        error: String,
    },
    /// The CA revoked the stored certificate with `serial` at the operator's request (`revoke`).
    /// It is recorded, any failure is cleared, and a new certificate is ordered at once (the
    /// revoked one keeps serving until it is installed). Every order stores a key of its own
    /// (`key_generated` starts false), so the next certificate never has the revoked one's key;
    /// an order already in flight keeps its own new key. A report about another serial (a
    /// renewal stored meanwhile) changes nothing.
    Revoked {
        serial: String,
        reason: RevocationReason,
    },
    /// The configuration wants this challenge type for the certificate (`challenge=`). It
    /// applies from the next order (the certificate is not re-issued for it).
    ChallengeChosen {
        challenge: ChallengeType,
    },
    /// The cleanup hook ran for the DNS records of these tokens: they are no longer owed a
    /// cleanup (neither in the order in flight nor in `dns_unclean`).
    DnsCleaned {
        tokens: Vec<String>,
    },
}

/// Work the shell must do for a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a new order for the record's names, and persist its URL.
    CreateOrder,
    /// Take the order at `url` as far as it goes: answer challenges, store a key (unless
    /// `key_generated`), finalize with the stored key, download and store the certificate.
    DriveOrder { url: String, key_generated: bool },
    /// Ask the CA for the renewal window of the current certificate (RFC 9773).
    CheckRenewalInfo,
    /// Write `<id>.pem` and push the stored certificate into HAProxy.
    Install { fingerprint: String },
    /// Run the deploy hook for the installed certificate (once per certificate: a crash before
    /// its outcome is recorded runs it again).
    RunHook { fingerprint: String },
    /// Tell the operator (log, `ALERT_HOOK`) that the certificate's conditions changed to
    /// `conditions` (empty: it no longer needs attention). Planned by
    /// [`plan_with_alerts`](crate::attention::plan_with_alerts).
    Alert { conditions: Vec<Condition> },
}

/// What the shell should do with a record now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run this action now.
    Now(Action),
    /// Nothing to do before this time (renewal, or the end of a backoff).
    At(UnixTime),
    /// Nothing to do until something from outside happens (a permanent failure).
    Idle,
}

/// The configuration a certificate is wanted with: what [`Event::Configured`] and
/// [`Event::ChallengeChosen`] carry, borrowed.
pub struct Configuration<'a> {
    pub names: &'a [String],
    pub key_type: KeyType,
    pub acme_directory: &'a str,
    pub deploy_hook: bool,
    pub profile: Option<&'a str>,
    pub challenge: ChallengeType,
}

/// Whether `record` already is what `Configured` then `ChallengeChosen` of `c` make of it (both
/// would leave it equal), without building either: the start-up pass asks this of every
/// certificate. Kept beside [`apply`]'s `Configured` arm, whose no-op it describes.
pub fn is_configured_as(record: &Record, c: &Configuration) -> bool {
    !record.unconfigured
        && record.names.as_slice() == c.names
        && record.key_type == c.key_type
        && record.acme_directory == c.acme_directory
        && record.deploy_hook == c.deploy_hook
        && record.profile.as_deref() == c.profile
        && record.challenge == c.challenge
        && !record
            .failure
            .as_ref()
            .is_some_and(|f| f.step == Step::Account && f.kind == FailureKind::Permanent)
}

/// Folds `event` into `record` at time `now` and returns the new record. What to do next is
/// [`plan`]'s to say.
pub fn apply(record: &Record, event: Event, now: UnixTime) -> Record {
    let mut r = record.clone();
    let cleaned = match &event {
        Event::DnsCleaned { tokens } => tokens.clone(),
        _ => Vec::new(),
    };
    match event {
        Event::Configured {
            names,
            key_type,
            acme_directory,
            deploy_hook,
            profile,
        } => {
            r.deploy_hook = deploy_hook;
            r.unconfigured = false;
            // A record that never had a CA (just created) takes this one without re-issuing; a
            // change of CA (staging to production, say) re-issues: the certificate and any order
            // in flight belong to the other CA. A change of profile re-issues too (the current
            // certificate keeps serving until the new one is installed).
            let ca_changed = !r.acme_directory.is_empty() && r.acme_directory != acme_directory;
            if r.names != names || r.key_type != key_type || ca_changed || r.profile != profile {
                r.id = names[0].clone();
                r.names = names;
                r.key_type = key_type;
                r.profile = profile;
                restart_issuance(&mut r);
            }
            r.acme_directory = acme_directory;
            // A permanent failure to get the account (the CA requires External Account
            // Binding and none is set, or refuses the one set) is about settings read at
            // start-up: a start (or a reload) is the configuration change it waits for.
            if r.failure
                .as_ref()
                .is_some_and(|f| f.step == Step::Account && f.kind == FailureKind::Permanent)
            {
                r.failure = None;
            }
        }
        Event::OrderCreated { url } => {
            r.stage = Stage::Validating(OrderProgress {
                url,
                created_at: now,
                challenges: Vec::new(),
                key_generated: false,
            });
        }
        Event::ChallengesPublished { challenges } => {
            if let Stage::Validating(o) = &mut r.stage {
                o.challenges = challenges;
            }
        }
        Event::KeyStored => {
            if let Stage::Validating(o) = &mut r.stage {
                o.key_generated = true;
            }
        }
        Event::CertificateStored { meta } => {
            r.renew_at = Some(renewal_time_of(&meta));
            // Ask the CA for a renewal window at once; without one the lifetime rule holds.
            r.ari_window = None;
            r.ari_check_at = Some(now);
            r.cert = Some(meta);
            r.cert_profile = r.profile.clone();
            r.stage = Stage::Issued;
            r.failure = None;
        }
        Event::Installed { fingerprint } => {
            if r.cert.as_ref().map(|c| &c.fingerprint) == Some(&fingerprint) {
                r.installed_fingerprint = Some(fingerprint);
                if r.failure.as_ref().map(|f| f.step) == Some(Step::Install) {
                    r.failure = None;
                }
                if let Some(d) = r.drift.as_mut().filter(|d| d.repaired_at.is_none()) {
                    d.repaired_at = Some(now);
                }
            }
        }
        Event::Failed(report) => {
            let attempts = r
                .failure
                .as_ref()
                .map_or(0, |f| f.attempts)
                .saturating_add(1);
            let next_attempt_at = match report.kind {
                FailureKind::Permanent => None,
                FailureKind::Retryable | FailureKind::RateLimited => {
                    let backed_off = now + backoff_secs(attempts, report.jitter_permille);
                    Some(report.retry_after.map_or(backed_off, |t| t.max(now)))
                }
            };
            if report.order_dead {
                r.stage = without_order(&r);
            }
            r.failure = Some(Failure {
                step: report.step,
                kind: report.kind,
                error: report.error,
                attempts,
                at: now,
                next_attempt_at,
            });
        }
        Event::RenewalInfo {
            window,
            retry_after,
            jitter_permille,
        } => {
            if let Some(c) = &r.cert {
                if r.ari_window != Some(window) {
                    r.renew_at = Some(ari_renewal_time_for(
                        window,
                        jitter_permille,
                        c.not_before,
                        c.not_after,
                    ));
                    r.ari_window = Some(window);
                }
                r.ari_check_at = Some(ari_next_check(now, retry_after));
            }
        }
        Event::RenewalInfoUnavailable { retry_at } => {
            r.ari_check_at = retry_at;
            if retry_at.is_none() && r.ari_window.take().is_some() {
                r.renew_at = r.cert.as_ref().map(renewal_time_of);
            }
        }
        Event::RenewalInfoWanted => {
            if r.cert.is_some() && r.stage == Stage::Issued {
                r.ari_check_at = Some(now);
            }
        }
        Event::Tick => {
            if r.stage == Stage::Issued && r.renew_at.is_some_and(|t| t <= now) {
                r.stage = Stage::Expiring;
            }
        }
        Event::ForceRenew => {
            r.failure = None;
            if r.stage == Stage::Issued {
                r.stage = Stage::Expiring;
            }
        }
        Event::Unconfigured => {
            r.unconfigured = true;
        }
        Event::RetryNow => {
            if let Some(f) = r.failure.as_mut() {
                if f.next_attempt_at.is_some_and(|t| t > now) {
                    f.next_attempt_at = Some(now);
                }
            }
        }
        Event::Retry => {
            r.failure = None;
            if r.hook.as_ref().is_some_and(|h| h.error.is_some()) {
                r.hook = None;
            }
        }
        Event::HookRan { fingerprint, error } => {
            r.hook = Some(HookOutcome {
                fingerprint,
                error,
                at: now,
            });
        }
        Event::Drifted {
            serial,
            served,
            file,
        } => {
            // Only a finding about the certificate that is installed now: a renewal installed
            // meanwhile makes it stale.
            let about_installed = r.is_installed()
                && r.cert
                    .as_ref()
                    .is_some_and(|c| same_serial(&c.serial, &serial));
            if about_installed {
                r.installed_fingerprint = None;
                r.drift = Some(Drift {
                    count: r.drift.as_ref().map_or(0, |d| d.count).saturating_add(1),
                    at: now,
                    served,
                    file,
                    repaired_at: None,
                });
            }
        }
        Event::Alerted { conditions } => {
            r.alert = Some(Alerted {
                conditions,
                at: now,
            });
        }
        Event::KeyMissing { of_order, error } => {
            let step = if of_order {
                r.stage = without_order(&r);
                Step::Finalize
            } else {
                r.cert = None;
                r.renew_at = None;
                r.ari_window = None;
                r.ari_check_at = None;
                if matches!(r.stage, Stage::Issued | Stage::Expiring) {
                    r.stage = Stage::Pending;
                }
                Step::Install
            };
            r.failure = Some(Failure {
                step,
                kind: FailureKind::Permanent,
                error,
                attempts: r
                    .failure
                    .as_ref()
                    .map_or(0, |f| f.attempts)
                    .saturating_add(1),
                at: now,
                next_attempt_at: None,
            });
        }
        Event::Revoked { serial, reason } => {
            if r.cert
                .as_ref()
                .is_some_and(|c| same_serial(&c.serial, &serial))
            {
                r.revoked = Some(Revoked {
                    serial,
                    reason,
                    at: now,
                });
                r.failure = None;
                if matches!(r.stage, Stage::Issued | Stage::Expiring) {
                    r.stage = Stage::Expiring;
                }
            }
        }
        Event::ChallengeChosen { challenge } => {
            r.challenge = challenge;
        }
        Event::DnsCleaned { tokens } => {
            if let Stage::Validating(o) = &mut r.stage {
                o.challenges
                    .retain(|c| !(c.is_dns() && tokens.contains(&c.token)));
            }
            r.dns_unclean.retain(|c| !tokens.contains(&c.token));
        }
    }
    keep_dns_owed(record, &mut r, &cleaned);
    if r != *record {
        r.updated_at = now;
    }
    r
}

/// Forgets the order in flight (its names or key type are no longer wanted) and asks for a new
/// certificate; the current one, if any, keeps serving meanwhile.
/// DNS records are durable intent: a DNS challenge the old record's order held that the new
/// record's order no longer holds (the order was dropped, stored, or its challenges published
/// again with other tokens), and that was not cleaned up, moves to `dns_unclean`, so the
/// cleanup hook still runs for it.
fn keep_dns_owed(old: &Record, r: &mut Record, cleaned: &[String]) {
    let Some(o) = old.order() else { return };
    for c in o.challenges.iter().filter(|c| c.is_dns()) {
        let still_held = r
            .order()
            .is_some_and(|n| n.challenges.iter().any(|n| n.token == c.token));
        let already_owed = r.dns_unclean.iter().any(|u| u.token == c.token);
        if !still_held && !already_owed && !cleaned.contains(&c.token) {
            r.dns_unclean.push(c.clone());
        }
    }
}

fn restart_issuance(r: &mut Record) {
    r.failure = None;
    r.stage = without_order(r);
}

/// The stage of `r` once its order is gone: a new one is due, and the current certificate, if
/// any, keeps serving meanwhile.
fn without_order(r: &Record) -> Stage {
    if r.cert.is_some() {
        Stage::Expiring
    } else {
        Stage::Pending
    }
}

/// What to do next for `record` at `now`. Installing a stored certificate comes first, so a
/// renewal never delays serving a certificate we already have.
pub fn plan(r: &Record, now: UnixTime) -> Plan {
    if r.unconfigured {
        return Plan::Idle;
    }
    if let Some(f) = &r.failure {
        // A stored certificate that is not served (the watchdog found HAProxy serving another)
        // is installed again at once, even while a renewal backs off.
        let repair = f.step != Step::Install && r.cert.is_some() && !r.is_installed();
        match f.next_attempt_at {
            _ if repair => {}
            None => return Plan::Idle,
            Some(t) if t > now => return Plan::At(t),
            Some(_) => {}
        }
    }
    if let Some(cert) = &r.cert {
        if !r.is_installed() {
            return Plan::Now(Action::Install {
                fingerprint: cert.fingerprint.clone(),
            });
        }
        if r.deploy_hook && r.hook.as_ref().map(|h| &h.fingerprint) != Some(&cert.fingerprint) {
            return Plan::Now(Action::RunHook {
                fingerprint: cert.fingerprint.clone(),
            });
        }
    }
    match &r.stage {
        Stage::Pending | Stage::Expiring => Plan::Now(Action::CreateOrder),
        Stage::Validating(o) => Plan::Now(Action::DriveOrder {
            url: o.url.clone(),
            key_generated: o.key_generated,
        }),
        Stage::Issued => {
            if r.ari_check_at.is_some_and(|t| t <= now) {
                return Plan::Now(Action::CheckRenewalInfo);
            }
            match [r.renew_at, r.ari_check_at].into_iter().flatten().min() {
                Some(t) => Plan::At(t),
                None => Plan::Idle,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyType, Phase, RECORD_SCHEMA_VERSION};

    const T0: UnixTime = 1_700_000_000;
    const DAY: i64 = 86_400;

    fn pending() -> Record {
        Record::new(
            vec!["a.test".into(), "www.a.test".into()],
            KeyType::EcdsaP256,
            T0,
        )
    }

    fn meta(fp: &str, nb: UnixTime, days: i64) -> CertMeta {
        CertMeta {
            serial: "1A".into(),
            not_before: nb,
            not_after: nb + days * DAY,
            fingerprint: fp.into(),
            issued_at: nb,
        }
    }

    fn fail(kind: FailureKind, retry_after: Option<UnixTime>, order_dead: bool) -> Event {
        Event::Failed(FailureReport {
            step: Step::Validation,
            kind,
            error: "boom".into(),
            retry_after,
            jitter_permille: 1000,
            order_dead,
        })
    }

    /// Runs a sequence of events, returning the final record.
    fn run(r: Record, events: Vec<(Event, UnixTime)>) -> Record {
        events.into_iter().fold(r, |r, (e, now)| apply(&r, e, now))
    }

    /// The action due at once for `r` at `t`, if any.
    fn due(r: &Record, t: UnixTime) -> Option<Action> {
        match plan(r, t) {
            Plan::Now(a) => Some(a),
            Plan::At(_) | Plan::Idle => None,
        }
    }

    fn issued(fp: &str) -> Record {
        run(
            pending(),
            vec![
                (Event::OrderCreated { url: "u1".into() }, T0),
                (Event::KeyStored, T0),
                (
                    Event::CertificateStored {
                        meta: meta(fp, T0, 90),
                    },
                    T0,
                ),
                (
                    Event::Installed {
                        fingerprint: fp.into(),
                    },
                    T0,
                ),
                // A CA without renewal information (pebble, here): the lifetime rule holds.
                (Event::RenewalInfoUnavailable { retry_at: None }, T0),
            ],
        )
    }

    #[test]
    fn a_new_record_orders_at_once() {
        let r = pending();
        assert_eq!(r.schema_version, RECORD_SCHEMA_VERSION);
        assert_eq!(plan(&r, T0), Plan::Now(Action::CreateOrder));
    }

    #[test]
    fn happy_path_table() {
        // (event, expected phase after, expected action due after)
        let url = "https://ca/order/1".to_string();
        let table: Vec<(Event, Phase, Option<Action>)> = vec![
            (
                Event::OrderCreated { url: url.clone() },
                Phase::Validating,
                Some(Action::DriveOrder {
                    url: url.clone(),
                    key_generated: false,
                }),
            ),
            (
                Event::ChallengesPublished {
                    challenges: vec![Challenge {
                        token: "t".into(),
                        key_authorization: "t.k".into(),
                        ..Challenge::default()
                    }],
                },
                Phase::Validating,
                Some(Action::DriveOrder {
                    url: url.clone(),
                    key_generated: false,
                }),
            ),
            (
                Event::KeyStored,
                Phase::Validating,
                Some(Action::DriveOrder {
                    url: url.clone(),
                    key_generated: true,
                }),
            ),
            (
                Event::CertificateStored {
                    meta: meta("f1", T0, 90),
                },
                Phase::Issued,
                Some(Action::Install {
                    fingerprint: "f1".into(),
                }),
            ),
            (
                Event::Installed {
                    fingerprint: "f1".into(),
                },
                Phase::Issued,
                Some(Action::CheckRenewalInfo),
            ),
            (
                Event::RenewalInfoUnavailable { retry_at: None },
                Phase::Issued,
                None,
            ),
        ];
        let mut r = pending();
        for (i, (event, phase, action)) in table.into_iter().enumerate() {
            r = apply(&r, event, T0);
            assert_eq!(r.phase(), phase, "step {i}");
            assert_eq!(due(&r, T0), action, "step {i}");
        }
        assert!(
            r.order().is_none(),
            "the order is forgotten once the certificate is stored"
        );
        assert!(r.is_installed());
        // 2/3 of a 90-day lifetime, brought forward by the serial's spread ("1A": 26 s).
        let renew = T0 + 60 * DAY - 26;
        assert_eq!(r.renew_at, Some(renew), "2/3 of a 90-day lifetime");
        assert_eq!(plan(&r, T0), Plan::At(renew));
    }

    #[test]
    fn renewal_keeps_the_old_certificate_until_the_new_one_is_installed() {
        let r = issued("f1");
        let renew_at = r.renew_at.unwrap();
        let r = apply(&r, Event::Tick, renew_at - 1);
        assert_eq!(r.phase(), Phase::Issued);
        assert_eq!(due(&r, renew_at - 1), None);
        let r = apply(&r, Event::Tick, renew_at);
        assert_eq!(r.phase(), Phase::Expiring);
        assert_eq!(due(&r, renew_at), Some(Action::CreateOrder));
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, renew_at);
        assert_eq!(r.phase(), Phase::Validating);
        assert!(
            r.is_installed(),
            "the old certificate is still the installed one"
        );
        let r = apply(
            &r,
            Event::CertificateStored {
                meta: meta("f2", renew_at, 90),
            },
            renew_at,
        );
        assert_eq!(
            due(&r, renew_at),
            Some(Action::Install {
                fingerprint: "f2".into()
            })
        );
        assert_eq!(r.installed_fingerprint.as_deref(), Some("f1"));
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f2".into(),
            },
            renew_at,
        );
        assert_eq!(
            due(&r, renew_at),
            Some(Action::CheckRenewalInfo),
            "the new certificate's window is asked for"
        );
        assert!(r.is_installed());
    }

    #[test]
    fn a_stale_install_report_is_ignored() {
        let r = issued("f1");
        let r = apply(&r, Event::ForceRenew, T0);
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, T0);
        let r = apply(
            &r,
            Event::CertificateStored {
                meta: meta("f2", T0, 90),
            },
            T0,
        );
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f1".into(),
            },
            T0,
        );
        assert!(!r.is_installed());
        assert_eq!(
            due(&r, T0),
            Some(Action::Install {
                fingerprint: "f2".into()
            })
        );
    }

    #[test]
    fn failures_are_data_and_back_off() {
        let r = apply(&pending(), Event::OrderCreated { url: "u".into() }, T0);
        let r = apply(&r, fail(FailureKind::Retryable, None, false), T0);
        assert_eq!(due(&r, T0), None, "no action while backing off");
        let f = r.failure.clone().unwrap();
        assert_eq!((f.attempts, f.step), (1, Step::Validation));
        assert_eq!(r.phase(), Phase::Validating, "a failure is not a phase");
        let first = f.next_attempt_at.unwrap();
        assert!(first > T0);
        assert_eq!(plan(&r, T0), Plan::At(first));
        // The order is resumed after the backoff, not replaced.
        assert_eq!(
            plan(&r, first),
            Plan::Now(Action::DriveOrder {
                url: "u".into(),
                key_generated: false
            })
        );
        let r = apply(&r, fail(FailureKind::Retryable, None, false), first);
        let f2 = r.failure.clone().unwrap();
        assert_eq!(f2.attempts, 2);
        assert!(
            f2.next_attempt_at.unwrap() - first > first - T0,
            "the delay grows"
        );
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        let r = apply(
            &pending(),
            fail(FailureKind::RateLimited, Some(T0 + 7 * DAY), false),
            T0,
        );
        assert_eq!(r.failure.unwrap().next_attempt_at, Some(T0 + 7 * DAY));
        let r = apply(
            &pending(),
            fail(FailureKind::Retryable, Some(T0 + 1), false),
            T0,
        );
        assert_eq!(r.failure.unwrap().next_attempt_at, Some(T0 + 1));
    }

    #[test]
    fn a_dead_order_is_dropped_and_ordered_again_after_backoff() {
        let r = apply(&pending(), Event::OrderCreated { url: "u".into() }, T0);
        let r = apply(&r, fail(FailureKind::Retryable, None, true), T0);
        assert_eq!(r.phase(), Phase::Pending);
        assert!(r.order().is_none());
        let t = r.failure.as_ref().unwrap().next_attempt_at.unwrap();
        assert_eq!(plan(&r, t), Plan::Now(Action::CreateOrder));
        // Once issued, a dead renewal order falls back to expiring, still serving the old cert.
        let r = issued("f1");
        let r = apply(&r, Event::ForceRenew, T0);
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, T0);
        let r = apply(&r, fail(FailureKind::Retryable, None, true), T0);
        assert_eq!(r.phase(), Phase::Expiring);
        assert!(r.is_installed());
    }

    #[test]
    fn a_permanent_failure_waits_for_the_operator_or_the_config() {
        let r = apply(&pending(), fail(FailureKind::Permanent, None, true), T0);
        assert_eq!(plan(&r, T0 + 365 * DAY), Plan::Idle);
        let r2 = apply(&r, Event::ForceRenew, T0);
        assert_eq!(due(&r2, T0), Some(Action::CreateOrder));
        assert!(r2.failure.is_none());
        let r3 = apply(
            &r,
            Event::Configured {
                names: vec!["a.test".into()],
                key_type: KeyType::EcdsaP256,
                acme_directory: String::new(),
                deploy_hook: false,
                profile: None,
            },
            T0,
        );
        assert_eq!(due(&r3, T0), Some(Action::CreateOrder));
        assert_eq!(r3.names, vec!["a.test".to_string()]);
    }

    #[test]
    fn configured_as_is_exactly_when_the_events_leave_the_record_as_it_is() {
        let names = vec!["a.test".to_string(), "www.a.test".to_string()];
        let c = |profile: Option<&'static str>, challenge| Configuration {
            names: &names,
            key_type: KeyType::EcdsaP256,
            acme_directory: "https://ca.test/dir",
            deploy_hook: false,
            profile,
            challenge,
        };
        let events = |r: &Record, c: &Configuration| {
            let configured = Event::Configured {
                names: c.names.to_vec(),
                key_type: c.key_type,
                acme_directory: c.acme_directory.into(),
                deploy_hook: c.deploy_hook,
                profile: c.profile.map(String::from),
            };
            let r = apply(r, configured, T0);
            apply(
                &r,
                Event::ChallengeChosen {
                    challenge: c.challenge,
                },
                T0,
            )
        };
        let base = c(None, ChallengeType::Http01);
        let configured = events(&pending(), &base);
        let mut unconfigured = configured.clone();
        unconfigured.unconfigured = true;
        let account_refused = apply(
            &configured,
            Event::Failed(FailureReport {
                step: Step::Account,
                kind: FailureKind::Permanent,
                error: "set EAB_KID".into(),
                retry_after: None,
                jitter_permille: 1000,
                order_dead: false,
            }),
            T0,
        );
        let others = [
            c(Some("shortlived"), ChallengeType::Http01),
            c(None, ChallengeType::Dns01),
        ];
        for r in [&pending(), &configured, &unconfigured, &account_refused] {
            for c in std::iter::once(&base).chain(&others) {
                assert_eq!(is_configured_as(r, c), events(r, c) == *r, "{r:?}");
            }
        }
        assert!(is_configured_as(&configured, &base));
    }

    #[test]
    fn a_permanent_account_failure_waits_for_the_next_start() {
        let configured = Event::Configured {
            names: vec!["a.test".into()],
            key_type: KeyType::EcdsaP256,
            acme_directory: "https://ca.test/dir".into(),
            deploy_hook: false,
            profile: None,
        };
        let r = apply(&pending(), configured.clone(), T0);
        let account = |kind| {
            Event::Failed(FailureReport {
                step: Step::Account,
                kind,
                error: "set EAB_KID and EAB_HMAC_KEY".into(),
                retry_after: None,
                jitter_permille: 1000,
                order_dead: false,
            })
        };
        let failed = apply(&r, account(FailureKind::Permanent), T0);
        assert_eq!(plan(&failed, T0 + 365 * DAY), Plan::Idle);
        let started = apply(&failed, configured.clone(), T0 + 10);
        assert!(started.failure.is_none());
        assert_eq!(due(&started, T0 + 10), Some(Action::CreateOrder));
        // Other failures keep their backoff; permanent ones of other steps wait for an operator.
        let retryable = apply(&r, account(FailureKind::Retryable), T0);
        assert_eq!(apply(&retryable, configured.clone(), T0 + 1), retryable);
        let other = apply(&r, fail(FailureKind::Permanent, None, false), T0);
        assert!(apply(&other, configured, T0 + 1).failure.is_some());
    }

    #[test]
    fn configuration_changes() {
        let r = issued("f1");
        // The same configuration changes nothing, not even updated_at.
        let same = apply(
            &r,
            Event::Configured {
                names: r.names.clone(),
                key_type: r.key_type,
                acme_directory: String::new(),
                deploy_hook: false,
                profile: None,
            },
            T0 + 5,
        );
        assert_eq!(same, r);
        assert_eq!(due(&same, T0 + 5), None);
        // A new name re-issues, keeping the served certificate meanwhile.
        let names = vec!["a.test".to_string(), "b.a.test".to_string()];
        let r2 = apply(
            &r,
            Event::Configured {
                names: names.clone(),
                key_type: r.key_type,
                acme_directory: String::new(),
                deploy_hook: false,
                profile: None,
            },
            T0 + 5,
        );
        assert_eq!(
            (r2.phase(), due(&r2, T0 + 5)),
            (Phase::Expiring, Some(Action::CreateOrder))
        );
        assert_eq!(r2.updated_at, T0 + 5);
        assert!(r2.is_installed());
        // A change while validating drops the order for the old names.
        let v = apply(&r2, Event::OrderCreated { url: "u".into() }, T0);
        let v2 = apply(
            &v,
            Event::Configured {
                names,
                key_type: KeyType::Rsa2048,
                acme_directory: String::new(),
                deploy_hook: false,
                profile: None,
            },
            T0,
        );
        assert!(v2.order().is_none());
        assert_eq!(v2.phase(), Phase::Expiring);
    }

    #[test]
    fn a_change_of_ca_reissues_but_a_first_ca_does_not() {
        let conf = |r: &Record, dir: &str| Event::Configured {
            names: r.names.clone(),
            key_type: r.key_type,
            acme_directory: dir.into(),
            deploy_hook: false,
            profile: None,
        };
        let r = issued("f1");
        let r = apply(&r, conf(&r, "https://staging/dir"), T0);
        assert_eq!(
            (r.phase(), due(&r, T0)),
            (Phase::Issued, None),
            "first CA recorded, nothing re-issued"
        );
        assert_eq!(r.acme_directory, "https://staging/dir");
        let same = apply(&r, conf(&r, "https://staging/dir"), T0 + 1);
        assert_eq!(same, r);
        let r = apply(&r, conf(&r, "https://production/dir"), T0);
        assert_eq!(
            (r.phase(), due(&r, T0)),
            (Phase::Expiring, Some(Action::CreateOrder))
        );
        assert!(
            r.is_installed(),
            "the staging certificate serves until the new one is installed"
        );
        assert_eq!(r.acme_directory, "https://production/dir");
    }

    #[test]
    fn a_change_of_profile_reissues_while_the_old_certificate_serves() {
        let conf = |r: &Record, profile: Option<&str>| Event::Configured {
            names: r.names.clone(),
            key_type: r.key_type,
            acme_directory: String::new(),
            deploy_hook: false,
            profile: profile.map(String::from),
        };
        // A record stored before profiles existed: no profile, as the configuration says.
        let r = issued("f1");
        assert_eq!(
            (r.profile.as_deref(), r.cert_profile.as_deref()),
            (None, None)
        );
        assert_eq!(apply(&r, conf(&r, None), T0 + 1), r, "nothing changes");
        // A profile is configured: a new certificate is ordered, the old one serves meanwhile.
        let r = apply(&r, conf(&r, Some("shortlived")), T0 + 1);
        assert_eq!(
            (r.phase(), due(&r, T0 + 1)),
            (Phase::Expiring, Some(Action::CreateOrder))
        );
        assert!(r.is_installed(), "the old certificate keeps serving");
        assert_eq!(r.profile.as_deref(), Some("shortlived"));
        assert_eq!(
            r.cert_profile, None,
            "the stored certificate is still the old one"
        );
        // An order in flight under the old profile is dropped when the profile changes again.
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, T0 + 2);
        let r = apply(&r, conf(&r, Some("tlsserver")), T0 + 3);
        assert!(r.order().is_none());
        assert_eq!(due(&r, T0 + 3), Some(Action::CreateOrder));
        // The new certificate is stored under the wanted profile; renewals keep it.
        let r = run(
            r,
            vec![
                (Event::OrderCreated { url: "u3".into() }, T0 + 4),
                (
                    Event::CertificateStored {
                        meta: meta("f2", T0 + 4, 45),
                    },
                    T0 + 5,
                ),
            ],
        );
        assert_eq!(r.cert_profile.as_deref(), Some("tlsserver"));
        assert_eq!(apply(&r, conf(&r, Some("tlsserver")), T0 + 6), r);
        let renewing = apply(&r, Event::ForceRenew, T0 + 6);
        assert_eq!(renewing.profile.as_deref(), Some("tlsserver"));
        // Back to the CA's default: re-issued again.
        let r = apply(&r, conf(&r, None), T0 + 7);
        assert_eq!(r.phase(), Phase::Expiring);
        assert_eq!(r.profile, None);
    }

    #[test]
    fn a_challenge_change_applies_from_the_next_order_without_reissuing() {
        let r = issued("f1");
        assert_eq!(
            r.challenge,
            ChallengeType::Http01,
            "records before it: HTTP-01"
        );
        let r2 = apply(
            &r,
            Event::ChallengeChosen {
                challenge: ChallengeType::Dns01,
            },
            T0 + 1,
        );
        assert_eq!(r2.challenge, ChallengeType::Dns01);
        assert_eq!((r2.phase(), due(&r2, T0 + 1)), (r.phase(), due(&r, T0 + 1)));
        assert_eq!(r2.cert, r.cert, "not re-issued");
    }

    #[test]
    fn dns_records_are_owed_a_cleanup_until_it_is_recorded_whatever_becomes_of_the_order() {
        let dns = |t: &str| Challenge {
            token: t.into(),
            key_authorization: format!("{t}.ka"),
            kind: ChallengeType::Dns01,
            domain: Some("a.test".into()),
        };
        let http = Challenge {
            token: "h".into(),
            key_authorization: "h.ka".into(),
            ..Challenge::default()
        };
        let published = run(
            pending(),
            vec![
                (Event::OrderCreated { url: "u1".into() }, T0),
                (
                    Event::ChallengesPublished {
                        challenges: vec![dns("t1"), dns("t2"), http.clone()],
                    },
                    T0,
                ),
            ],
        );
        let owed = |r: &Record| -> Vec<String> {
            r.dns_to_clean().iter().map(|c| c.token.clone()).collect()
        };
        assert_eq!(owed(&published), ["t1", "t2"], "HTTP-01 tokens owe nothing");
        // Cleaned: owed no more, the HTTP-01 challenge stays with the order.
        let cleaned = apply(
            &published,
            Event::DnsCleaned {
                tokens: vec!["t1".into(), "t2".into()],
            },
            T0 + 1,
        );
        assert!(owed(&cleaned).is_empty());
        assert!(cleaned.dns_unclean.is_empty());
        assert_eq!(cleaned.order().unwrap().challenges, [http]);
        // The order dies (or is stored, or its challenges are published again under other
        // tokens) before the cleanup: what it published stays owed, once.
        let dead = apply(
            &published,
            Event::Failed(FailureReport {
                step: Step::Validation,
                kind: FailureKind::Retryable,
                error: "invalid".into(),
                retry_after: None,
                jitter_permille: 0,
                order_dead: true,
            }),
            T0 + 1,
        );
        assert!(dead.order().is_none());
        assert_eq!(owed(&dead), ["t1", "t2"]);
        let republished = apply(
            &published,
            Event::ChallengesPublished {
                challenges: vec![dns("t2"), dns("t3")],
            },
            T0 + 1,
        );
        assert_eq!(owed(&republished), ["t2", "t3", "t1"]);
        let again = apply(&dead, Event::OrderCreated { url: "u2".into() }, T0 + 2);
        assert_eq!(owed(&again), ["t1", "t2"]);
        let done = apply(
            &again,
            Event::DnsCleaned {
                tokens: vec!["t1".into(), "t2".into()],
            },
            T0 + 3,
        );
        assert!(owed(&done).is_empty());
        // Persisted, and read back (a record without the fields reads as HTTP-01, owing none).
        let json = serde_json::to_value(&dead).unwrap();
        assert_eq!(json["dns_unclean"][0]["kind"], "dns-01");
        assert_eq!(json["dns_unclean"][0]["domain"], "a.test");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, dead);
        let plain = serde_json::to_value(issued("f1")).unwrap();
        assert!(plain.get("challenge").is_none() && plain.get("dns_unclean").is_none());
    }

    #[test]
    fn renewal_information_sets_the_renewal_time_and_is_asked_again() {
        let r = run(
            pending(),
            vec![
                (Event::OrderCreated { url: "u".into() }, T0),
                (
                    Event::CertificateStored {
                        meta: meta("f1", T0, 90),
                    },
                    T0,
                ),
                (
                    Event::Installed {
                        fingerprint: "f1".into(),
                    },
                    T0,
                ),
            ],
        );
        assert_eq!(
            plan(&r, T0),
            Plan::Now(Action::CheckRenewalInfo),
            "asked right after issuance"
        );
        let window = (T0 + 59 * DAY, T0 + 61 * DAY);
        let info = |jitter| Event::RenewalInfo {
            window,
            retry_after: Some(T0 + 6 * 3600),
            jitter_permille: jitter,
        };
        let r = apply(&r, info(500), T0);
        assert_eq!(due(&r, T0), None);
        assert_eq!(
            r.renew_at,
            Some(T0 + 60 * DAY),
            "the middle of the window for a draw of 500"
        );
        assert_eq!(
            r.ari_check_at,
            Some(T0 + 6 * 3600),
            "asked again when the CA said"
        );
        assert_eq!(plan(&r, T0), Plan::At(T0 + 6 * 3600));
        // The same window again keeps the chosen time (persisted, not redrawn).
        let r = apply(&r, info(0), T0 + 6 * 3600);
        assert_eq!(r.renew_at, Some(T0 + 60 * DAY));
        // A window moved into the past (revocation): renew now.
        let later = T0 + 7 * 3600;
        let r = apply(
            &r,
            Event::RenewalInfo {
                window: (T0, T0 + 3600),
                retry_after: None,
                jitter_permille: 900,
            },
            later,
        );
        let r = apply(&r, Event::Tick, later);
        assert_eq!(
            (r.phase(), due(&r, later)),
            (Phase::Expiring, Some(Action::CreateOrder))
        );
        // A failed check is asked again later; an unsupported one never.
        let r2 = apply(
            &issued("f1"),
            Event::RenewalInfoUnavailable {
                retry_at: Some(T0 + 99),
            },
            T0,
        );
        assert_eq!(r2.ari_check_at, Some(T0 + 99));
        assert_eq!(issued("f1").ari_check_at, None);
    }

    #[test]
    fn a_ca_that_stops_offering_renewal_information_leaves_the_lifetime_rule() {
        let stored = run(
            pending(),
            vec![
                (Event::OrderCreated { url: "u".into() }, T0),
                (
                    Event::CertificateStored {
                        meta: meta("f1", T0, 90),
                    },
                    T0,
                ),
                (
                    Event::Installed {
                        fingerprint: "f1".into(),
                    },
                    T0,
                ),
            ],
        );
        let lifetime_rule = stored.renew_at;
        assert_eq!(
            lifetime_rule,
            Some(T0 + 60 * DAY - 26),
            "2/3, less serial 1A's spread"
        );
        let r = apply(
            &stored,
            Event::RenewalInfo {
                window: (T0 + 80 * DAY, T0 + 81 * DAY),
                retry_after: None,
                jitter_permille: 0,
            },
            T0,
        );
        assert_eq!(r.renew_at, Some(T0 + 80 * DAY), "the window counts");
        // A failed check keeps the window: the CA still offers it.
        let kept = apply(
            &r,
            Event::RenewalInfoUnavailable {
                retry_at: Some(T0 + 3600),
            },
            T0,
        );
        assert_eq!((kept.ari_window, kept.renew_at), (r.ari_window, r.renew_at));
        // The directory no longer offers renewal information: the window stops counting.
        let r = apply(
            &r,
            Event::RenewalInfoUnavailable { retry_at: None },
            T0 + 10,
        );
        assert_eq!(
            (r.ari_window, r.renew_at, r.ari_check_at),
            (None, lifetime_rule, None)
        );
        assert_eq!(plan(&r, T0 + 10), Plan::At(T0 + 60 * DAY - 26));
    }

    #[test]
    fn an_operator_asking_when_to_renew_asks_the_ca_now() {
        let r = apply(
            &issued("f1"),
            Event::RenewalInfo {
                window: (T0 + 80 * DAY, T0 + 81 * DAY),
                retry_after: Some(T0 + 6 * 3600),
                jitter_permille: 0,
            },
            T0,
        );
        assert_eq!(plan(&r, T0 + 60), Plan::At(T0 + 6 * 3600));
        let r = apply(&r, Event::RenewalInfoWanted, T0 + 60);
        assert_eq!(plan(&r, T0 + 60), Plan::Now(Action::CheckRenewalInfo));
        // Nothing to ask about before the first certificate, nor during an order.
        assert_eq!(apply(&pending(), Event::RenewalInfoWanted, T0), pending());
        let ordering = apply(&r, Event::ForceRenew, T0 + 61);
        let asked = apply(&ordering, Event::RenewalInfoWanted, T0 + 62);
        assert_eq!(asked.ari_check_at, ordering.ari_check_at);
    }

    #[test]
    fn install_failure_retries_the_install_not_the_order() {
        let r = apply(&pending(), Event::OrderCreated { url: "u".into() }, T0);
        let r = apply(
            &r,
            Event::CertificateStored {
                meta: meta("f1", T0, 90),
            },
            T0,
        );
        let mut report = match fail(FailureKind::Retryable, None, false) {
            Event::Failed(f) => f,
            _ => unreachable!(),
        };
        report.step = Step::Install;
        let r = apply(&r, Event::Failed(report), T0);
        let t = r.failure.as_ref().unwrap().next_attempt_at.unwrap();
        assert_eq!(
            plan(&r, t),
            Plan::Now(Action::Install {
                fingerprint: "f1".into()
            })
        );
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f1".into(),
            },
            t,
        );
        assert!(r.failure.is_none());
    }
    #[test]
    fn the_deploy_hook_runs_once_per_installed_certificate() {
        let hook_on = |r: &Record| Event::Configured {
            names: r.names.clone(),
            key_type: r.key_type,
            acme_directory: String::new(),
            deploy_hook: true,
            profile: None,
        };
        // No hook configured: nothing to run.
        assert_eq!(
            plan(&issued("f1"), T0),
            Plan::At(issued("f1").renew_at.unwrap())
        );
        let r = apply(&issued("f1"), hook_on(&issued("f1")), T0);
        let run_f1 = Action::RunHook {
            fingerprint: "f1".into(),
        };
        assert_eq!(
            due(&r, T0),
            Some(run_f1.clone()),
            "the current certificate is deployed once"
        );
        let ran = |fp: &str, error: Option<&str>| Event::HookRan {
            fingerprint: fp.into(),
            error: error.map(String::from),
        };
        let r = apply(&r, ran("f1", Some("exit status 3")), T0);
        assert_eq!(due(&r, T0), None, "a failed hook is not retried on its own");
        assert!(matches!(plan(&r, T0), Plan::At(_)));
        let r = apply(&r, Event::Retry, T0 + 5);
        assert_eq!(
            due(&r, T0 + 5),
            Some(run_f1),
            "retry runs a failed hook again"
        );
        let r = apply(&r, ran("f1", None), T0 + 6);
        let r2 = apply(&r, Event::Retry, T0 + 7);
        assert_eq!(
            due(&r2, T0 + 7),
            None,
            "a hook that succeeded is not run again by retry"
        );
        assert_eq!(r2.hook, r.hook);
        // A renewal: the hook runs for the new certificate only after it is installed.
        let r = apply(&r, Event::ForceRenew, T0 + 10);
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, T0 + 10);
        let r = apply(
            &r,
            Event::CertificateStored {
                meta: meta("f2", T0 + 10, 90),
            },
            T0 + 10,
        );
        assert_eq!(
            due(&r, T0 + 10),
            Some(Action::Install {
                fingerprint: "f2".into()
            })
        );
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f2".into(),
            },
            T0 + 10,
        );
        assert_eq!(
            due(&r, T0 + 10),
            Some(Action::RunHook {
                fingerprint: "f2".into()
            })
        );
    }

    #[test]
    fn retry_clears_a_permanent_failure() {
        let r = apply(&pending(), fail(FailureKind::Permanent, None, true), T0);
        assert_eq!(plan(&r, T0 + 100), Plan::Idle);
        let r = apply(&r, Event::Retry, T0 + 100);
        assert!(r.failure.is_none());
        assert_eq!(due(&r, T0 + 100), Some(Action::CreateOrder));
    }

    #[test]
    fn a_missing_key_is_a_permanent_failure_that_retry_turns_into_a_new_order() {
        // The stored certificate's key is gone (found at install): the certificate is
        // forgotten, nothing happens on its own, and `retry` orders a new one.
        let r = run(
            pending(),
            vec![
                (Event::OrderCreated { url: "u1".into() }, T0),
                (Event::KeyStored, T0),
                (
                    Event::CertificateStored {
                        meta: meta("f1", T0, 90),
                    },
                    T0,
                ),
            ],
        );
        let lost = |of_order| Event::KeyMissing {
            of_order,
            error: "key missing".into(),
        };
        let r = apply(&r, lost(false), T0);
        assert_eq!((r.phase(), r.cert.clone()), (Phase::Pending, None));
        let f = r.failure.clone().unwrap();
        assert_eq!(
            (f.step, f.kind, f.next_attempt_at),
            (Step::Install, FailureKind::Permanent, None)
        );
        assert_eq!(
            plan(&r, T0 + 365 * DAY),
            Plan::Idle,
            "never retried on its own"
        );
        let r = apply(&r, Event::Retry, T0 + 1);
        assert_eq!(due(&r, T0 + 1), Some(Action::CreateOrder));
        // An installed certificate whose key is gone (found by the deploy hook): HAProxy keeps
        // serving it; the record forgets it, and `renew --force` resolves it as `retry` does.
        let r = apply(&issued("f1"), lost(false), T0);
        assert_eq!(r.installed_fingerprint.as_deref(), Some("f1"));
        assert_eq!(plan(&r, T0), Plan::Idle);
        assert_eq!(
            due(&apply(&r, Event::ForceRenew, T0), T0),
            Some(Action::CreateOrder)
        );
        // The order's key is gone after finalize: the order is dropped, the served certificate
        // stays, and `retry` orders anew (with a new key: `key_generated` starts false).
        let r = apply(&issued("f1"), Event::ForceRenew, T0);
        let r = apply(&r, Event::OrderCreated { url: "u2".into() }, T0);
        let r = apply(&r, Event::KeyStored, T0);
        let r = apply(&r, lost(true), T0);
        assert_eq!(r.phase(), Phase::Expiring);
        assert!(r.order().is_none() && r.is_installed());
        assert_eq!(r.failure.as_ref().unwrap().step, Step::Finalize);
        assert_eq!(plan(&r, T0 + DAY), Plan::Idle);
        let r = apply(&r, Event::Retry, T0 + DAY);
        assert_eq!(due(&r, T0 + DAY), Some(Action::CreateOrder));
        let r = apply(&r, Event::OrderCreated { url: "u3".into() }, T0 + DAY);
        assert_eq!(
            due(&r, T0 + DAY),
            Some(Action::DriveOrder {
                url: "u3".into(),
                key_generated: false
            })
        );
    }

    #[test]
    fn an_unconfigured_certificate_is_kept_but_not_renewed_until_configured_again() {
        let r = issued("f1");
        let when = r.renew_at.unwrap() + 1;
        let r = apply(&r, Event::Unconfigured, T0);
        assert_eq!(due(&r, T0), None);
        assert!(r.cert.is_some() && r.is_installed(), "kept");
        assert_eq!(plan(&r, when), Plan::Idle, "not renewed");
        let r = apply(
            &r,
            Event::Configured {
                names: r.names.clone(),
                key_type: r.key_type,
                acme_directory: String::new(),
                deploy_hook: false,
                profile: None,
            },
            when,
        );
        assert!(!r.unconfigured);
        assert_eq!(
            due(&r, when),
            None,
            "the same certificate again: no re-issue"
        );
        let r = apply(&r, Event::Tick, when);
        assert_eq!(
            due(&r, when),
            Some(Action::CreateOrder),
            "renewed again when due"
        );
    }

    #[test]
    fn a_drift_is_repaired_by_installing_again_even_while_a_renewal_backs_off() {
        let drifted = |serial: &str, served: Option<&str>| Event::Drifted {
            serial: serial.into(),
            served: served.map(String::from),
            file: Some("1A".into()),
        };
        let r = issued("f1");
        assert_eq!(
            apply(&r, drifted("0B", None), T0 + 1),
            r,
            "a finding about another certificate changes nothing"
        );
        // Leading zeros are spelling, not value.
        let r = apply(&r, drifted("001a", Some("0B")), T0 + 10);
        assert!(!r.is_installed());
        let d = r.drift.clone().unwrap();
        assert_eq!(
            (d.count, d.at, d.served.as_deref(), d.repaired_at),
            (1, T0 + 10, Some("0B"), None)
        );
        let install = Some(Action::Install {
            fingerprint: "f1".into(),
        });
        assert_eq!(due(&r, T0 + 10), install);
        assert_eq!(
            apply(&r, drifted("1A", None), T0 + 11),
            r,
            "not installed any more: a second finding is not counted twice"
        );
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f1".into(),
            },
            T0 + 12,
        );
        assert!(r.is_installed());
        assert_eq!(r.drift.as_ref().unwrap().repaired_at, Some(T0 + 12));
        // A renewal that waits for the operator does not hold the repair back.
        let failing = apply(&r, Event::ForceRenew, T0 + 20);
        let failing = apply(&failing, fail(FailureKind::Permanent, None, true), T0 + 20);
        assert_eq!(plan(&failing, T0 + 30), Plan::Idle);
        let again = apply(&failing, drifted("1A", None), T0 + 30);
        assert_eq!(again.drift.as_ref().unwrap().count, 2);
        assert_eq!(due(&again, T0 + 30), install);
        let repaired = apply(
            &again,
            Event::Installed {
                fingerprint: "f1".into(),
            },
            T0 + 31,
        );
        assert_eq!(
            plan(&repaired, T0 + 31),
            Plan::Idle,
            "the renewal's failure still waits for the operator"
        );
        assert_eq!(repaired.failure, failing.failure);
    }

    #[test]
    fn a_revoked_certificate_is_ordered_again_at_once_with_a_new_key() {
        let revoked = |serial: &str, reason| Event::Revoked {
            serial: serial.into(),
            reason,
        };
        let key = RevocationReason::KeyCompromise;
        let backing_off = apply(&issued("f1"), Event::ForceRenew, T0);
        let backing_off = apply(
            &backing_off,
            fail(FailureKind::Retryable, Some(T0 + DAY), true),
            T0,
        );
        let permanent = apply(
            &apply(&issued("f1"), Event::ForceRenew, T0),
            fail(FailureKind::Permanent, None, true),
            T0,
        );
        let in_flight = run(
            apply(&issued("f1"), Event::ForceRenew, T0),
            vec![
                (Event::OrderCreated { url: "u2".into() }, T0),
                (Event::KeyStored, T0),
            ],
        );
        // (name, before, event, phase after, recorded, action due at once after)
        type Row = (&'static str, Record, Event, Phase, bool, Option<Action>);
        let table: Vec<Row> = vec![
            (
                "issued: ordered again at once",
                issued("f1"),
                revoked("1A", key),
                Phase::Expiring,
                true,
                Some(Action::CreateOrder),
            ),
            (
                "the serial compares without leading zeros or case",
                issued("f1"),
                revoked("001a", RevocationReason::Superseded),
                Phase::Expiring,
                true,
                Some(Action::CreateOrder),
            ),
            (
                "a failure in backoff is cleared",
                backing_off,
                revoked("1A", RevocationReason::Unspecified),
                Phase::Expiring,
                true,
                Some(Action::CreateOrder),
            ),
            (
                "a permanent failure is cleared",
                permanent,
                revoked("1A", RevocationReason::CessationOfOperation),
                Phase::Expiring,
                true,
                Some(Action::CreateOrder),
            ),
            (
                "an order in flight (its own new key) is driven on",
                in_flight,
                revoked("1A", key),
                Phase::Validating,
                true,
                Some(Action::DriveOrder {
                    url: "u2".into(),
                    key_generated: true,
                }),
            ),
            (
                "another serial (a renewal stored meanwhile) changes nothing",
                issued("f1"),
                revoked("2B", key),
                Phase::Issued,
                false,
                None,
            ),
            (
                "no certificate: nothing to revoke",
                pending(),
                revoked("1A", key),
                Phase::Pending,
                false,
                Some(Action::CreateOrder),
            ),
        ];
        for (name, before, event, phase, recorded, action) in table {
            let r = apply(&before, event.clone(), T0 + 5);
            assert_eq!(r.phase(), phase, "{name}");
            assert_eq!(due(&r, T0 + 5), action, "{name}");
            if recorded {
                let Event::Revoked { serial, reason } = event else {
                    unreachable!()
                };
                assert_eq!(
                    r.revoked,
                    Some(Revoked {
                        serial,
                        reason,
                        at: T0 + 5
                    }),
                    "{name}"
                );
                assert_eq!(r.failure, None, "{name}");
                assert_eq!(r.cert, before.cert, "{name}: keeps serving until replaced");
                assert!(r.is_installed(), "{name}");
            } else {
                assert_eq!(r, before, "{name}");
            }
        }
        // The new order starts without a key: the revoked certificate's key is never reused.
        let r = apply(&issued("f1"), revoked("1A", key), T0);
        let r = apply(&r, Event::OrderCreated { url: "u3".into() }, T0);
        assert_eq!(
            due(&r, T0),
            Some(Action::DriveOrder {
                url: "u3".into(),
                key_generated: false
            })
        );
        // The next certificate installed keeps the record of the revocation.
        let mut next = meta("f2", T0 + 10, 90);
        next.serial = "2B".into();
        let r = apply(&r, Event::CertificateStored { meta: next }, T0 + 10);
        let r = apply(
            &r,
            Event::Installed {
                fingerprint: "f2".into(),
            },
            T0 + 10,
        );
        assert!(r.is_installed());
        assert_eq!(r.revoked.as_ref().map(|v| v.serial.as_str()), Some("1A"));
        // Reason names round-trip, as `--reason` spells them.
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(RevocationReason::parse("caCompromise"), None);
        assert_eq!(RevocationReason::KeyCompromise.code(), 1);
    }
}
