//! The certificate lifecycle of haproxy-acme as plain data: records, a pure transition function,
//! the renewal and backoff timing, and the JSON dump schema.
//!
//! # Layout
//! - this file: the record types (what is persisted, one record per certificate id).
//! - `repr`: their persisted JSON layout, and the consistency check on decoding.
//! - [`machine`]: `apply(record, event, now)` and `plan(record, now)`, the only place that decides
//!   what happens next to a certificate.
//! - [`timing`]: when to renew, how long to back off after a failure.
//! - [`dump`]: the versioned JSON view operators read (`state dump`).
//! - [`ledger`]: the local rate-limit budget (what the CA counts, whether one more order fits).
//! - [`attention`]: which certificates need an operator (failing, expiring, not served), the
//!   alert transitions the reconciler runs, and the `status --check` report.
//!
//! Architecture invariant: this crate does no I/O, never reads the clock and never draws random
//! numbers. Time (`now`) and jitter come in as arguments, so every decision can be replayed in a test.

pub mod attention;
pub mod dump;
pub mod ledger;
pub mod machine;
mod repr;
pub mod timing;

use serde::{Deserialize, Serialize};

pub use attention::{plan_with_alerts, Condition};
pub use machine::{apply, plan, Action, Event, Plan};

/// Seconds since the Unix epoch, UTC. The shell reads the clock; the core only compares numbers.
pub type UnixTime = i64;

/// The schema version written into every persisted record. Bump it when the layout changes, and
/// keep a fixture of the old version in the tests together with its upgrade.
pub const RECORD_SCHEMA_VERSION: u32 = 1;

/// The private key algorithm of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa4096,
}

impl KeyType {
    /// The spelling used in configuration (`KEY_TYPE`) and the JSON dump.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa4096 => "rsa4096",
        }
    }

    /// Parses the configuration spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<KeyType> {
        [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where a certificate is in its lifecycle, as status, dump and metrics name it ([`Stage`]
/// without its data). Failures are not a phase: they are recorded in [`Record::failure`] and
/// the record stays where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Wanted, and no valid certificate exists yet.
    Pending,
    /// An order exists at the CA ([`Record::order`] has its URL); the old certificate, if any,
    /// keeps being served.
    Validating,
    /// A certificate is stored; it is (or is about to be) installed in HAProxy.
    Issued,
    /// The renewal time has passed: a new order is due, the current certificate keeps serving.
    Expiring,
}

impl Phase {
    /// Every phase, in declaration order (`phase as usize` is its index).
    pub const ALL: [Phase; 4] = [
        Phase::Pending,
        Phase::Validating,
        Phase::Issued,
        Phase::Expiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Validating => "validating",
            Phase::Issued => "issued",
            Phase::Expiring => "expiring",
        }
    }
}

/// One challenge we answer. HTTP-01 (the default): HAProxy forwards
/// `/.well-known/acme-challenge/{token}` to the responder, which returns `key_authorization`.
/// TLS-ALPN-01: HAProxy forwards a ClientHello offering `acme-tls/1` to the TLS-ALPN responder,
/// which presents a certificate for `domain` carrying SHA-256(`key_authorization`).
/// DNS-01: the DNS hook publishes a TXT record at `_acme-challenge.{domain}` holding
/// base64url(SHA-256(`key_authorization`)), and the cleanup hook removes it. No value is secret
/// (the CA fetches them over plain HTTP or DNS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub token: String,
    pub key_authorization: String,
    /// The challenge type (records stored before DNS-01 existed read as HTTP-01).
    #[serde(default, skip_serializing_if = "ChallengeType::is_http01")]
    pub kind: ChallengeType,
    /// DNS-01: the name validated, without any `*.` (certbot's `CERTBOT_DOMAIN`); TLS-ALPN-01:
    /// the name the CA sends as SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Challenge {
    /// Whether this challenge is answered by a DNS record (the cleanup hook removes it).
    pub fn is_dns(&self) -> bool {
        self.kind.is_dns()
    }
}

/// How the CA validates a certificate's names (a certificate's `challenge=` option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeType {
    /// A token served over HTTP on port 80 (RFC 8555 §8.3).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A TXT record at `_acme-challenge.<name>` (RFC 8555 §8.4), published for each order.
    #[serde(rename = "dns-01")]
    Dns01,
    /// A standing TXT record at `_validation-persist.<name>` naming the CA and the account
    /// (draft-ietf-acme-dns-persist): created once by the operator, never published nor
    /// removed by us; validates wildcards too.
    #[serde(rename = "dns-persist-01")]
    DnsPersist01,
    /// A self-signed certificate with the key authorization's digest, presented to a TLS
    /// handshake with ALPN `acme-tls/1` on port 443 (RFC 8737).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeType {
    pub const ALL: [ChallengeType; 4] = [
        ChallengeType::Http01,
        ChallengeType::Dns01,
        ChallengeType::DnsPersist01,
        ChallengeType::TlsAlpn01,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::DnsPersist01 => "dns-persist-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub fn parse(s: &str) -> Option<ChallengeType> {
        ChallengeType::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn is_http01(&self) -> bool {
        *self == ChallengeType::Http01
    }

    /// Whether each order's challenge is a DNS record we publish (and owe a cleanup): DNS-01.
    pub fn is_dns(&self) -> bool {
        matches!(self, ChallengeType::Dns01)
    }

    /// Whether the CA validates through DNS, so wildcards are allowed: DNS-01 and
    /// dns-persist-01.
    pub fn validates_wildcards(&self) -> bool {
        matches!(self, ChallengeType::Dns01 | ChallengeType::DnsPersist01)
    }
}

/// Where a certificate is in its lifecycle, with the order while there is one: an order exists
/// only while validating. `Issued` and `Expiring` also need a stored certificate
/// ([`Record::cert`]); `apply` keeps that so and decoding refuses a record that breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Wanted, and no valid certificate exists yet.
    Pending,
    /// An order exists at the CA; the old certificate, if any, keeps being served.
    Validating(OrderProgress),
    /// A certificate is stored; it is (or is about to be) installed in HAProxy.
    Issued,
    /// The renewal time has passed: a new order is due, the current certificate keeps serving.
    Expiring,
}

impl Stage {
    pub fn phase(&self) -> Phase {
        match self {
            Stage::Pending => Phase::Pending,
            Stage::Validating(_) => Phase::Validating,
            Stage::Issued => Phase::Issued,
            Stage::Expiring => Phase::Expiring,
        }
    }

    /// The order in flight, while validating.
    pub fn order(&self) -> Option<&OrderProgress> {
        match self {
            Stage::Validating(o) => Some(o),
            Stage::Pending | Stage::Issued | Stage::Expiring => None,
        }
    }
}

/// The order in flight for a record: what a restart needs to resume it instead of ordering again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderProgress {
    /// The order's URL at the CA, persisted before anything else is done with the order.
    pub url: String,
    pub created_at: UnixTime,
    /// The challenges published for this order, so a restarted responder keeps answering them.
    #[serde(default)]
    pub challenges: Vec<Challenge>,
    /// True once the certificate key for this order is generated *and stored*. Finalize only
    /// ever uses a stored key, so a crash after finalize cannot lose the key of the certificate.
    #[serde(default)]
    pub key_generated: bool,
}

/// What we know of the stored certificate (the PEM itself is kept by the store, not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertMeta {
    /// Serial number: its bytes in upper-case hex, as HAProxy's `show ssl cert` prints it.
    pub serial: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    /// SHA-256 of the leaf certificate's DER, lower-case hex.
    pub fingerprint: String,
    pub issued_at: UnixTime,
}

/// How a failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Transient (network, CA hiccup, HAProxy down): retry with exponential backoff.
    Retryable,
    /// The CA said to slow down: retry no earlier than it said.
    RateLimited,
    /// Retrying cannot help (a rejected identifier, say): wait for a configuration change or an
    /// operator.
    Permanent,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::RateLimited => "rate-limited",
            FailureKind::Permanent => "permanent",
        }
    }
}

/// The step that failed, so the dump says where a certificate is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Account,
    Order,
    Validation,
    Finalize,
    Install,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Account => "account",
            Step::Order => "order",
            Step::Validation => "validation",
            Step::Finalize => "finalize",
            Step::Install => "install",
        }
    }
}

/// A recorded failure: the record stays in its phase and tries again at `next_attempt_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: Step,
    pub kind: FailureKind,
    pub error: String,
    /// Consecutive failures since the last success.
    pub attempts: u32,
    pub at: UnixTime,
    /// When to try again; `None` for a permanent failure (no retry until told).
    pub next_attempt_at: Option<UnixTime>,
}

/// The outcome of the deploy hook for one certificate. A failed hook is not retried on its own
/// (hooks need not be idempotent); `retry` runs it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// The certificate the hook ran for.
    pub fingerprint: String,
    /// `None` when the hook exited 0 in time.
    pub error: Option<String>,
    pub at: UnixTime,
}

/// What the watchdog found when HAProxy, or the certificate file, did not hold the stored
/// certificate (someone reloaded HAProxy with old files, a node restarted without them, the file
/// was replaced). Each finding is repaired by installing the stored certificate again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// How many times it was found.
    pub count: u32,
    /// When it was last found.
    pub at: UnixTime,
    /// The serial HAProxy served then; `None`: no certificate under this id's file name, or
    /// none its crt-list uses. Files-only mode: the file's.
    pub served: Option<String>,
    /// The serial of the leaf in `<CERTS_DIR>/<id>.pem` then; `None`: missing or unreadable.
    pub file: Option<String>,
    /// When the stored certificate was confirmed served again; `None` while it is not.
    pub repaired_at: Option<UnixTime>,
}

/// Why a certificate was revoked (RFC 5280 §5.3.1 reason codes, the ones RFC 8555 §7.6 lets a
/// subscriber give).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl RevocationReason {
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// RFC 5280's name, as `revoke --reason` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
        }
    }

    /// RFC 5280's reason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }

    /// Parses RFC 5280's name; `None` for anything else.
    pub fn parse(s: &str) -> Option<RevocationReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The last revocation of a certificate of the record (`revoke`): the next certificate is
/// ordered at once, with a new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The revoked certificate's serial.
    pub serial: String,
    pub reason: RevocationReason,
    pub at: UnixTime,
}

/// The conditions the alert step last ran for (empty: the certificate no longer needed
/// attention), so a restart does not alert again for what was already told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerted {
    pub conditions: Vec<Condition>,
    pub at: UnixTime,
}

/// Everything persisted about one certificate. No key material: keys are stored apart and never
/// pass through this type, so nothing that serializes a record can leak one.
///
/// Persisted as JSON with the stage flat, as `"phase"` and `"order"` (module `repr`); decoding
/// refuses a record whose phase, order and certificate disagree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "repr::RecordRepr")]
pub struct Record {
    pub schema_version: u32,
    /// The certificate id: its first name, also the HAProxy file name `<id>.pem`.
    pub id: String,
    /// All names of the certificate, the id first.
    pub names: Vec<String>,
    pub key_type: KeyType,
    /// The ACME directory the certificate (and any order in flight) comes from; empty until the
    /// configuration says.
    pub acme_directory: String,
    /// Where the certificate is in its lifecycle, and the order in flight if any.
    pub stage: Stage,
    /// The stored certificate: always there when issued or expiring, also while a renewal
    /// validates.
    pub cert: Option<CertMeta>,
    /// Fingerprint of the certificate HAProxy was last confirmed to serve (file written, runtime
    /// API committed and checked), or of the file written in files-only mode.
    pub installed_fingerprint: Option<String>,
    pub renew_at: Option<UnixTime>,
    /// The CA's suggested renewal window for the current certificate (RFC 9773), if it offers one;
    /// `renew_at` is then a random point in it, kept until the window changes.
    pub ari_window: Option<(UnixTime, UnixTime)>,
    /// When to ask the CA for renewal information next; `None` when it offers none.
    pub ari_check_at: Option<UnixTime>,
    pub failure: Option<Failure>,
    /// True when the configuration no longer lists the certificate: it is kept (and served)
    /// but not renewed, unless it is configured again.
    pub unconfigured: bool,
    /// Whether a deploy hook is configured (it runs once for each installed certificate).
    pub deploy_hook: bool,
    /// The last run of the deploy hook.
    pub hook: Option<HookOutcome>,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    /// The watchdog's last finding of HAProxy or the file not holding the stored certificate.
    pub drift: Option<Drift>,
    /// What the alert step last ran for.
    pub alert: Option<Alerted>,
    /// The last revocation (`revoke`).
    pub revoked: Option<Revoked>,
    /// The ACME profile orders ask for (ACME_PROFILE or the certificate's `profile=`); `None`:
    /// the CA's default. A change re-issues, like a change of names.
    pub profile: Option<String>,
    /// The profile the stored certificate was ordered with (`profile` when it was stored).
    pub cert_profile: Option<String>,
    /// The challenge type orders answer (the certificate's `challenge=`); a change applies from
    /// the next order, it does not re-issue.
    pub challenge: ChallengeType,
    /// DNS records published (or about to be: the record is written before the hook runs) for
    /// an order the record no longer holds, and not cleaned up yet. The cleanup hook runs for
    /// these and for the DNS challenges of the order in flight ([`Record::dns_to_clean`]).
    pub dns_unclean: Vec<Challenge>,
}

impl Record {
    /// A new record for a wanted certificate: pending, nothing ordered yet.
    pub fn new(names: Vec<String>, key_type: KeyType, now: UnixTime) -> Record {
        Record {
            schema_version: RECORD_SCHEMA_VERSION,
            id: names[0].clone(),
            names,
            key_type,
            acme_directory: String::new(),
            stage: Stage::Pending,
            cert: None,
            installed_fingerprint: None,
            renew_at: None,
            ari_window: None,
            ari_check_at: None,
            failure: None,
            unconfigured: false,
            deploy_hook: false,
            hook: None,
            created_at: now,
            updated_at: now,
            drift: None,
            alert: None,
            revoked: None,
            profile: None,
            cert_profile: None,
            challenge: ChallengeType::Http01,
            dns_unclean: Vec::new(),
        }
    }

    /// The DNS records published and not cleaned up: the order's DNS challenges, then those
    /// of orders the record no longer holds.
    pub fn dns_to_clean(&self) -> Vec<&Challenge> {
        self.order()
            .into_iter()
            .flat_map(|o| o.challenges.iter())
            .filter(|c| c.is_dns())
            .chain(self.dns_unclean.iter())
            .collect()
    }

    /// The phase of [`Record::stage`], without its data.
    pub fn phase(&self) -> Phase {
        self.stage.phase()
    }

    /// The order in flight, while validating.
    pub fn order(&self) -> Option<&OrderProgress> {
        self.stage.order()
    }

    /// True when the stored certificate is the one HAProxy was last confirmed to serve.
    pub fn is_installed(&self) -> bool {
        match (&self.cert, &self.installed_fingerprint) {
            (Some(c), Some(f)) => &c.fingerprint == f,
            _ => false,
        }
    }
}

/// Records in every phase, built through `apply` only, shared by the tests that pin the persisted
/// record format and the dump format.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::machine::{apply, Event, FailureReport};
    use crate::{CertMeta, Challenge, FailureKind, KeyType, Record, Step, UnixTime};

    const DAY: i64 = 86_400;
    const DIR: &str = "https://ca/dir";

    fn step(r: Record, events: Vec<(Event, UnixTime)>) -> Record {
        events.into_iter().fold(r, |r, (e, now)| apply(&r, e, now))
    }

    fn configured(r: &Record) -> Event {
        Event::Configured {
            names: r.names.clone(),
            key_type: r.key_type,
            acme_directory: DIR.into(),
            deploy_hook: true,
            profile: None,
        }
    }

    fn failed(step: Step, kind: FailureKind, retry_after: Option<UnixTime>, dead: bool) -> Event {
        Event::Failed(FailureReport {
            step,
            kind,
            error: format!("{} failed", step.as_str()),
            retry_after,
            jitter_permille: 500,
            order_dead: dead,
        })
    }

    /// An issued, installed certificate with a renewal window and a failed deploy hook.
    fn issued(id: &str, key_type: KeyType) -> Record {
        let r = Record::new(vec![id.into()], key_type, 100);
        let conf = configured(&r);
        let fp = format!("{id}-f1");
        step(
            r,
            vec![
                (conf, 100),
                (
                    Event::OrderCreated {
                        url: format!("https://ca/order/{id}"),
                    },
                    110,
                ),
                (Event::KeyStored, 111),
                (
                    Event::CertificateStored {
                        meta: CertMeta {
                            serial: "0A1B".into(),
                            not_before: 1000,
                            not_after: 1000 + 90 * DAY,
                            fingerprint: fp.clone(),
                            issued_at: 1001,
                        },
                    },
                    1002,
                ),
                (
                    Event::Installed {
                        fingerprint: fp.clone(),
                    },
                    1003,
                ),
                (
                    Event::RenewalInfo {
                        window: (1000 + 59 * DAY, 1000 + 61 * DAY),
                        retry_after: Some(1004 + 6 * 3600),
                        jitter_permille: 250,
                    },
                    1004,
                ),
                (
                    Event::HookRan {
                        fingerprint: fp,
                        error: Some("exit status 3".into()),
                    },
                    1005,
                ),
            ],
        )
    }

    /// One record in each phase (and a renewal in flight), in id order.
    pub(crate) fn records() -> Vec<Record> {
        let pending = Record::new(vec!["a-pending.test".into()], KeyType::EcdsaP256, 100);
        let v = Record::new(
            vec!["b-validating.test".into(), "www.b-validating.test".into()],
            KeyType::Rsa2048,
            100,
        );
        let conf = configured(&v);
        let validating = step(
            v,
            vec![
                (conf, 100),
                (
                    Event::OrderCreated {
                        url: "https://ca/order/7".into(),
                    },
                    110,
                ),
                (
                    Event::ChallengesPublished {
                        challenges: vec![Challenge {
                            token: "tok".into(),
                            key_authorization: "tok.thumb".into(),
                            ..Challenge::default()
                        }],
                    },
                    111,
                ),
                (Event::KeyStored, 112),
                (
                    failed(Step::Validation, FailureKind::Retryable, None, false),
                    113,
                ),
            ],
        );
        let issued_ = issued("c-issued.test", KeyType::EcdsaP384);
        let expiring = step(
            issued("d-expiring.test", KeyType::Rsa4096),
            vec![
                (Event::ForceRenew, 2000),
                (
                    Event::OrderCreated {
                        url: "https://ca/order/d2".into(),
                    },
                    2001,
                ),
                (
                    failed(Step::Order, FailureKind::Permanent, None, true),
                    2002,
                ),
                (Event::Unconfigured, 2003),
            ],
        );
        let renewing = step(
            issued("e-renewing.test", KeyType::EcdsaP256),
            vec![
                (Event::Tick, 1000 + 61 * DAY),
                (
                    Event::OrderCreated {
                        url: "https://ca/order/e2".into(),
                    },
                    1000 + 61 * DAY,
                ),
                (
                    failed(
                        Step::Finalize,
                        FailureKind::RateLimited,
                        Some(1000 + 62 * DAY),
                        false,
                    ),
                    1000 + 61 * DAY + 5,
                ),
            ],
        );
        vec![pending, validating, issued_, expiring, renewing]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records as the store persists them. Persisted formats are contracts: a change here
    /// breaks every existing store.
    const RECORDS_JSON: &str = r#"{"schema_version":1,"id":"a-pending.test","names":["a-pending.test"],"key_type":"ecdsa-p256","acme_directory":"","phase":"pending","order":null,"cert":null,"installed_fingerprint":null,"renew_at":null,"ari_window":null,"ari_check_at":null,"failure":null,"unconfigured":false,"deploy_hook":false,"hook":null,"created_at":100,"updated_at":100}
{"schema_version":1,"id":"b-validating.test","names":["b-validating.test","www.b-validating.test"],"key_type":"rsa2048","acme_directory":"https://ca/dir","phase":"validating","order":{"url":"https://ca/order/7","created_at":110,"challenges":[{"token":"tok","key_authorization":"tok.thumb"}],"key_generated":true},"cert":null,"installed_fingerprint":null,"renew_at":null,"ari_window":null,"ari_check_at":null,"failure":{"step":"validation","kind":"retryable","error":"validation failed","attempts":1,"at":113,"next_attempt_at":116},"unconfigured":false,"deploy_hook":true,"hook":null,"created_at":100,"updated_at":113}
{"schema_version":1,"id":"c-issued.test","names":["c-issued.test"],"key_type":"ecdsa-p384","acme_directory":"https://ca/dir","phase":"issued","order":null,"cert":{"serial":"0A1B","not_before":1000,"not_after":7777000,"fingerprint":"c-issued.test-f1","issued_at":1001},"installed_fingerprint":"c-issued.test-f1","renew_at":5141800,"ari_window":[5098600,5271400],"ari_check_at":22604,"failure":null,"unconfigured":false,"deploy_hook":true,"hook":{"fingerprint":"c-issued.test-f1","error":"exit status 3","at":1005},"created_at":100,"updated_at":1005}
{"schema_version":1,"id":"d-expiring.test","names":["d-expiring.test"],"key_type":"rsa4096","acme_directory":"https://ca/dir","phase":"expiring","order":null,"cert":{"serial":"0A1B","not_before":1000,"not_after":7777000,"fingerprint":"d-expiring.test-f1","issued_at":1001},"installed_fingerprint":"d-expiring.test-f1","renew_at":5141800,"ari_window":[5098600,5271400],"ari_check_at":22604,"failure":{"step":"order","kind":"permanent","error":"order failed","attempts":1,"at":2002,"next_attempt_at":null},"unconfigured":true,"deploy_hook":true,"hook":{"fingerprint":"d-expiring.test-f1","error":"exit status 3","at":1005},"created_at":100,"updated_at":2003}
{"schema_version":1,"id":"e-renewing.test","names":["e-renewing.test"],"key_type":"ecdsa-p256","acme_directory":"https://ca/dir","phase":"validating","order":{"url":"https://ca/order/e2","created_at":5271400,"challenges":[],"key_generated":false},"cert":{"serial":"0A1B","not_before":1000,"not_after":7777000,"fingerprint":"e-renewing.test-f1","issued_at":1001},"installed_fingerprint":"e-renewing.test-f1","renew_at":5141800,"ari_window":[5098600,5271400],"ari_check_at":22604,"failure":{"step":"finalize","kind":"rate-limited","error":"finalize failed","attempts":1,"at":5271405,"next_attempt_at":5357800},"unconfigured":false,"deploy_hook":true,"hook":{"fingerprint":"e-renewing.test-f1","error":"exit status 3","at":1005},"created_at":100,"updated_at":5271405}"#;

    #[test]
    fn the_persisted_record_format_is_pinned() {
        let got: Vec<String> = fixtures::records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        let got = got.join("\n");
        assert_eq!(got, RECORDS_JSON, "\n{got}\n");
        for (line, r) in RECORDS_JSON.lines().zip(fixtures::records()) {
            assert_eq!(serde_json::from_str::<Record>(line).unwrap(), r);
        }
    }

    /// TLS-ALPN-01 adds a value, not a field: the pinned records keep their bytes, and a
    /// challenge of the new kind is spelled as RFC 8737 names it.
    #[test]
    fn tls_alpn_challenges_are_stored_under_their_rfc_name() {
        let c = Challenge {
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
            kind: ChallengeType::TlsAlpn01,
            domain: Some("a.test".into()),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"token":"tok","key_authorization":"tok.thumb","kind":"tls-alpn-01","domain":"a.test"}"#
        );
        assert_eq!(serde_json::from_str::<Challenge>(&json).unwrap(), c);
        assert_eq!(
            ChallengeType::parse("tls-alpn-01"),
            Some(ChallengeType::TlsAlpn01)
        );
        assert!(
            !ChallengeType::TlsAlpn01.is_dns(),
            "no wildcard over TLS-ALPN-01"
        );
    }
}
