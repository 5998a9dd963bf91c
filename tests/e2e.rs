//! End-to-end: real pebble, real HAProxy from deploy/haproxy.cfg, the real daemon binary.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Env};

const DOMAINS: &str = "a.example.test, www.a.example.test; b.example.test";
const NAMES: [&str; 3] = ["a.example.test", "www.a.example.test", "b.example.test"];

fn dump(env: &Env) -> serde_json::Value {
    let out = env.cli(DOMAINS, &["state", "dump"]);
    assert!(
        out.status.success(),
        "state dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("state dump prints JSON")
}

#[test]
fn issues_two_certificates_through_haproxy_without_reload_and_survives_a_restart() {
    let env = Env::start();
    let root = env.issuer_root();
    for name in NAMES {
        assert!(
            env.served_and_valid(name, &root).is_none(),
            "{name} must not verify before issuance"
        );
    }

    let started = Instant::now();
    let mut daemon = env.start_daemon(DOMAINS);
    wait_until(
        "every name served with a valid certificate",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            NAMES
                .iter()
                .all(|n| env.served_and_valid(n, &root).is_some())
        },
    );
    eprintln!(
        "E2E-TIMING: daemon start to both certificates served: {} ms",
        started.elapsed().as_millis()
    );

    // The second name of the SAN certificate is served by the same certificate as its id.
    let a = env.served_and_valid("www.a.example.test", &root).unwrap();
    assert!(a.contains("a.example.test"));
    assert_eq!(env.haproxy_reloads(), 0, "HAProxy must not be reloaded");
    // `status`: one line per certificate, plain when piped.
    {
        let out = env.cli(DOMAINS, &["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("a.example.test")
                && lines[1].contains("+1")
                && lines[1].contains("issued"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("b.example.test") && lines[2].contains("issued"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour in a pipe");
    }
    let health = env.cli(DOMAINS, &["healthcheck"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // The state dump (through the running daemon's admin socket) agrees with HAProxy.
    let state = dump(&env);
    assert_eq!(state["schema_version"], 1);
    let certs = state["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2);
    for c in certs {
        assert_eq!(c["phase"], "issued", "{c}");
        assert_eq!(c["installed"], true, "{c}");
        assert_eq!(c["acme_directory"], env.directory_url().as_str());
        assert!(c["last_error"].is_null(), "{c}");
        let file = env
            .certs_dir
            .join(format!("{}.pem", c["id"].as_str().unwrap()));
        let shown = env.runtime(&format!("show ssl cert {}", file.display()));
        let serial = c["serial"].as_str().unwrap();
        assert!(
            shown.contains(&format!("Serial: {serial}")),
            "HAProxy serves another serial than the dump says:\n{shown}\n{c}"
        );
        let meta = std::fs::metadata(&file).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let pem = std::fs::read_to_string(&file).unwrap();
        assert!(
            !pem.lines().any(|l| l.trim().is_empty()),
            "no blank lines in {}",
            file.display()
        );
        assert!(pem.contains("PRIVATE KEY"));
    }
    assert_eq!(
        certs[0]["names"],
        serde_json::json!(["a.example.test", "www.a.example.test"])
    );
    let text = serde_json::to_string(&state).unwrap();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("key_authorization"),
        "no secrets in the dump"
    );
    let orders = env.pebble_new_orders();
    assert_eq!(orders, 2, "one order per certificate");
    assert_eq!(env.pebble_finalizes(), 2);

    // A graceful stop exits 0; the dump then works without the daemon.
    let stopping = Instant::now();
    let status = daemon.terminate();
    eprintln!(
        "E2E-TIMING: SIGTERM to exit: {} ms",
        stopping.elapsed().as_millis()
    );
    assert!(
        status.success(),
        "SIGTERM exit status {status}; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(dump(&env)["certificates"].as_array().unwrap().len(), 2);
    let offline = env.cli(DOMAINS, &["status"]);
    assert!(
        offline.status.success() && String::from_utf8_lossy(&offline.stdout).lines().count() == 3
    );
    let health = env.cli(DOMAINS, &["healthcheck"]);
    assert_eq!(health.status.code(), Some(1), "no daemon, unhealthy");
    assert!(String::from_utf8_lossy(&health.stderr).contains("no daemon answers"));

    // After a restart: no new order, still served, still no reload.
    let mut daemon = env.start_daemon(DOMAINS);
    wait_until(
        "restarted daemon answers on its admin socket",
        Duration::from_secs(20),
        || {
            daemon.assert_running();
            env.cli(DOMAINS, &["state", "dump"]).status.success()
                && env.data_dir.join("admin.sock").exists()
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    daemon.assert_running();
    assert_eq!(
        env.pebble_new_orders(),
        orders,
        "a restart must not order again"
    );
    assert_eq!(env.pebble_finalizes(), 2);
    for name in NAMES {
        assert!(
            env.served_and_valid(name, &root).is_some(),
            "{name} still served after the restart"
        );
    }
    assert_eq!(env.haproxy_reloads(), 0);
    let log = daemon.log_text();
    assert!(!log.contains("PRIVATE KEY"), "no key material in logs");
}

#[test]
fn invalid_domains_are_refused_naming_the_bad_entry() {
    for cmd in [&["check-config"][..], &["run"][..]] {
        let out = std::process::Command::new(common::BIN)
            .args(cmd)
            .env_clear()
            .env(
                "DOMAINS",
                "good.example.test; *.wild.example.test ; 10.0.0.1",
            )
            .env("RESPONDER_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains("\"*.wild.example.test\" is a wildcard"),
            "{err}"
        );
        assert!(err.contains("\"10.0.0.1\" is an IP address"), "{err}");
        assert!(out.stdout.is_empty());
    }
    let ok = std::process::Command::new(common::BIN)
        .arg("check-config")
        .env_clear()
        .env("DOMAINS", "Good.Example.Test.,www.good.example.test")
        .env("OPTIONS", "--staging")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["certificates"][0]["id"], "good.example.test");
    assert_eq!(
        v["acme_directory"],
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
}

#[test]
fn nothing_is_ordered_before_haproxys_runtime_api_answers() {
    let env = Env::start();
    let missing = env.dir.path().join("not-yet-haproxy.sock");
    let api = format!("unix:{}", missing.display());
    let mut daemon = env.start_daemon_with(DOMAINS, &[("HAPROXY_RUNTIME_API", api.as_str())]);
    wait_until(
        "the daemon says it waits for HAProxy",
        Duration::from_secs(20),
        || {
            daemon.assert_running();
            daemon
                .log_text()
                .contains("waiting for HAProxy's runtime API")
        },
    );
    // The responder and the admin socket are up meanwhile (HAProxy can start after us).
    assert!(env.cli(DOMAINS, &["healthcheck"]).status.success());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        env.pebble_new_orders(),
        0,
        "no order before HAProxy can route validation"
    );
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM while waiting exits 0: {status}");
}

#[test]
fn renewal_replaces_the_certificate_hot_while_the_old_one_keeps_serving() {
    // 20-second certificates: renewal is due after 10 seconds.
    let env = Env::start_with(Some(20));
    let root = env.issuer_root();
    let mut daemon = env.start_daemon("r.example.test");
    let file = env.certs_dir.join("r.example.test.pem");
    let serial = || {
        env.runtime(&format!("show ssl cert {}", file.display()))
            .lines()
            .find_map(|l| l.strip_prefix("Serial: ").map(str::to_string))
    };
    wait_until("first certificate served", Duration::from_secs(30), || {
        daemon.assert_running();
        env.served_and_valid("r.example.test", &root).is_some()
    });
    let first = serial().expect("HAProxy knows the certificate");
    let mut handshakes = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let second = loop {
        daemon.assert_running();
        // Every handshake during the renewal verifies: the old certificate serves until the
        // new one is committed.
        assert!(
            env.served_and_valid("r.example.test", &root).is_some(),
            "a handshake failed during renewal; daemon log:\n{}",
            daemon.log_text()
        );
        handshakes += 1;
        match serial() {
            Some(s) if s != first => break s,
            _ => assert!(
                Instant::now() < deadline,
                "not renewed within 40 s; daemon log:\n{}",
                daemon.log_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Without renewal information the renewal is due after 10 s, with many handshakes before
    // it; pebble 2.10's window lets the daemon's random point fall at once.
    let ari = daemon.log_text().contains("renewal window from the CA");
    assert!(
        ari || handshakes > 10,
        "the renewal was watched, not skipped ({handshakes} handshakes)"
    );
    assert!(env.served_and_valid("r.example.test", &root).is_some());
    assert_eq!(env.haproxy_reloads(), 0);
    // Stopped before counting. A CA with renewal information may have the daemon renew again at
    // any moment: pebble 2.10's window for a 20-second certificate covers its whole lifetime
    // (logged as start = issuance, end = expiry), and the daemon picks a random point in it.
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    let log = daemon.log_text();
    let installed = log.matches("certificate installed").count();
    assert!(installed >= 2, "{log}");
    assert_eq!(
        env.pebble_finalizes(),
        installed,
        "every certificate issued was installed: {log}"
    );
    if !ari {
        // Without renewal information (pebble 2.4) the lifetime rule: renewal after 10 s.
        assert_eq!(installed, 2, "one issuance and one renewal");
    }
    let served = serial().expect("HAProxy knows the certificate");
    assert!(installed > 2 || served == second);
    let out = env.cli("r.example.test", &["state", "dump"]);
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dump["certificates"][0]["serial"], served.as_str());
    assert_eq!(dump["certificates"][0]["installed"], true);
}

/// CONCURRENCY=64 with 20 new certificates and a budget of 5 orders: all 20 are worked on at
/// once, and still exactly 5 orders reach the CA (admission to the budget is one at a time).
#[test]
fn the_budget_holds_with_a_high_concurrency() {
    let env = Env::start();
    let ids: Vec<String> = (0..20).map(|i| format!("c{i}.conc.test")).collect();
    let domains = ids.join(";");
    let mut daemon = env.start_daemon_with(
        &domains,
        &[("RATE_LIMITS", "orders=5/1h"), ("CONCURRENCY", "64")],
    );
    let dump = || -> serde_json::Value {
        let out = env.cli(&domains, &["state", "dump"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let count = |d: &serde_json::Value, phase: &str, kind: &str| {
        d["certificates"].as_array().map_or(0, |cs| {
            cs.iter()
                .filter(|c| c["phase"] == phase || c["last_error"]["kind"] == kind)
                .count()
        })
    };
    wait_until(
        "each certificate issued or deferred by the budget",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            count(&dump(), "issued", "rate-limited") == 20
        },
    );
    assert_eq!(env.pebble_new_orders(), 5, "orders beyond the budget");
    let d = dump();
    assert_eq!(count(&d, "issued", "-"), 5, "{d}");
    assert_eq!(count(&d, "-", "rate-limited"), 15, "{d}");
    let log = daemon.log_text();
    assert!(
        log.contains("5 new orders per account"),
        "the deferral says why: {log}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn the_local_rate_limit_budget_defers_an_order_the_ca_would_refuse() {
    let env = Env::start();
    let root = env.issuer_root();
    // A budget of one certificate per exact set of names per week.
    let budget = [("RATE_LIMITS", "exact-set=1/7d")];
    let mut daemon = env.start_daemon_with("rl.example.test", &budget);
    wait_until("first certificate served", Duration::from_secs(30), || {
        daemon.assert_running();
        env.served_and_valid("rl.example.test", &root).is_some()
    });
    assert!(daemon.terminate().success());
    // A new key type asks for a second certificate for the same names: over budget.
    let mut daemon = env.start_daemon_with(
        "rl.example.test",
        &[
            ("RATE_LIMITS", "exact-set=1/7d"),
            ("KEY_TYPE", "ecdsa-p384"),
            ("LOG_FORMAT", "json"),
        ],
    );
    let dump = || -> serde_json::Value {
        let out = env.cli("rl.example.test", &["state", "dump"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    wait_until(
        "the order is deferred, and says so",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            dump()["certificates"][0]["last_error"]["kind"] == "rate-limited"
        },
    );
    let c = &dump()["certificates"][0];
    let message = c["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "local rate-limit budget: 1 certificates for this exact set of names in 7 days"
        ),
        "{message}"
    );
    assert_eq!(
        c["phase"], "expiring",
        "wanted again, waiting for the budget"
    );
    assert!(c["last_error"]["next_attempt_at"].as_str().is_some());
    assert_eq!(env.pebble_new_orders(), 1, "the CA was not asked");
    assert!(
        env.served_and_valid("rl.example.test", &root).is_some(),
        "the old certificate keeps serving"
    );
    // LOG_FORMAT=json: every line is a JSON object; lines about a certificate carry its id.
    let log = daemon.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["cert"] == "rl.example.test"
            && l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("local rate-limit budget")));
}
