//! Alerts, since CAs no longer send expiry e-mail (issue 12), against real pebble, HAProxy and
//! the daemon: the watchdog finds a certificate HAProxy (or its file) no longer holds, installs
//! the stored one again and counts it; `status --check` exits 0/1/2/3 for a healthy set, a
//! failing renewal, an expiring certificate, served ≠ stored, an invalid setting, no store; the
//! alert hook runs once per transition, and not again after a restart.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_until, Env, Options};
use serde_json::Value;

fn dump(env: &Env, domains: &str) -> Value {
    let out = env.cli(domains, &["state", "dump"]);
    assert!(
        out.status.success(),
        "state dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cert<'a>(dump: &'a Value, id: &str) -> &'a Value {
    dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {dump}"))
}

/// `status --check`: its exit code, stdout and stderr.
fn check(env: &Env, domains: &str, overrides: &[(&str, &str)]) -> (i32, String, String) {
    let out = env.cli_with(domains, overrides, &["status", "--check"]);
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The serial HAProxy serves under `id`'s file, as `show ssl cert` prints it.
fn served_serial(env: &Env, id: &str) -> Option<String> {
    let file = env.certs_dir.join(format!("{id}.pem"));
    env.runtime(&format!("show ssl cert {}", file.display()))
        .lines()
        .find_map(|l| l.strip_prefix("Serial:"))
        .map(|s| s.trim().to_string())
}

/// The leaf serial of `id`'s file in the certificate directory.
fn file_serial(env: &Env, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(env.certs_dir.join(format!("{id}.pem"))).ok()?;
    haproxy_acme::pki::chain_meta(&text, 0)
        .ok()
        .map(|m| m.serial)
}

/// A self-signed certificate for `name` and its key, as HAProxy takes them: not ours.
fn foreign_bundle(name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

/// Makes the running HAProxy serve `bundle` under `id`'s file (what a reload with another file
/// would do), through its own runtime API.
fn haproxy_serves(env: &Env, id: &str, bundle: &str) {
    let file = env.certs_dir.join(format!("{id}.pem"));
    let set = env.runtime(&format!("set ssl cert {} <<\n{bundle}", file.display()));
    assert!(set.contains("Transaction"), "set ssl cert: {set}");
    let commit = env.runtime(&format!("commit ssl cert {}", file.display()));
    assert!(commit.contains("Success"), "commit ssl cert: {commit}");
}

/// The daemon's /metrics, through its admin socket.
fn metrics(env: &Env) -> String {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", "--unix-socket"])
        .arg(env.data_dir.join("admin.sock"))
        .arg("http://localhost/metrics")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn installed(env: &Env, domains: &str, ids: &[&str]) -> bool {
    let d = dump(env, domains);
    ids.iter().all(|id| cert(&d, id)["installed"] == true)
}

#[test]
fn the_watchdog_finds_a_drift_installs_the_stored_certificate_again_and_counts_it() {
    let mut env = Env::start();
    let root = env.issuer_root();
    let domains = "a.example.test;b.example.test";
    let mut daemon = env.start_daemon_with(domains, &[("WATCHDOG_INTERVAL", "2s")]);
    wait_until("both served", Duration::from_secs(60), || {
        daemon.assert_running();
        ["a.example.test", "b.example.test"]
            .iter()
            .all(|n| env.served_and_valid(n, &root).is_some())
    });
    wait_until("both installed", Duration::from_secs(10), || {
        installed(&env, domains, &["a.example.test", "b.example.test"])
    });
    let stored = |id: &str| {
        cert(&dump(&env, domains), id)["serial"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (stored_a, stored_b) = (stored("a.example.test"), stored("b.example.test"));
    assert_eq!(
        served_serial(&env, "a.example.test"),
        Some(stored_a.clone())
    );

    // Someone puts another certificate in a's file and makes HAProxy serve it.
    let bundle = foreign_bundle("a.example.test");
    std::fs::write(env.certs_dir.join("a.example.test.pem"), &bundle).unwrap();
    haproxy_serves(&env, "a.example.test", &bundle);
    let foreign = served_serial(&env, "a.example.test").unwrap();
    assert_ne!(foreign, stored_a);
    assert!(env.served_and_valid("a.example.test", &root).is_none());
    let tampered = Instant::now();
    wait_until(
        "a's stored certificate served and in its file again",
        Duration::from_secs(15),
        || {
            served_serial(&env, "a.example.test").as_deref() == Some(stored_a.as_str())
                && file_serial(&env, "a.example.test").as_deref() == Some(stored_a.as_str())
        },
    );
    let took = tampered.elapsed();
    eprintln!(
        "ALERTS-TIMING: another certificate served and in the file, repaired after {} ms (WATCHDOG_INTERVAL=2s)",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(2 * 11 / 10 + 3),
        "repaired within one interval (+10 % jitter) and an install: {took:?}"
    );
    assert!(env.served_and_valid("a.example.test", &root).is_some());
    wait_until("a recorded as installed", Duration::from_secs(5), || {
        installed(&env, domains, &["a.example.test"])
    });
    let d = dump(&env, domains);
    let drift = &cert(&d, "a.example.test")["drift"];
    // One finding; two if a check fell between the file write and the runtime-API commit
    // (the file alone first, repaired, then HAProxy alone).
    let count_a = drift["count"].as_u64().unwrap();
    assert!((1..=2).contains(&count_a), "{drift}");
    assert_eq!(drift["served_serial"], foreign.as_str());
    if count_a == 1 {
        assert_eq!(
            drift["file_serial"].as_str().map(str::to_ascii_uppercase),
            Some(foreign.clone())
        );
    }
    assert!(drift["repaired_at"].is_string(), "{drift}");
    assert!(cert(&d, "b.example.test")["drift"].is_null());
    assert_eq!(
        cert(&d, "a.example.test")["attention"],
        serde_json::json!([])
    );

    // HAProxy restarted from the files: they hold the stored certificates, nothing to repair.
    env.kill_haproxy();
    env.start_haproxy();
    std::thread::sleep(Duration::from_secs(5));
    let d = dump(&env, domains);
    assert_eq!(cert(&d, "a.example.test")["drift"]["count"], count_a);
    assert!(cert(&d, "b.example.test")["drift"].is_null());

    // A node restarted without b's file: HAProxy has no certificate for it at all.
    env.kill_haproxy();
    std::fs::remove_file(env.certs_dir.join("b.example.test.pem")).unwrap();
    env.start_haproxy();
    assert_eq!(served_serial(&env, "b.example.test"), None);
    let restarted = Instant::now();
    // HAProxy's certificate store holds b before its crt-list does (the installer adds the
    // certificate, then the SNI entry): served means a handshake for b gets it.
    wait_until("b served again", Duration::from_secs(15), || {
        served_serial(&env, "b.example.test").as_deref() == Some(stored_b.as_str())
            && file_serial(&env, "b.example.test").as_deref() == Some(stored_b.as_str())
            && env.served_and_valid("b.example.test", &root).is_some()
    });
    eprintln!(
        "ALERTS-TIMING: HAProxy restarted without a file, repaired after {} ms",
        restarted.elapsed().as_millis()
    );
    assert!(env.served_and_valid("b.example.test", &root).is_some());
    wait_until("b recorded as installed", Duration::from_secs(5), || {
        installed(&env, domains, &["b.example.test"])
    });
    let d = dump(&env, domains);
    let drift = &cert(&d, "b.example.test")["drift"];
    assert_eq!(drift["count"], 1, "{drift}");
    assert!(drift["served_serial"].is_null() && drift["file_serial"].is_null());

    let m = metrics(&env);
    assert_eq!(
        metric(&m, "haproxy_acme_certificate_drifts_total"),
        (count_a + 1) as f64
    );
    assert!(metric(&m, "haproxy_acme_watchdog_checks_total") >= 4.0);
    assert!(metric(&m, "haproxy_acme_watchdog_last_check_timestamp_seconds") > 0.0);
    // Repaired from the store: nothing ordered again.
    assert_eq!(env.issued().len(), 2, "{:?}", env.issued());
    assert_eq!(env.pebble_new_orders(), 2);
    assert!(daemon.log_text().contains(
        "watchdog: HAProxy or the certificate file does not hold the stored certificate"
    ));
    assert!(daemon.terminate().success());
}

#[test]
fn status_check_exit_codes_for_healthy_failing_not_served_invalid_and_unreachable() {
    let env = Env::start();
    let root = env.issuer_root();
    let domains = "a.example.test;b.example.test";

    // 3: no daemon, no store.
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("HAPROXY-ACME UNKNOWN - no daemon answers on"),
        "{out}"
    );
    assert!(
        !env.data_dir.join("store").exists(),
        "a check creates no store"
    );
    // 2: an invalid setting.
    let (code, _, err) = check(&env, domains, &[("WATCHDOG_INTERVAL", "often")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("WATCHDOG_INTERVAL"), "{err}");

    let mut daemon = env.start_daemon_with(domains, &[("WATCHDOG_INTERVAL", "1s")]);
    wait_until("both served", Duration::from_secs(60), || {
        daemon.assert_running();
        ["a.example.test", "b.example.test"]
            .iter()
            .all(|n| env.served_and_valid(n, &root).is_some())
    });
    wait_until("both installed", Duration::from_secs(10), || {
        installed(&env, domains, &["a.example.test", "b.example.test"])
    });
    // 0: healthy.
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "HAPROXY-ACME OK - 2 certificates, none needs attention | certificates=2 attention=0\n"
        )
    );

    // 1: a renewal that fails (pebble cannot resolve the name).
    env.dns_servfail("a.example.test", true);
    let renew = env.cli(domains, &["renew", "--force", "a.example.test"]);
    assert!(renew.status.success());
    // Failing from the third attempt in a row (backoff 2-5 s, then 5-10 s): the first ones
    // are the blips that heal on their own.
    wait_until(
        "a's renewal failed three times",
        // ~15 s alone; a CI run with a busy machine once needed more than 60 s.
        Duration::from_secs(120),
        || {
            cert(&dump(&env, domains), "a.example.test")["attention"]
                == serde_json::json!(["failing"])
        },
    );
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(
            "HAPROXY-ACME WARNING - 1 of 2 certificates needs attention: a.example.test |"
        ),
        "{out}"
    );
    assert!(
        lines[1].starts_with("a.example.test: renewal failing: validation "),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "{out}");

    // 1: served ≠ stored, and the repair cannot write the file (a directory took its place).
    let b_file = env.certs_dir.join("b.example.test.pem");
    let bundle = foreign_bundle("b.example.test");
    std::fs::remove_file(&b_file).unwrap();
    std::fs::create_dir(&b_file).unwrap();
    std::fs::write(b_file.join("keep"), "not a certificate").unwrap();
    haproxy_serves(&env, "b.example.test", &bundle);
    wait_until("b not served as stored", Duration::from_secs(60), || {
        let d = dump(&env, domains);
        cert(&d, "b.example.test")["attention"] == serde_json::json!(["failing", "not-served"])
    });
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("HAPROXY-ACME WARNING - 2 of 2 certificates need attention: a.example.test, b.example.test |"),
        "{out}"
    );
    assert!(
        out.contains("b.example.test: install failing: install retryable"),
        "{out}"
    );
    // HAProxy served the foreign certificate (or, if a check fell between the two changes,
    // the stored one while the file was already gone).
    assert!(
        out.contains("b.example.test: served ≠ stored: HAProxy served serial "),
        "{out}"
    );
    assert!(
        out.contains(", the file held no certificate, the stored certificate is serial "),
        "{out}"
    );

    // Both fixed: 0 again, from the daemon and from the store.
    std::fs::remove_dir_all(&b_file).unwrap();
    env.dns_servfail("a.example.test", false);
    for id in ["a.example.test", "b.example.test"] {
        assert!(env.cli(domains, &["retry", id]).status.success());
    }
    wait_until("nothing needs attention", Duration::from_secs(30), || {
        check(&env, domains, &[]).0 == 0
    });
    assert!(env.served_and_valid("b.example.test", &root).is_some());
    assert!(daemon.terminate().success());
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!((code, out.lines().next()), (0, Some("HAPROXY-ACME OK - 2 certificates, none needs attention | certificates=2 attention=0")));
    // a was renewed once; b was installed again, not re-issued.
    assert_eq!(env.issued().len(), 3, "{:?}", env.issued());
}

fn unix(t: &Value) -> i64 {
    time::OffsetDateTime::parse(
        t.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
}

fn sleep_until(t: i64) {
    let now = haproxy_acme::clock::unix_now();
    if t > now {
        std::thread::sleep(Duration::from_secs((t - now) as u64));
    }
}

#[test]
fn status_check_warns_when_a_third_of_the_lifetime_is_left_and_the_renewal_is_overdue() {
    let env = Env::start_opts(Options {
        validity_secs: Some(40),
        ..Options::default()
    });
    let root = env.issuer_root();
    let domains = "s.example.test";
    // The lifetime rule decides the renewal time (half of 40 s): a CA without renewal windows
    // (pebble 2.10's window for so short a certificate is its whole lifetime, and a time drawn
    // near its end leaves no moment between "a third left" and expiry).
    let proxy = common::ca_proxy::CaProxy::start(&env);
    proxy.strip_renewal_info(true);
    let directory = proxy.directory_url();
    let mut daemon = env.start_daemon_with(domains, &[("ACME_DIRECTORY", directory.as_str())]);
    wait_until("served", Duration::from_secs(30), || {
        daemon.assert_running();
        env.served_and_valid("s.example.test", &root).is_some()
            && installed(&env, domains, &["s.example.test"])
    });
    // No daemon renews it any more: the store alone tells.
    assert!(daemon.terminate().success());
    let d = dump(&env, domains);
    let c = cert(&d, "s.example.test");
    assert_eq!(c["renew_at_source"], "lifetime", "{c}");
    let (not_before, not_after, renew_at) = (
        unix(&c["not_before"]),
        unix(&c["not_after"]),
        unix(&c["renew_at"]),
    );
    let lifetime = not_after - not_before;
    let attention_at = (not_after - lifetime / 3).max(renew_at + lifetime / 100);
    assert!(
        haproxy_acme::clock::unix_now() < attention_at,
        "issued and stopped in time"
    );
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(code, 0, "{out}");
    sleep_until(attention_at + 1);
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("s.example.test: expires in "),
        "{out}"
    );
    assert!(
        out.contains("less than a third of its lifetime left, renewal due "),
        "{out}"
    );
    sleep_until(not_after + 1);
    let (code, out, _) = check(&env, domains, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("s.example.test: EXPIRED "),
        "{out}"
    );
}

/// The alert hook's runs, one line each: id|state|conditions|previous|names|message.
fn alert_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_alert_hook_runs_once_per_transition_and_not_again_after_a_restart() {
    let env = Env::start();
    let root = env.issuer_root();
    let domains = "ok.example.test;bad.example.test";
    env.dns_servfail("bad.example.test", true);
    let log = env.dir.path().join("alerts.log");
    let hook = format!(
        r#"printf '%s|%s|%s|%s|%s|%s\n' "$ALERT_ID" "$ALERT_STATE" "$ALERT_CONDITIONS" "$ALERT_PREVIOUS" "$ALERT_NAMES" "$ALERT_MESSAGE" >> '{}'"#,
        log.display()
    );
    let overrides = [("ALERT_HOOK", hook.as_str())];
    let mut daemon = env.start_daemon_with(domains, &overrides);
    wait_until("ok served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid("ok.example.test", &root).is_some()
    });
    wait_until("bad alerted", Duration::from_secs(60), || {
        !alert_lines(&log).is_empty()
    });
    // Failing again and again is one transition.
    // 0 while the store cannot be read (a daemon starting holds it before its socket answers).
    let attempts = |env: &Env| {
        let out = env.cli(domains, &["state", "dump", "bad.example.test"]);
        let d: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        d["certificates"][0]["last_error"]["attempts"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until("bad failed once more", Duration::from_secs(60), || {
        attempts(&env) >= 4
    });
    let lines = alert_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "bad.example.test|attention|failing||bad.example.test|bad.example.test: issuance failing: validation retryable after 3 attempts"
        ),
        "{lines:?}"
    );

    // A restart does not tell it again (the alerted conditions are in the store).
    assert!(daemon.terminate().success());
    let before = attempts(&env);
    let mut daemon = env.start_daemon_with(domains, &overrides);
    wait_until(
        "bad failed again after the restart",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            attempts(&env) > before
        },
    );
    assert_eq!(alert_lines(&log).len(), 1, "{:?}", alert_lines(&log));

    // Fixed: told once that it no longer needs attention.
    env.dns_servfail("bad.example.test", false);
    assert!(env
        .cli(domains, &["retry", "bad.example.test"])
        .status
        .success());
    wait_until("bad served", Duration::from_secs(60), || {
        env.served_and_valid("bad.example.test", &root).is_some()
    });
    wait_until("bad recovered and told", Duration::from_secs(10), || {
        alert_lines(&log).len() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let lines = alert_lines(&log);
    assert_eq!(
        lines[1..],
        ["bad.example.test|ok||failing|bad.example.test|bad.example.test: no longer needs attention (was: failing)".to_string()],
        "{lines:?}"
    );
    let d = dump(&env, domains);
    assert_eq!(
        cert(&d, "bad.example.test")["alerted"]["conditions"],
        serde_json::json!([])
    );
    assert!(
        cert(&d, "ok.example.test")["alerted"].is_null(),
        "never needed attention"
    );
    let m = metrics(&env);
    assert_eq!(
        metric(&m, "haproxy_acme_alert_hook_runs_total{result=\"success\"}"),
        1.0,
        "one run since the restart"
    );
    assert!(daemon.terminate().success());
}
