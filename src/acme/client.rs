//! The ACME client: account load/register, order create/restore by URL, HTTP-01
//! authorizations, finalize with a key we generated and stored, certificate download. The only
//! user of instant-acme; its errors are classified (`problem`) before they reach the core, and
//! every call is sent again at once on `badNonce` (`nonce_retry!`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haproxy_acme_state::{Challenge, FailureKind, RevocationReason, Step};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeStatus, ChallengeType,
    Identifier, Key, NewOrder, OrderStatus, RetryPolicy, RevocationRequest,
};
use rustls_pki_types::CertificateDer;

use super::http::{http_client, with_retry_after};
use super::problem::{is_not_ours, nonce_retry};
use super::{AcmeError, OrderHooks, RenewalInfo};
use crate::config::Config;
use crate::store::Store;

/// Order polling: start fast (pebble and Let's Encrypt often finish within tens of
/// milliseconds) and back off, instead of the fixed one-to-five-second sleeps of other clients.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(20))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// A connected ACME account.
pub struct AcmeClient {
    account: Account,
}

impl AcmeClient {
    /// Loads the account for the configured directory, or registers it (`register`).
    pub async fn connect(config: &Config, store: &dyn Store) -> Result<AcmeClient, AcmeError> {
        with_retry_after(Self::connect_inner(config, store)).await
    }

    /// Registers the account of the configured directory with the stored account key, creating
    /// and storing a key first if there is none (so a crash cannot leave an account we hold no
    /// key for), and stores its credentials. One new-account request carries the contact
    /// (`EMAIL`) and the External Account Binding (`account`). A CA that forgot the account (restored from a
    /// backup, restarted) registers the same key again; when the key's account is deactivated,
    /// a new key is generated and stored before the CA hears of it.
    pub async fn register(config: &Config, store: &dyn Store) -> Result<AcmeClient, AcmeError> {
        with_retry_after(Self::register_inner(config, store)).await
    }

    /// The account URL.
    pub fn id(&self) -> &str {
        self.account.id()
    }

    async fn connect_inner(config: &Config, store: &dyn Store) -> Result<AcmeClient, AcmeError> {
        let step = Step::Account;
        let err = |m: String| AcmeError::new(step, FailureKind::Retryable, m);
        if let Some(creds) = store
            .account(&config.acme_directory)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            let creds = serde_json::from_slice(&creds)
                .map_err(|e| err(format!("stored account credentials are unreadable: {e}")))?;
            let account =
                Account::builder_with_http(http_client(config.acme_ca_bundle.as_deref())?)
                    .from_credentials(creds)
                    .await
                    .map_err(|e| AcmeError::from_acme(step, e))?;
            return Ok(AcmeClient { account });
        }
        Self::register_inner(config, store).await
    }

    async fn register_inner(config: &Config, store: &dyn Store) -> Result<AcmeClient, AcmeError> {
        let step = Step::Account;
        let err = |m: String| AcmeError::new(step, FailureKind::Retryable, m);
        let directory = &config.acme_directory;
        let der = match store
            .account_key(directory)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            Some(der) => der,
            None => new_account_key(store, directory).await?,
        };
        let registered = match super::account::register(config, &der).await {
            // A new-account request is answered "account gone" only when the key's account is
            // deactivated (pebble: "An account with the provided public key exists but is
            // deactivated"): that key can never sign for us again.
            Err(e) if e.account_gone => {
                tracing::warn!(directory = %directory, error = %e, "the account of the stored account key is deactivated; registering with a new key");
                let der = new_account_key(store, directory).await?;
                super::account::register(config, &der).await?
            }
            result => result?,
        };
        store
            .put_account(directory, &registered.credentials)
            .await
            .map_err(|e| err(e.to_string()))?;
        let account = registered.account;
        tracing::info!(
            account = account.id(),
            directory = %directory,
            contact = ?registered.contact,
            created = registered.created,
            eab = config.eab.as_ref().map(|e| e.kid.as_str()),
            "ACME account ready"
        );
        Ok(AcmeClient { account })
    }

    /// Creates an order for `names` and returns its URL (to be persisted before anything else).
    /// `replaces`: the PEM chain of the certificate this order renews, when the CA offers
    /// renewal information (RFC 9773 §5); a CA that refuses it (`alreadyReplaced`, a
    /// certificate it does not know or cannot find: see `problem::refuses_replaces`) gets the
    /// order again without it. `profile`: the ACME profile asked for (`None`: the CA's default).
    pub async fn new_order(
        &self,
        names: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<String, AcmeError> {
        with_retry_after(self.new_order_inner(names, replaces, profile)).await
    }

    async fn new_order_inner(
        &self,
        names: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<String, AcmeError> {
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let new_order = || {
            let o = NewOrder::new(&ids);
            match profile {
                Some(p) => o.profile(p),
                None => o,
            }
        };
        let replaced = replaces.and_then(|chain| match certificate_identifier(chain) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "no ARI identifier for the replaced certificate");
                None
            }
        });
        if let Some(id) = replaced {
            match nonce_retry!(self.account.new_order(&new_order().replaces(id.clone()))) {
                Ok(order) => return Ok(order.url().to_string()),
                Err(instant_acme::Error::Api(p)) if super::problem::refuses_replaces(&p) => {
                    tracing::info!(problem = %p, "the CA refused `replaces`: ordering without it");
                }
                // The directory offers no renewal information (any more): RFC 9773 §5 says not
                // to send `replaces` then.
                Err(instant_acme::Error::Unsupported(_)) => {
                    tracing::info!(
                        "the CA offers no renewal information: ordering without `replaces`"
                    );
                }
                // The CA created the order but did not echo `replaces` as RFC 9773 §5 requires:
                // instant-acme refuses the answer, but the order exists and is ours. Kept, so it
                // is not created a second time (and every renewal a third).
                Err(e @ instant_acme::Error::Other(_)) if is_replaces_mismatch(&e) => {
                    match super::http::created_location() {
                        Some(url) => {
                            tracing::warn!(order = %url, "the CA created the order without echoing `replaces` (RFC 9773 §5); keeping it");
                            return Ok(url);
                        }
                        None => return Err(AcmeError::from_acme(Step::Order, e)),
                    }
                }
                Err(e) => return Err(AcmeError::from_acme(Step::Order, e)),
            }
        }
        let order = nonce_retry!(self.account.new_order(&new_order()))
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
        let mut order = nonce_retry!(self.account.order(url.to_string())).map_err(|e| {
            if is_not_ours(&e) {
                // Placed by the account we had before registering again (the old one was
                // deactivated): we can never finalize it.
                AcmeError::dead(
                    Step::Order,
                    format!("the order belongs to another account: {e}"),
                )
            } else {
                AcmeError::from_acme(Step::Order, e)
            }
        })?;
        loop {
            let status = order.state().status;
            match status {
                OrderStatus::Pending => {
                    // Fetch every authorization (a `badNonce` skips the one it hit, so start
                    // over; fetched ones are kept), then two passes without network.
                    nonce_retry!(fetch_authorizations(&mut order))
                        .map_err(|e| AcmeError::from_acme(v, e))?;
                    // First pass: collect and publish every challenge we must answer, of the
                    // type the certificate wants.
                    let wanted = hooks.challenge_type();
                    let mut challenges = Vec::new();
                    let mut checked = Vec::new();
                    let mut authzs = order.authorizations();
                    while let Some(a) = authzs.next().await {
                        let mut a = a.map_err(|e| AcmeError::from_acme(v, e))?;
                        if a.status != AuthorizationStatus::Pending {
                            continue;
                        }
                        let name = a.identifier().to_string();
                        let domain = match a.identifier().identifier {
                            instant_acme::Identifier::Dns(d) => d.clone(),
                            other => format!("{other:?}"),
                        };
                        let ch = a.challenge(acme_type(wanted)).ok_or_else(|| {
                            AcmeError::new(
                                v,
                                FailureKind::Permanent,
                                format!(
                                    "the CA offers no {} challenge for {name}",
                                    wanted.as_str()
                                ),
                            )
                        })?;
                        let challenge = Challenge {
                            token: ch.token.clone(),
                            key_authorization: ch.key_authorization().as_str().to_string(),
                            kind: wanted,
                            domain: (!wanted.is_http01()).then(|| domain.clone()),
                        };
                        checked.push((domain, challenge.clone()));
                        challenges.push(challenge);
                    }
                    let persist = !challenges.is_empty()
                        && wanted == haproxy_acme_state::ChallengeType::DnsPersist01;
                    hooks.publish(challenges).await?;
                    if persist {
                        hooks.check_persist(self.account.id(), names).await?;
                    }
                    tracing::debug!(order = url, "challenges published");
                    hooks.preflight(&checked).await?;
                    // Second pass: tell the CA.
                    let mut authzs = order.authorizations();
                    while let Some(a) = authzs.next().await {
                        let mut a = a.map_err(|e| AcmeError::from_acme(v, e))?;
                        if a.status != AuthorizationStatus::Pending {
                            continue;
                        }
                        if let Some(mut ch) = a.challenge(acme_type(wanted)) {
                            if ch.status == ChallengeStatus::Pending {
                                nonce_retry!(ch.set_ready())
                                    .map_err(|e| AcmeError::from_acme(v, e))?;
                            }
                        }
                    }
                    tracing::debug!(order = url, "challenges set ready");
                    let st = nonce_retry!(order.poll_ready(&POLL))
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
                    nonce_retry!(order.finalize_csr(&csr))
                        .map_err(|e| AcmeError::from_acme(Step::Finalize, e))?;
                    tracing::debug!(order = url, "finalized");
                }
                OrderStatus::Processing => {
                    return nonce_retry!(order.poll_certificate(&POLL))
                        .map_err(|e| AcmeError::from_acme(Step::Finalize, e));
                }
                OrderStatus::Valid => {
                    return nonce_retry!(order.certificate())
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

impl AcmeClient {
    /// Asks the CA to revoke the leaf of `chain_pem` (RFC 8555 §7.6), signed by the account that
    /// ordered it. A refusal carries the CA's own words.
    pub async fn revoke(&self, chain_pem: &str, reason: RevocationReason) -> Result<(), AcmeError> {
        let err = |m: String| AcmeError::new(Step::Order, FailureKind::Permanent, m);
        let leaf =
            CertificateDer::from(crate::pki::leaf_der(chain_pem).map_err(|e| err(e.to_string()))?);
        let reason = match reason {
            RevocationReason::Unspecified => instant_acme::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => instant_acme::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => {
                instant_acme::RevocationReason::AffiliationChanged
            }
            RevocationReason::Superseded => instant_acme::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => {
                instant_acme::RevocationReason::CessationOfOperation
            }
        };
        let request = RevocationRequest {
            certificate: &leaf,
            reason: Some(reason),
        };
        with_retry_after(async {
            nonce_retry!(self.account.revoke(&request))
                .map_err(|e| AcmeError::from_acme(Step::Order, e))
        })
        .await
    }
}

/// Generates an account key and stores it (replacing any other) before the CA hears of it.
async fn new_account_key(store: &dyn Store, directory: &str) -> Result<Vec<u8>, AcmeError> {
    let err = |m: String| AcmeError::new(Step::Account, FailureKind::Retryable, m);
    let (_, pkcs8) = Key::generate_pkcs8().map_err(|e| err(e.to_string()))?;
    let der = pkcs8.secret_pkcs8_der().to_vec();
    store
        .put_account_key(directory, &der)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(der)
}

/// Whether instant-acme refused a new-order answer because the CA did not echo `replaces`.
fn is_replaces_mismatch(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Other(inner) if inner.to_string().contains("replaces field mismatch"))
}

/// The RFC 9773 identifier (`base64url(AKI).base64url(serial)`) of the leaf of a PEM chain.
fn certificate_identifier(chain_pem: &str) -> Result<CertificateIdentifier<'static>, String> {
    let leaf = CertificateDer::from(crate::pki::leaf_der(chain_pem).map_err(|e| e.to_string())?);
    CertificateIdentifier::try_from(&leaf).map(CertificateIdentifier::into_owned)
}

/// instant-acme's name of a challenge type (0.8 has no dns-persist-01: its `Unknown` carries
/// the type string, and matches the CA's challenge of that type).
fn acme_type(c: haproxy_acme_state::ChallengeType) -> ChallengeType {
    match c {
        haproxy_acme_state::ChallengeType::Http01 => ChallengeType::Http01,
        haproxy_acme_state::ChallengeType::Dns01 => ChallengeType::Dns01,
        haproxy_acme_state::ChallengeType::DnsPersist01 => {
            ChallengeType::Unknown(c.as_str().to_string())
        }
        haproxy_acme_state::ChallengeType::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Fetches every authorization of `order` not fetched yet.
async fn fetch_authorizations(order: &mut instant_acme::Order) -> Result<(), instant_acme::Error> {
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        a?;
    }
    Ok(())
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
}
