//! One certificate's task: `Tick → plan → action → apply` until the record has nothing to do now,
//! and the record updates every action goes through (one `Store::update` each, with the
//! responder's tokens kept in step).

use std::sync::Arc;

use haproxy_acme_state::dump::rfc3339;
use haproxy_acme_state::machine::FailureReport;
use haproxy_acme_state::{
    apply, plan_with_alerts, Action, Event, FailureKind, Plan, Record, Step, UnixTime,
};

use super::tokens::sync_tokens;
use super::{Ended, Reconciler, MAX_STEPS_PER_WAKE, STORE_RETRY_SECS};
use crate::acme::AcmeError;
use crate::health::Part;
use crate::installer::InstallError;
use crate::store::{Change, StoreError};

/// What is written together with a record change.
pub(super) enum With {
    Nothing,
    /// Nothing, and the change is an observation made again if a crash loses it
    /// ([`Change::PutObservation`]: no flush of its own).
    Observation,
    /// The freshly generated key of the order (`KeyStored`).
    PendingKey(String),
    /// The downloaded chain (`CertificateStored`); the pending key becomes current.
    Chain(String),
}

impl Reconciler {
    /// Works on one certificate until it has nothing to do now; returns when to look again, and
    /// what it waits for.
    pub(super) async fn drive(self: Arc<Self>, id: String) -> Ended {
        let mut waits_for = None;
        for _ in 0..MAX_STEPS_PER_WAKE {
            let step = async {
                let r = self.record(&id, Event::Tick).await?;
                match plan_with_alerts(&r, self.clock.now()) {
                    Plan::At(t) => Ok(Some(Some(t))),
                    Plan::Idle => Ok(Some(None)),
                    Plan::Now(action) => {
                        waits_for = self.execute(&r, action).await?;
                        Ok::<_, StoreError>(None)
                    }
                }
            };
            match step.await {
                Ok(Some(next)) => {
                    return Ended {
                        id,
                        next,
                        waits_for,
                    }
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(cert = %id, error = %e, "store error");
                    let next = Some(self.clock.now() + STORE_RETRY_SECS);
                    let waits_for = Some(Part::Store);
                    return Ended {
                        id,
                        next,
                        waits_for,
                    };
                }
            }
        }
        tracing::error!(cert = %id, "no progress after {MAX_STEPS_PER_WAKE} steps; looking again in a minute");
        let next = Some(self.clock.now() + 60);
        Ended {
            id,
            next,
            waits_for: None,
        }
    }

    /// Runs one action and records its outcome; returns what the certificate now waits for.
    async fn execute(&self, r: &Record, action: Action) -> Result<Option<Part>, StoreError> {
        match action {
            Action::CreateOrder => self.create_order(r).await.map(|()| None),
            Action::DriveOrder { url, key_generated } => self
                .drive_order(r, &url, key_generated)
                .await
                .map(|()| None),
            Action::CheckRenewalInfo => self.check_renewal_info(r).await.map(|()| None),
            Action::Install { fingerprint } => self.install(r, fingerprint).await,
            Action::RunHook { fingerprint } => self.run_hook(r, fingerprint).await.map(|()| None),
            Action::Alert { conditions } => self.alert(r, conditions).await.map(|()| None),
        }
    }

    /// Applies `event` to the stored record `id` and writes the result (with `with`), all in one
    /// `Store::update`; publishes new challenges before the record says they are published and
    /// withdraws old ones only after the record no longer needs them. Returns the new record.
    pub(super) async fn commit(
        &self,
        id: &str,
        event: Event,
        with: With,
    ) -> Result<Record, StoreError> {
        self.commit_with(id, event, with).await.map(|(_, new)| new)
    }

    /// [`commit`](Self::commit) of an event alone, returning the record before and after.
    pub(super) async fn commit_both(
        &self,
        id: &str,
        event: Event,
    ) -> Result<(Record, Record), StoreError> {
        self.commit_with(id, event, With::Nothing).await
    }

    async fn commit_with(
        &self,
        id: &str,
        event: Event,
        with: With,
    ) -> Result<(Record, Record), StoreError> {
        let now = self.clock.now();
        let tokens = self.tokens.clone();
        let changed = self
            .store
            .update(id, move |old| {
                let Some(old) = old else {
                    return (Change::Keep, None);
                };
                let new = apply(&old, event, now);
                let change = match with {
                    With::Nothing | With::Observation if new == old => Change::Keep,
                    With::Nothing => Change::Put(new.clone()),
                    With::Observation => Change::PutObservation(new.clone()),
                    With::PendingKey(key) => Change::PutWithPendingKey(new.clone(), key),
                    With::Chain(chain) => Change::PutCertificate(new.clone(), chain),
                };
                if change != Change::Keep {
                    sync_tokens(&tokens, None, Some(&new));
                }
                (change, Some((old, new)))
            })
            .await?;
        let (old, new) =
            changed.ok_or_else(|| StoreError::Write(format!("record {id:?} vanished")))?;
        if old != new {
            sync_tokens(&self.tokens, Some(&old), Some(&new));
            super::watchdog::note(&self.ids, &new);
            tracing::debug!(cert = id, phase = new.phase().as_str(), "record updated");
        }
        Ok((old, new))
    }

    pub(super) async fn record(&self, id: &str, event: Event) -> Result<Record, StoreError> {
        self.commit(id, event, With::Nothing).await
    }

    pub(super) async fn fail(
        &self,
        id: &str,
        step: Step,
        kind: FailureKind,
        message: String,
        retry_after: Option<UnixTime>,
        order_dead: bool,
    ) -> Result<(), StoreError> {
        let r = self
            .record(
                id,
                Event::Failed(FailureReport {
                    step,
                    kind,
                    error: message.clone(),
                    retry_after,
                    jitter_permille: self.dice.permille(),
                    order_dead,
                }),
            )
            .await?;
        let next = r.failure.as_ref().and_then(|f| f.next_attempt_at);
        crate::metrics::global().failure(step.as_str(), kind.as_str());
        tracing::warn!(
            cert = id,
            step = step.as_str(),
            kind = kind.as_str(),
            next_attempt_at = next.map(rfc3339),
            "{message}"
        );
        Ok(())
    }

    pub(super) async fn fail_acme(&self, id: &str, e: AcmeError) -> Result<(), StoreError> {
        self.fail(id, e.step, e.kind, e.message, e.retry_after, e.order_dead)
            .await
    }

    /// Notes what a CA call says about the CA: any answer (`None`, or an error the CA sent)
    /// ends the `ca` condition, a request that got no answer starts it.
    pub(super) fn saw_ca(&self, error: Option<&AcmeError>) {
        let (conditions, now) = (self.health.conditions(), self.clock.now());
        match error {
            Some(e) if e.unreachable => {
                conditions.set(Part::Ca, now, e.message.clone());
            }
            _ => {
                conditions.clear(Part::Ca, now);
            }
        }
    }

    /// Notes what an install or removal says about the certificate directory and HAProxy's
    /// runtime API (`None`: both worked).
    pub(super) fn saw_haproxy(&self, error: Option<&InstallError>) {
        let (conditions, now) = (self.health.conditions(), self.clock.now());
        match error {
            None => {
                conditions.clear(Part::CertsDir, now);
                conditions.clear(Part::RuntimeApi, now);
            }
            Some(e @ InstallError::File { .. }) => {
                conditions.set(Part::CertsDir, now, e.to_string());
            }
            Some(e @ InstallError::Unreachable { .. }) => {
                conditions.set(Part::RuntimeApi, now, e.to_string());
            }
            // HAProxy answered.
            Some(InstallError::Refused { .. } | InstallError::Mismatch { .. }) => {
                conditions.clear(Part::RuntimeApi, now);
            }
            Some(InstallError::Pem(_)) => {}
        }
    }
}
