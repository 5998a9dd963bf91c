//! Unit tests of the metrics: names, labels and values as rendered.

use super::*;
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
    let before_watchdog = m.render(&[], now, true, now, None);
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
    let text = m.render(&[installed, waiting], now, true, now, None);
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
    let expired = m.render(&[installed_again], now + 91 * 86_400, true, now, None);
    assert!(
        expired.contains(
            "haproxy_acme_certificate_attention{name=\"a.test\",condition=\"expiring\"} 1"
        ),
        "{expired}"
    );
    assert!(!text.contains("haproxy_acme_certificate_attention{"));
    assert!(text.trim_end().ends_with("# EOF"));
}
