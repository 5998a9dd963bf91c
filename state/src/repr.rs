//! The persisted layout of a [`Record`]: the stage flat, as `"phase"` and `"order"`, the way
//! schema version 1 has always written it. Decoding checks that phase, order and certificate
//! agree, so a record in memory is always one that `apply` could have produced.

use serde::{Deserialize, Serialize, Serializer};

use crate::{
    Alerted, CertMeta, Challenge, ChallengeType, Drift, Failure, HookOutcome, KeyType,
    OrderProgress, Phase, Record, Revoked, Stage, UnixTime,
};

/// A record as stored, before its consistency is checked.
#[derive(Deserialize)]
pub(crate) struct RecordRepr {
    schema_version: u32,
    id: String,
    names: Vec<String>,
    key_type: KeyType,
    #[serde(default)]
    acme_directory: String,
    phase: Phase,
    order: Option<OrderProgress>,
    cert: Option<CertMeta>,
    installed_fingerprint: Option<String>,
    renew_at: Option<UnixTime>,
    #[serde(default)]
    ari_window: Option<(UnixTime, UnixTime)>,
    #[serde(default)]
    ari_check_at: Option<UnixTime>,
    failure: Option<Failure>,
    #[serde(default)]
    unconfigured: bool,
    #[serde(default)]
    deploy_hook: bool,
    #[serde(default)]
    hook: Option<HookOutcome>,
    created_at: UnixTime,
    updated_at: UnixTime,
    #[serde(default)]
    drift: Option<Drift>,
    #[serde(default)]
    alert: Option<Alerted>,
    #[serde(default)]
    revoked: Option<Revoked>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    cert_profile: Option<String>,
    #[serde(default)]
    challenge: ChallengeType,
    #[serde(default)]
    dns_unclean: Vec<Challenge>,
}

/// The same layout, borrowed from a record: encoding copies nothing. The field order is the
/// persisted one.
#[derive(Serialize)]
struct RecordRef<'a> {
    schema_version: u32,
    id: &'a str,
    names: &'a [String],
    key_type: KeyType,
    acme_directory: &'a str,
    phase: Phase,
    order: Option<&'a OrderProgress>,
    cert: Option<&'a CertMeta>,
    installed_fingerprint: Option<&'a str>,
    renew_at: Option<UnixTime>,
    ari_window: Option<(UnixTime, UnixTime)>,
    ari_check_at: Option<UnixTime>,
    failure: Option<&'a Failure>,
    unconfigured: bool,
    deploy_hook: bool,
    hook: Option<&'a HookOutcome>,
    created_at: UnixTime,
    updated_at: UnixTime,
    // Left out while unset, so records without them keep their exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<&'a Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<&'a Alerted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<&'a Revoked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_profile: Option<&'a str>,
    #[serde(skip_serializing_if = "ChallengeType::is_http01")]
    challenge: ChallengeType,
    #[serde(skip_serializing_if = "<[Challenge]>::is_empty")]
    dns_unclean: &'a [Challenge],
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Destructured, so a field added to `Record` and not here does not compile.
        let Record {
            schema_version,
            id,
            names,
            key_type,
            acme_directory,
            stage,
            cert,
            installed_fingerprint,
            renew_at,
            ari_window,
            ari_check_at,
            failure,
            unconfigured,
            deploy_hook,
            hook,
            created_at,
            updated_at,
            drift,
            alert,
            revoked,
            profile,
            cert_profile,
            challenge,
            dns_unclean,
        } = self;
        RecordRef {
            schema_version: *schema_version,
            id,
            names,
            key_type: *key_type,
            acme_directory,
            phase: stage.phase(),
            order: stage.order(),
            cert: cert.as_ref(),
            installed_fingerprint: installed_fingerprint.as_deref(),
            renew_at: *renew_at,
            ari_window: *ari_window,
            ari_check_at: *ari_check_at,
            failure: failure.as_ref(),
            unconfigured: *unconfigured,
            deploy_hook: *deploy_hook,
            hook: hook.as_ref(),
            created_at: *created_at,
            updated_at: *updated_at,
            drift: drift.as_ref(),
            alert: alert.as_ref(),
            revoked: revoked.as_ref(),
            profile: profile.as_deref(),
            cert_profile: cert_profile.as_deref(),
            challenge: *challenge,
            dns_unclean,
        }
        .serialize(serializer)
    }
}

impl TryFrom<RecordRepr> for Record {
    type Error = String;

    /// Refuses a record whose phase, order and certificate disagree: an order exists only while
    /// validating (and validating needs one), issued and expiring need a stored certificate.
    fn try_from(r: RecordRepr) -> Result<Record, String> {
        let phase = r.phase.as_str();
        let stage = match (r.phase, r.order) {
            (Phase::Validating, Some(o)) => Stage::Validating(o),
            (Phase::Validating, None) => {
                return Err("inconsistent record: phase \"validating\" without an order".into())
            }
            (_, Some(o)) => {
                return Err(format!(
                    "inconsistent record: an order ({}) in phase {phase:?}; an order exists only \
                     while validating",
                    o.url
                ))
            }
            (Phase::Pending, None) => Stage::Pending,
            (Phase::Issued, None) => Stage::Issued,
            (Phase::Expiring, None) => Stage::Expiring,
        };
        if matches!(stage, Stage::Issued | Stage::Expiring) && r.cert.is_none() {
            return Err(format!(
                "inconsistent record: phase {phase:?} without a stored certificate"
            ));
        }
        Ok(Record {
            schema_version: r.schema_version,
            id: r.id,
            names: r.names,
            key_type: r.key_type,
            acme_directory: r.acme_directory,
            stage,
            cert: r.cert,
            installed_fingerprint: r.installed_fingerprint,
            renew_at: r.renew_at,
            ari_window: r.ari_window,
            ari_check_at: r.ari_check_at,
            failure: r.failure,
            unconfigured: r.unconfigured,
            deploy_hook: r.deploy_hook,
            hook: r.hook,
            created_at: r.created_at,
            updated_at: r.updated_at,
            drift: r.drift,
            alert: r.alert,
            revoked: r.revoked,
            profile: r.profile,
            cert_profile: r.cert_profile,
            challenge: r.challenge,
            dns_unclean: r.dns_unclean,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::fixtures;
    use crate::{Challenge, ChallengeType, Phase, Record, Stage};
    use serde_json::{json, Value};

    /// The fixture records as stored, as JSON values to edit.
    fn stored() -> Vec<Value> {
        fixtures::records()
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect()
    }

    fn decode(v: &Value) -> Result<Record, String> {
        serde_json::from_str(&v.to_string()).map_err(|e| e.to_string())
    }

    #[test]
    fn records_round_trip_with_the_stage_flat() {
        for r in fixtures::records() {
            let json = serde_json::to_string(&r).unwrap();
            let back: Record = serde_json::from_str(&json).unwrap();
            assert_eq!(back, r);
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            let v: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["phase"], json!(r.phase().as_str()));
            assert_eq!(
                v["order"]["url"].as_str(),
                r.order().map(|o| o.url.as_str())
            );
        }
        let phases: Vec<Phase> = fixtures::records().iter().map(Record::phase).collect();
        assert_eq!(
            phases,
            [
                Phase::Pending,
                Phase::Validating,
                Phase::Issued,
                Phase::Expiring,
                Phase::Validating
            ]
        );
        let validating = &fixtures::records()[1];
        match &validating.stage {
            Stage::Validating(o) => {
                assert_eq!(o.url, "https://ca/order/7");
                assert!(o.key_generated);
                assert_eq!(o.challenges.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(validating.order(), validating.stage.order());
        assert!(fixtures::records()[2].order().is_none());
    }

    #[test]
    fn validating_without_an_order_is_refused() {
        let mut v = stored()[1].clone();
        v["order"] = Value::Null;
        let e = decode(&v).unwrap_err();
        assert!(
            e.contains("inconsistent record") && e.contains("\"validating\" without an order"),
            "{e}"
        );
        v.as_object_mut().unwrap().remove("order");
        assert!(decode(&v).unwrap_err().contains("without an order"));
    }

    #[test]
    fn an_order_in_another_phase_is_refused() {
        let all = stored();
        // A first issuance (no certificate) and a renewal (with one) in flight.
        for (v, phase) in [
            (&all[1], "pending"),
            (&all[4], "pending"),
            (&all[4], "issued"),
            (&all[4], "expiring"),
        ] {
            let mut v = v.clone();
            v["phase"] = json!(phase);
            let e = decode(&v).unwrap_err();
            assert!(
                e.contains(&format!(
                    "an order ({}) in phase \"{phase}\"",
                    v["order"]["url"].as_str().unwrap()
                )) && e.contains("only while validating"),
                "{e}"
            );
        }
    }

    #[test]
    fn issued_or_expiring_without_a_certificate_is_refused() {
        let all = stored();
        for (v, phase) in [(&all[2], "issued"), (&all[3], "expiring")] {
            let mut v = v.clone();
            assert_eq!(v["phase"], phase);
            decode(&v).unwrap();
            v["cert"] = Value::Null;
            let e = decode(&v).unwrap_err();
            assert!(
                e.contains(&format!(
                    "inconsistent record: phase \"{phase}\" without a stored certificate"
                )),
                "{e}"
            );
        }
        // Expiring with its certificate, and pending or validating without one, are fine.
        let mut v = all[2].clone();
        v["phase"] = json!("expiring");
        assert_eq!(decode(&v).unwrap().phase(), Phase::Expiring);
        assert_eq!(decode(&all[0]).unwrap().phase(), Phase::Pending);
        assert!(decode(&all[1]).unwrap().cert.is_none());
    }

    #[test]
    fn the_watchdogs_finding_and_the_last_alert_persist_and_are_left_out_while_unset() {
        let mut r = fixtures::records()[2].clone();
        let plain = serde_json::to_value(&r).unwrap();
        assert!(plain.get("drift").is_none() && plain.get("alert").is_none());
        r.drift = Some(crate::Drift {
            count: 2,
            at: 5000,
            served: Some("0B".into()),
            file: None,
            repaired_at: Some(5001),
        });
        r.alert = Some(crate::Alerted {
            conditions: vec![crate::Condition::Failing, crate::Condition::NotServed],
            at: 5002,
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["drift"],
            json!({"count": 2, "at": 5000, "served": "0B", "file": null, "repaired_at": 5001})
        );
        assert_eq!(
            v["alert"],
            json!({"conditions": ["failing", "not-served"], "at": 5002})
        );
        assert_eq!(decode(&v).unwrap(), r);
    }

    #[test]
    fn profiles_persist_and_records_without_them_read_as_none() {
        let mut r = fixtures::records()[2].clone();
        let plain = serde_json::to_value(&r).unwrap();
        assert!(plain.get("profile").is_none() && plain.get("cert_profile").is_none());
        assert_eq!(decode(&plain).unwrap().profile, None);
        r.profile = Some("shortlived".into());
        r.cert_profile = Some("classic".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (&v["profile"], &v["cert_profile"]),
            (&json!("shortlived"), &json!("classic"))
        );
        assert_eq!(decode(&v).unwrap(), r);
    }

    #[test]
    fn dns_persist_01_persists_by_its_name_and_other_records_keep_their_bytes() {
        let mut r = fixtures::records()[1].clone();
        let plain = serde_json::to_string(&r).unwrap();
        assert!(!plain.contains("\"challenge\""), "HTTP-01 is left out");
        r.challenge = ChallengeType::DnsPersist01;
        if let Stage::Validating(o) = &mut r.stage {
            o.challenges = vec![Challenge {
                token: String::new(),
                key_authorization: ".thumb".into(),
                kind: ChallengeType::DnsPersist01,
                domain: Some("b-validating.test".into()),
            }];
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["challenge"], json!("dns-persist-01"));
        assert_eq!(v["order"]["challenges"][0]["kind"], json!("dns-persist-01"));
        assert_eq!(decode(&v).unwrap(), r);
    }
}
