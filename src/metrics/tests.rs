//! Unit tests of the metrics: names, labels and values as rendered.

use super::*;
use haproxy_acme_state::Record;
use haproxy_acme_state::{apply, CertMeta, Event, KeyType};

#[test]
fn endpoints_of_lets_encrypt_and_pebble() {
    for (path, want) in [
        ("/acme/new-nonce", "new-nonce"),
        ("/nonce-plz", "new-nonce"),
        ("/acme/new-acct", "new-account"),
        ("/sign-me-up", "new-account"),
        ("/acme/new-order", "new-order"),
        ("/order-plz", "new-order"),
        ("/acme/order/123/456", "order"),
        ("/my-order/abc", "order"),
        ("/acme/authz-v3/1", "authorization"),
        ("/authZ/abc", "authorization"),
        ("/acme/chall-v3/1/x", "challenge"),
        ("/chalZ/abc", "challenge"),
        ("/acme/finalize/1/2", "finalize"),
        ("/finalize-order/abc", "finalize"),
        ("/acme/cert/fa1afe1", "certificate"),
        ("/certZ/abc", "certificate"),
        ("/draft-ietf-acme-ari-03/renewalInfo/x.y", "renewal-info"),
        ("/acme/acct/42", "account"),
        ("/my-account/1", "account"),
        ("/directory", "directory"),
        ("/dir", "directory"),
        ("/", "other"),
    ] {
        assert_eq!(acme_endpoint(path), want, "{path}");
    }
}

#[test]
fn render_has_per_certificate_gauges_and_counters() {
    let m = Metrics::default();
    m.acme_request("POST", "/order-plz", Some(201));
    m.acme_request("POST", "/order-plz", Some(201));
    m.acme_request("POST", "/finalize-order/x", None);
    m.issued(Duration::from_millis(300));
    m.installed(true);
    m.hook(false);
    m.bad_nonce();
    m.bad_nonce();
    m.account_registered_again();
    let now = 1_700_000_000;
    let before_watchdog = m.render_records(&[], now, true, now, None, PerCertificate::All);
    assert!(
        !before_watchdog.contains("watchdog_last_check"),
        "no check yet: no timestamp to alert on"
    );
    m.watchdog_checked(3, now);
    m.drift();
    m.alert_hook(true);
    let r = Record::new(vec!["a.test".into()], KeyType::EcdsaP256, now);
    let meta = CertMeta {
        serial: "01".into(),
        not_before: now,
        not_after: now + 90 * 86_400,
        fingerprint: "f".into(),
        issued_at: now,
    };
    let r = apply(&r, Event::OrderCreated { url: "u".into() }, now);
    let r = apply(&r, Event::CertificateStored { meta }, now);
    let installed = apply(
        &r,
        Event::Installed {
            fingerprint: "f".into(),
        },
        now,
    );
    let mut waiting = Record::new(vec!["b.test".into()], KeyType::EcdsaP256, now);
    waiting.id = "b.test".into();
    let installed_again = installed.clone();
    let text = m.render_records(
        &[installed, waiting],
        now,
        true,
        now,
        None,
        PerCertificate::All,
    );
    let expiry = format!(
        "haproxy_acme_certificate_expiration_timestamp_seconds{{name=\"a.test\"}} {}",
        now + 90 * 86_400
    );
    assert!(text.contains(&expiry), "{text}");
    assert!(text
        .contains("haproxy_acme_certificate_ready_status{name=\"a.test\",condition=\"True\"} 1"));
    assert!(text
        .contains("haproxy_acme_certificate_ready_status{name=\"b.test\",condition=\"False\"} 1"));
    assert!(text.contains(
        "haproxy_acme_http_acme_client_request_total{endpoint=\"new-order\",method=\"POST\",status=\"201\"} 2"
    ));
    assert!(text.contains(
        "haproxy_acme_http_acme_client_request_total{endpoint=\"finalize\",method=\"POST\",status=\"error\"} 1"
    ));
    assert!(text.contains("haproxy_acme_certificate_issuances_total 1"));
    assert!(text.contains("haproxy_acme_certificate_issuance_duration_seconds_count 1"));
    assert!(text.contains("haproxy_acme_certificate_installs_total{method=\"runtime-api\"} 1"));
    assert!(text.contains("haproxy_acme_deploy_hook_runs_total{result=\"failure\"} 1"));
    assert!(text.contains("haproxy_acme_ready 1"));
    assert!(
        text.contains("haproxy_acme_acme_bad_nonces_total 2"),
        "{text}"
    );
    assert!(text.contains("haproxy_acme_acme_accounts_registered_again_total 1"));
    assert!(text.contains("haproxy_acme_watchdog_checks_total 3"));
    assert!(text.contains(&format!(
        "haproxy_acme_watchdog_last_check_timestamp_seconds {now}"
    )));
    assert!(text.contains("haproxy_acme_certificate_drifts_total 1"));
    assert!(text.contains("haproxy_acme_alert_hook_runs_total{result=\"success\"} 1"));
    let expired = m.render_records(
        &[installed_again],
        now + 91 * 86_400,
        true,
        now,
        None,
        PerCertificate::All,
    );
    assert!(
        expired.contains(
            "haproxy_acme_certificate_attention{name=\"a.test\",condition=\"expiring\"} 1"
        ),
        "{expired}"
    );
    assert!(!text.contains("haproxy_acme_certificate_attention{"));
    assert!(text.trim_end().ends_with("# EOF"));
}

/// The per-certificate families as prometheus-client wrote them before they were written from
/// the summaries: one certificate per family, so the map's order cannot differ.
fn reference(r: &Record, now: i64) -> String {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Name {
        name: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Cond {
        name: String,
        condition: String,
    }
    let mut reg = Registry::with_prefix("haproxy_acme");
    let (expiry, renewal, failures, next) = (
        Family::<Name, Gauge>::default(),
        Family::<Name, Gauge>::default(),
        Family::<Name, Gauge>::default(),
        Family::<Name, Gauge>::default(),
    );
    let (ready, attention) = (
        Family::<Cond, Gauge>::default(),
        Family::<Cond, Gauge>::default(),
    );
    let name = || Name { name: r.id.clone() };
    let cond = |c: &str| Cond {
        name: r.id.clone(),
        condition: c.into(),
    };
    for c in haproxy_acme_state::attention::conditions(r, now) {
        attention.get_or_create(&cond(c.as_str())).set(1);
    }
    if let Some(c) = &r.cert {
        expiry.get_or_create(&name()).set(c.not_after);
    }
    if let Some(t) = r.renew_at.filter(|_| !r.unconfigured) {
        renewal.get_or_create(&name()).set(t);
    }
    let served = r.is_installed() && r.cert.as_ref().is_some_and(|c| c.not_after > now);
    let f = r.failure.as_ref();
    failures
        .get_or_create(&name())
        .set(f.map_or(0, |f| i64::from(f.attempts)));
    if let Some(t) = f.and_then(|f| f.next_attempt_at) {
        next.get_or_create(&name()).set(t);
    }
    let mut text = String::new();
    for (help, family) in [
        ("certificate_expiration_timestamp_seconds", expiry),
        ("certificate_renewal_timestamp_seconds", renewal),
    ] {
        let mut reg = Registry::with_prefix("haproxy_acme");
        let h = super::certs::help(help);
        reg.register(help, h, family);
        prometheus_client::encoding::text::encode_registry(&mut text, &reg).unwrap();
    }
    let mut one = Registry::with_prefix("haproxy_acme");
    let h = super::certs::help("certificate_ready_status");
    let ready_one = Family::<Cond, Gauge>::default();
    ready_one
        .get_or_create(&cond("True"))
        .set(i64::from(served));
    one.register("certificate_ready_status", h, ready_one);
    prometheus_client::encoding::text::encode_registry(&mut text, &one).unwrap();
    // Two lines in one family: the map's order is its own; the False line follows.
    text.push_str(&format!(
        "haproxy_acme_certificate_ready_status{{name=\"{}\",condition=\"False\"}} {}\n",
        r.id,
        i64::from(!served)
    ));
    drop(ready);
    for (help, family) in [
        ("certificate_failures", failures),
        ("certificate_next_attempt_timestamp_seconds", next),
    ] {
        let mut reg = Registry::with_prefix("haproxy_acme");
        reg.register(help, super::certs::help(help), family);
        prometheus_client::encoding::text::encode_registry(&mut text, &reg).unwrap();
    }
    reg.register(
        "certificate_attention",
        super::certs::help("certificate_attention"),
        attention,
    );
    prometheus_client::encoding::text::encode_registry(&mut text, &reg).unwrap();
    text
}

#[test]
fn the_gauges_from_summaries_are_prometheus_clients() {
    let now = 1000 + 70 * 86_400;
    let day = 86_400;
    let r = Record::new(
        vec!["a.test".into(), "b.test".into()],
        KeyType::EcdsaP256,
        0,
    );
    let r = apply(&r, Event::OrderCreated { url: "u".into() }, 0);
    let meta = CertMeta {
        serial: "01".into(),
        not_before: 0,
        not_after: 90 * day,
        fingerprint: "f".into(),
        issued_at: 0,
    };
    let issued = apply(&r, Event::CertificateStored { meta }, 0);
    let installed = apply(
        &issued,
        Event::Installed {
            fingerprint: "f".into(),
        },
        0,
    );
    let mut failing = installed.clone();
    failing.failure = Some(haproxy_acme_state::Failure {
        step: haproxy_acme_state::Step::Order,
        kind: haproxy_acme_state::FailureKind::Permanent,
        error: "no".into(),
        attempts: 4,
        at: 5,
        next_attempt_at: Some(now + 9),
    });
    let mut unconfigured = failing.clone();
    unconfigured.unconfigured = true;
    let pending = Record::new(vec!["p.test".into()], KeyType::EcdsaP256, 0);
    for r in [installed, issued, failing, unconfigured, pending] {
        for at in [now, 200 * day] {
            let mut got = String::new();
            let s = haproxy_acme_state::dump::Summary::from_record(&r);
            super::certs::write_per_certificate(&mut got, std::iter::once((r.id.as_str(), &s)), at);
            // The reference's order within the attention family is its map's: compare sorted.
            let sorted = |t: &str| {
                let mut l: Vec<String> = t.lines().map(String::from).collect();
                l.sort();
                l
            };
            let want = reference(&r, at);
            assert_eq!(sorted(&got), sorted(&want), "{}\n{got}", r.id);
            assert_eq!(got.len(), want.len());
        }
    }
}

/// An installed 90-day certificate `id` issued at 0.
fn installed(id: &str) -> Record {
    let r = Record::new(vec![id.into()], KeyType::EcdsaP256, 0);
    let meta = CertMeta {
        serial: "01".into(),
        not_before: 0,
        not_after: 90 * 86_400,
        fingerprint: "f".into(),
        issued_at: 0,
    };
    let r = apply(&r, Event::OrderCreated { url: "u".into() }, 0);
    let r = apply(&r, Event::CertificateStored { meta }, 0);
    let fingerprint = "f".into();
    apply(&r, Event::Installed { fingerprint }, 0)
}

/// The ids with a per-certificate sample in `text`.
fn ids_in(text: &str) -> std::collections::BTreeSet<&str> {
    text.lines()
        .filter_map(|l| l.split_once("{name=\"")?.1.split_once('"'))
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn attention_mode_writes_only_the_certificates_that_need_an_operator() {
    let day = 86_400;
    let healthy = installed("a.test");
    let mut blip = installed("b.test");
    blip.failure = Some(haproxy_acme_state::Failure {
        step: haproxy_acme_state::Step::Install,
        kind: haproxy_acme_state::FailureKind::Retryable,
        error: "runtime API".into(),
        attempts: 1,
        at: day,
        next_attempt_at: Some(day + 5),
    });
    let mut expiring = installed("c.test");
    expiring.renew_at = Some(40 * day);
    // The others' renewal (a window from the CA, say) is not overdue yet at `now`.
    let mut records = [healthy, blip, expiring];
    records[0].renew_at = Some(70 * day);
    records[1].renew_at = Some(70 * day);
    let now = 65 * day;
    let m = Metrics::default();
    let render = |per| m.render_records(&records, now, true, now, None, per);
    let attention = render(PerCertificate::Attention);
    assert_eq!(
        ids_in(&attention).into_iter().collect::<Vec<_>>(),
        ["b.test", "c.test"],
        "a failed attempt or a condition: {attention}"
    );
    // The expiring one keeps its expiry: `expiry - time() < 7d` alerts still fire.
    assert!(attention.contains(&format!(
        "haproxy_acme_certificate_expiration_timestamp_seconds{{name=\"c.test\"}} {}",
        90 * day
    )));
    assert!(attention
        .contains("haproxy_acme_certificate_attention{name=\"c.test\",condition=\"expiring\"} 1"));
    for per in [PerCertificate::All, PerCertificate::Auto] {
        assert_eq!(ids_in(&render(per)).len(), 3);
    }
    // Aggregates whatever the mode.
    for text in [&attention, &render(PerCertificate::All)] {
        assert!(text.contains("haproxy_acme_certificates{phase=\"issued\"} 3\n"));
        assert!(text.contains("haproxy_acme_certificates_attention{condition=\"expiring\"} 1\n"));
        assert!(text.contains("haproxy_acme_certificates_attention{condition=\"failing\"} 0\n"));
        assert!(text.contains(&format!(
            "haproxy_acme_certificate_expiration_earliest_timestamp_seconds {}\n",
            90 * day
        )));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    // `auto`: every certificate up to AUTO_ALL_UP_TO, then the ones that need attention.
    let many = |n: usize| -> Vec<(String, Summary)> {
        let s = Summary::from_record(&records[0]);
        (0..n).map(|i| (format!("c{i}.test"), s.clone())).collect()
    };
    let auto = |all: &[(String, Summary)]| {
        let certs = all.iter().map(|(id, s)| (id.as_str(), s));
        m.render(certs, now, true, now, None, PerCertificate::Auto)
    };
    assert_eq!(ids_in(&auto(&many(AUTO_ALL_UP_TO))).len(), AUTO_ALL_UP_TO);
    let mut over = many(AUTO_ALL_UP_TO + 1);
    over[7].1 = Summary::from_record(&records[2]);
    let text = auto(&over);
    assert_eq!(ids_in(&text).into_iter().collect::<Vec<_>>(), ["c7.test"]);
    assert!(text.contains("haproxy_acme_certificates{phase=\"issued\"} 10001\n"));
}

#[test]
fn the_aggregates_are_prometheus_clients() {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct PhaseLabel {
        phase: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ConditionLabel {
        condition: String,
    }
    let day = 86_400;
    let mut pending = Record::new(vec!["p.test".into()], KeyType::EcdsaP256, 0);
    pending.failure = Some(haproxy_acme_state::Failure {
        step: haproxy_acme_state::Step::Order,
        kind: haproxy_acme_state::FailureKind::Permanent,
        error: "no".into(),
        attempts: 1,
        at: day,
        next_attempt_at: None,
    });
    let mut early = installed("e.test");
    early.cert.as_mut().unwrap().not_after = 80 * day;
    let records = [installed("a.test"), early, pending];
    let summaries = summaries(&records);
    let mut got = String::new();
    let certs = summaries.iter().map(|(id, s)| (*id, s));
    super::certs::write(&mut got, certs, day, PerCertificate::Attention);
    // The pending one's series follow the aggregates.
    let got = got[..got
        .find("# HELP haproxy_acme_certificate_ready_status")
        .unwrap()]
        .to_string();

    let (phases, conditions) = (
        Family::<PhaseLabel, Gauge>::default(),
        Family::<ConditionLabel, Gauge>::default(),
    );
    for (p, n) in [
        ("pending", 1),
        ("validating", 0),
        ("issued", 2),
        ("expiring", 0),
    ] {
        phases.get_or_create(&PhaseLabel { phase: p.into() }).set(n);
    }
    for (c, n) in [("failing", 1), ("expiring", 0), ("not-served", 0)] {
        let label = ConditionLabel {
            condition: c.into(),
        };
        conditions.get_or_create(&label).set(n);
    }
    let earliest = Gauge::<i64>::default();
    earliest.set(80 * day);
    fn encode(out: &mut String, family: &str, metric: impl prometheus_client::registry::Metric) {
        let mut reg = Registry::with_prefix("haproxy_acme");
        reg.register(family, super::certs::help(family), metric);
        prometheus_client::encoding::text::encode_registry(out, &reg).unwrap();
    }
    let mut want = String::new();
    let name = "certificate_expiration_earliest_timestamp_seconds";
    encode(&mut want, "certificates", phases);
    encode(&mut want, "certificates_attention", conditions);
    encode(&mut want, name, earliest);
    let sorted = |t: &str| {
        let mut l: Vec<String> = t.lines().map(String::from).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&got), sorted(&want), "{got}");
    assert_eq!(got.len(), want.len());
    // Each name is one family's, none another's sample.
    let text = Metrics::default().render_records(&records, day, true, 0, None, PerCertificate::All);
    for family in ["certificates", "certificates_attention", name] {
        let descriptor = format!("# TYPE haproxy_acme_{family} gauge\n");
        assert_eq!(text.matches(&descriptor).count(), 1, "{family}");
    }
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        text.matches("# TYPE ").count(),
        "no name declared twice"
    );
}
