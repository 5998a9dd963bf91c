//! `LazyAcme`, the [`Ca`] the daemon uses: the account of the configured directory, connected
//! on first use (an unreachable CA is then a recorded, retried failure of a certificate rather
//! than a start-up error), and registered again when the CA no longer knows it (restored from
//! a backup, restarted, or the account deactivated), after which the call is made once more.

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use haproxy_acme_state::UnixTime;
use tokio::sync::Mutex;

use super::client::AcmeClient;
use super::{AcmeError, Ca, OrderHooks, RenewalInfo};
use crate::config::Config;
use crate::store::Store;

pub struct LazyAcme {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    /// The connected account; replaced (under this lock, so by one task) when the CA forgot it.
    client: Mutex<Option<Arc<AcmeClient>>>,
}

impl LazyAcme {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>) -> LazyAcme {
        LazyAcme {
            config,
            store,
            client: Mutex::new(None),
        }
    }

    /// The account URL (registering the account first when there is none): what a
    /// dns-persist-01 record's `accounturi=` names.
    pub async fn account_url(&self) -> Result<String, AcmeError> {
        Ok(self.client().await?.id().to_string())
    }

    async fn client(&self) -> Result<Arc<AcmeClient>, AcmeError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = Arc::new(AcmeClient::connect(&self.config, self.store.as_ref()).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The account that replaces `gone`, which the CA no longer knows: registered here, unless
    /// another task already did.
    async fn register_again(
        &self,
        gone: &Arc<AcmeClient>,
        why: &AcmeError,
    ) -> Result<Arc<AcmeClient>, AcmeError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !Arc::ptr_eq(c, gone)) {
            return Ok(c.clone());
        }
        tracing::warn!(
            account = gone.id(),
            directory = %self.config.acme_directory,
            error = %why,
            "the CA no longer knows account {}; registering again",
            gone.id()
        );
        let c = Arc::new(AcmeClient::register(&self.config, self.store.as_ref()).await?);
        crate::metrics::global().account_registered_again();
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `call` with the account; when the CA answers that it no longer knows the account,
    /// registers again and runs `call` once more with the new one. An order the old account
    /// placed is then unknown to the new one (404, or not ours): `call` reports it dead, and
    /// the core orders anew (a fresh order only once the old one is known dead) at once rather
    /// than after a backoff: the death is explained, and it happens once per registration.
    async fn with_account<T, F, Fut>(&self, call: F) -> Result<T, AcmeError>
    where
        F: Fn(Arc<AcmeClient>) -> Fut,
        Fut: Future<Output = Result<T, AcmeError>>,
    {
        let c = self.client().await?;
        match call(c.clone()).await {
            Err(e) if e.account_gone => {
                let result = call(self.register_again(&c, &e).await?).await;
                result.map_err(|mut e| {
                    if e.order_dead && e.retry_after.is_none() {
                        e.retry_after = Some(unix_now());
                    }
                    e
                })
            }
            result => result,
        }
    }
}

impl LazyAcme {
    /// Revokes the leaf of `chain_pem` with the account (registered again if the CA forgot it).
    pub async fn revoke(
        &self,
        chain_pem: &str,
        reason: haproxy_acme_state::RevocationReason,
    ) -> Result<(), AcmeError> {
        self.with_account(|c| async move { c.revoke(chain_pem, reason).await })
            .await
    }
}

#[async_trait]
impl Ca for LazyAcme {
    async fn new_order(
        &self,
        names: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<String, AcmeError> {
        self.with_account(|c| async move { c.new_order(names, replaces, profile).await })
            .await
    }

    async fn drive_order(
        &self,
        url: &str,
        names: &[String],
        hooks: &dyn OrderHooks,
    ) -> Result<String, AcmeError> {
        self.with_account(|c| async move { c.drive_order(url, names, hooks).await })
            .await
    }

    async fn renewal_info(&self, chain_pem: &str) -> Result<Option<RenewalInfo>, AcmeError> {
        self.with_account(|c| async move { c.renewal_info(chain_pem).await })
            .await
    }
}

fn unix_now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
