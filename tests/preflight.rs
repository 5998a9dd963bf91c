//! The preflight check against real pebble 2.10 and HAProxy: a mis-routed HTTP-01 challenge
//! (HAProxy forwards the token to a port nothing listens on) fails preflight as a recorded,
//! retried local failure with zero requests to pebble's challenge endpoint, and the same order
//! is validated once the routing is fixed; the same for a mis-routed TLS-ALPN-01 challenge.

mod common;

use std::time::Duration;

use common::{free_port, wait_until, Env};
use serde_json::Value;

const ID: &str = "pre.example.test";

/// pebble's log lines for requests to its challenge endpoint (the "ready" POSTs).
fn challenge_requests(env: &Env) -> usize {
    env.pebble_log()
        .lines()
        .filter(|l| l.contains("/chalZ/"))
        .count()
}

/// The dump of certificate `id` of `domains` (`Null` while it cannot be read).
fn cert_of(env: &Env, domains: &str, id: &str) -> Value {
    let out = env.cli(domains, &["state", "dump", id]);
    serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()["certificates"][0].clone()
}

fn cert(env: &Env) -> Value {
    cert_of(env, ID, ID)
}

/// Waits until certificate `id` records a failed preflight; returns its dump.
fn preflight_failure(env: &Env, domains: &str, id: &str, daemon: &mut common::Daemon) -> Value {
    let mut c = Value::Null;
    wait_until(
        "a preflight failure recorded",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            c = cert_of(env, domains, id);
            c["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("preflight failed"))
        },
    );
    c
}

#[test]
fn a_mis_routed_challenge_fails_preflight_without_asking_the_ca_and_is_validated_once_fixed() {
    let env = Env::start();
    // HAProxy sends /.well-known/acme-challenge/ to env.responder_port; the daemon listens
    // elsewhere, so HAProxy answers 503 for every token.
    let elsewhere = format!("127.0.0.1:{}", free_port());
    let mut daemon = env.start_daemon_with(ID, &[("RESPONDER_LISTEN", elsewhere.as_str())]);
    let c = preflight_failure(&env, ID, ID, &mut daemon);
    let e = &c["last_error"];
    let message = e["message"].as_str().unwrap();
    let haproxy = format!("HAProxy at 127.0.0.1:{} answered 503", env.http_port);
    assert!(
        message.contains(&haproxy)
            && message.contains(ID)
            && message.contains("is /.well-known/acme-challenge/ routed to us?"),
        "{c}"
    );
    assert_eq!(e["step"], "validation", "{c}");
    assert_eq!(e["kind"], "retryable", "{c}");
    assert!(
        !c["order_url"].is_null(),
        "the order is kept for the retry: {c}"
    );
    assert_eq!(
        challenge_requests(&env),
        0,
        "the CA was never told to validate"
    );
    let log = daemon.log_text();
    assert!(!log.contains("challenges set ready"), "{log}");
    let order = c["order_url"].as_str().unwrap().to_string();
    assert!(daemon.terminate().success());

    // Routing fixed (the responder where HAProxy sends tokens): the same order is validated.
    let mut daemon = env.start_daemon(ID);
    let out = env.cli(ID, &["retry", ID]);
    assert!(out.status.success(), "{}", common::text(&out));
    wait_until("the certificate served", Duration::from_secs(60), || {
        daemon.assert_running();
        let c = cert(&env);
        c["installed"] == true
            && c["serial"]
                .as_str()
                .map(|s| s.trim_start_matches('0').to_uppercase())
                == env.served_serial(ID)
    });
    assert!(challenge_requests(&env) >= 1, "{}", env.pebble_log());
    let added = env
        .pebble_log()
        .lines()
        .filter(|l| l.contains("Added order"))
        .count();
    assert_eq!(
        added, 1,
        "the order of the failed preflight was used: {order}"
    );
    assert!(daemon.log_text().contains("preflight passed"));
}

#[test]
fn a_mis_routed_tls_alpn_challenge_fails_preflight_without_asking_the_ca() {
    let env = Env::start();
    let domains = "alpn-pre.example.test challenge=tls-alpn-01";
    // HAProxy sends acme-tls/1 handshakes to the harness's TLS_ALPN_LISTEN; the daemon
    // listens elsewhere.
    let elsewhere = format!("127.0.0.1:{}", free_port());
    let mut daemon = env.start_daemon_with(domains, &[("TLS_ALPN_LISTEN", elsewhere.as_str())]);
    let c = preflight_failure(&env, domains, "alpn-pre.example.test", &mut daemon);
    let message = c["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("HAProxy at 127.0.0.1:{}", env.https_port))
            && message.contains("is acme-tls/1 routed to us?"),
        "{c}"
    );
    assert_eq!(challenge_requests(&env), 0, "the CA was never told");
    assert!(daemon.terminate().success());
}
