//! The operator surface against the running daemon (real pebble, real HAProxy): `domains
//! add/remove`, `renew [--force]`, `retry`, `state dump ID`, `/metrics` and `/healthz` on
//! ADMIN_LISTEN, the deploy hook, and `import certbot` of a directory a real certbot run made.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::{free_port, text, wait_until, Env};

const DOMAINS: &str = "op.example.test";

fn http(method: &str, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn dump_one(env: &Env, id: &str) -> serde_json::Value {
    let out = env.cli(DOMAINS, &["state", "dump", id]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["certificates"].as_array().unwrap().len(), 1, "{v}");
    v["certificates"][0].clone()
}

#[test]
fn commands_metrics_and_the_deploy_hook_on_the_running_daemon() {
    let env = Env::start();
    let root = env.issuer_root();
    let admin_port = free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let hook_log = env.dir.path().join("hook.log");
    let fail_flag = env.dir.path().join("hook-must-fail");
    let hook = format!(
        "if [ -e {flag} ]; then echo 'deploying to the CDN' ; echo 'CDN unreachable' >&2; exit 3; fi; \
         echo \"$RENEWED_DOMAINS $(openssl x509 -noout -serial -in \"$RENEWED_LINEAGE/cert.pem\")\" >> {log}",
        flag = fail_flag.display(),
        log = hook_log.display()
    );
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let overrides = [
        ("ADMIN_LISTEN", admin_listen.as_str()),
        ("DEPLOY_HOOK", hook.as_str()),
        ("DEPLOY_HOOK_TIMEOUT", "20s"),
    ];
    let cli = |args: &[&str]| env.cli_with(DOMAINS, &overrides, args);
    let hook_lines = || {
        std::fs::read_to_string(&hook_log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mut daemon = env.start_daemon_with(DOMAINS, &overrides);
    wait_until("op.example.test served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid("op.example.test", &root).is_some()
    });
    wait_until("the deploy hook ran", Duration::from_secs(20), || {
        hook_lines().len() == 1
    });
    let op = dump_one(&env, "op.example.test");
    let serial1 = op["serial"].as_str().unwrap().to_string();
    assert!(
        hook_lines()[0].starts_with("op.example.test serial="),
        "{:?}",
        hook_lines()
    );
    assert!(
        hook_lines()[0].ends_with(&serial1),
        "the hook saw the installed certificate: {:?} vs {serial1}",
        hook_lines()
    );
    assert_eq!(op["deploy_hook"]["ok"], true, "{op}");
    let lineage = env.data_dir.join("live/op.example.test");
    for f in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
        let meta = std::fs::metadata(lineage.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
    }
    let chain = std::fs::read_to_string(lineage.join("chain.pem")).unwrap();
    let full = std::fs::read_to_string(lineage.join("fullchain.pem")).unwrap();
    assert!(chain.contains("BEGIN CERTIFICATE") && !full.starts_with(&chain));
    assert!(!chain.contains("PRIVATE KEY") && !full.contains("PRIVATE KEY"));

    // domains add: persisted, takes effect at once (no restart, no reload of HAProxy).
    let out = cli(&[
        "domains",
        "add",
        "added.example.test,www.added.example.test",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("added certificate added.example.test"));
    wait_until(
        "the added certificate served",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            env.served_and_valid("www.added.example.test", &root)
                .is_some()
        },
    );
    let out = cli(&["domains", "add", "www.op.example.test,op.example.test"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("op.example.test"), "{}", text(&out));
    let out = cli(&["domains", "add", "*.wild.example.test"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // renew: not due without --force; unknown id is exit 3.
    let out = cli(&["renew", "op.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not due"), "{}", text(&out));
    let out = cli(&["renew", "nope.example.test"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = cli(&["state", "dump", "nope.example.test"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // renew --force: a new certificate, installed hot, the hook runs for it.
    let finalizes = env.pebble_finalizes();
    let out = cli(&["renew", "--force", "op.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the forced renewal served", Duration::from_secs(60), || {
        daemon.assert_running();
        let op = dump_one(&env, "op.example.test");
        op["serial"].as_str() != Some(serial1.as_str()) && op["installed"] == true
    });
    assert_eq!(env.pebble_finalizes(), finalizes + 1);
    let serial2 = dump_one(&env, "op.example.test")["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = env.runtime(&format!(
        "show ssl cert {}/op.example.test.pem",
        env.certs_dir.display()
    ));
    assert!(shown.contains(&serial2), "{shown}");
    wait_until(
        "the hook ran for the renewal",
        Duration::from_secs(20),
        || hook_lines().iter().any(|l| l.ends_with(&serial2)),
    );

    // A failing hook is recorded (state, status, metrics), and `retry` runs it again.
    std::fs::write(&fail_flag, "").unwrap();
    let out = cli(&["renew", "--force", "op.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the hook failure recorded", Duration::from_secs(60), || {
        dump_one(&env, "op.example.test")["deploy_hook"]["ok"] == false
    });
    let op = dump_one(&env, "op.example.test");
    assert_eq!(
        op["deploy_hook"]["error"], "exit status 3; last output: CDN unreachable",
        "{op}"
    );
    let status = text(&cli(&["status"]));
    assert!(
        status.contains("deploy-hook: exit status 3; last output: CDN unreachable"),
        "{status}"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("deploy hook: CDN unreachable") && log.contains("deploy hook failed"),
        "the hook's output is logged"
    );
    std::fs::remove_file(&fail_flag).unwrap();
    let out = cli(&["retry", "op.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("deploy hook runs again"),
        "{}",
        text(&out)
    );
    wait_until(
        "the hook succeeded on retry",
        Duration::from_secs(20),
        || dump_one(&env, "op.example.test")["deploy_hook"]["ok"] == true,
    );
    let out = cli(&["retry", "op.example.test"]);
    assert!(text(&out).contains("nothing to retry"), "{}", text(&out));

    // Metrics and health on the loopback TCP endpoint; commands are refused there.
    let (code, metrics) = http("GET", &format!("{admin}/metrics"));
    assert_eq!(code, 200, "{metrics}");
    for want in [
        "haproxy_acme_certificate_expiration_timestamp_seconds{name=\"op.example.test\"}",
        "haproxy_acme_certificate_expiration_timestamp_seconds{name=\"added.example.test\"}",
        "haproxy_acme_certificate_renewal_timestamp_seconds{name=\"added.example.test\"}",
        "haproxy_acme_certificate_ready_status{name=\"op.example.test\",condition=\"True\"} 1",
        "haproxy_acme_certificate_issuances_total 4",
        "haproxy_acme_certificate_installs_total{method=\"runtime-api\"} 4",
        "haproxy_acme_http_acme_client_request_total{endpoint=\"new-order\",method=\"POST\",status=\"201\"} 4",
        "haproxy_acme_http_acme_client_request_total{endpoint=\"finalize\",method=\"POST\",status=\"200\"} 4",
        "haproxy_acme_deploy_hook_runs_total{result=\"failure\"} 1",
        "haproxy_acme_deploy_hook_runs_total{result=\"success\"} 4",
        "haproxy_acme_certificate_issuance_duration_seconds_count 4",
        "haproxy_acme_haproxy_runtime_api_errors_total 0",
        "haproxy_acme_ready 1",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    let (code, body) = http("GET", &format!("{admin}/healthz"));
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http(
        "POST",
        &format!("{admin}/certificates/op.example.test/renew"),
    );
    assert_eq!(code, 403, "{body}");

    // domains remove: only what was added; the certificate is kept (no PRUNE).
    let out = cli(&["domains", "remove", "op.example.test"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("DOMAINS"), "{}", text(&out));
    let out = cli(&["domains", "remove", "added.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the removal applied", Duration::from_secs(10), || {
        daemon
            .log_text()
            .contains("removed from the configuration: no longer renewed")
    });
    assert!(env.served_and_valid("added.example.test", &root).is_some());
    assert_eq!(env.haproxy_reloads(), 0);
    let added = dump_one(&env, "added.example.test");
    assert_eq!(added["configured"], false, "{added}");
    let status = text(&cli(&["status"]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("added.example.test") && l.contains("never (not configured)")),
        "{status}"
    );

    eprintln!(
        "OPERATOR-NOTE status:\n{}",
        text(&env.cli_with(DOMAINS, &overrides, &["status"]))
    );
    eprintln!(
        "OPERATOR-NOTE metrics excerpt:\n{}",
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("OPERATOR-NOTE hook log:\n{}", hook_lines().join("\n"));
    eprintln!(
        "OPERATOR-NOTE hook lines in the daemon log:\n{}",
        daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("deploy hook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(daemon.terminate().success());

    // Offline: the added list survives a restart; a command with no daemon edits the store.
    let out = cli(&["domains", "add", "later.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("takes effect when it starts"));
    let mut daemon = env.start_daemon_with(DOMAINS, &overrides);
    wait_until(
        "later.example.test served after start",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            env.served_and_valid("later.example.test", &root).is_some()
        },
    );
    assert!(daemon.terminate().success());
}

#[test]
fn import_certbot_adopts_its_certificates_without_a_new_issuance() {
    let env = Env::start();
    let root = env.issuer_root();
    let names = ["cb.example.test", "www.cb.example.test"];
    let certbot_dir = env.certbot(&names);
    // A second certbot directory, imported later through the running daemon.
    let certbot_dir2 = env.certbot(&["cb2.example.test"]);
    assert_eq!(env.pebble_finalizes(), 2, "certbot's two issuances");
    let live = certbot_dir.join("live/cb.example.test/cert.pem");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&live)
        .output()
        .unwrap();
    let certbot_serial = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    assert!(!certbot_serial.is_empty());

    let domains = "cb.example.test,www.cb.example.test";
    // A directory that is not certbot's: a clear error, exit 2.
    let out = env.cli(domains, &["import", "certbot", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/etc/letsencrypt"), "{}", text(&out));

    let dir = certbot_dir.display().to_string();
    let out = env.cli(domains, &["import", "certbot", &dir]);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    eprintln!("OPERATOR-NOTE import report:\n{report}");
    assert!(
        report.contains("imported cb.example.test as cb.example.test"),
        "{report}"
    );
    assert!(report.contains("1 of 1 certificates imported"), "{report}");
    assert!(
        report.contains("certbot account https://127.0.0.1:"),
        "certbot's account is found and reported: {report}"
    );
    assert!(!report.contains("warning"), "{report}");
    assert!(!report.contains("PRIVATE KEY"));

    let mut daemon = env.start_daemon(domains);
    wait_until(
        "the imported certificate served",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            names
                .iter()
                .all(|n| env.served_and_valid(n, &root).is_some())
        },
    );
    let out = env.cli(domains, &["state", "dump", "cb.example.test"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["certificates"][0];
    assert_eq!(c["phase"], "issued", "{c}");
    assert_eq!(c["installed"], true, "{c}");
    let served = c["serial"].as_str().unwrap();
    assert_eq!(
        served.trim_start_matches('0'),
        certbot_serial.trim_start_matches('0'),
        "HAProxy serves certbot's certificate"
    );

    // Through the running daemon: importing again changes nothing.
    let out = env.cli(domains, &["import", "certbot", &dir]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already in the store"),
        "{}",
        text(&out)
    );
    // A lineage that is not configured is imported through the daemon with a warning, and is
    // installed (not re-issued) once `domains add` asks for it.
    let dir2 = certbot_dir2.display().to_string();
    let out = env.cli(domains, &["import", "certbot", &dir2]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("imported cb2.example.test") && text(&out).contains("not configured"),
        "{}",
        text(&out)
    );
    let out = env.cli(domains, &["domains", "add", "cb2.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the second import served", Duration::from_secs(10), || {
        daemon.assert_running();
        env.served_and_valid("cb2.example.test", &root).is_some()
    });
    // Let the daemon settle, then count: no order, no finalize beyond certbot's own.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.pebble_new_orders(), 2, "no new order");
    assert_eq!(env.pebble_finalizes(), 2, "no new issuance");
    assert!(daemon.terminate().success());
}

#[test]
fn a_command_waits_for_a_daemon_that_holds_the_store_before_it_answers() {
    // A starting daemon locks the store a moment before it binds its admin socket; a command in
    // that moment (`renew` right after `systemctl start`) used to fail at once with "held by a
    // running daemon whose admin socket does not answer".
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let held = haproxy_acme::store::sled::SledStore::open(&data).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let out = Command::new(common::BIN)
        .args(["state", "dump"])
        .env_clear()
        .env("DATA_DIR", &data)
        .env("CERTS_DIR", dir.path().join("certs"))
        .env("DOMAINS", DOMAINS)
        .env("EMAIL", "op@example.test")
        .output()
        .unwrap();
    release.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["certificates"], serde_json::json!([]), "{v}");
}
