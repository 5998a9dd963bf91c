//! One function per action of the core: create an order (if the rate-limit budget admits it),
//! drive an order to a stored certificate, ask for renewal information, install, run the deploy
//! hook. Each records its outcome as an event; none decides what comes next (`state::plan` does).

use haproxy_acme_state::dump::rfc3339;
use haproxy_acme_state::{Event, FailureKind, Record, Step};

use super::execute::With;
use super::order_hooks::Hooks;
use super::Reconciler;
use crate::acme::AcmeError;
use crate::health::Part;
use crate::installer::InstallError;
use crate::store::StoreError;

impl Reconciler {
    /// Orders a new certificate, unless the local budget says the CA would refuse it.
    pub(super) async fn create_order(&self, r: &Record) -> Result<(), StoreError> {
        let id = r.id.as_str();
        // Stay inside the CA's limits rather than be refused (and locked out) by it. The turn is
        // held until this order is noted: the next admission counts it.
        let _turn = self.budget.turn().await;
        let now = self.clock.now();
        // A renewal once the CA's renewal window has begun names the certificate it replaces
        // (below): Let's Encrypt counts it against no limit. After the window's end too: a CA
        // moves the window into the past to have certificates replaced at once (a revocation),
        // and those renewals are what the exemption is for.
        let renewal = r.cert.is_some();
        let in_window = r.ari_window.is_some_and(|(start, _)| start <= now);
        let admitted = self
            .budget
            .admit(&r.names, renewal, renewal && in_window, now);
        if let Some(d) = admitted.await? {
            let until = crate::budget::spread_deferral(d.until, now, self.dice.permille());
            let message = format!(
                "local rate-limit budget: {}; the order waits until {}",
                d.reason,
                rfc3339(until)
            );
            return self
                .fail(
                    id,
                    Step::Order,
                    FailureKind::RateLimited,
                    message,
                    Some(until),
                    false,
                )
                .await;
        }
        // A renewal from a CA with renewal information names the certificate it replaces.
        let replaces = match (&r.ari_window, r.cert.is_some()) {
            (Some(_), true) => self.store.certificate(id).await?.map(|(chain, _)| chain),
            _ => None,
        };
        let ordered = self
            .ca
            .new_order(&r.names, replaces.as_deref(), r.profile.as_deref())
            .await;
        self.saw_ca(ordered.as_ref().err());
        match ordered {
            Ok(url) => {
                tracing::info!(cert = id, order = %url, profile = r.profile.as_deref().unwrap_or("(the CA's default)"), "order created");
                self.order_started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.to_string(), std::time::Instant::now());
                // The ledger's entry first: the record's flush makes both durable.
                self.budget.ordered(self.clock.now()).await?;
                self.record(id, Event::OrderCreated { url }).await.map(drop)
            }
            Err(e) => self.fail_acme(id, e).await,
        }
    }

    /// Takes the order as far as it goes and stores the certificate with its key.
    pub(super) async fn drive_order(
        &self,
        r: &Record,
        url: &str,
        key_generated: bool,
    ) -> Result<(), StoreError> {
        let id = r.id.as_str();
        let hooks = Hooks {
            reconciler: self,
            id,
            key_generated,
            key_type: r.key_type,
            challenge: r.challenge,
        };
        let started = std::time::Instant::now();
        let kept = self.take_downloaded(id, url);
        let counted = kept.is_some();
        let driven = match kept {
            Some(chain) => {
                tracing::info!(
                    cert = id,
                    order = url,
                    "storing the certificate downloaded before the store failed"
                );
                Ok(chain)
            }
            None => {
                let driven = self.ca.drive_order(url, &r.names, &hooks).await;
                self.saw_ca(driven.as_ref().err());
                // The authorizations are valid or invalid now (or the attempt stopped): the
                // DNS records published for them are removed before anything else is recorded
                // (a dropped or finished order keeps what it owes in `dns_unclean` anyway).
                self.clean_dns(id).await?;
                driven
            }
        };
        let chain = match driven {
            Ok(chain) => chain,
            Err(e) => {
                if e.step == Step::Validation && e.order_dead {
                    self.budget
                        .failed_validation(&r.names, self.clock.now())
                        .await?;
                }
                return self.fail_acme(id, e).await;
            }
        };
        let meta = match crate::pki::chain_meta(&chain, self.clock.now()) {
            Ok(meta) => meta,
            Err(e) => {
                let message = e.to_string();
                return self
                    .fail(
                        id,
                        Step::Finalize,
                        FailureKind::Retryable,
                        message,
                        None,
                        false,
                    )
                    .await;
            }
        };
        let serial = meta.serial.clone();
        // Never stored without its own key: a key lost from the store (damaged, or restored from
        // an older copy) would otherwise have this step refused and retried forever.
        let key = self.store.pending_key(id).await?;
        let key_fits = key.as_deref().map(|k| {
            crate::pki::leaf(&chain)
                .and_then(|leaf| leaf.matches_key(k))
                .unwrap_or(false)
        });
        if key_fits != Some(true) {
            let what = if key.is_none() {
                "is missing from the store"
            } else {
                "in the store is not the key the certificate certifies"
            };
            return self
                .key_missing(
                    id,
                    true,
                    format!(
                        "the key of order {url} {what}: the certificate the CA issued for it \
                         (serial {serial}) cannot be used; `haproxy-acme retry {id}` orders a new \
                         certificate with a new key"
                    ),
                )
                .await;
        }
        // The ledger's entry first, so that the certificate's flush makes both durable; once
        // per certificate: a chain kept after a failed store write is not counted again (an
        // entry whose own append failed is lost, as one a crash loses before the flush).
        if !counted {
            if let Err(e) = self.budget.issued(&r.names, self.clock.now()).await {
                self.keep_downloaded(id, url, chain);
                return Err(e);
            }
        }
        let stored = self
            .commit(
                id,
                Event::CertificateStored { meta },
                With::Chain(chain.clone()),
            )
            .await;
        if let Err(e) = stored {
            self.keep_downloaded(id, url, chain);
            return Err(e);
        }
        let since_order = self
            .order_started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        crate::metrics::global().issued(since_order.map_or(started.elapsed(), |t| t.elapsed()));
        tracing::info!(cert = id, serial = %serial, ms = started.elapsed().as_millis() as u64, "certificate issued and stored");
        Ok(())
    }

    /// Asks the CA for the renewal window of the current certificate (RFC 9773).
    pub(super) async fn check_renewal_info(&self, r: &Record) -> Result<(), StoreError> {
        let id = r.id.as_str();
        let ask_again = |e: &AcmeError| {
            tracing::warn!(cert = id, error = %e, "renewal information unavailable; asking again in an hour");
            Event::RenewalInfoUnavailable {
                retry_at: Some(self.clock.now() + 3600),
            }
        };
        let event = match self.store.certificate(id).await? {
            None => Event::RenewalInfoUnavailable { retry_at: None },
            Some((chain, _)) => {
                let info = self.ca.renewal_info(&chain).await;
                self.saw_ca(info.as_ref().err());
                match info {
                    Ok(Some((window, retry_after))) => {
                        tracing::info!(cert = id, start = %rfc3339(window.0), end = %rfc3339(window.1), "renewal window from the CA");
                        Event::RenewalInfo {
                            window,
                            retry_after,
                            jitter_permille: self.dice.permille(),
                        }
                    }
                    Ok(None) => Event::RenewalInfoUnavailable { retry_at: None },
                    Err(e) => ask_again(&e),
                }
            }
        };
        // Asked again after a crash that loses it.
        self.commit(id, event, With::Observation).await.map(drop)
    }

    /// Puts the stored certificate into HAProxy (file and runtime API). Returns what the
    /// certificate waits for when the file could not be written or the runtime API not reached.
    pub(super) async fn install(
        &self,
        r: &Record,
        fingerprint: String,
    ) -> Result<Option<Part>, StoreError> {
        let id = r.id.as_str();
        let Some(meta) = r.cert.clone().filter(|c| c.fingerprint == fingerprint) else {
            return Ok(None);
        };
        let Some((chain, key)) = self.store.certificate(id).await? else {
            return self
                .certificate_key_missing(id, &meta.serial)
                .await
                .map(|()| None);
        };
        let installed = self.haproxy.install(id, &chain, &key, &meta).await;
        self.saw_haproxy(installed.as_ref().err());
        match installed {
            Ok(method) => {
                // Installed again after a crash that loses it (file and runtime API are
                // idempotent): no flush of its own.
                self.commit(id, Event::Installed { fingerprint }, With::Observation)
                    .await?;
                crate::metrics::global().installed(method == crate::installer::Method::RuntimeApi);
                tracing::info!(cert = id, serial = %meta.serial, method = ?method, "certificate installed");
                Ok(None)
            }
            Err(e) => {
                let waits_for = match e {
                    InstallError::File { .. } => Some(Part::CertsDir),
                    InstallError::Unreachable { .. } => Some(Part::RuntimeApi),
                    _ => None,
                };
                if waits_for != Some(Part::CertsDir) {
                    crate::metrics::global().runtime_api_error();
                }
                let message = e.to_string();
                self.fail(
                    id,
                    Step::Install,
                    FailureKind::Retryable,
                    message,
                    None,
                    false,
                )
                .await?;
                Ok(waits_for)
            }
        }
    }

    /// Runs the deploy hook for the installed certificate and records how it went.
    pub(super) async fn run_hook(&self, r: &Record, fingerprint: String) -> Result<(), StoreError> {
        let id = r.id.as_str();
        let Some(command) = &self.config.deploy_hook else {
            // Configured off since the plan was made: the next reload clears the flag.
            let error = Some("DEPLOY_HOOK is no longer set".into());
            return self
                .record(id, Event::HookRan { fingerprint, error })
                .await
                .map(drop);
        };
        let error = match self.store.certificate(id).await? {
            None => {
                let serial = r.cert.as_ref().map_or("", |c| c.serial.as_str());
                return self.certificate_key_missing(id, serial).await;
            }
            Some((chain, key)) => {
                let lineage = crate::hook::lineage_dir(&self.config.data_dir, id);
                let written = tokio::task::spawn_blocking({
                    let lineage = lineage.clone();
                    move || crate::hook::write_lineage(&lineage, &chain, &key)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                match written {
                    Err(e) => Some(format!("cannot write {}: {e}", lineage.display())),
                    Ok(()) => {
                        let out = crate::hook::run(
                            command,
                            &lineage,
                            &r.names,
                            self.config.deploy_hook_timeout,
                        )
                        .await;
                        for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
                            tracing::info!(cert = id, stream = "stdout", "deploy hook: {line}");
                        }
                        for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
                            tracing::info!(cert = id, stream = "stderr", "deploy hook: {line}");
                        }
                        let ms = out.took.as_millis() as u64;
                        match &out.error {
                            None => tracing::info!(cert = id, ms, "deploy hook succeeded"),
                            Some(e) => {
                                tracing::error!(cert = id, ms, error = %e, "deploy hook failed (`retry {id}` runs it again)")
                            }
                        }
                        out.error
                    }
                }
            }
        };
        crate::metrics::global().hook(error.is_none());
        self.record(id, Event::HookRan { fingerprint, error })
            .await
            .map(drop)
    }
}

impl Reconciler {
    /// Records that a key the store should hold is missing: a permanent failure, which `retry`
    /// resolves by ordering a new certificate with a new key (`Event::KeyMissing`).
    async fn key_missing(&self, id: &str, of_order: bool, error: String) -> Result<(), StoreError> {
        crate::metrics::global().failure(
            if of_order {
                Step::Finalize
            } else {
                Step::Install
            }
            .as_str(),
            FailureKind::Permanent.as_str(),
        );
        tracing::error!(cert = id, "{error}");
        self.record(id, Event::KeyMissing { of_order, error })
            .await
            .map(drop)
    }

    /// The stored certificate (serial `serial`) cannot be read back with its key.
    async fn certificate_key_missing(&self, id: &str, serial: &str) -> Result<(), StoreError> {
        let error = format!(
            "the key (or chain) of the stored certificate (serial {serial}) is missing from the \
             store, so it can never be installed; HAProxy keeps serving what it has. \
             `haproxy-acme retry {id}` orders a new certificate with a new key"
        );
        self.key_missing(id, false, error).await
    }
}

impl Reconciler {
    /// Keeps a downloaded chain the store could not take, for the next try of the same order.
    fn keep_downloaded(&self, id: &str, url: &str, chain: String) {
        self.downloaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string(), (url.to_string(), chain));
    }

    /// The chain kept for `id` if it belongs to the order at `url` (another order drops it: the
    /// record moved on).
    fn take_downloaded(&self, id: &str, url: &str) -> Option<String> {
        let (kept_url, chain) = self
            .downloaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)?;
        (kept_url == url).then_some(chain)
    }
}
