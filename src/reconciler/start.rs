//! Start-up's first step: the wanted set read and checked ([`Reconciler::wanted_now`]), what
//! the daemon checks before it says it is healthy; [`Reconciler::start_with`] brings the store
//! in line with it after.

use super::{Reconciler, StartError};
use crate::config::wanted::Initial;
use crate::config::CertSpec;

/// The wanted set read and checked at start-up, for [`Reconciler::start_with`].
pub struct WantedNow {
    /// Digest of what it was read from.
    pub(super) sources: u64,
    pub(super) specs: Vec<CertSpec>,
}

impl WantedNow {
    /// How many certificates are wanted.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

impl Reconciler {
    /// The wanted set as it is now, checked (an invalid or empty set is an error), for
    /// [`Reconciler::start_with`]: what the daemon checks before it says it is healthy, the pass
    /// over the store coming after.
    pub async fn wanted_now(&self) -> Result<WantedNow, StartError> {
        self.wanted_now_from(Initial::default()).await
    }

    /// Like [`Reconciler::wanted_now`], taking `initial` (what the configuration load read) as
    /// it is when nothing was added at runtime and DOMAINS_FILE has not changed since: the file
    /// is parsed once at start-up, not twice (~40 ms at 100,000 certificates).
    pub async fn wanted_now_from(&self, initial: Initial) -> Result<WantedNow, StartError> {
        let read = if initial.specs.is_empty() {
            self.read_wanted(None).await?
        } else {
            let added = self.store.added().await?;
            if self.wanted.still_reads_as(initial.sources, &added) {
                Ok((initial.sources, Some(initial.specs)))
            } else {
                drop(initial);
                self.wanted.read_since(&added, None)
            }
        };
        match read {
            Ok((_, Some(specs))) if specs.is_empty() => {
                Err(StartError::Config(crate::config::nothing_to_manage()))
            }
            Ok((sources, specs)) => Ok(WantedNow {
                sources,
                specs: specs.expect("read without a digest to match"),
            }),
            Err(errors) => Err(StartError::Config(crate::config::ConfigError(errors))),
        }
    }
}
