//! DNS-01 by RFC 2136 dynamic update with TSIG, end to end against a real BIND 9 (the harness
//! starts `named` on a free loopback port, authoritative for the test zones, taking updates
//! signed with a TSIG key), pebble 2.10 resolving through that BIND (so it validates the TXT
//! records BIND serves) and HAProxy serving the certificates: a wildcard plus apex certificate
//! and a name whose `_acme-challenge` is a CNAME into another zone (the acme-dns pattern) are
//! issued, every record is deleted afterwards, a wrong TSIG secret is a permanent failure that
//! names the key and not the secret, and a kill -9 while a record is published (one
//! authoritative server not answering holds the propagation wait) leaves none after the
//! restart.

mod common;

use std::time::Duration;

use common::bind::{self, Bind};
use common::{wait_until, Env, Options};
use serde_json::Value;

/// The test zones: `example.test` (its NS on loopback; `_acme-challenge.cname` delegated by
/// CNAME into `acme-dns.test`), `acme-dns.test`, and `slow.test` whose second NS is at
/// 127.0.0.2, where nothing listens (until the test moves it to 127.0.0.1).
fn zones() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "example.test",
            "@ NS ns1\nns1 A 127.0.0.1\n@ A 127.0.0.1\ncname A 127.0.0.1\n\
             _acme-challenge.cname CNAME x.acme-dns.test.\n",
        ),
        ("acme-dns.test", "@ NS ns1\nns1 A 127.0.0.1\n"),
        (
            "slow.test",
            "@ NS ns1\n@ NS ns2\nns1 A 127.0.0.1\nns2 A 127.0.0.2\n@ A 127.0.0.1\n",
        ),
    ]
}

/// BIND, and the CA environment with pebble asking BIND.
fn start() -> (Bind, Env) {
    let bind = Bind::start(&zones());
    let env = Env::start_opts(Options {
        dns_port: Some(bind.port),
        ..Default::default()
    });
    (bind, env)
}

/// The daemon's RFC 2136 settings for `bind`, with `secret`.
fn settings(bind: &Bind, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DNS_UPDATE_SERVER", format!("127.0.0.1:{}", bind.port)),
        ("DNS_TSIG_KEY_NAME", bind::KEY_NAME.into()),
        ("DNS_TSIG_ALGORITHM", bind::ALGORITHM.into()),
        ("DNS_TSIG_SECRET", secret.into()),
        // The zones' NS records point at 127.0.0.1 (and .2); BIND listens on a free port.
        ("DNS_AUTHORITATIVE_PORT", bind.port.to_string()),
    ]
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn a_wildcard_and_a_cname_delegated_name_are_issued_over_rfc_2136_and_every_record_is_deleted() {
    let (bind, env) = start();
    let domains =
        "example.test,*.example.test challenge=dns-01;cname.example.test challenge=dns-01";
    let vars = settings(&bind, bind::SECRET);
    let mut daemon = env.start_daemon_with(domains, &refs(&vars));
    wait_until(
        "both certificates are served",
        Duration::from_secs(120),
        || {
            daemon.assert_running();
            env.served_sans("foo.example.test")
                .contains("DNS:*.example.test")
                && env
                    .served_sans("cname.example.test")
                    .contains("DNS:cname.example.test")
        },
    );
    env.assert_serves_apex_and_wildcard(
        "example.test",
        &["foo.example.test", "example.test", "bar.example.test"],
    );
    assert!(!env.served_sans("cname.example.test").contains('*'));
    // What BIND did, from its log: the apex and the wildcard share one name (two values), the
    // CNAME-delegated name went to the name the CNAME points to, in its own zone; each added
    // record was deleted (by value) afterwards.
    wait_until(
        "every added record is deleted",
        Duration::from_secs(30),
        || {
            let log = bind.log();
            log.matches("deleting an RR at _acme-challenge.example.test TXT")
                .count()
                >= 2
                && log.contains("deleting an RR at x.acme-dns.test TXT")
        },
    );
    let log = bind.log();
    assert_eq!(
        log.matches(
            "updating zone 'example.test/IN': adding an RR at '_acme-challenge.example.test' TXT"
        )
        .count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("updating zone 'acme-dns.test/IN': adding an RR at 'x.acme-dns.test' TXT")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("adding an RR at '_acme-challenge.cname.example.test'"),
        "the CNAME is followed, not replaced: {log}"
    );
    assert!(
        log.contains(&format!("/key {}", bind::KEY_NAME)),
        "updates signed with the key: {log}"
    );
    // No TXT left in either zone; the CNAME is still there.
    assert_eq!(
        bind.txt("_acme-challenge.example.test"),
        Vec::<String>::new()
    );
    assert_eq!(bind.txt("x.acme-dns.test"), Vec::<String>::new());
    assert!(
        bind.dig("CNAME", "_acme-challenge.cname.example.test")
            .contains("x.acme-dns.test."),
        "the delegation is untouched"
    );
    assert_eq!(
        env.pebble_log().matches("POST /chalZ/").count(),
        3,
        "each challenge told ready once"
    );
    assert_eq!(env.issued().len(), 2, "{:?}", env.issued());
    assert!(daemon.terminate().success());
}

fn dump(env: &Env, domains: &str) -> Value {
    let out = env.cli(domains, &["state", "dump"]);
    assert!(out.status.success(), "state dump: {}", common::text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_wrong_tsig_secret_is_a_permanent_failure_naming_the_key_not_the_secret() {
    let (bind, env) = start();
    let domains = "example.test,*.example.test challenge=dns-01";
    // A well-formed secret BIND does not know for this key.
    let wrong = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";
    let vars = settings(&bind, wrong);
    let mut daemon = env.start_daemon_with(domains, &refs(&vars));
    let mut failure = Value::Null;
    wait_until(
        "the refused update is recorded",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            let out = env.cli(domains, &["state", "dump"]);
            if !out.status.success() {
                return false; // the daemon is starting: its admin socket is not up yet
            }
            let d: Value = serde_json::from_slice(&out.stdout).unwrap();
            failure = d["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["id"] == "example.test")
                .map(|c| c["last_error"].clone())
                .unwrap_or(Value::Null);
            !failure.is_null()
        },
    );
    let error = failure["message"].as_str().unwrap_or_default();
    assert_eq!(failure["kind"], "permanent", "{failure}");
    assert_eq!(failure["step"], "validation", "{failure}");
    for want in [
        "was refused: NOTAUTH: BADSIG",
        &format!("with TSIG key {}", bind::KEY_NAME),
        &format!("DNS_UPDATE_SERVER 127.0.0.1:{}", bind.port),
        "in zone example.test",
        "DNS_TSIG_SECRET",
    ] {
        assert!(error.contains(want), "{want:?} in {error}");
    }
    let all = format!(
        "{}\n{}\n{}",
        serde_json::to_string(&dump(&env, domains)).unwrap(),
        daemon.log_text(),
        common::text(&env.cli(domains, &["status"]))
    );
    assert!(!all.contains(wrong), "the secret is printed somewhere");
    assert!(
        !all.contains(&wrong[..16]),
        "a part of the secret is printed"
    );
    // Nothing was published; the CA was never told to validate.
    assert_eq!(
        bind.txt("_acme-challenge.example.test"),
        Vec::<String>::new()
    );
    assert_eq!(env.pebble_log().matches("POST /chalZ/").count(), 0);
    assert!(daemon.terminate().success());
}

#[test]
fn a_kill_while_a_record_is_published_leaves_none_after_the_restart() {
    let (bind, env) = start();
    let domains = "slow.test challenge=dns-01";
    let mut vars = settings(&bind, bind::SECRET);
    // ns2.slow.test (127.0.0.2) does not answer: the wait holds the record published.
    vars.push(("DNS_PROPAGATION_TIMEOUT", "300s".into()));
    let mut daemon = env.start_daemon_with(domains, &refs(&vars));
    wait_until("the record is published", Duration::from_secs(60), || {
        daemon.assert_running();
        !bind.txt("_acme-challenge.slow.test").is_empty()
    });
    assert_eq!(
        env.pebble_log().matches("POST /chalZ/").count(),
        0,
        "the CA waits"
    );
    daemon.kill();
    assert_eq!(
        bind.txt("_acme-challenge.slow.test").len(),
        1,
        "left published"
    );
    // ns2 moves to an address that answers; the restarted daemon removes the crashed run's
    // record first.
    bind.nsupdate("update delete ns2.slow.test A\nupdate add ns2.slow.test 60 A 127.0.0.1");
    let mut daemon = env.start_daemon_with(domains, &refs(&vars));
    wait_until(
        "the certificate is served",
        Duration::from_secs(120),
        || {
            daemon.assert_running();
            env.served_sans("slow.test").contains("DNS:slow.test")
        },
    );
    let text = daemon.log_text();
    assert!(
        text.contains("removing the DNS records an earlier run left published"),
        "{text}"
    );
    wait_until("every record is deleted", Duration::from_secs(30), || {
        bind.txt("_acme-challenge.slow.test").is_empty()
    });
    let log = bind.log();
    let added = log
        .matches("adding an RR at '_acme-challenge.slow.test' TXT")
        .count();
    let deleted = log
        .matches("deleting an RR at _acme-challenge.slow.test TXT")
        .count();
    assert_eq!((added, deleted), (2, 2), "{log}");
    assert_eq!(
        env.pebble_new_orders(),
        1,
        "the crashed run's order went on"
    );
    assert_eq!(env.issued().len(), 1);
    assert!(daemon.terminate().success());
}

#[test]
fn a_dns_hook_record_is_awaited_at_every_authoritative_server_before_the_ca_is_told() {
    let (bind, env) = start();
    // A user's hook for a provider: here nsupdate into BIND, without any wait of its own.
    let hook = env.dir.path().join("nsupdate-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nprintf 'server 127.0.0.1 {port}\\nupdate add _acme-challenge.%s. 60 TXT \"%s\"\\nsend\\n' \
             \"$CERTBOT_DOMAIN\" \"$CERTBOT_VALIDATION\" | nsupdate -y {alg}:{key}:{secret}\n",
            port = bind.port,
            alg = bind::ALGORITHM,
            key = bind::KEY_NAME,
            secret = bind::SECRET
        ),
    )
    .unwrap();
    let hook = format!("sh {}", hook.display());
    let resolver = format!("127.0.0.1:{}", bind.port);
    let port = bind.port.to_string();
    let vars = [
        ("DNS_HOOK", hook.as_str()),
        ("DNS_RESOLVER", resolver.as_str()),
        ("DNS_AUTHORITATIVE_PORT", port.as_str()),
        ("DNS_PROPAGATION_TIMEOUT", "2s"),
    ];
    let domains = "slow.test,*.slow.test challenge=dns-01";
    let mut daemon = env.start_daemon_with(domains, &vars);
    // ns2.slow.test (127.0.0.2) does not answer: the hook's exit 0 is not enough.
    let mut failure = Value::Null;
    wait_until("the preflight failure", Duration::from_secs(60), || {
        daemon.assert_running();
        failure = dump(&env, domains)["certificates"][0]["last_error"].clone();
        failure["message"]
            .as_str()
            .is_some_and(|m| m.contains("preflight failed"))
    });
    let message = failure["message"].as_str().unwrap();
    assert!(
        message.contains("DNS_HOOK exited 0")
            && message.contains("ns2.slow.test")
            && message.contains("127.0.0.2"),
        "{failure}"
    );
    assert_eq!(failure["kind"], "retryable", "{failure}");
    assert_eq!(
        env.pebble_log().matches("POST /chalZ/").count(),
        0,
        "the CA was not told"
    );
    // ns2 answers once it moves to 127.0.0.1: the same order is validated.
    bind.nsupdate("update delete ns2.slow.test A\nupdate add ns2.slow.test 60 A 127.0.0.1");
    let out = env.cli_with(domains, &vars, &["retry", "slow.test"]);
    assert!(out.status.success(), "retry: {}", common::text(&out));
    wait_until(
        "the wildcard certificate is served",
        Duration::from_secs(120),
        || {
            daemon.assert_running();
            env.served_sans("www.slow.test").contains("DNS:*.slow.test")
        },
    );
    assert!(daemon.log_text().contains("preflight passed"));
    assert_eq!(
        env.pebble_new_orders(),
        1,
        "one order, validated once fixed"
    );
    assert!(daemon.terminate().success());
}
