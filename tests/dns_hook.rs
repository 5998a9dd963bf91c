//! DNS-01 through exec hooks end to end against pebble 2.10 (its DNS is pebble-challtestsrv)
//! and HAProxy: hook scripts publish and remove the TXT records through challtestsrv's
//! management API exactly as a user's DNS-provider script would (certbot's manual-hook
//! variables), a wildcard plus apex certificate is issued and served, every published record
//! is removed, a wildcard without a DNS challenge is refused at start, and a kill -9 while a
//! record is published leaves none behind after the restart, with one certificate issued, and
//! a failing cleanup hook is tried again and its record stays owed until a later run removes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{wait_until, Env};

/// challtestsrv answers TXT but not SOA or NS queries (NOTIMP), so the wait for every
/// authoritative server after DNS_HOOK cannot run against it: it is tested against BIND in
/// tests/dns_rfc2136.rs (`a_dns_hook_record_is_awaited_...`).
const PREFLIGHT: &str = "off";

/// The TXT values challtestsrv (pebble's DNS) answers for `_acme-challenge.<domain>`.
fn txt(env: &Env, domain: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &env.dns_port.to_string(),
            "+short",
            "+tries=3",
            "TXT",
            &format!("_acme-challenge.{domain}"),
        ])
        .output()
        .expect("dig (Debian's dnsutils: scripts/install-deps.sh) runs");
    assert!(out.status.success(), "{}", common::text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_matches('"').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Hook scripts as a user would write them for a DNS provider's HTTP API (here challtestsrv's
/// management API), each logging its certbot variables to `hooks.log`. The auth hook prints a
/// record id (for CERTBOT_AUTH_OUTPUT); while the file `hang` exists it waits after publishing
/// (a propagation wait the daemon is killed in). Returns (auth, cleanup, log, hang).
fn hooks(env: &Env) -> (String, String, PathBuf, PathBuf) {
    let d = env.dir.path();
    let (log, hang) = (d.join("hooks.log"), d.join("hang"));
    let api = format!("http://127.0.0.1:{}", env.chall_port);
    let auth = d.join("auth.sh");
    std::fs::write(
        &auth,
        format!(
            r#"#!/bin/sh
set -e
echo "auth $CERTBOT_DOMAIN $CERTBOT_VALIDATION $CERTBOT_TOKEN $CERTBOT_REMAINING_CHALLENGES $CERTBOT_ALL_DOMAINS" >> {log}
curl -sf -d '{{"host":"_acme-challenge.'$CERTBOT_DOMAIN'.","value":"'$CERTBOT_VALIDATION'"}}' {api}/set-txt
echo "record-$CERTBOT_TOKEN"
while [ -e {hang} ]; do touch {hang}.published; sleep 0.1; done
"#,
            log = log.display(),
            hang = hang.display()
        ),
    )
    .unwrap();
    let cleanup = d.join("cleanup.sh");
    std::fs::write(
        &cleanup,
        format!(
            r#"#!/bin/sh
set -e
echo "cleanup $CERTBOT_DOMAIN $CERTBOT_VALIDATION $CERTBOT_TOKEN [$CERTBOT_AUTH_OUTPUT]" >> {log}
curl -sf -d '{{"host":"_acme-challenge.'$CERTBOT_DOMAIN'."}}' {api}/clear-txt
"#,
            log = log.display()
        ),
    )
    .unwrap();
    (
        format!("sh {}", auth.display()),
        format!("sh {}", cleanup.display()),
        log,
        hang,
    )
}

fn lines(log: &Path, prefix: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split(' ').map(String::from).collect())
        .collect()
}

#[test]
fn a_wildcard_and_its_apex_are_issued_over_the_dns_hook_and_every_record_is_removed() {
    let env = Env::start();
    let (auth, cleanup, log, _) = hooks(&env);
    let domains = "example.test,*.example.test challenge=dns-01";
    let mut daemon = env.start_daemon_with(
        domains,
        &[
            ("DNS_HOOK", &auth),
            ("DNS_CLEANUP_HOOK", &cleanup),
            ("PREFLIGHT", PREFLIGHT),
        ],
    );
    wait_until(
        "the wildcard certificate is served",
        Duration::from_secs(90),
        || {
            daemon.assert_running();
            env.served_sans("foo.example.test")
                .contains("DNS:*.example.test")
        },
    );
    env.assert_serves_apex_and_wildcard(
        "example.test",
        &["foo.example.test", "example.test", "bar.example.test"],
    );
    // One auth run per authorization (the apex and the wildcard are two, both at
    // `_acme-challenge.example.test`), with certbot's variables.
    let auths = lines(&log, "auth ");
    assert_eq!(auths.len(), 2, "{auths:?}");
    for (i, a) in auths.iter().enumerate() {
        assert_eq!(a[1], "example.test", "CERTBOT_DOMAIN has no '*.'");
        assert_eq!(a[2].len(), 43, "base64url(SHA-256): {a:?}");
        assert_eq!(a[4], (1 - i).to_string(), "CERTBOT_REMAINING_CHALLENGES");
        assert_eq!(a[5], "example.test,example.test", "CERTBOT_ALL_DOMAINS");
    }
    assert_ne!(auths[0][2], auths[1][2], "two authorizations, two values");
    // The cleanup hook ran once per published record, after validation, with the auth
    // hook's output; challtestsrv answers no TXT any more.
    wait_until(
        "both records are cleaned up",
        Duration::from_secs(30),
        || lines(&log, "cleanup ").len() >= 2,
    );
    let cleanups = lines(&log, "cleanup ");
    assert_eq!(cleanups.len(), 2, "{cleanups:?}");
    for a in &auths {
        let c = cleanups
            .iter()
            .find(|c| c[3] == a[3])
            .unwrap_or_else(|| panic!("no cleanup for token {}: {cleanups:?}", a[3]));
        assert_eq!((&c[1], &c[2]), (&a[1], &a[2]), "the same record");
        assert_eq!(c[4], format!("[record-{}]", a[3]), "CERTBOT_AUTH_OUTPUT");
    }
    assert_eq!(txt(&env, "example.test"), Vec::<String>::new());
    assert_eq!(
        env.pebble_log().matches("POST /chalZ/").count(),
        2,
        "each challenge told ready once"
    );
    assert_eq!(env.issued().len(), 1, "{:?}", env.issued());
    assert!(daemon.terminate().success());
}

#[test]
fn a_wildcard_needs_a_dns_challenge_and_dns_01_needs_dns_hook() {
    let env = Env::start();
    let run = |domains: &str, extra: &[(&str, &str)]| env.run_to_exit(domains, extra);
    let (code, out) = run("example.test,*.example.test", &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(
            "\"*.example.test\" is a wildcard: HTTP-01 cannot validate wildcards; add \
             challenge=dns-01 to its certificate (and set DNS_HOOK)"
        ),
        "{out}"
    );
    let (code, out) = run("example.test,*.example.test challenge=dns-01", &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(
            "certificate \"example.test\" has challenge=dns-01 but neither \
             DNS_UPDATE_SERVER nor DNS_HOOK is set"
        ),
        "{out}"
    );
    assert_eq!(env.pebble_new_orders(), 0, "nothing was ordered");
    // A failing auth hook: a retryable failure of step validation with the hook's output, and
    // the CA never told to validate (no request to its challenge endpoint).
    let domains = "example.test,*.example.test challenge=dns-01";
    let mut daemon = env.start_daemon_with(
        domains,
        &[("DNS_HOOK", "echo 'provider says: no API token' >&2; exit 3")],
    );
    let want = "DNS_HOOK failed for _acme-challenge.example.test (the CA was not asked to \
                validate): exit status 3; last output: provider says: no API token";
    wait_until(
        "the hook's failure is recorded",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            daemon.log_text().contains(want)
        },
    );
    let status = env.cli(domains, &["status"]);
    let status = common::text(&status);
    assert!(
        status.contains(want) && status.contains("validation"),
        "{status}"
    );
    assert_eq!(env.pebble_new_orders(), 1, "the order was created");
    assert_eq!(
        env.pebble_log().matches("POST /chalZ/").count(),
        0,
        "no challenge was answered"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_kill_while_a_record_is_published_leaves_none_after_the_restart_and_issues_once() {
    let env = Env::start();
    let (auth, cleanup, log, hang) = hooks(&env);
    let hooks_env = [
        ("DNS_HOOK", auth.as_str()),
        ("DNS_CLEANUP_HOOK", &cleanup),
        ("PREFLIGHT", PREFLIGHT),
    ];
    let domains = "crash.test,*.crash.test challenge=dns-01";
    std::fs::write(&hang, "").unwrap();
    let mut daemon = env.start_daemon_with(domains, &hooks_env);
    let published = PathBuf::from(format!("{}.published", hang.display()));
    wait_until(
        "the auth hook has published",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            published.exists()
        },
    );
    assert_eq!(txt(&env, "crash.test").len(), 1, "one record published");
    daemon.kill();
    // The orphaned hook may go on; it is not ours any more.
    std::fs::remove_file(&hang).unwrap();
    assert_eq!(lines(&log, "cleanup ").len(), 0);
    let crashed = lines(&log, "auth ");
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    let mut daemon = env.start_daemon_with(domains, &hooks_env);
    wait_until("the certificate is served", Duration::from_secs(90), || {
        daemon.assert_running();
        env.served_sans("www.crash.test")
            .contains("DNS:*.crash.test")
    });
    // At the start, before the order went on: a cleanup for each record the crashed run had
    // recorded (its output unknown after the restart), the published one among them.
    let cleanups = lines(&log, "cleanup ");
    let first = &cleanups[..2];
    assert!(
        first
            .iter()
            .any(|c| c[3] == crashed[0][3] && c[2] == crashed[0][2]),
        "{cleanups:?}"
    );
    assert!(first.iter().all(|c| c[4] == "[]"), "{cleanups:?}");
    wait_until(
        "every record is cleaned up",
        Duration::from_secs(30),
        || lines(&log, "cleanup ").len() >= 4,
    );
    assert_eq!(txt(&env, "crash.test"), Vec::<String>::new());
    let text = daemon.log_text();
    assert!(
        text.contains("removing the DNS records an earlier run left published"),
        "{text}"
    );
    // The order the crashed run created went on: one order, one certificate.
    assert_eq!(env.pebble_new_orders(), 1);
    let issued = env.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert!(daemon.terminate().success());
}

#[test]
fn a_failing_cleanup_is_tried_again_and_stays_owed_until_it_succeeds() {
    let env = Env::start();
    let (auth, cleanup, log, _) = hooks(&env);
    let fail = env.dir.path().join("fail-cleanup");
    std::fs::write(&fail, "").unwrap();
    // The provider's API refuses deletions while `fail` exists.
    let failing = format!(
        "echo cleanup-attempt >> {}; test ! -e {} && {cleanup}",
        log.display(),
        fail.display()
    );
    let domains = "owed.test challenge=dns-01";
    let hooks_env = [
        ("DNS_HOOK", auth.as_str()),
        ("DNS_CLEANUP_HOOK", &failing),
        ("PREFLIGHT", PREFLIGHT),
    ];
    let mut daemon = env.start_daemon_with(domains, &hooks_env);
    let dump = |env: &Env| {
        let out = env.cli(domains, &["state", "dump", "owed.test"]);
        assert!(out.status.success(), "{}", common::text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["certificates"][0].clone()
    };
    wait_until("three removal attempts", Duration::from_secs(90), || {
        daemon.assert_running();
        lines(&log, "cleanup-attempt").len() >= 3
    });
    wait_until("the failure recorded", Duration::from_secs(10), || {
        daemon.log_text().contains("it stays published and owed")
    });
    let c = dump(&env);
    assert_eq!(c["phase"], "issued", "the certificate did not wait: {c}");
    assert_eq!(
        c["dns_records_to_clean"],
        serde_json::json!(["_acme-challenge.owed.test"]),
        "{c}"
    );
    assert_eq!(txt(&env, "owed.test").len(), 1, "still published");
    assert_eq!(lines(&log, "cleanup-attempt").len(), 3, "no more tries");
    assert!(daemon.terminate().success());

    // The API works again: the next start removes what is owed.
    std::fs::remove_file(&fail).unwrap();
    let mut daemon = env.start_daemon_with(domains, &hooks_env);
    wait_until("the record removed", Duration::from_secs(30), || {
        daemon.assert_running();
        lines(&log, "cleanup ").len() == 1
    });
    // The dump leaves the list out when nothing is owed.
    wait_until("nothing owed", Duration::from_secs(10), || {
        dump(&env)["dns_records_to_clean"].is_null()
    });
    assert_eq!(txt(&env, "owed.test"), Vec::<String>::new());
    assert_eq!(env.issued().len(), 1, "no new certificate");
    assert!(daemon.terminate().success());
}
