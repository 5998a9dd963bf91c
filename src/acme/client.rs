//! The ACME client: account load/create, order create/restore by URL, HTTP-01 authorizations,
//! finalize with a key we generated and stored, certificate download. The only user of
//! instant-acme; its errors are classified here before they reach the core.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use haproxy_acme_state::{Challenge, FailureKind, Step, UnixTime};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeStatus, ChallengeType,
    Identifier, Key, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::OnceCell;

use super::http::{http_client, not_reached, retry_after_from_detail, with_retry_after};
use super::{AcmeError, Ca, OrderHooks, RenewalInfo};
use crate::config::Config;
use crate::store::Store;

/// Order polling: start fast (pebble and Let's Encrypt often finish within tens of
/// milliseconds) and back off, instead of the fixed one-to-five-second sleeps of other clients.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(20))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

impl AcmeError {
    pub(super) fn dead(step: Step, message: impl Into<String>) -> AcmeError {
        AcmeError {
            order_dead: true,
            ..AcmeError::new(step, FailureKind::Retryable, message)
        }
    }

    /// Classifies an instant-acme error: rate limits and permanent refusals by their RFC 8555
    /// problem type, a vanished order (404) as dead, everything else as retryable.
    pub(crate) fn from_acme(step: Step, e: instant_acme::Error) -> AcmeError {
        match e {
            instant_acme::Error::Api(p) => {
                let kind_name = p
                    .r#type
                    .as_deref()
                    .unwrap_or("")
                    .rsplit(':')
                    .next()
                    .unwrap_or("");
                let message = format!(
                    "CA refused: {}{}",
                    p.detail.as_deref().unwrap_or("(no detail)"),
                    p.r#type
                        .as_deref()
                        .map(|t| format!(" [{t}]"))
                        .unwrap_or_default()
                );
                let kind = match kind_name {
                    "rateLimited" => FailureKind::RateLimited,
                    "rejectedIdentifier"
                    | "unsupportedIdentifier"
                    | "caa"
                    | "badCSR"
                    | "badSignatureAlgorithm"
                    | "invalidContact"
                    | "unsupportedContact"
                    | "userActionRequired"
                    | "externalAccountRequired" => FailureKind::Permanent,
                    _ => FailureKind::Retryable,
                };
                let mut err = AcmeError::new(step, kind, message);
                err.order_dead = p.status == Some(404);
                err.retry_after = p.detail.as_deref().and_then(retry_after_from_detail);
                err
            }
            instant_acme::Error::Timeout(when) => {
                let mut err =
                    AcmeError::new(step, FailureKind::Retryable, "timed out waiting for the CA");
                err.retry_after = when.map(unix_at);
                err
            }
            other => AcmeError {
                unreachable: not_reached(&other),
                ..AcmeError::new(step, FailureKind::Retryable, with_sources(&other))
            },
        }
    }
}

/// An error with its chain of causes ("client error (Connect): tls handshake: UnknownIssuer"):
/// the outermost message alone rarely says what to fix.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

fn unix_at(i: Instant) -> UnixTime {
    let from_now = i.saturating_duration_since(Instant::now());
    let t = SystemTime::now() + from_now;
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A connected ACME account.
pub struct AcmeClient {
    account: Account,
}

impl AcmeClient {
    /// Loads the account for the configured directory, or creates it from a key that is stored
    /// before the CA hears of it (so a crash cannot leave an account we hold no key for).
    pub async fn connect(config: &Config, store: &dyn Store) -> Result<AcmeClient, AcmeError> {
        with_retry_after(Self::connect_inner(config, store)).await
    }

    async fn connect_inner(config: &Config, store: &dyn Store) -> Result<AcmeClient, AcmeError> {
        let step = Step::Account;
        let err = |m: String| AcmeError::new(step, FailureKind::Retryable, m);
        let directory = config.acme_directory.clone();
        let builder = || -> Result<_, AcmeError> {
            Ok(Account::builder_with_http(http_client(
                config.acme_ca_bundle.as_deref(),
            )?))
        };
        if let Some(creds) = store
            .account(&directory)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            let creds = serde_json::from_slice(&creds)
                .map_err(|e| err(format!("stored account credentials are unreadable: {e}")))?;
            let account = builder()?
                .from_credentials(creds)
                .await
                .map_err(|e| AcmeError::from_acme(step, e))?;
            return Ok(AcmeClient { account });
        }
        let der = match store
            .account_key(&directory)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            Some(der) => der,
            None => {
                let (_, pkcs8) = Key::generate_pkcs8().map_err(|e| err(e.to_string()))?;
                let der = pkcs8.secret_pkcs8_der().to_vec();
                store
                    .put_account_key(&directory, &der)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                der
            }
        };
        let key = Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(der.as_slice()))
            .map_err(|e| err(format!("stored account key is unreadable: {e}")))?;
        let (account, creds) = builder()?
            .create_from_key(
                (key, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
                directory.clone(),
            )
            .await
            .map_err(|e| AcmeError::from_acme(step, e))?;
        if let Some(email) = &config.email {
            let contact = format!("mailto:{email}");
            account
                .update_contacts(&[contact.as_str()])
                .await
                .map_err(|e| AcmeError::from_acme(step, e))?;
        }
        let creds = serde_json::to_vec(&creds).map_err(|e| err(e.to_string()))?;
        store
            .put_account(&directory, &creds)
            .await
            .map_err(|e| err(e.to_string()))?;
        tracing::info!(account = account.id(), directory = %directory, "ACME account ready");
        Ok(AcmeClient { account })
    }

    /// Creates an order for `names` and returns its URL (to be persisted before anything else).
    /// `replaces`: the PEM chain of the certificate this order renews, when the CA offers
    /// renewal information (RFC 9773 §5); a CA that answers `alreadyReplaced` gets the order
    /// again without it.
    pub async fn new_order(
        &self,
        names: &[String],
        replaces: Option<&str>,
    ) -> Result<String, AcmeError> {
        with_retry_after(self.new_order_inner(names, replaces)).await
    }

    async fn new_order_inner(
        &self,
        names: &[String],
        replaces: Option<&str>,
    ) -> Result<String, AcmeError> {
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let replaced = replaces.and_then(|chain| match certificate_identifier(chain) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "no ARI identifier for the replaced certificate");
                None
            }
        });
        if let Some(id) = replaced {
            match self
                .account
                .new_order(&NewOrder::new(&ids).replaces(id))
                .await
            {
                Ok(order) => return Ok(order.url().to_string()),
                Err(instant_acme::Error::Api(p))
                    if p.r#type
                        .as_deref()
                        .is_some_and(|t| t.ends_with(":alreadyReplaced")) =>
                {
                    tracing::info!("the CA says the certificate was already replaced: ordering without `replaces`");
                }
                Err(e) => return Err(AcmeError::from_acme(Step::Order, e)),
            }
        }
        let order = self
            .account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| AcmeError::from_acme(Step::Order, e))?;
        Ok(order.url().to_string())
    }

    /// The CA's suggested renewal window for the leaf of `chain_pem` and when to ask again
    /// (RFC 9773), or `None` when the CA offers no renewal information.
    pub async fn renewal_info(&self, chain_pem: &str) -> Result<Option<RenewalInfo>, AcmeError> {
        let id = certificate_identifier(chain_pem)
            .map_err(|e| AcmeError::new(Step::Order, FailureKind::Retryable, e))?;
        match self.account.renewal_info(&id).await {
            Ok((info, retry)) => {
                let w = info.suggested_window;
                let retry_at = SystemTime::now() + retry;
                let retry_at = retry_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                Ok(Some((
                    (w.start.unix_timestamp(), w.end.unix_timestamp()),
                    Some(retry_at),
                )))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(AcmeError::from_acme(Step::Order, e)),
        }
    }

    /// Takes the order at `url` as far as it goes, whatever state a previous run left it in:
    /// `pending` → answer the challenges, `ready` → finalize with the stored key, `processing` →
    /// poll, `valid` → download. Returns the PEM chain.
    pub async fn drive_order(
        &self,
        url: &str,
        names: &[String],
        hooks: &dyn OrderHooks,
    ) -> Result<String, AcmeError> {
        with_retry_after(self.drive_order_inner(url, names, hooks)).await
    }

    async fn drive_order_inner(
        &self,
        url: &str,
        names: &[String],
        hooks: &dyn OrderHooks,
    ) -> Result<String, AcmeError> {
        let v = Step::Validation;
        let mut order = self
            .account
            .order(url.to_string())
            .await
            .map_err(|e| AcmeError::from_acme(Step::Order, e))?;
        loop {
            let status = order.state().status;
            match status {
                OrderStatus::Pending => {
                    // First pass: collect and publish every challenge we must answer.
                    let mut challenges = Vec::new();
                    let mut authzs = order.authorizations();
                    while let Some(a) = authzs.next().await {
                        let mut a = a.map_err(|e| AcmeError::from_acme(v, e))?;
                        if a.status != AuthorizationStatus::Pending {
                            continue;
                        }
                        let name = a.identifier().to_string();
                        let ch = a.challenge(ChallengeType::Http01).ok_or_else(|| {
                            AcmeError::new(
                                v,
                                FailureKind::Permanent,
                                format!("the CA offers no http-01 challenge for {name}"),
                            )
                        })?;
                        challenges.push(Challenge {
                            token: ch.token.clone(),
                            key_authorization: ch.key_authorization().as_str().to_string(),
                        });
                    }
                    hooks.publish(challenges).await?;
                    tracing::debug!(order = url, "challenges published");
                    // Second pass (no network: the authorizations are cached): tell the CA.
                    let mut authzs = order.authorizations();
                    while let Some(a) = authzs.next().await {
                        let mut a = a.map_err(|e| AcmeError::from_acme(v, e))?;
                        if a.status != AuthorizationStatus::Pending {
                            continue;
                        }
                        if let Some(mut ch) = a.challenge(ChallengeType::Http01) {
                            if ch.status == ChallengeStatus::Pending {
                                ch.set_ready()
                                    .await
                                    .map_err(|e| AcmeError::from_acme(v, e))?;
                            }
                        }
                    }
                    tracing::debug!(order = url, "challenges set ready");
                    let st = order
                        .poll_ready(&POLL)
                        .await
                        .map_err(|e| AcmeError::from_acme(v, e))?;
                    tracing::debug!(order = url, status = ?st, "order polled");
                    if st == OrderStatus::Invalid {
                        return Err(AcmeError::dead(v, validation_errors(&mut order).await));
                    }
                }
                OrderStatus::Ready => {
                    let key = hooks.key_pem().await?;
                    let csr = crate::pki::csr_der(names, &key).map_err(|e| {
                        AcmeError::new(Step::Finalize, FailureKind::Permanent, e.to_string())
                    })?;
                    tracing::debug!(order = url, "key stored, CSR made");
                    order
                        .finalize_csr(&csr)
                        .await
                        .map_err(|e| AcmeError::from_acme(Step::Finalize, e))?;
                    tracing::debug!(order = url, "finalized");
                }
                OrderStatus::Processing => {
                    return order
                        .poll_certificate(&POLL)
                        .await
                        .map_err(|e| AcmeError::from_acme(Step::Finalize, e));
                }
                OrderStatus::Valid => {
                    return order
                        .certificate()
                        .await
                        .map_err(|e| AcmeError::from_acme(Step::Finalize, e))?
                        .ok_or_else(|| {
                            AcmeError::new(
                                Step::Finalize,
                                FailureKind::Retryable,
                                "the CA returned no certificate",
                            )
                        });
                }
                OrderStatus::Invalid => {
                    let detail = match &order.state().error {
                        Some(p) => p.detail.clone().unwrap_or_default(),
                        None => validation_errors(&mut order).await,
                    };
                    return Err(AcmeError::dead(
                        Step::Order,
                        format!("the order is invalid: {detail}"),
                    ));
                }
            }
        }
    }
}

/// The ACME account of the configured directory, connected on first use (so an unreachable CA
/// is a recorded, retried failure of a certificate rather than a start-up error).
pub struct LazyAcme {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    client: OnceCell<AcmeClient>,
}

impl LazyAcme {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>) -> LazyAcme {
        LazyAcme {
            config,
            store,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&AcmeClient, AcmeError> {
        self.client
            .get_or_try_init(|| AcmeClient::connect(&self.config, self.store.as_ref()))
            .await
    }
}

#[async_trait]
impl Ca for LazyAcme {
    async fn new_order(
        &self,
        names: &[String],
        replaces: Option<&str>,
    ) -> Result<String, AcmeError> {
        self.client().await?.new_order(names, replaces).await
    }

    async fn drive_order(
        &self,
        url: &str,
        names: &[String],
        hooks: &dyn OrderHooks,
    ) -> Result<String, AcmeError> {
        self.client().await?.drive_order(url, names, hooks).await
    }

    async fn renewal_info(&self, chain_pem: &str) -> Result<Option<RenewalInfo>, AcmeError> {
        self.client().await?.renewal_info(chain_pem).await
    }
}

/// The RFC 9773 identifier (`base64url(AKI).base64url(serial)`) of the leaf of a PEM chain.
fn certificate_identifier(chain_pem: &str) -> Result<CertificateIdentifier<'static>, String> {
    let leaf = CertificateDer::from(crate::pki::leaf_der(chain_pem).map_err(|e| e.to_string())?);
    CertificateIdentifier::try_from(&leaf).map(CertificateIdentifier::into_owned)
}

/// Why the authorizations of an invalid order failed, from the CA's own words.
async fn validation_errors(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        let name = a.identifier().to_string();
        if let Ok(state) = a.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    out.push(format!(
                        "{name}: {}",
                        p.detail.as_deref().unwrap_or("validation failed")
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        "validation failed".into()
    } else {
        format!("validation failed: {}", out.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ari_identifier_of_a_stored_chain() {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SerialNumber,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        // RFC 9773 §4.1's example serial; DER keeps its leading zero byte.
        leaf.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x87, 0x65, 0x43, 0x21]));
        let leaf = leaf.signed_by(&KeyPair::generate().unwrap(), &ca).unwrap();
        let chain = format!("{}\n{}", leaf.pem(), ca.pem());
        let id = certificate_identifier(&chain).unwrap().to_string();
        let (aki, serial) = id.split_once('.').unwrap();
        assert_eq!(serial, "AIdlQyE", "the RFC's encoding of 00:87:65:43:21");
        assert!(!aki.is_empty());
        assert!(certificate_identifier("no pem here").is_err());
    }

    #[test]
    fn a_rate_limit_problem_is_classified_with_its_time() {
        let p: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many new orders, retry after 2025-02-03 04:05:06 UTC",
            "status": 429
        }))
        .unwrap();
        let e = AcmeError::from_acme(Step::Order, instant_acme::Error::Api(p));
        assert_eq!(e.kind, FailureKind::RateLimited);
        assert_eq!(e.retry_after, Some(1738555506));
        assert!(!e.order_dead);
    }
}
