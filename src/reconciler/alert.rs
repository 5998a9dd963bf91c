//! The alert step (`Action::Alert`): a certificate's conditions (`state::attention`) changed.
//! It is logged, told to `ALERT_HOOK` if one is set, and recorded (`Event::Alerted`), so it is
//! told once per transition and not again after a restart. A hook that ran but whose record
//! could not be written (a full disk) is not run again for the same conditions while this
//! process lives; a crash between the hook and the write runs it again at the next start (at
//! least once, like the deploy hook).

use std::ffi::OsString;
use std::time::Duration;

use haproxy_acme_state::attention::{alerted, problems};
use haproxy_acme_state::{Condition, Event, Record};

use super::Reconciler;
use crate::store::StoreError;

/// The alert hook is killed after this long (and recorded as failed, not retried).
const ALERT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn words(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Reconciler {
    /// Tells the operator that `r` now has `conditions` (none: it no longer needs attention).
    pub(super) async fn alert(
        &self,
        r: &Record,
        conditions: Vec<Condition>,
    ) -> Result<(), StoreError> {
        let id = r.id.as_str();
        let previous = alerted(r).to_vec();
        let message = if conditions.is_empty() {
            tracing::info!(cert = id, was = %words(&previous), "no longer needs attention");
            format!(
                "{id}: no longer needs attention (was: {})",
                words(&previous)
            )
        } else {
            let lines: Vec<String> = problems(r, self.clock.now())
                .into_iter()
                .filter(|(c, _)| conditions.contains(c))
                .map(|(_, p)| p)
                .collect();
            let message = format!("{id}: {}", lines.join("; "));
            tracing::warn!(cert = id, conditions = %words(&conditions), "needs attention: {}", lines.join("; "));
            message
        };
        if let Some(command) = &self.config.alert_hook {
            let ran = self.unrecorded().get(id) == Some(&conditions);
            if !ran {
                let state = if conditions.is_empty() {
                    "ok"
                } else {
                    "attention"
                };
                let vars: [(&str, OsString); 6] = [
                    ("ALERT_ID", id.into()),
                    ("ALERT_NAMES", r.names.join(" ").into()),
                    ("ALERT_STATE", state.into()),
                    ("ALERT_CONDITIONS", words(&conditions).into()),
                    ("ALERT_PREVIOUS", words(&previous).into()),
                    ("ALERT_MESSAGE", message.into()),
                ];
                let out = crate::hook::run_with(command, &vars, ALERT_HOOK_TIMEOUT).await;
                for line in out.stdout.lines().chain(out.stderr.lines()) {
                    if !line.trim().is_empty() {
                        tracing::info!(cert = id, "alert hook: {line}");
                    }
                }
                crate::metrics::global().alert_hook(out.error.is_none());
                if let Some(e) = &out.error {
                    tracing::error!(cert = id, error = %e, "alert hook failed (not run again for this transition)");
                }
                self.unrecorded().insert(id.to_string(), conditions.clone());
            }
        }
        self.record(id, Event::Alerted { conditions }).await?;
        self.unrecorded().remove(id);
        Ok(())
    }

    fn unrecorded(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Condition>>> {
        self.alerts_unrecorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
