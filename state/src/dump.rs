//! The JSON view of the state that operators and scripts read (`state dump`): a stable,
//! versioned schema built from records only, so it can never contain key material.
//!
//! Architecture invariant: only this module defines the dump format.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::attention::conditions;
use crate::{Failure, Record, UnixTime};

pub mod fleet;
pub mod overview;
mod stream;
mod summary;
mod waiting;
pub use overview::{status_screen, Tally};
pub use stream::DumpWriter;
pub use summary::{status_table_of, FailureSummary, Summary};
pub use waiting::{waiting_text, waiting_views, Waiting, WaitingView};

/// Version of the dump schema. Additive changes keep it; renaming or removing a field bumps it.
pub const DUMP_SCHEMA_VERSION: u32 = 1;

/// The whole dump.
#[derive(Debug, Serialize)]
pub struct Dump {
    pub schema_version: u32,
    pub generated_at: String,
    pub certificates: Vec<CertView>,
    /// What the running daemon is waiting for (kept in its memory; empty offline).
    pub waiting_for: Vec<WaitingView>,
    /// A fleet's leader and nodes (`fleet::FleetView`); left out on one machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<fleet::FleetView>,
}

/// One certificate as operators see it. Times are RFC 3339 UTC strings.
#[derive(Debug, Serialize)]
pub struct CertView {
    pub id: String,
    pub names: Vec<String>,
    pub phase: &'static str,
    pub key_type: &'static str,
    /// The ACME directory the certificate comes from.
    pub acme_directory: String,
    pub serial: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub renew_at: Option<String>,
    /// The CA's suggested renewal window (RFC 9773), when it offers one: `[start, end]`.
    pub renewal_window: Option<[String; 2]>,
    /// Where `renew_at` comes from: `ari` (a random point in the CA's `renewal_window`) or
    /// `lifetime` (two thirds into the certificate's lifetime, half-way below ten days: the CA
    /// offers no window, none was received yet, or the CA stopped offering them).
    pub renew_at_source: Option<&'static str>,
    /// When the CA is next asked for its renewal window (none: the CA offers no renewal
    /// information, or there is no certificate to ask about).
    pub renewal_info_check_at: Option<String>,
    /// SHA-256 of the stored certificate (leaf DER).
    pub fingerprint: Option<String>,
    /// SHA-256 of the certificate HAProxy was last confirmed to serve.
    pub installed_fingerprint: Option<String>,
    pub installed: bool,
    pub order_url: Option<String>,
    pub last_error: Option<ErrorView>,
    /// False once the configuration no longer lists it: kept and served, not renewed.
    pub configured: bool,
    /// The last run of the deploy hook, when one is configured.
    pub deploy_hook: Option<HookView>,
    pub updated_at: String,
    /// What needs an operator now (`failing`, `expiring`, `not-served`; what `status --check`
    /// reports); empty when nothing does.
    pub attention: Vec<&'static str>,
    /// The conditions the alert step last ran for (`ALERT_HOOK`), and when.
    pub alerted: Option<AlertView>,
    /// The watchdog's last finding of HAProxy or the file not holding the stored certificate.
    pub drift: Option<DriftView>,
    /// The last revocation (`revoke`); left out when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevokedView>,
    /// The ACME profile its orders ask for (ACME_PROFILE or its own `profile=`); left out when
    /// none is (the CA's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The profile the stored certificate was ordered with, only when it is not `profile` (a
    /// change of profile re-issues; `null`: the CA's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_profile: Option<Option<String>>,
    /// How the CA validates its names (`challenge=`); left out for `http-01`, the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<&'static str>,
    /// DNS-01 TXT records published and not removed yet (`_acme-challenge.<name>`): the
    /// cleanup hook still owes them (an order in flight, or one a crash or a change left);
    /// left out when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_records_to_clean: Vec<String>,
}

/// A revocation of one of the record's certificates.
#[derive(Debug, Serialize)]
pub struct RevokedView {
    pub serial: String,
    pub reason: &'static str,
    pub at: String,
}

/// The conditions the alert step last ran for.
#[derive(Debug, Serialize)]
pub struct AlertView {
    /// Empty: the certificate no longer needed attention.
    pub conditions: Vec<&'static str>,
    pub at: String,
}

/// What the watchdog found when the stored certificate was not the one served.
#[derive(Debug, Serialize)]
pub struct DriftView {
    /// How many times (each repaired by installing the stored certificate again).
    pub count: u32,
    /// The last time.
    pub at: String,
    /// The serial HAProxy served then (`null`: none).
    pub served_serial: Option<String>,
    /// The serial in the certificate file then (`null`: missing or unreadable).
    pub file_serial: Option<String>,
    /// When the stored certificate was confirmed served again (`null`: not yet).
    pub repaired_at: Option<String>,
}

/// The last run of the deploy hook for a certificate.
#[derive(Debug, Serialize)]
pub struct HookView {
    /// The certificate it ran for.
    pub fingerprint: String,
    pub ok: bool,
    /// Why it failed (exit status, timeout), with the end of its output.
    pub error: Option<String>,
    pub at: String,
}

/// The last failure of a certificate.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub step: &'static str,
    pub kind: &'static str,
    pub message: String,
    pub attempts: u32,
    pub at: String,
    /// `null` for a permanent failure: no retry until the configuration or an operator says so.
    pub next_attempt_at: Option<String>,
}

/// Formats a Unix time as RFC 3339 (UTC); out-of-range values fall back to the raw number.
pub fn rfc3339(t: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

fn error_view(f: &Failure) -> ErrorView {
    ErrorView {
        step: f.step.as_str(),
        kind: f.kind.as_str(),
        message: f.error.clone(),
        attempts: f.attempts,
        at: rfc3339(f.at),
        next_attempt_at: f.next_attempt_at.map(rfc3339),
    }
}

impl CertView {
    /// The view of `r` at `now` (its attention conditions depend on the time).
    pub fn from_record(r: &Record, now: UnixTime) -> CertView {
        CertView {
            id: r.id.clone(),
            names: r.names.clone(),
            phase: r.phase().as_str(),
            key_type: r.key_type.as_str(),
            acme_directory: r.acme_directory.clone(),
            serial: r.cert.as_ref().map(|c| c.serial.clone()),
            not_before: r.cert.as_ref().map(|c| rfc3339(c.not_before)),
            not_after: r.cert.as_ref().map(|c| rfc3339(c.not_after)),
            renew_at: r.renew_at.map(rfc3339),
            renewal_window: r.ari_window.map(|(a, b)| [rfc3339(a), rfc3339(b)]),
            renew_at_source: r.renew_at.map(|_| {
                if r.ari_window.is_some() {
                    "ari"
                } else {
                    "lifetime"
                }
            }),
            renewal_info_check_at: r.ari_check_at.map(rfc3339),
            fingerprint: r.cert.as_ref().map(|c| c.fingerprint.clone()),
            installed_fingerprint: r.installed_fingerprint.clone(),
            installed: r.is_installed(),
            order_url: r.order().map(|o| o.url.clone()),
            last_error: r.failure.as_ref().map(error_view),
            configured: !r.unconfigured,
            deploy_hook: r.hook.as_ref().map(|h| HookView {
                fingerprint: h.fingerprint.clone(),
                ok: h.error.is_none(),
                error: h.error.clone(),
                at: rfc3339(h.at),
            }),
            updated_at: rfc3339(r.updated_at),
            attention: conditions(r, now).iter().map(|c| c.as_str()).collect(),
            alerted: r.alert.as_ref().map(|a| AlertView {
                conditions: a.conditions.iter().map(|c| c.as_str()).collect(),
                at: rfc3339(a.at),
            }),
            drift: r.drift.as_ref().map(|d| DriftView {
                count: d.count,
                at: rfc3339(d.at),
                served_serial: d.served.clone(),
                file_serial: d.file.clone(),
                repaired_at: d.repaired_at.map(rfc3339),
            }),
            revoked: r.revoked.as_ref().map(|v| RevokedView {
                serial: v.serial.clone(),
                reason: v.reason.as_str(),
                at: rfc3339(v.at),
            }),
            profile: r.profile.clone(),
            issued_profile: (r.cert.is_some() && r.cert_profile != r.profile)
                .then(|| r.cert_profile.clone()),
            challenge: (!r.challenge.is_http01()).then(|| r.challenge.as_str()),
            dns_records_to_clean: r
                .dns_to_clean()
                .iter()
                .map(|c| format!("_acme-challenge.{}", c.domain.as_deref().unwrap_or("?")))
                .collect(),
        }
    }
}

/// Builds the dump of `records` (any order; the dump is sorted by id) at time `now`.
pub fn dump<'a>(records: impl IntoIterator<Item = &'a Record>, now: UnixTime) -> Dump {
    let mut certificates: Vec<CertView> = records
        .into_iter()
        .map(|r| CertView::from_record(r, now))
        .collect();
    certificates.sort_by(|a, b| a.id.cmp(&b.id));
    Dump {
        schema_version: DUMP_SCHEMA_VERSION,
        generated_at: rfc3339(now),
        certificates,
        waiting_for: Vec::new(),
        fleet: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{apply, Event, FailureReport};
    use crate::{FailureKind, KeyType, Step};

    #[test]
    fn dump_has_a_stable_shape() {
        let r = Record::new(vec!["b.test".into()], KeyType::EcdsaP256, 0);
        let r = apply(
            &r,
            Event::Failed(FailureReport {
                step: Step::Order,
                kind: FailureKind::RateLimited,
                error: "too many".into(),
                retry_after: Some(3600),
                jitter_permille: 0,
                order_dead: false,
            }),
            0,
        );
        let a = Record::new(vec!["a.test".into()], KeyType::Rsa2048, 0);
        let v = serde_json::to_value(dump([&r, &a], 60)).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["generated_at"], "1970-01-01T00:01:00Z");
        assert_eq!(v["certificates"][0]["id"], "a.test", "sorted by id");
        assert_eq!(v["certificates"][0]["key_type"], "rsa2048");
        let b = &v["certificates"][1];
        assert_eq!(b["phase"], "pending");
        assert_eq!(b["last_error"]["step"], "order");
        assert_eq!(b["last_error"]["kind"], "rate-limited");
        assert_eq!(b["last_error"]["next_attempt_at"], "1970-01-01T01:00:00Z");
        assert_eq!(b["installed"], false);
        assert!(b["serial"].is_null());
    }

    /// The dump of one record in each phase, as operators' scripts read it (schema_version 1).
    const DUMP_V1: &str = r#"{
  "schema_version": 1,
  "generated_at": "1970-03-12T00:16:40Z",
  "certificates": [
    {
      "id": "a-pending.test",
      "names": [
        "a-pending.test"
      ],
      "phase": "pending",
      "key_type": "ecdsa-p256",
      "acme_directory": "",
      "serial": null,
      "not_before": null,
      "not_after": null,
      "renew_at": null,
      "renewal_window": null,
      "renew_at_source": null,
      "renewal_info_check_at": null,
      "fingerprint": null,
      "installed_fingerprint": null,
      "installed": false,
      "order_url": null,
      "last_error": null,
      "configured": true,
      "deploy_hook": null,
      "updated_at": "1970-01-01T00:01:40Z",
      "attention": [],
      "alerted": null,
      "drift": null
    },
    {
      "id": "b-validating.test",
      "names": [
        "b-validating.test",
        "www.b-validating.test"
      ],
      "phase": "validating",
      "key_type": "rsa2048",
      "acme_directory": "https://ca/dir",
      "serial": null,
      "not_before": null,
      "not_after": null,
      "renew_at": null,
      "renewal_window": null,
      "renew_at_source": null,
      "renewal_info_check_at": null,
      "fingerprint": null,
      "installed_fingerprint": null,
      "installed": false,
      "order_url": "https://ca/order/7",
      "last_error": {
        "step": "validation",
        "kind": "retryable",
        "message": "validation failed",
        "attempts": 1,
        "at": "1970-01-01T00:01:53Z",
        "next_attempt_at": "1970-01-01T00:01:56Z"
      },
      "configured": true,
      "deploy_hook": null,
      "updated_at": "1970-01-01T00:01:53Z",
      "attention": [],
      "alerted": null,
      "drift": null
    },
    {
      "id": "c-issued.test",
      "names": [
        "c-issued.test"
      ],
      "phase": "issued",
      "key_type": "ecdsa-p384",
      "acme_directory": "https://ca/dir",
      "serial": "0A1B",
      "not_before": "1970-01-01T00:16:40Z",
      "not_after": "1970-04-01T00:16:40Z",
      "renew_at": "1970-03-01T12:16:40Z",
      "renewal_window": [
        "1970-03-01T00:16:40Z",
        "1970-03-03T00:16:40Z"
      ],
      "renew_at_source": "ari",
      "renewal_info_check_at": "1970-01-01T06:16:44Z",
      "fingerprint": "c-issued.test-f1",
      "installed_fingerprint": "c-issued.test-f1",
      "installed": true,
      "order_url": null,
      "last_error": null,
      "configured": true,
      "deploy_hook": {
        "fingerprint": "c-issued.test-f1",
        "ok": false,
        "error": "exit status 3",
        "at": "1970-01-01T00:16:45Z"
      },
      "updated_at": "1970-01-01T00:16:45Z",
      "attention": [
        "expiring"
      ],
      "alerted": null,
      "drift": null
    },
    {
      "id": "d-expiring.test",
      "names": [
        "d-expiring.test"
      ],
      "phase": "expiring",
      "key_type": "rsa4096",
      "acme_directory": "https://ca/dir",
      "serial": "0A1B",
      "not_before": "1970-01-01T00:16:40Z",
      "not_after": "1970-04-01T00:16:40Z",
      "renew_at": "1970-03-01T12:16:40Z",
      "renewal_window": [
        "1970-03-01T00:16:40Z",
        "1970-03-03T00:16:40Z"
      ],
      "renew_at_source": "ari",
      "renewal_info_check_at": "1970-01-01T06:16:44Z",
      "fingerprint": "d-expiring.test-f1",
      "installed_fingerprint": "d-expiring.test-f1",
      "installed": true,
      "order_url": null,
      "last_error": {
        "step": "order",
        "kind": "permanent",
        "message": "order failed",
        "attempts": 1,
        "at": "1970-01-01T00:33:22Z",
        "next_attempt_at": null
      },
      "configured": false,
      "deploy_hook": {
        "fingerprint": "d-expiring.test-f1",
        "ok": false,
        "error": "exit status 3",
        "at": "1970-01-01T00:16:45Z"
      },
      "updated_at": "1970-01-01T00:33:23Z",
      "attention": [],
      "alerted": null,
      "drift": null
    },
    {
      "id": "e-renewing.test",
      "names": [
        "e-renewing.test"
      ],
      "phase": "validating",
      "key_type": "ecdsa-p256",
      "acme_directory": "https://ca/dir",
      "serial": "0A1B",
      "not_before": "1970-01-01T00:16:40Z",
      "not_after": "1970-04-01T00:16:40Z",
      "renew_at": "1970-03-01T12:16:40Z",
      "renewal_window": [
        "1970-03-01T00:16:40Z",
        "1970-03-03T00:16:40Z"
      ],
      "renew_at_source": "ari",
      "renewal_info_check_at": "1970-01-01T06:16:44Z",
      "fingerprint": "e-renewing.test-f1",
      "installed_fingerprint": "e-renewing.test-f1",
      "installed": true,
      "order_url": "https://ca/order/e2",
      "last_error": {
        "step": "finalize",
        "kind": "rate-limited",
        "message": "finalize failed",
        "attempts": 1,
        "at": "1970-03-03T00:16:45Z",
        "next_attempt_at": "1970-03-04T00:16:40Z"
      },
      "configured": true,
      "deploy_hook": {
        "fingerprint": "e-renewing.test-f1",
        "ok": false,
        "error": "exit status 3",
        "at": "1970-01-01T00:16:45Z"
      },
      "updated_at": "1970-03-03T00:16:45Z",
      "attention": [
        "failing",
        "expiring"
      ],
      "alerted": null,
      "drift": null
    }
  ],
  "waiting_for": []
}"#;

    #[test]
    fn the_dump_shows_the_challenge_and_the_dns_records_owed_a_cleanup() {
        let view = |r: &Record| serde_json::to_value(CertView::from_record(r, 2000)).unwrap();
        let r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, 0);
        assert!(view(&r).get("challenge").is_none(), "http-01 is left out");
        let r = apply(
            &r,
            Event::ChallengeChosen {
                challenge: crate::ChallengeType::Dns01,
            },
            1,
        );
        let r = apply(&r, Event::OrderCreated { url: "u".into() }, 2);
        let txt = crate::Challenge {
            token: "t".into(),
            key_authorization: "t.k".into(),
            kind: crate::ChallengeType::Dns01,
            domain: Some("a.test".into()),
        };
        let r = apply(
            &r,
            Event::ChallengesPublished {
                challenges: vec![txt],
            },
            3,
        );
        let v = view(&r);
        assert_eq!(v["challenge"], "dns-01");
        assert_eq!(
            v["dns_records_to_clean"],
            serde_json::json!(["_acme-challenge.a.test"])
        );
        let r = apply(
            &r,
            Event::DnsCleaned {
                tokens: vec!["t".into()],
            },
            4,
        );
        assert!(
            view(&r).get("dns_records_to_clean").is_none(),
            "{}",
            view(&r)
        );
    }

    #[test]
    fn the_dump_shows_the_profile_and_the_one_the_certificate_was_issued_under() {
        let view = |r: &Record| serde_json::to_value(CertView::from_record(r, 2000)).unwrap();
        let r = crate::fixtures::records()
            .into_iter()
            .find(|r| r.id == "c-issued.test")
            .unwrap();
        let v = view(&r);
        assert!(v.get("profile").is_none() && v.get("issued_profile").is_none());
        let conf = |r: &Record, p: &str| Event::Configured {
            names: r.names.clone(),
            key_type: r.key_type,
            acme_directory: r.acme_directory.clone(),
            deploy_hook: r.deploy_hook,
            profile: Some(p.into()),
        };
        // Re-issuing under a new profile: both shown.
        let r = apply(&r, conf(&r, "shortlived"), 2000);
        let v = view(&r);
        assert_eq!(v["profile"], "shortlived");
        assert_eq!(v["issued_profile"], serde_json::Value::Null);
        assert!(v.as_object().unwrap().contains_key("issued_profile"));
        // Issued under it: only the one.
        let mut meta = r.cert.clone().unwrap();
        meta.fingerprint = "f2".into();
        let r = apply(&r, Event::CertificateStored { meta }, 2001);
        let v = view(&r);
        assert_eq!(v["profile"], "shortlived");
        assert!(v.get("issued_profile").is_none(), "{v}");
        let r = apply(&r, conf(&r, "tlsserver"), 2002);
        assert_eq!(view(&r)["issued_profile"], "shortlived");
    }

    #[test]
    fn the_dump_is_pinned() {
        let records = crate::fixtures::records();
        let got = serde_json::to_string_pretty(&dump(&records, 1000 + 70 * 86_400)).unwrap();
        assert_eq!(got, DUMP_V1, "\n{got}\n");
    }
}

/// A human duration from `secs` (negative: in the past), e.g. "59d", "3h", "12m", "40s".
pub(crate) fn human(secs: i64) -> String {
    let a = secs.unsigned_abs();
    let s = match a {
        0..=119 => format!("{a}s"),
        120..=7199 => format!("{}m", a / 60),
        7200..=172_799 => format!("{}h", a / 3600),
        _ => format!("{}d", a / 86_400),
    };
    if secs < 0 {
        format!("{s} ago")
    } else {
        s
    }
}

/// The `status` screen: one line per certificate (id, names, phase, how it is validated (the
/// challenge, and the ACME profile when one is asked for), expires in, renews in, last error),
/// sorted by id, with a header. `color` adds ANSI colours for a terminal.
pub fn status_table<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    now: UnixTime,
    color: bool,
) -> String {
    let mut records: Vec<&Record> = records.into_iter().collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let summaries: Vec<(&str, Summary)> = records
        .iter()
        .map(|r| (r.id.as_str(), Summary::from_record(r)))
        .collect();
    status_table_of(summaries.iter().map(|(id, s)| (*id, s)), now, color)
}

#[cfg(test)]
mod status_tests {
    use super::*;
    use crate::machine::{apply, Event};
    use crate::{CertMeta, KeyType};

    #[test]
    fn one_line_per_certificate_plain_when_not_a_terminal() {
        let day = 86_400;
        let r = Record::new(
            vec!["a.test".into(), "www.a.test".into()],
            KeyType::EcdsaP256,
            0,
        );
        let r = apply(&r, Event::OrderCreated { url: "u".into() }, 0);
        let meta = CertMeta {
            // A serial whose renewal spread is 0 (`timing::renewal_spread`).
            serial: "0".into(),
            not_before: 0,
            not_after: 90 * day,
            fingerprint: "f".into(),
            issued_at: 0,
        };
        let r = apply(&r, Event::CertificateStored { meta }, 0);
        let a = apply(
            &r,
            Event::Installed {
                fingerprint: "f".into(),
            },
            0,
        );
        let b = Record::new(vec!["b.test".into()], KeyType::EcdsaP256, 0);
        let t = status_table([&b, &a], day, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID"));
        assert!(
            lines[1].starts_with("a.test")
                && lines[1].contains("+1")
                && lines[1].contains("issued"),
            "{t}"
        );
        assert!(
            lines[1].contains("89d") && lines[1].contains("59d"),
            "expires in 89 days, renews in 59: {t}"
        );
        assert!(lines[2].starts_with("b.test") && lines[2].contains("pending"));
        assert!(
            lines[0].contains("VIA") && lines[1].contains("http-01"),
            "{t}"
        );
        let mut p = b.clone();
        p.challenge = crate::ChallengeType::Dns01;
        p.profile = Some("shortlived".into());
        assert!(
            status_table([&p], day, false).contains("dns-01/shortlived"),
            "the challenge and the profile"
        );
        assert!(!t.contains('\x1b'), "no colour when not on a terminal");
        assert!(status_table([&b], day, true).contains('\x1b'));
        assert_eq!(human(-3 * day), "3d ago");
        assert_eq!(human(90), "90s");
    }
}
