//! ACME profiles end to end against pebble 2.10 (which offers `meta.profiles`, takes an order's
//! `profile` and answers an unknown one with `invalidProfile`): the start-up check, a
//! certificate issued and renewed under its own profile, a change of profile re-issuing while
//! the old certificate serves, the CA refusing a profile it stopped offering, and a short
//! certificate from a CA without renewal windows renewing at half its lifetime.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_until, Env, Options};

/// pebble 2.10 (profiles came after 2.4, Debian's): the lab's, unless PEBBLE_BIN says otherwise.
fn pebble_with_profiles() {
    let lab = std::env::var("LAB_DIR").unwrap_or_else(|_| "/var/cache/haproxy-acme-lab".into());
    for (var, bin) in [
        ("PEBBLE_BIN", "pebble"),
        ("CHALLTESTSRV_BIN", "pebble-challtestsrv"),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, format!("{lab}/bin/{bin}"));
        }
    }
}

fn start(profiles: &[(&str, u64)]) -> Env {
    pebble_with_profiles();
    let env = Env::start_opts(Options {
        profiles: profiles.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        ..Options::default()
    });
    let dir = env.curl(&env.directory_url()).unwrap();
    let dir: serde_json::Value = serde_json::from_str(&dir).unwrap();
    for (name, _) in profiles {
        assert!(
            dir["meta"]["profiles"].get(name).is_some(),
            "this pebble offers no profile {name}: {dir} (profiles need pebble 2.10)"
        );
    }
    env
}

/// The dump's view of certificate `id`.
fn dump_of(env: &Env, domains: &str, id: &str) -> serde_json::Value {
    let out = env.cli(domains, &["state", "dump"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the dump: {v}"))
        .clone()
}

fn unix(rfc3339: &serde_json::Value) -> i64 {
    let s = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

/// The served certificate's serial and lifetime in seconds (notAfter - notBefore).
fn served(env: &Env, name: &str) -> Option<(String, i64)> {
    let text = env.served_x509(name, "-serial -startdate -enddate")?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let date = |k: &str| -> Option<i64> {
        let out = Command::new("date")
            .args(["-u", "+%s", "-d", &field(k)?])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let serial = field("serial=")?;
    Some((serial, date("notAfter=")? - date("notBefore=")?))
}

const DAY: i64 = 86_400;

#[test]
fn a_profile_the_ca_does_not_offer_stops_the_start_naming_the_offered_ones() {
    let env = start(&[("shortlived", 60)]);
    // The default profile.
    let (code, out) = env.run_to_exit("u.example.test", &[("ACME_PROFILE", "nine-days")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(
            "profile \"nine-days\" (ACME_PROFILE) is not offered by the CA: it offers default, \
             shortlived"
        ),
        "{out}"
    );
    // A certificate's own.
    let (code, out) = env.run_to_exit("u.example.test profile=tlsserver;v.example.test", &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("profile \"tlsserver\" (certificate \"u.example.test\") is not offered"),
        "{out}"
    );
    // A bad option is a configuration error before the CA is asked.
    let (code, out) = env.run_to_exit("u.example.test lifetime=short", &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unknown option \"lifetime\""), "{out}");
    assert_eq!(env.pebble_new_orders(), 0, "nothing was ordered");
    // Let's Encrypt's 25-name limit of its new profiles, checked without asking it.
    let names: Vec<String> = (0..26).map(|i| format!("n{i}.example.test")).collect();
    let out = env.cli_with(
        &format!("{} profile=shortlived", names.join(",")),
        &[(
            "ACME_DIRECTORY",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        )],
        &["check-config"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        common::text(&out).contains(
            "has 26 names: Let's Encrypt's profile \"shortlived\" (from its profile= option)"
        ),
        "{}",
        common::text(&out)
    );
    // A CA that cannot be reached at start does not stop the daemon: it waits for it as always.
    let closed = format!("https://127.0.0.1:{}/dir", common::free_port());
    let mut daemon = env.start_daemon_with(
        "u.example.test",
        &[("ACME_PROFILE", "nine-days"), ("ACME_DIRECTORY", &closed)],
    );
    wait_until("the daemon goes on", Duration::from_secs(30), || {
        daemon.assert_running();
        daemon
            .log_text()
            .contains("could not be read to check the configured profiles")
    });
    daemon.assert_running();
    assert!(daemon.terminate().success());
}

#[test]
fn certificates_are_issued_and_renewed_under_their_own_profile() {
    // 30-second certificates under `shortlived`, pebble's 90 days under `default`.
    let env = start(&[("shortlived", 30)]);
    let domains = "s.example.test profile=shortlived;d.example.test";
    let mut daemon = env.start_daemon_with(domains, &[("ACME_PROFILE", "default")]);
    let root = env.issuer_root();
    wait_until("both served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid("s.example.test", &root).is_some()
            && env.served_and_valid("d.example.test", &root).is_some()
    });
    let (first, lifetime) = served(&env, "s.example.test").unwrap();
    // pebble's notAfter is notBefore + validity - 1 s.
    assert_eq!(lifetime, 29, "the shortlived profile's lifetime");
    let (_, long) = served(&env, "d.example.test").unwrap();
    assert!(long > 80 * DAY, "the default profile's lifetime: {long} s");
    let s = dump_of(&env, domains, "s.example.test");
    assert_eq!(s["profile"], "shortlived");
    assert!(s.get("issued_profile").is_none(), "{s}");
    assert_eq!(
        dump_of(&env, domains, "d.example.test")["profile"],
        "default"
    );
    // The renewal time: half the lifetime (under ten days), or a point in the CA's window when
    // it offers one (pebble 2.10 does: for so short a certificate it spans the whole lifetime).
    let (nb, na) = (unix(&s["not_before"]), unix(&s["not_after"]));
    let renew_at = unix(&s["renew_at"]);
    match s["renewal_window"].as_array() {
        // Half-way, brought forward by at most a thirtieth of the lifetime (the serial's
        // spread, `timing::renewal_spread`).
        None => {
            let half = nb + (na - nb) / 2;
            assert!(renew_at <= half && renew_at >= half - (na - nb) / 30, "{s}");
        }
        Some(w) => {
            assert!(unix(&w[0]) <= renew_at && renew_at <= unix(&w[1]), "{s}");
            assert!(nb <= unix(&w[0]) && unix(&w[1]) <= na, "{s}");
        }
    }
    // Renewed before it expires, under the same profile, while it keeps serving.
    let deadline = Instant::now() + Duration::from_secs(45);
    let renewed = loop {
        daemon.assert_running();
        assert!(
            env.served_and_valid("s.example.test", &root).is_some(),
            "a handshake failed during the renewal; log:\n{}",
            daemon.log_text()
        );
        match served(&env, "s.example.test") {
            Some((serial, lifetime)) if serial != first => break lifetime,
            _ => assert!(
                Instant::now() < deadline,
                "not renewed; log:\n{}",
                daemon.log_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(renewed, 29, "the renewal is under the same profile");
    let log = daemon.log_text();
    assert!(
        log.matches("cert=\"s.example.test\" order=").count() >= 2
            && log.matches("profile=\"shortlived\"").count()
                == log.matches("cert=\"s.example.test\" order=").count(),
        "every order names the profile: {log}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn changing_the_profile_reissues_while_the_old_certificate_serves() {
    let env = start(&[("shortlived", 3600)]);
    let file = env.dir.path().join("domains");
    std::fs::write(&file, "c.example.test profile=default\n").unwrap();
    let file_s = file.display().to_string();
    let overrides = [("DOMAINS_FILE", file_s.as_str())];
    let mut daemon = env.start_daemon_with("", &overrides);
    let root = env.issuer_root();
    wait_until("served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid("c.example.test", &root).is_some()
    });
    let (first, long) = served(&env, "c.example.test").unwrap();
    assert!(long > 80 * DAY, "{long}");
    // The file changes: a new certificate under the new profile; every handshake meanwhile
    // gets the old one, valid.
    std::fs::write(&file, "c.example.test profile=shortlived\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let lifetime = loop {
        daemon.assert_running();
        assert!(
            env.served_and_valid("c.example.test", &root).is_some(),
            "a handshake failed while re-issuing; log:\n{}",
            daemon.log_text()
        );
        match served(&env, "c.example.test") {
            Some((serial, lifetime)) if serial != first => break lifetime,
            _ => assert!(
                Instant::now() < deadline,
                "not re-issued; log:\n{}",
                daemon.log_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lifetime, 3599, "issued under the new profile");
    assert!(daemon.log_text().contains("profile changed: re-issuing"));
    let c = env.cli_with("", &overrides, &["state", "dump"]);
    let v: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    let c = &v["certificates"][0];
    assert_eq!(c["profile"], "shortlived");
    assert!(c.get("issued_profile").is_none(), "{c}");
    assert_eq!(env.pebble_finalizes(), 2);
    assert!(daemon.terminate().success());
}

#[test]
fn a_profile_the_ca_stopped_offering_is_a_permanent_failure_with_its_message() {
    let mut env = start(&[("shortlived", 20)]);
    let domains = "g.example.test profile=shortlived";
    let mut daemon = env.start_daemon(domains);
    let root = env.issuer_root();
    wait_until("served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid("g.example.test", &root).is_some()
    });
    // The CA drops the profile (a restart with another configuration); the renewal asks for it.
    env.set_pebble_profiles(&[("default", 0)]);
    env.restart_pebble();
    let mut last = serde_json::Value::Null;
    wait_until("the renewal refused", Duration::from_secs(60), || {
        daemon.assert_running();
        last = dump_of(&env, domains, "g.example.test");
        last["last_error"]["kind"] == "permanent"
    });
    let e = &last["last_error"];
    assert_eq!(e["step"], "order", "{last}");
    assert_eq!(e["next_attempt_at"], serde_json::Value::Null, "{last}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("Order includes unrecognized profile name \"shortlived\"")
            && msg.contains("invalidProfile")
            && msg.contains("ACME_PROFILE"),
        "{msg}"
    );
    // Permanent: no order is tried again until the configuration or an operator says so.
    let orders = env.running_pebble_new_orders();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(env.running_pebble_new_orders(), orders);
    daemon.assert_running();
    assert!(daemon.terminate().success());
}

#[test]
fn a_short_certificate_from_a_ca_without_renewal_windows_renews_at_half_its_lifetime() {
    // 60-second `shortlived` certificates (a 6-day certificate scaled down) from a CA whose
    // directory offers no renewal information (pebble behind `ca_proxy`): the lifetime rule
    // alone decides, half-way (not two thirds: under ten days).
    let env = start(&[("shortlived", 60)]);
    let proxy = common::ca_proxy::CaProxy::start(&env);
    proxy.strip_renewal_info(true);
    let dir = proxy.directory_url();
    let via = [("ACME_DIRECTORY", dir.as_str())];
    let domains = "h.example.test profile=shortlived";
    let mut daemon = env.start_daemon_with(domains, &via);
    let root = env.issuer_root();
    wait_until("served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid("h.example.test", &root).is_some()
    });
    let (first, lifetime) = served(&env, "h.example.test").unwrap();
    assert_eq!(lifetime, 59, "the shortlived profile's lifetime");
    let mut c = serde_json::Value::Null;
    wait_until(
        "the dump shows the stored certificate",
        Duration::from_secs(10),
        || {
            let out = env.cli_with(domains, &via, &["state", "dump"]);
            c = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
                ["certificates"][0]
                .clone();
            c["installed"] == true
        },
    );
    assert_eq!(c["renew_at_source"], "lifetime", "{c}");
    assert!(c["renewal_window"].is_null(), "{c}");
    let (nb, na) = (unix(&c["not_before"]), unix(&c["not_after"]));
    let renew_at = unix(&c["renew_at"]);
    // Half-way, brought forward by at most a thirtieth of the lifetime (the serial's spread).
    let half = nb + (na - nb) / 2;
    assert!(
        renew_at <= half && renew_at >= half - (na - nb) / 30,
        "half-way: {c}"
    );
    // The renewal is served after the half-way point and well before two thirds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        daemon.assert_running();
        if served(&env, "h.example.test").is_some_and(|(s, _)| s != first) {
            break std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        seen >= renew_at && seen < nb + (na - nb) * 2 / 3,
        "renewed at {seen}: half-way is {renew_at}, two thirds {}",
        nb + (na - nb) * 2 / 3
    );
    assert!(daemon.terminate().success());
}
