//! Unit tests of `config::settings`.

use super::*;

#[test]
fn rate_limits_default_to_lets_encrypt_only_for_lets_encrypt() {
    let p = |v, d| parse_rate_limits(v, d);
    assert_eq!(
        p(None, LETSENCRYPT_PRODUCTION),
        Ok(Some(Limits::LETS_ENCRYPT))
    );
    assert_eq!(
        p(Some("auto"), LETSENCRYPT_STAGING),
        Ok(Some(Limits::LETS_ENCRYPT))
    );
    assert_eq!(p(None, "https://127.0.0.1:14000/dir"), Ok(None));
    assert_eq!(p(None, "https://letsencrypt.org.evil.test/dir"), Ok(None));
    assert_eq!(p(Some("off"), LETSENCRYPT_PRODUCTION), Ok(None));
    assert_eq!(
        p(Some("on"), "https://ca/dir"),
        Ok(Some(Limits::LETS_ENCRYPT))
    );
    let custom = p(Some("exact-set=1/7d, orders=10/90m"), "https://ca/dir")
        .unwrap()
        .unwrap();
    assert_eq!(
        custom.exact_set,
        Some(Limit {
            count: 1,
            window_secs: 7 * 86_400
        })
    );
    assert_eq!(
        custom.orders,
        Some(Limit {
            count: 10,
            window_secs: 5400
        })
    );
    assert_eq!(custom.registered_domain, None);
    // The windows are `parse_duration`'s: humantime's syntax, a bare number is seconds.
    let hm = p(Some("failed-validations=5/1h 30m, orders=2/600"), "x")
        .unwrap()
        .unwrap();
    assert_eq!(hm.failed_validations.unwrap().window_secs, 5400);
    assert_eq!(hm.orders.unwrap().window_secs, 600);
    let e = p(Some("exact-set=1/7 days ago"), "x").unwrap_err();
    assert!(e.contains("such as 90s, 5m, 3h, 7d"), "{e}");
    assert!(p(Some("exact-set=1/0s"), "x").unwrap_err().contains("1s"));
    assert!(p(Some("bogus=1/7d"), "x")
        .unwrap_err()
        .contains("unknown limit"));
    assert!(p(Some("exact-set"), "x").is_err());
}

fn raw() -> RawSettings {
    RawSettings {
        domains: Some("a.com".into()),
        ..Default::default()
    }
}

#[test]
fn defaults_and_staging() {
    let (c, _) = Config::from_raw(&raw(), Need::Daemon).unwrap();
    assert_eq!(c.acme_directory, LETSENCRYPT_PRODUCTION);
    assert_eq!(c.key_type, KeyType::EcdsaP256);
    assert_eq!(c.responder_listen.to_string(), "0.0.0.0:80");
    assert_eq!(c.haproxy_runtime_api, None);
    assert_eq!(c.haproxy_certs_dir, c.certs_dir);
    let (c, _) = Config::from_raw(
        &RawSettings {
            staging: true,
            ..raw()
        },
        Need::Daemon,
    )
    .unwrap();
    assert_eq!(c.acme_directory, LETSENCRYPT_STAGING);
    let e = Config::from_raw(
        &RawSettings {
            staging: true,
            acme_directory: Some("https://ca/dir".into()),
            ..raw()
        },
        Need::Daemon,
    )
    .unwrap_err();
    assert!(e.0[0].contains("keep one of them"));
}

#[test]
fn runtime_api_forms() {
    let p = |s, lb| parse_runtime_api(s, lb);
    assert_eq!(
        p("unix:/run/h.sock", None),
        Ok(RuntimeApiAddr::Unix("/run/h.sock".into()))
    );
    assert_eq!(
        p("127.0.0.1:9999", None),
        Ok(RuntimeApiAddr::Tcp("127.0.0.1:9999".into()))
    );
    assert_eq!(
        p("9999", Some("lb")),
        Ok(RuntimeApiAddr::Tcp("lb:9999".into()))
    );
    assert_eq!(
        p(":9999", Some("lb")),
        Ok(RuntimeApiAddr::Tcp("lb:9999".into()))
    );
    assert!(p("9999", None).is_err());
    assert!(p("unix:rel.sock", None).is_err());
    assert!(p("nonsense", None).is_err());
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = RawSettings {
        domains: Some("*.a.com".into()),
        email: Some("nobody".into()),
        key_type: Some("dsa".into()),
        responder_listen: Some("eighty".into()),
        acme_directory: Some("http://insecure/dir".into()),
        ..Default::default()
    };
    let e = Config::from_raw(&bad, Need::Daemon).unwrap_err();
    assert_eq!(e.0.len(), 5, "{e}");
    // No certificate in the environment: the daemon may still have some added at runtime,
    // so `run` decides once it has read the store.
    let (_, empty) = Config::from_raw(&RawSettings::default(), Need::Daemon).unwrap();
    assert!(empty.initial().is_empty());
    assert!(crate::config::nothing_to_manage().0[0].contains("DOMAINS is empty"));
    assert!(Config::from_raw(&RawSettings::default(), Need::StoreOnly).is_ok());
}

#[test]
fn admin_listen_is_loopback_unless_forced() {
    let with = |addr: &str, force: bool| {
        Config::from_raw(
            &RawSettings {
                domains: Some("a.test".into()),
                admin_listen: Some(addr.into()),
                admin_listen_non_loopback: force,
                ..Default::default()
            },
            Need::Daemon,
        )
    };
    assert_eq!(
        with("127.0.0.1:9120", false).unwrap().0.admin_listen,
        Some("127.0.0.1:9120".parse().unwrap())
    );
    assert!(with("[::1]:9120", false).is_ok());
    let e = with("0.0.0.0:9120", false).unwrap_err();
    assert!(e.0[0].contains("ADMIN_LISTEN_NON_LOOPBACK=true"), "{e}");
    assert!(with("10.1.2.3:9120", true).is_ok());
    assert!(with("localhost", false).unwrap_err().0[0].contains("127.0.0.1:9120"));
}

#[test]
fn one_duration_syntax() {
    let secs = |s| parse_duration(s).map(|d| d.as_secs());
    assert_eq!(secs("90"), Ok(90));
    assert_eq!(secs(" 90 "), Ok(90));
    assert_eq!(secs("90s"), Ok(90));
    assert_eq!(secs("5m"), Ok(300));
    assert_eq!(secs("3h"), Ok(3 * 3600));
    assert_eq!(secs("7d"), Ok(7 * 86_400));
    assert_eq!(secs("1h 30m"), Ok(5400));
    assert_eq!(secs("1.5h"), Ok(5400));
    assert_eq!(secs("0"), Ok(0));
    for bad in ["", "soon", "5 parsecs", "-1s", "1d ago"] {
        let e = parse_duration(bad).unwrap_err();
        assert!(
            e.contains("such as 90s, 5m, 3h, 7d or 1h 30m"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn deploy_hook_timeout_spellings() {
    let timeout = |t: &str| {
        Config::from_raw(
            &RawSettings {
                deploy_hook_timeout: Some(t.into()),
                ..Default::default()
            },
            Need::StoreOnly,
        )
        .map(|(c, _)| c.deploy_hook_timeout.as_secs())
    };
    assert_eq!(timeout(""), Ok(60));
    assert_eq!(timeout("90"), Ok(90));
    assert_eq!(timeout("2m 30s"), Ok(150));
    assert_eq!(timeout("1d"), Ok(86_400));
    let e = timeout("0").unwrap_err();
    assert!(e.0[0].starts_with("DEPLOY_HOOK_TIMEOUT"), "{e}");
    let e = timeout("soon").unwrap_err();
    assert!(
        e.0[0].starts_with("DEPLOY_HOOK_TIMEOUT: \"soon\" is not a duration"),
        "{e}"
    );
}

#[test]
fn rate_limit_windows_and_counts_out_of_range_are_refused() {
    let p = |v| parse_rate_limits(Some(v), "https://ca/dir");
    for (bad, why) in [
        ("orders=5/0s", "from 1s to 366d"),
        ("orders=5/0", "from 1s to 366d"),
        ("orders=5/-1h", "not a duration"),
        ("orders=5/367d", "from 1s to 366d"),
        ("orders=5/99999999999999999999", "too large"),
        ("orders=5/99999999999999999999s", "not a duration"),
        ("orders=5/600000000000y", "not a duration"),
        ("orders=0/1h", "a limit of 0"),
        ("orders=-1/1h", "not a count"),
        ("orders=4294967296/1h", "not a count"),
        ("orders=1/1h,orders=2/2h", "given twice"),
        ("orders=1/1時間", "not a duration"),
    ] {
        let e = p(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert_eq!(
        p("orders=1/366d")
            .unwrap()
            .unwrap()
            .orders
            .unwrap()
            .window_secs,
        366 * 86_400
    );
    let e = Config::from_raw(
        &RawSettings {
            rate_limits: Some("orders=5/0s".into()),
            ..raw()
        },
        Need::Daemon,
    )
    .unwrap_err();
    assert!(e.0[0].starts_with("RATE_LIMITS: "), "{e}");
}

#[test]
fn multibyte_characters_in_a_duration_are_an_error_not_a_panic() {
    for bad in ["5分", "５m", "5ｓ", "1h 30分", "µ", "秒", "1.µs", "é5s"] {
        let e = parse_duration(bad).unwrap_err();
        assert!(e.contains("such as 90s"), "{bad}: {e}");
    }
    // humantime's own multibyte unit and Unicode spaces are what they say.
    assert_eq!(parse_duration("5µs"), Ok(Duration::from_micros(5)));
    assert_eq!(
        parse_duration("1h\u{3000}30m"),
        Ok(Duration::from_secs(5400))
    );
    assert_eq!(parse_duration("5\u{3000}"), Ok(Duration::from_secs(5)));
}

#[test]
fn a_ca_bundle_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let check = |content: &str| {
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, content).unwrap();
        Config::from_raw(
            &RawSettings {
                acme_ca_bundle: Some(path),
                ..raw()
            },
            Need::Daemon,
        )
        .map(|_| ())
    };
    let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    for (bad, why) in [
        ("", "holds no certificate"),
        ("not PEM at all\n", "holds no certificate"),
        (key_only, "holds no certificate"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "certificate 1 is not X.509",
        ),
    ] {
        let e = check(bad).unwrap_err();
        assert!(
            e.0[0].starts_with("ACME_CA_BUNDLE ") && e.0[0].contains(why),
            "{bad:?}: {e}"
        );
    }
    check(&crate::pki::self_signed_default().unwrap()).unwrap();
    // Only the daemon reads it: `state dump` does not need the CA.
    let missing = RawSettings {
        acme_ca_bundle: Some(dir.path().join("none.pem")),
        ..raw()
    };
    assert!(Config::from_raw(&missing, Need::Daemon).unwrap_err().0[0].contains("no such file"));
    assert!(Config::from_raw(&missing, Need::StoreOnly).is_ok());
}

#[test]
fn values_the_runtime_api_or_a_socket_cannot_take_are_refused() {
    let one = |f: &dyn Fn(&mut RawSettings)| {
        let mut r = RawSettings {
            haproxy_runtime_api: Some("unix:/run/haproxy/admin.sock".into()),
            ..raw()
        };
        f(&mut r);
        Config::from_raw(&r, Need::Daemon)
            .err()
            .map(|e| e.0.join("\n"))
    };
    let e = one(&|r| r.certs_dir = Some("/etc/haproxy/my certs".into())).unwrap();
    assert!(
        e.starts_with("CERTS_DIR \"/etc/haproxy/my certs\": contains ' '"),
        "{e}"
    );
    let e = one(&|r| r.haproxy_certs_dir = Some("/certs;x".into())).unwrap();
    assert!(e.starts_with("HAPROXY_CERTS_DIR"), "{e}");
    // Files-only mode names no file on the runtime API.
    assert!(Config::from_raw(
        &RawSettings {
            certs_dir: Some("/etc/haproxy/my certs".into()),
            ..raw()
        },
        Need::Daemon
    )
    .is_ok());
    let long = format!("unix:/{}", "s".repeat(107));
    let e = one(&|r| r.haproxy_runtime_api = Some(long.clone())).unwrap();
    assert!(
        e.starts_with("HAPROXY_RUNTIME_API") && e.contains("at most 107"),
        "{e}"
    );
    let e = one(&|r| r.data_dir = Some(format!("/{}", "d".repeat(100)).into())).unwrap();
    assert!(
        e.starts_with("DATA_DIR") && e.contains("admin socket"),
        "{e}"
    );
    let e = one(&|r| {
        r.haproxy_runtime_api = Some("9999".into());
        r.load_balancer_service_name = Some("hap roxy".into());
    })
    .unwrap();
    assert!(e.starts_with("LOAD_BALANCER_SERVICE_NAME"), "{e}");
    for bad in ["hap roxy:9999", "host:0", "[::1:9999", "a/b:80"] {
        let e = one(&|r| r.haproxy_runtime_api = Some(bad.into())).unwrap();
        assert!(e.starts_with("HAPROXY_RUNTIME_API"), "{bad}: {e}");
    }
    assert_eq!(
        one(&|r| r.haproxy_runtime_api = Some("[::1]:9999".into())),
        None
    );
    for bad in [
        "https://",
        "https://exa mple/dir",
        "https://ca:99999/dir",
        "https://ca\u{0}/d",
    ] {
        let e = one(&|r| r.acme_directory = Some(bad.into())).unwrap();
        assert!(e.starts_with("ACME_DIRECTORY"), "{bad}: {e}");
    }
    assert_eq!(
        one(&|r| r.acme_directory = Some("https://127.0.0.1:14000/dir".into())),
        None
    );
    let e = one(&|r| r.email = Some("a\u{7}@b.test".into())).unwrap();
    assert!(e.starts_with("EMAIL"), "{e}");
}

#[test]
fn watchdog_interval_and_alert_hook() {
    let with = |interval: Option<&str>, hook: Option<&str>| {
        Config::from_raw(
            &RawSettings {
                watchdog_interval: interval.map(String::from),
                alert_hook: hook.map(String::from),
                ..raw()
            },
            Need::Daemon,
        )
    };
    let (c, _) = with(None, None).unwrap();
    assert_eq!(c.watchdog_interval, Some(Duration::from_secs(300)));
    assert_eq!(c.alert_hook, None);
    assert_eq!(
        with(Some("90s"), Some("  notify-send \"$ALERT_MESSAGE\" "))
            .unwrap()
            .0
            .alert_hook
            .as_deref(),
        Some("notify-send \"$ALERT_MESSAGE\"")
    );
    assert_eq!(
        with(Some("2"), None).unwrap().0.watchdog_interval,
        Some(Duration::from_secs(2))
    );
    assert_eq!(with(Some("off"), None).unwrap().0.watchdog_interval, None);
    assert_eq!(with(Some("0"), None).unwrap().0.watchdog_interval, None);
    assert_eq!(with(Some(" "), Some("")).unwrap().0.alert_hook, None);
    let e = with(Some("500ms"), None).unwrap_err();
    assert!(
        e.0[0].starts_with("WATCHDOG_INTERVAL \"500ms\": at least 1s"),
        "{e}"
    );
    let e = with(Some("often"), None).unwrap_err();
    assert!(
        e.0[0].starts_with("WATCHDOG_INTERVAL: \"often\" is not a duration"),
        "{e}"
    );
}

#[test]
fn preflight_is_on_unless_turned_off_and_its_address_gets_port_80() {
    let (c, _) = Config::from_raw(&raw(), Need::Daemon).unwrap();
    assert!(c.preflight);
    assert_eq!(c.preflight_http_address, None);
    let (c, _) = Config::from_raw(
        &RawSettings {
            preflight: Some("off".into()),
            preflight_http_address: Some("lb.internal".into()),
            ..raw()
        },
        Need::Daemon,
    )
    .unwrap();
    assert!(!c.preflight);
    assert_eq!(c.preflight_http_address.as_deref(), Some("lb.internal:80"));
    let e = Config::from_raw(
        &RawSettings {
            preflight: Some("maybe".into()),
            preflight_http_address: Some("127.0.0.1:0".into()),
            ..raw()
        },
        Need::Daemon,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("PREFLIGHT \"maybe\"") && e.contains("PREFLIGHT_HTTP_ADDRESS"),
        "{e}"
    );
}

#[test]
fn concurrency_is_a_whole_number_from_1_to_256() {
    assert_eq!(parse_concurrency(None), Ok(8));
    assert_eq!(parse_concurrency(Some(" ")), Ok(8));
    assert_eq!(parse_concurrency(Some("1")), Ok(1));
    assert_eq!(parse_concurrency(Some(" 64 ")), Ok(64));
    assert_eq!(parse_concurrency(Some("256")), Ok(256));
    for bad in [
        "0",
        "257",
        "-1",
        "8.5",
        "eight",
        "1e3",
        "99999999999999999999999",
    ] {
        let e = parse_concurrency(Some(bad)).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "CONCURRENCY {bad:?}: expected a whole number from 1 to 256"
            )),
            "{bad}: {e}"
        );
    }
    let (c, _) = Config::from_raw(&raw(), Need::Daemon).unwrap();
    assert_eq!(c.concurrency, 8);
    let e = Config::from_raw(
        &RawSettings {
            concurrency: Some("0".into()),
            ..raw()
        },
        Need::Daemon,
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.0[0].starts_with("CONCURRENCY \"0\""), "{e}");
}
