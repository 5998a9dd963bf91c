//! The ACME side of the shell: the [`Ca`] trait the reconciler talks to, and its failures
//! classified for the core. [`client`] implements it with instant-acme (the only user of that
//! crate besides [`account`], which sends the new-account request itself: our stored key, the
//! contact and the EAB in one), [`lazy`] connects the account on first use and registers again
//! when the CA forgot it, [`problem`] classifies the CA's errors, [`http`] is the HTTPS client
//! it runs on (roots, `TCP_NODELAY`, `Retry-After`, bodiless errors made problem documents).

pub mod account;
pub mod client;
pub mod directory;
pub mod http;
pub mod lazy;
pub mod problem;

use async_trait::async_trait;
use haproxy_acme_state::{Challenge, ChallengeType, FailureKind, Step, UnixTime};

pub use client::AcmeClient;
pub use lazy::LazyAcme;

/// An ACME failure, classified for the core.
#[derive(Debug, Clone)]
pub struct AcmeError {
    pub step: Step,
    pub kind: FailureKind,
    pub message: String,
    pub retry_after: Option<UnixTime>,
    /// The order can never complete: the next attempt must create a new one.
    pub order_dead: bool,
    /// The CA no longer knows (or deactivated) the account that signed the request;
    /// `LazyAcme` registers again and repeats the call before anything reaches the core.
    pub account_gone: bool,
    /// The CA was not reached (connection or TLS failure): what the daemon waits for, not
    /// something the CA said.
    pub unreachable: bool,
}

impl AcmeError {
    pub fn new(step: Step, kind: FailureKind, message: impl Into<String>) -> AcmeError {
        AcmeError {
            step,
            kind,
            message: message.into(),
            retry_after: None,
            order_dead: false,
            account_gone: false,
            unreachable: false,
        }
    }
}

impl std::fmt::Display for AcmeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The CA's suggested renewal window (start, end) and when to ask again (RFC 9773).
pub type RenewalInfo = ((UnixTime, UnixTime), Option<UnixTime>);

/// What the reconciler needs from an ACME CA. Every call may first connect the account (a
/// failure then has step `account`).
#[async_trait]
pub trait Ca: Send + Sync + 'static {
    /// Creates an order for `names` and returns its URL (to be persisted before anything else).
    /// `replaces`: the PEM chain of the certificate this order renews (RFC 9773 §5), given only
    /// when the CA offers renewal information. `profile`: the ACME profile to ask for
    /// (draft-aaron-acme-profiles); `None` lets the CA choose.
    async fn new_order(
        &self,
        names: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<String, AcmeError>;

    /// Takes the order at `url` as far as it goes, whatever state a previous run left it in,
    /// calling `hooks` at its two durable points; returns the PEM chain.
    async fn drive_order(
        &self,
        url: &str,
        names: &[String],
        hooks: &dyn OrderHooks,
    ) -> Result<String, AcmeError>;

    /// The renewal window of the leaf of `chain_pem`, or `None` when the CA offers no renewal
    /// information.
    async fn renewal_info(&self, chain_pem: &str) -> Result<Option<RenewalInfo>, AcmeError>;
}

/// What `drive_order` needs from its caller at the two durable points of an order.
#[async_trait]
pub trait OrderHooks: Send + Sync {
    /// The challenge type the certificate's orders answer (`challenge=`).
    fn challenge_type(&self) -> ChallengeType;
    /// Publish these challenges (store first, then the responder map or the DNS hook) before
    /// the CA is told to validate. An error (the DNS hook failed) means the CA must not be told.
    async fn publish(&self, challenges: Vec<Challenge>) -> Result<(), AcmeError>;
    /// Checks the published challenges the way the CA will (`PREFLIGHT`); each comes with the
    /// name it validates. An error means the CA must not be told.
    async fn preflight(&self, challenges: &[(String, Challenge)]) -> Result<(), AcmeError>;
    /// dns-persist-01: checks the standing records of `names` authorize `account` (the account
    /// URL) before the CA is told to validate; an error means it must not be told. Other
    /// challenge types have nothing to check.
    async fn check_persist(&self, _account: &str, _names: &[String]) -> Result<(), AcmeError> {
        Ok(())
    }
    /// The stored certificate key for this order, generating and storing one first if needed.
    async fn key_pem(&self) -> Result<String, AcmeError>;
}
