//! The durable points inside an order ([`Hooks`], the [`OrderHooks`] the ACME client calls:
//! challenges recorded before DNS_HOOK or the RFC 2136 update runs and before the CA is told
//! to validate, the certificate key stored before finalize) and the DNS records owed a cleanup
//! (`Reconciler::clean_dns`). Split from `actions.rs`.

use async_trait::async_trait;
use haproxy_acme_state::{Challenge, ChallengeType, Event, FailureKind, KeyType, Step};

use super::execute::With;
use super::Reconciler;
use crate::acme::{AcmeError, OrderHooks};
use crate::store::StoreError;

/// The durable points inside an order, wired to the store.
pub(super) struct Hooks<'a> {
    pub(super) reconciler: &'a Reconciler,
    pub(super) id: &'a str,
    pub(super) key_generated: bool,
    pub(super) key_type: KeyType,
    pub(super) challenge: ChallengeType,
}

#[async_trait]
impl OrderHooks for Hooks<'_> {
    fn challenge_type(&self) -> ChallengeType {
        self.challenge
    }

    /// Records the challenges first (durable intent: a crash from here on leaves DNS records
    /// the next start cleans up), then, for DNS-01, runs DNS_HOOK once per record; the CA is
    /// told to validate only if every run succeeded.
    async fn publish(&self, challenges: Vec<Challenge>) -> Result<(), AcmeError> {
        let dns: Vec<Challenge> = challenges.iter().filter(|c| c.is_dns()).cloned().collect();
        self.reconciler
            .record(self.id, Event::ChallengesPublished { challenges })
            .await
            .map_err(|e| store_failure(Step::Validation, e))?;
        if dns.is_empty() {
            return Ok(());
        }
        let config = &self.reconciler.config;
        if let Some(update) = &config.dns_update {
            return publish_by_update(update, &dns).await;
        }
        let Some(command) = &config.dns_hook else {
            return Err(AcmeError::new(
                Step::Validation,
                FailureKind::Permanent,
                "the certificate has challenge=dns-01 but neither DNS_UPDATE_SERVER nor DNS_HOOK \
                 is set any more: set one (and restart) to publish the TXT records",
            ));
        };
        for i in 0..dns.len() {
            let out = crate::dns_hook::run(
                crate::dns_hook::Stage::Auth,
                command,
                self.id,
                &dns,
                i,
                "",
                config.dns_hook_timeout,
            )
            .await;
            if let Some(e) = out.error {
                return Err(AcmeError::new(
                    Step::Validation,
                    FailureKind::Retryable,
                    format!(
                        "DNS_HOOK failed for {} (the CA was not asked to validate): {e}",
                        crate::dns_hook::record_name(&dns[i])
                    ),
                ));
            }
            self.reconciler
                .dns_auth_output
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(dns[i].token.clone(), out.stdout.trim_end().to_string());
        }
        Ok(())
    }

    /// HTTP-01: each token fetched through HAProxy the CA's way (`crate::preflight`); TLS-ALPN-01:
    /// an `acme-tls/1` handshake through HAProxy's TLS port, its certificate judged. DNS-01
    /// by DNS_HOOK: every authoritative server of each record's zone must answer it (RFC 2136
    /// waits for the same in `publish`; dns-persist-01 has `check_persist`).
    async fn preflight(&self, challenges: &[(String, Challenge)]) -> Result<(), AcmeError> {
        let config = &self.reconciler.config;
        if !config.preflight {
            return Ok(());
        }
        let failed = |kind: ChallengeType, e: String| {
            crate::metrics::global().preflight_failed(kind.as_str());
            AcmeError::new(
                Step::Validation,
                FailureKind::Retryable,
                format!(
                    "preflight failed, the CA was not asked to validate (PREFLIGHT=off skips this \
                     check): {e}"
                ),
            )
        };
        let address = config.preflight_http_address.as_deref();
        let mut checked = 0;
        let mut hooked = Vec::new();
        for (domain, c) in challenges {
            match c.kind {
                ChallengeType::Http01 => {
                    crate::preflight::http01(address, domain, &c.token, &c.key_authorization)
                        .await
                        .map_err(|e| failed(c.kind, e.to_string()))?;
                    checked += 1;
                }
                ChallengeType::TlsAlpn01 => {
                    let address = config.preflight_tls_address.as_deref();
                    crate::preflight::tls_alpn01(address, domain, &c.key_authorization)
                        .await
                        .map_err(|e| failed(c.kind, e.to_string()))?;
                    checked += 1;
                }
                ChallengeType::Dns01 if config.dns_update.is_none() => hooked.push((
                    domain.clone(),
                    crate::dns_hook::validation(&c.key_authorization),
                )),
                _ => {}
            }
        }
        if !hooked.is_empty() {
            let (resolver, label) = crate::dns_persist::resolver(config)
                .await
                .map_err(|e| failed(ChallengeType::Dns01, e))?;
            crate::dns_update::wait_published_elsewhere(
                resolver,
                &label,
                config.dns_persist.authoritative_port,
                &hooked,
                config.dns_persist.propagation_timeout,
            )
            .await
            .map_err(|e| {
                failed(
                    ChallengeType::Dns01,
                    format!("DNS_HOOK exited 0, but {}", e.message),
                )
            })?;
            checked += hooked.len();
        }
        if checked > 0 {
            tracing::debug!(cert = self.id, checked, "preflight passed");
        }
        Ok(())
    }

    /// Reads the standing `_validation-persist` records at their zones' authoritative servers;
    /// a persistUntil within 30 days is warned about (log, metric, `status`).
    async fn check_persist(&self, account: &str, names: &[String]) -> Result<(), AcmeError> {
        let fail = |m: String| AcmeError::new(Step::Validation, FailureKind::Retryable, m);
        let config = &self.reconciler.config;
        let issuers = crate::dns_persist::issuers(config).await.map_err(fail)?;
        let wanted = crate::dns_persist::wanted(names);
        let now = self.reconciler.clock.now();
        let found = crate::dns_persist::check(config, &issuers, account, &wanted, now)
            .await
            .map_err(fail)?;
        for f in &found {
            let left = f.until.map(|t| t - now);
            if let Some(left) = left.filter(|l| *l < crate::dns_persist::EXPIRING_WITHIN) {
                tracing::warn!(cert = self.id, record = %f.name, persist_until = f.until, days_left = left / 86_400, "the dns-persist-01 record's persistUntil is within 30 days: after it the CA refuses the record; create it again with a later persistUntil (`haproxy-acme dns-persist-record {} --until ...`)", self.id);
            }
            crate::metrics::global().dns_persist_until(self.id, &f.name, f.until);
        }
        tracing::debug!(
            cert = self.id,
            records = found.len(),
            "dns-persist-01 records checked"
        );
        Ok(())
    }

    async fn key_pem(&self) -> Result<String, AcmeError> {
        let store_err = |e| store_failure(Step::Finalize, e);
        if self.key_generated {
            if let Some(k) = self
                .reconciler
                .store
                .pending_key(self.id)
                .await
                .map_err(store_err)?
            {
                return Ok(k);
            }
            // The order is `ready`: no CSR was accepted yet, so a new key loses nothing.
            tracing::warn!(
                cert = self.id,
                "the stored key of the order is missing from the store; finalizing with a new key"
            );
        }
        let kt = self.key_type;
        // A key generation failure is not a store failure: say what it is.
        let keygen_err = |m: String| AcmeError::new(Step::Finalize, FailureKind::Retryable, m);
        // An ECDSA key takes microseconds; an RSA key up to seconds, off the async workers.
        let key = match kt {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => crate::pki::generate_key(kt),
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                tokio::task::spawn_blocking(move || crate::pki::generate_key(kt))
                    .await
                    .map_err(|e| keygen_err(format!("key generation task failed: {e}")))?
            }
        }
        .map_err(|e| keygen_err(e.to_string()))?;
        self.reconciler
            .commit(self.id, Event::KeyStored, With::PendingKey(key.clone()))
            .await
            .map_err(store_err)?;
        Ok(key)
    }
}

/// DNS-01 by RFC 2136: each record added at its target (CNAMEs followed), then the wait until
/// every authoritative server of each zone answers every value; only then is the CA told.
async fn publish_by_update(
    update: &crate::config::dns_update::DnsUpdate,
    dns: &[Challenge],
) -> Result<(), AcmeError> {
    use crate::dns_update as du;
    let fail = |e: du::UpdateError| {
        let kind = if e.permanent {
            FailureKind::Permanent
        } else {
            FailureKind::Retryable
        };
        AcmeError::new(
            Step::Validation,
            kind,
            format!("DNS-01 by RFC 2136 (the CA was not asked to validate): {e}"),
        )
    };
    let records: Vec<(&str, String)> = dns
        .iter()
        .map(|c| {
            (
                c.domain.as_deref().unwrap_or_default(),
                crate::dns_hook::validation(&c.key_authorization),
            )
        })
        .collect();
    du::publish(update, &records).await.map_err(fail)
}

fn store_failure(step: Step, e: StoreError) -> AcmeError {
    AcmeError::new(step, FailureKind::Retryable, e.to_string())
}

/// How many times a failed DNS record removal is tried within one cleanup, and the pause
/// between tries (a DNS server restarting, a provider's API answering 5xx for a moment).
const CLEANUP_TRIES: u32 = 3;
const CLEANUP_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

impl Reconciler {
    /// Removes each DNS record of `id` published and not cleaned up (the order's, and those of
    /// orders dropped or finished): by RFC 2136 delete when DNS_UPDATE_SERVER is set, else with
    /// DNS_CLEANUP_HOOK; then records the removed ones cleaned, so each is removed once. With
    /// neither they are only recorded (nothing can remove them). A removal that still fails
    /// after [`CLEANUP_TRIES`] is logged and stays owed (`dns_records_to_clean` in the dump):
    /// tried again after the certificate's next order and at the next start. The certificate
    /// does not wait for it.
    pub(super) async fn clean_dns(&self, id: &str) -> Result<(), StoreError> {
        let Some(r) = self.store.get(id).await? else {
            return Ok(());
        };
        let mut owed: Vec<Challenge> = r.dns_to_clean().into_iter().cloned().collect();
        if owed.is_empty() {
            return Ok(());
        }
        if self.config.dns_update.is_none() && self.config.dns_cleanup_hook.is_none() {
            tracing::info!(
                cert = id,
                records = owed.len(),
                "no DNS_CLEANUP_HOOK: the TXT records DNS_HOOK published are left in place"
            );
            let tokens = owed.into_iter().map(|c| c.token).collect();
            return self
                .record(id, Event::DnsCleaned { tokens })
                .await
                .map(drop);
        }
        let mut cleaned = Vec::new();
        for attempt in 1..=CLEANUP_TRIES {
            if attempt > 1 {
                tokio::time::sleep(CLEANUP_PAUSE).await;
            }
            let last = attempt == CLEANUP_TRIES;
            let mut failed = Vec::new();
            for (i, c) in owed.iter().enumerate() {
                match self.remove_dns_record(id, &owed, i).await {
                    Ok(()) => cleaned.push(c.token.clone()),
                    Err(e) if last => {
                        tracing::error!(cert = id, record = %crate::dns_hook::record_name(c), error = %e, attempts = CLEANUP_TRIES, "removing the TXT record failed: it stays published and owed (`dns_records_to_clean`), tried again after the next order and at the next start");
                        failed.push(c.clone());
                    }
                    Err(e) => {
                        tracing::warn!(cert = id, record = %crate::dns_hook::record_name(c), error = %e, attempt, "removing the TXT record failed; trying again");
                        failed.push(c.clone());
                    }
                }
            }
            owed = failed;
            if owed.is_empty() {
                break;
            }
        }
        if cleaned.is_empty() {
            return Ok(());
        }
        self.record(id, Event::DnsCleaned { tokens: cleaned })
            .await
            .map(drop)
    }

    /// Removes `owed[i]` by RFC 2136 or DNS_CLEANUP_HOOK (with the rest of `owed` as the hook's
    /// remaining challenges).
    async fn remove_dns_record(
        &self,
        id: &str,
        owed: &[Challenge],
        i: usize,
    ) -> Result<(), String> {
        let c = &owed[i];
        if let Some(update) = &self.config.dns_update {
            let domain = c.domain.as_deref().unwrap_or_default();
            let value = crate::dns_hook::validation(&c.key_authorization);
            return crate::dns_update::remove(update, domain, &value)
                .await
                .map_err(|e| e.to_string());
        }
        let Some(command) = &self.config.dns_cleanup_hook else {
            return Ok(());
        };
        let auth_output = self
            .dns_auth_output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&c.token)
            .cloned()
            .unwrap_or_default();
        let out = crate::dns_hook::run(
            crate::dns_hook::Stage::Cleanup,
            command,
            id,
            owed,
            i,
            &auth_output,
            self.config.dns_hook_timeout,
        )
        .await;
        match out.error {
            Some(e) => Err(format!("DNS_CLEANUP_HOOK: {e}")),
            None => {
                self.dns_auth_output
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&c.token);
                Ok(())
            }
        }
    }
}
