//! Property tests of `Config::from_raw`: arbitrary strings (control and multibyte characters
//! included), arbitrary bytes for the path settings, and near-miss values (durations, rate
//! limits, URLs, hosts, name lists) for every setting. Whatever the input: no panic, and either a
//! configuration or errors that each name the setting that was given garbage.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

/// A valid base: one certificate, a runtime API (so the certificate directory is checked as a
/// runtime-API argument too), everything else default.
fn base() -> RawSettings {
    RawSettings {
        domains: Some("a.test".into()),
        haproxy_runtime_api: Some("unix:/run/haproxy/admin.sock".into()),
        ..Default::default()
    }
}

/// Any text: arbitrary Unicode, printable text with multibyte characters, or nothing.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,30}",
        "[ 0-9a-z.:/;,=\\-µ秒分é\u{3000}\u{0}\t\n]{0,30}",
        Just(String::new()),
    ]
}

/// Something that looks like a duration: digits (sometimes far too many), a fraction, a unit
/// (multibyte ones included), spaces.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{0,25}(\\.[0-9]{0,3})?[ \u{3000}]?(ns|us|µs|ms|s|m|h|d|w|M|y|years|秒|分|ｓ|)",
        "[0-9]{1,3}[hdm] ?[0-9]{1,3}[sµ秒]",
        text(),
    ]
}

fn rate_limits() -> impl Strategy<Value = String> {
    let item = (
        prop_oneof![
            Just("orders"),
            Just("exact-set"),
            Just("registered-domain"),
            Just("failed-validations"),
            Just("bogus"),
        ],
        prop_oneof![Just("0".to_string()), "[0-9]{1,3}", "-?[0-9]{0,12}"],
        prop_oneof![3 => "[0-9]{1,9}(s|m|h|d|y)", 1 => duration()],
    )
        .prop_map(|(k, n, d)| format!("{k}={n}/{d}"));
    prop_oneof![
        prop::collection::vec(item, 0..5).prop_map(|v| v.join(",")),
        Just("auto".to_string()),
        Just("off".to_string()),
        text(),
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9.:\\[\\]_ é-]{0,20}", text()]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        (host(), "[ -~é]{0,20}").prop_map(|(h, p)| format!("https://{h}/{p}")),
        text(),
    ]
}

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        "([a-zA-Z0-9.*ü_-]{0,70}[,;] ?){0,4}",
        "[a-z]{1,63}(\\.[a-z]{1,63}){1,5}",
        text(),
    ]
}

fn path() -> impl Strategy<Value = PathBuf> {
    prop_oneof![
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..300)
            .prop_map(|b| PathBuf::from(OsString::from_vec(b))),
        "/[a-z /;\\\\\u{0}é]{0,140}".prop_map(PathBuf::from),
    ]
}

/// `from_raw` for both needs: a configuration, or errors that each contain `setting`.
fn refused_only_naming(raw: &RawSettings, setting: &str) -> Result<(), TestCaseError> {
    for need in [Need::Daemon, Need::StoreOnly] {
        if let Err(e) = Config::from_raw(raw, need) {
            prop_assert!(!e.0.is_empty());
            for line in &e.0 {
                prop_assert!(
                    line.contains(setting),
                    "an error about {} does not name it: {}",
                    setting,
                    line
                );
            }
        }
    }
    Ok(())
}

fn with(f: impl FnOnce(&mut RawSettings)) -> RawSettings {
    let mut raw = base();
    f(&mut raw);
    raw
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn domains(v in names()) {
        refused_only_naming(&with(|r| r.domains = Some(v)), "DOMAINS")?;
    }

    #[test]
    fn domains_file(content in names(), p in path()) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domains");
        std::fs::write(&file, content).unwrap();
        refused_only_naming(&with(|r| r.domains_file = Some(file)), "DOMAINS_FILE")?;
        refused_only_naming(&with(|r| r.domains_file = Some(p)), "DOMAINS_FILE")?;
    }

    #[test]
    fn rate_limits_setting(v in rate_limits()) {
        let raw = with(|r| r.rate_limits = Some(v));
        refused_only_naming(&raw, "RATE_LIMITS")?;
        if let Ok((c, _)) = Config::from_raw(&raw, Need::StoreOnly) {
            let l = c.rate_limits.unwrap_or(Limits::LETS_ENCRYPT);
            for limit in [l.orders, l.exact_set, l.registered_domain, l.failed_validations]
                .into_iter()
                .flatten()
            {
                prop_assert!(limit.count >= 1);
                prop_assert!((1..=MAX_RATE_WINDOW_SECS).contains(&limit.window_secs));
            }
        }
    }

    #[test]
    fn deploy_hook_timeout(v in duration()) {
        let raw = with(|r| r.deploy_hook_timeout = Some(v));
        refused_only_naming(&raw, "DEPLOY_HOOK_TIMEOUT")?;
        if let Ok((c, _)) = Config::from_raw(&raw, Need::StoreOnly) {
            prop_assert!(!c.deploy_hook_timeout.is_zero());
        }
    }

    #[test]
    fn email(v in prop_oneof![text(), "[a-z@.,; é\u{0}]{0,20}"]) {
        refused_only_naming(&with(|r| r.email = Some(v)), "EMAIL")?;
    }

    #[test]
    fn acme_directory(v in url()) {
        refused_only_naming(&with(|r| r.acme_directory = Some(v)), "ACME_DIRECTORY")?;
    }

    #[test]
    fn acme_ca_bundle(content in prop_oneof![
        text(),
        Just("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string()),
        Just("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_string()),
    ], p in path()) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.pem");
        std::fs::write(&file, content).unwrap();
        // None of these is a certificate: always refused when the daemon needs it.
        let raw = with(|r| r.acme_ca_bundle = Some(file));
        prop_assert!(Config::from_raw(&raw, Need::Daemon).is_err());
        refused_only_naming(&raw, "ACME_CA_BUNDLE")?;
        refused_only_naming(&with(|r| r.acme_ca_bundle = Some(p)), "ACME_CA_BUNDLE")?;
    }

    #[test]
    fn key_type(v in prop_oneof![text(), "(ecdsa|rsa|ECDSA)-?(p256|p384|2048|4096|1)"]) {
        refused_only_naming(&with(|r| r.key_type = Some(v)), "KEY_TYPE")?;
    }

    #[test]
    fn data_dir(p in path()) {
        refused_only_naming(&with(|r| r.data_dir = Some(p)), "DATA_DIR")?;
    }

    #[test]
    fn certs_dirs(p in path()) {
        let raw = with(|r| r.certs_dir = Some(p.clone()));
        refused_only_naming(&raw, "CERTS_DIR")?;
        let raw = with(|r| r.haproxy_certs_dir = Some(p));
        refused_only_naming(&raw, "HAPROXY_CERTS_DIR")?;
        if let Ok((c, _)) = Config::from_raw(&raw, Need::StoreOnly) {
            let d = c.haproxy_certs_dir.to_str();
            prop_assert!(d.is_some_and(|d| checks::runtime_api_unsafe(d).is_none()));
        }
    }

    #[test]
    fn runtime_api(v in prop_oneof![
        host(),
        host().prop_map(|h| format!("unix:{h}")),
        path().prop_map(|p| format!("unix:{}", p.display())),
        (host(), "-?[0-9]{0,7}").prop_map(|(h, p)| format!("{h}:{p}")),
    ]) {
        refused_only_naming(&with(|r| r.haproxy_runtime_api = Some(v)), "HAPROXY_RUNTIME_API")?;
    }

    #[test]
    fn load_balancer_service_name(v in host()) {
        let raw = with(|r| {
            r.load_balancer_service_name = Some(v);
            r.haproxy_runtime_api = Some("9999".into());
        });
        // A blank name leaves the bare port without a host: that error names both.
        refused_only_naming(&raw, "LOAD_BALANCER_SERVICE_NAME")?;
    }

    #[test]
    fn listen_addresses(v in prop_oneof![host(), (host(), "[0-9]{0,6}").prop_map(|(h, p)| format!("{h}:{p}"))]) {
        refused_only_naming(&with(|r| r.responder_listen = Some(v.clone())), "RESPONDER_LISTEN")?;
        refused_only_naming(&with(|r| r.admin_listen = Some(v.clone())), "ADMIN_LISTEN")?;
        refused_only_naming(&with(|r| r.tls_alpn_listen = Some(v)), "TLS_ALPN_LISTEN")?;
    }

    #[test]
    fn dns_persist_settings(v in prop_oneof![host(), text()]) {
        refused_only_naming(&with(|r| r.dns_resolver = Some(v.clone())), "DNS_RESOLVER")?;
        refused_only_naming(&with(|r| r.dns_persist_issuer = Some(v)), "DNS_PERSIST_ISSUER")?;
    }

    #[test]
    fn watchdog_interval(v in duration()) {
        refused_only_naming(&with(|r| r.watchdog_interval = Some(v)), "WATCHDOG_INTERVAL")?;
    }

    #[test]
    fn alert_hook_is_any_command(v in text()) {
        prop_assert!(Config::from_raw(&with(|r| r.alert_hook = Some(v)), Need::Daemon).is_ok());
    }

    #[test]
    fn deploy_hook_is_any_command(v in text()) {
        prop_assert!(Config::from_raw(&with(|r| r.deploy_hook = Some(v)), Need::Daemon).is_ok());
    }

    /// Everything garbage at once: no panic, and every error names some setting.
    #[test]
    fn everything_at_once(
        (domains, rate, email, dir, key, lb, api) in
            (names(), rate_limits(), text(), url(), text(), host(), host()),
        (timeout, listen, admin, hook) in (duration(), host(), host(), text()),
        (watchdog, alert, profile, alpn) in (duration(), text(), text(), host()),
        (data, certs, hcerts, bundle, file) in (path(), path(), path(), path(), path()),
        (staging, prune, non_loopback) in (any::<bool>(), any::<bool>(), any::<bool>()),
        (eab_kid, eab_key, eab_file) in
            (text(), prop_oneof![text(), "[A-Za-z0-9_=+/-]{12,60}"], prop::option::of(path())),
    ) {
        let raw = RawSettings {
            domains: Some(domains),
            domains_file: Some(file),
            prune,
            rate_limits: Some(rate),
            concurrency: Some(key.clone()),
            log_format: None,
            email: Some(email),
            staging,
            load_balancer_service_name: Some(lb),
            acme_directory: Some(dir),
            acme_ca_bundle: Some(bundle),
            key_type: Some(key),
            data_dir: Some(data),
            certs_dir: Some(certs),
            haproxy_certs_dir: Some(hcerts),
            haproxy_runtime_api: Some(api),
            admin_listen: Some(admin),
            admin_listen_non_loopback: non_loopback,
            deploy_hook: Some(hook),
            deploy_hook_timeout: Some(timeout),
            dns_hook: None,
            dns_cleanup_hook: None,
            dns_hook_timeout: None,
            dns_update_server: None,
            dns_tsig_key_name: None,
            dns_tsig_algorithm: None,
            dns_tsig_secret: None,
            dns_tsig_secret_file: None,
            dns_propagation_timeout: None,
            dns_authoritative_port: None,
            dns_resolver: None,
            dns_persist_issuer: None,
            postgres_url: None,
            store_key_file: None,
            node_name: None,
            lease_time: None,
            responder_listen: Some(listen),
            tls_alpn_listen: Some(alpn),
            watchdog_interval: Some(watchdog),
            metrics_per_certificate: None,
            alert_hook: Some(alert),
            acme_profile: Some(profile),
            preflight: None,
            preflight_http_address: None,
            preflight_tls_address: None,
            eab_kid: Some(eab_kid),
            eab_hmac_key: Some(eab_key.parse().unwrap()),
            eab_hmac_key_file: eab_file,
        };
        // The HMAC key is never printed: not in an error, not in the Config's Debug (its JSON:
        // `eab::tests::the_key_never_prints`).
        let secret = eab_key.trim();
        let secret = (secret.len() >= 12).then_some(secret);
        const SETTINGS: [&str; 20] = [
            "DOMAINS", "RATE_LIMITS", "EMAIL", "ACME_DIRECTORY", "ACME_CA_BUNDLE",
            "KEY_TYPE", "DATA_DIR", "CERTS_DIR", "LOAD_BALANCER_SERVICE_NAME",
            "HAPROXY_RUNTIME_API", "ADMIN_LISTEN", "DEPLOY_HOOK_TIMEOUT", "RESPONDER_LISTEN",
            "--staging", "DOMAINS_FILE", "WATCHDOG_INTERVAL", "ACME_PROFILE", "EAB_",
            "TLS_ALPN_LISTEN", "CONCURRENCY",
        ];
        for need in [Need::Daemon, Need::StoreOnly] {
            let result = Config::from_raw(&raw, need);
            if let (Some(secret), Ok((config, _))) = (secret, &result) {
                let debug = format!("{config:?}");
                prop_assert!(!debug.contains(secret));
            }
            if let Err(e) = result {
                for line in &e.0 {
                    if let Some(secret) = secret {
                        prop_assert!(!line.contains(secret), "the HMAC key in: {}", line);
                    }
                    prop_assert!(SETTINGS.iter().any(|s| line.contains(s)), "names no setting: {}", line);
                }
            }
        }
    }
}
