//! Prometheus metrics (prometheus-client, OpenMetrics text) served at the admin endpoint's
//! `/metrics`. Names follow cert-manager's where they mean the same thing, with our prefix:
//! `haproxy_acme_certificate_expiration_timestamp_seconds` is cert-manager's
//! `certmanager_certificate_expiration_timestamp_seconds`, and so on.
//!
//! Counters live in one process-wide [`Metrics`] (like the Go client's default registry: the
//! ACME HTTP client, the installer and the reconciler count into it without being handed a
//! reference). Per-certificate gauges are computed at scrape time from the certificates' summaries
//! (the daemon's view, or the records), so they can never disagree with `status`; `certs` writes
//! them, with aggregates (by phase, by condition, the earliest expiry), and above 10,000
//! certificates by default only for those that need attention (`METRICS_PER_CERTIFICATE`).

use std::sync::LazyLock;
use std::time::Duration;

use haproxy_acme_state::dump::Summary;
use haproxy_acme_state::UnixTime;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The prefix of every metric name.
const PREFIX: &str = "haproxy_acme";

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcmeRequest {
    /// What the request was for (`new-order`, `finalize`, ...; see [`acme_endpoint`]).
    endpoint: String,
    method: String,
    /// The HTTP status, or `error` when no response came.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstallLabels {
    /// `runtime-api` (no reload) or `file` (files-only mode).
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChallengeLabel {
    /// `http-01`, `dns-01`, ...
    challenge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    /// `success` or `failure`.
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    step: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PersistLabels {
    name: String,
    /// The record's name, `_validation-persist.<domain>`.
    record: String,
}

/// The process-wide counters. Cloning a prometheus-client metric shares it, so each scrape
/// registers clones into a fresh registry together with the per-certificate gauges.
pub struct Metrics {
    acme_requests: Family<AcmeRequest, Counter>,
    issuances: Counter,
    issuance_duration: Histogram,
    installs: Family<InstallLabels, Counter>,
    runtime_api_errors: Counter,
    failures: Family<FailureLabels, Counter>,
    hooks: Family<ResultLabel, Counter>,
    bad_nonces: Counter,
    preflight_failures: Family<ChallengeLabel, Counter>,
    accounts_registered_again: Counter,
    alert_hooks: Family<ResultLabel, Counter>,
    watchdog_checks: Counter,
    drifts: Counter,
    /// When the watchdog last completed a check (0: never; then the gauge is not exported).
    watchdog_last_check: std::sync::atomic::AtomicI64,
    /// The persistUntil of each dns-persist-01 record last checked, by (certificate id,
    /// record name) (`None`: the record has none). In memory: filled by the checks of this run.
    dns_persist: std::sync::Mutex<std::collections::BTreeMap<(String, String), Option<i64>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            acme_requests: Family::default(),
            issuances: Counter::default(),
            // 50 ms .. ~27 min: pebble issues in under a second, a real CA in seconds to minutes.
            issuance_duration: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            installs: Family::default(),
            runtime_api_errors: Counter::default(),
            failures: Family::default(),
            hooks: Family::default(),
            bad_nonces: Counter::default(),
            preflight_failures: Family::default(),
            accounts_registered_again: Counter::default(),
            alert_hooks: Family::default(),
            watchdog_checks: Counter::default(),
            drifts: Counter::default(),
            watchdog_last_check: std::sync::atomic::AtomicI64::new(0),
            dns_persist: Default::default(),
        }
    }
}

impl Metrics {
    /// One HTTP request to the CA (`status` `None`: no response).
    pub fn acme_request(&self, method: &str, path: &str, status: Option<u16>) {
        self.acme_requests
            .get_or_create(&AcmeRequest {
                endpoint: acme_endpoint(path).into(),
                method: method.into(),
                status: status.map_or_else(|| "error".into(), |s| s.to_string()),
            })
            .inc();
    }

    /// A certificate was issued and stored, `took` after its order was created.
    pub fn issued(&self, took: Duration) {
        self.issuances.inc();
        self.issuance_duration.observe(took.as_secs_f64());
    }

    /// A certificate reached HAProxy; `runtime_api` false for files-only mode.
    pub fn installed(&self, runtime_api: bool) {
        let method = if runtime_api { "runtime-api" } else { "file" };
        self.installs
            .get_or_create(&InstallLabels {
                method: method.into(),
            })
            .inc();
    }

    /// HAProxy's runtime API was unreachable, refused a command, or served the wrong serial.
    pub fn runtime_api_error(&self) {
        self.runtime_api_errors.inc();
    }

    /// A step failed (recorded in the certificate's state).
    pub fn failure(&self, step: &str, kind: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                step: step.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// The CA answered `badNonce` (the request is sent again at once with a fresh nonce).
    pub fn bad_nonce(&self) {
        self.bad_nonces.inc();
    }

    /// A challenge failed its preflight (the CA was not told to validate).
    pub fn preflight_failed(&self, challenge: &str) {
        self.preflight_failures
            .get_or_create(&ChallengeLabel {
                challenge: challenge.into(),
            })
            .inc();
    }

    /// The CA no longer knew our account, and it was registered again.
    pub fn account_registered_again(&self) {
        self.accounts_registered_again.inc();
    }

    /// The deploy hook ran.
    pub fn hook(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.hooks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The alert hook ran.
    pub fn alert_hook(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.alert_hooks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The watchdog compared `certificates` served certificates with the stored ones at `now`.
    pub fn watchdog_checked(&self, certificates: u64, now: UnixTime) {
        self.watchdog_checks.inc_by(certificates);
        self.watchdog_last_check
            .store(now, std::sync::atomic::Ordering::Release);
    }

    /// The watchdog found a certificate not served (or its file not holding it) as stored.
    pub fn drift(&self) {
        self.drifts.inc();
    }

    /// A dns-persist-01 record of certificate `id` checked: its persistUntil (`None`: none).
    pub fn dns_persist_until(&self, id: &str, record: &str, until: Option<i64>) {
        self.persist_map()
            .insert((id.to_string(), record.to_string()), until);
    }

    /// The dns-persist-01 records checked whose persistUntil is within 30 days of `now` (or
    /// passed): (certificate id, record name, persistUntil), for `status`.
    pub fn dns_persist_expiring(&self, now: UnixTime) -> Vec<(String, String, i64)> {
        self.persist_map()
            .iter()
            .filter_map(|((id, record), until)| {
                let t = (*until)?;
                (t - now < crate::dns_persist::EXPIRING_WITHIN)
                    .then(|| (id.clone(), record.clone(), t))
            })
            .collect()
    }

    fn persist_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<(String, String), Option<i64>>> {
        self.dns_persist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Metrics::render`] of `records` (any order).
    pub fn render_records(
        &self,
        records: &[haproxy_acme_state::Record],
        now: UnixTime,
        ready: bool,
        last_pass: UnixTime,
        fleet: Option<&haproxy_acme_state::dump::fleet::FleetView>,
        per: PerCertificate,
    ) -> String {
        let summaries = summaries(records);
        let certs = summaries.iter().map(|(id, s)| (*id, s));
        self.render(certs, now, ready, last_pass, fleet, per)
    }

    /// The OpenMetrics text of the counters and of the gauges of `certs` (id and summary, in id
    /// order) at `now`. `ready`: start-up done; `last_pass`: when the reconciler last completed a
    /// pass; `per`: which certificates get per-certificate series (`METRICS_PER_CERTIFICATE`).
    pub fn render<'a>(
        &self,
        certs: impl Iterator<Item = (&'a str, &'a Summary)> + Clone,
        now: UnixTime,
        ready: bool,
        last_pass: UnixTime,
        fleet: Option<&haproxy_acme_state::dump::fleet::FleetView>,
        per: PerCertificate,
    ) -> String {
        let mut out = String::new();
        if let Some(f) = fleet {
            let mut reg = Registry::with_prefix(PREFIX);
            fleet::register(&mut reg, f, now);
            prometheus_client::encoding::text::encode_registry(&mut out, &reg)
                .expect("writing to a String cannot fail");
        }
        certs::write(&mut out, certs, now, per);
        let mut reg = Registry::with_prefix(PREFIX);
        let persist_until = Family::<PersistLabels, Gauge>::default();
        let persist_expiring = Family::<PersistLabels, Gauge>::default();
        for ((id, record), until) in self.persist_map().iter() {
            let labels = PersistLabels {
                name: id.clone(),
                record: record.clone(),
            };
            if let Some(t) = until {
                persist_until.get_or_create(&labels).set(*t);
            }
            let soon = until.is_some_and(|t| t - now < crate::dns_persist::EXPIRING_WITHIN);
            persist_expiring.get_or_create(&labels).set(i64::from(soon));
        }
        reg.register(
            "dns_persist_until_timestamp_seconds",
            "The persistUntil of a certificate's dns-persist-01 record, as last checked (Unix \
             seconds; absent when it has none)",
            persist_until,
        );
        reg.register(
            "dns_persist_expiring",
            "1 when a certificate's dns-persist-01 record's persistUntil is within 30 days (the \
             CA refuses the record after it), else 0",
            persist_expiring,
        );
        reg.register(
            "http_acme_client_request",
            "HTTP requests to the ACME CA, by endpoint, method and status",
            self.acme_requests.clone(),
        );
        reg.register(
            "certificate_issuances",
            "Certificates issued and stored",
            self.issuances.clone(),
        );
        reg.register(
            "certificate_issuance_duration_seconds",
            "From order creation to the certificate stored",
            self.issuance_duration.clone(),
        );
        reg.register(
            "certificate_installs",
            "Certificates installed into HAProxy, by method",
            self.installs.clone(),
        );
        reg.register(
            "haproxy_runtime_api_errors",
            "HAProxy runtime API failures (unreachable, refused, wrong serial served)",
            self.runtime_api_errors.clone(),
        );
        reg.register(
            "certificate_step_failures",
            "Failed steps, by step and kind",
            self.failures.clone(),
        );
        reg.register(
            "acme_bad_nonces",
            "badNonce answers from the CA, each sent again at once with a fresh nonce",
            self.bad_nonces.clone(),
        );
        reg.register(
            "preflight_failures",
            "Challenges that failed the preflight check, so the CA was not told to validate, by challenge type",
            self.preflight_failures.clone(),
        );
        reg.register(
            "acme_accounts_registered_again",
            "Times the CA no longer knew our account (restored, restarted, deactivated) and it was registered again",
            self.accounts_registered_again.clone(),
        );
        reg.register(
            "deploy_hook_runs",
            "Deploy hook runs, by result",
            self.hooks.clone(),
        );
        reg.register(
            "alert_hook_runs",
            "Alert hook runs, by result",
            self.alert_hooks.clone(),
        );
        reg.register(
            "watchdog_checks",
            "Certificates the watchdog compared with what HAProxy serves and the files hold",
            self.watchdog_checks.clone(),
        );
        reg.register(
            "certificate_drifts",
            "Certificates found served (or in their file) differently from the store, and installed again",
            self.drifts.clone(),
        );
        let last_check = self
            .watchdog_last_check
            .load(std::sync::atomic::Ordering::Acquire);
        if last_check > 0 {
            let gauge = Gauge::<i64>::default();
            gauge.set(last_check);
            reg.register(
                "watchdog_last_check_timestamp_seconds",
                "When the watchdog last completed a check of every installed certificate (Unix seconds)",
                gauge,
            );
        }
        let ready_gauge = Gauge::<i64>::default();
        ready_gauge.set(i64::from(ready));
        reg.register(
            "ready",
            "1 once start-up is done (the store is in line with the configuration)",
            ready_gauge,
        );
        let pass = Gauge::<i64>::default();
        pass.set(last_pass);
        reg.register(
            "reconciler_last_pass_timestamp_seconds",
            "When the reconciler last completed a pass (Unix seconds)",
            pass,
        );
        prometheus_client::encoding::text::encode(&mut out, &reg)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The summaries of `records`, sorted by id: what [`Metrics::render`] and `status` take.
pub fn summaries(records: &[haproxy_acme_state::Record]) -> Vec<(&str, Summary)> {
    let mut all: Vec<(&str, Summary)> = records
        .iter()
        .map(|r| (r.id.as_str(), Summary::from_record(r)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all
}

/// The kind of ACME request a URL path is, for a label with few values. ACME URLs are the CA's
/// choice; these are the spellings of Let's Encrypt (boulder) and pebble.
pub fn acme_endpoint(path: &str) -> &'static str {
    let p = path.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| p.contains(w));
    if has(&["nonce"]) {
        "new-nonce"
    } else if has(&["new-acct", "sign-me-up", "new-account"]) {
        "new-account"
    } else if has(&["new-order", "order-plz"]) {
        "new-order"
    } else if has(&["finalize"]) {
        "finalize"
    } else if has(&["renewal-info", "renewalinfo"]) {
        "renewal-info"
    } else if has(&["authz"]) {
        "authorization"
    } else if has(&["chal"]) {
        "challenge"
    } else if has(&["cert"]) {
        "certificate"
    } else if has(&["order"]) {
        "order"
    } else if has(&["acct", "account"]) {
        "account"
    } else if has(&["dir"]) {
        "directory"
    } else {
        "other"
    }
}

mod certs;
mod fleet;
pub use certs::{PerCertificate, AUTO_ALL_UP_TO};
#[cfg(test)]
mod tests;
