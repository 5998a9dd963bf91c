//! `revoke` against the running daemon (real pebble, real HAProxy): the CA revokes the served
//! certificate, and by the time the command returns HAProxy serves a new one with a new key;
//! an unknown id exits 3; a revocation the CA refuses exits 2 with its words and changes
//! nothing. Without a daemon the command revokes and records it, and the next
//! start orders the replacement.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{text, wait_until, Daemon, Env};

const DOMAINS: &str = "rv.example.test";

/// The public key (PEM) of the certificate HAProxy serves for `name`.
fn served_public_key(env: &Env, name: &str) -> String {
    let key = env.served_x509(name, "-pubkey").unwrap_or_default();
    assert!(key.contains("BEGIN PUBLIC KEY"), "no key served: {key}");
    key
}

/// An environment whose daemon has issued `DOMAINS` and HAProxy serves it: with the issuer's
/// root, the running daemon, and the served serial and public key.
fn issued() -> (Env, PathBuf, Daemon, String, String) {
    let env = Env::start();
    let root = env.issuer_root();
    let mut daemon = env.start_daemon(DOMAINS);
    wait_until("rv.example.test served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid(DOMAINS, &root).is_some()
    });
    let old_serial = env.served_serial(DOMAINS).expect("a served serial");
    let old_key = served_public_key(&env, DOMAINS);
    (env, root, daemon, old_serial, old_key)
}

#[test]
fn revoke_key_compromise_serves_a_new_certificate_with_a_new_key_before_returning() {
    let (env, root, mut daemon, old_serial, old_key) = issued();
    let orders = env.pebble_new_orders();

    let out = env.cli(
        DOMAINS,
        &[
            "revoke",
            "RV.example.test",
            "--reason",
            "keyCompromise",
            "--timeout",
            "90s",
        ],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}\n{}", daemon.log_text());
    // Served as soon as the command returned, not some time later.
    let new_serial = env.served_serial(DOMAINS).expect("a served serial");
    assert_ne!(new_serial, old_serial, "{said}");
    assert!(
        env.served_and_valid(DOMAINS, &root).is_some(),
        "the new certificate verifies"
    );
    assert_ne!(
        served_public_key(&env, DOMAINS),
        old_key,
        "the new certificate has a new key"
    );
    // The command prints serials as stored (leading zeros kept), `served_serial` without them.
    let serials_after = |label: &str| -> Vec<String> {
        said.split(label)
            .skip(1)
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
            .map(|s| s.trim_start_matches('0').to_uppercase())
            .collect()
    };
    assert!(
        serials_after("revoked serial ").contains(&old_serial.to_uppercase()),
        "names the revoked serial {old_serial}: {said}"
    );
    assert!(
        serials_after("new certificate serial ").contains(&new_serial.to_uppercase()),
        "names the new serial {new_serial}: {said}"
    );
    assert!(
        said.contains("waiting up to"),
        "says what it waits for: {said}"
    );
    assert!(!said.contains("PRIVATE KEY"), "{said}");
    assert_eq!(env.pebble_new_orders(), orders + 1, "one new order");

    // Pebble revoked it, for the reason given (RFC 5280 code 1), and logged the request.
    let status = env
        .pebble_cert_status(&old_serial)
        .expect("pebble knows the serial");
    assert_eq!(status["Status"], "Revoked", "{status}");
    assert_eq!(status["Reason"], 1, "{status}");
    assert!(
        env.pebble_log().contains("/revoke-cert"),
        "pebble logged the revocation"
    );
    let status = env
        .pebble_cert_status(&new_serial)
        .expect("pebble knows the serial");
    assert_eq!(status["Status"], "Valid", "{status}");

    // The record keeps the revocation.
    let out = env.cli(DOMAINS, &["state", "dump", DOMAINS]);
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rv = &dump["certificates"][0]["revoked"];
    assert_eq!(rv["reason"], "keyCompromise", "{dump}");
    assert!(
        rv["serial"]
            .as_str()
            .unwrap()
            .trim_start_matches('0')
            .eq_ignore_ascii_case(&old_serial),
        "{dump}"
    );

    // Unknown id: exit 3, nothing asked of the CA.
    let out = env.cli(DOMAINS, &["revoke", "nope.example.test"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("no certificate"), "{}", text(&out));
    // An unknown reason is refused by the command line.
    let out = env.cli(DOMAINS, &["revoke", DOMAINS, "--reason", "caCompromise"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        env.pebble_log().matches("/revoke-cert").count(),
        1,
        "one revocation request reached the CA"
    );

    daemon.assert_running();
    daemon.terminate();
}

#[test]
fn revoke_without_a_daemon_is_recorded_and_the_next_start_orders_the_replacement() {
    let (env, root, mut daemon, old_serial, old_key) = issued();
    assert!(daemon.terminate().success());

    // No daemon: the command revokes at the CA and records it in the store itself.
    let out = env.cli(DOMAINS, &["revoke", DOMAINS, "--reason", "superseded"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("no daemon runs"), "{said}");
    assert!(!said.contains("PRIVATE KEY"), "{said}");
    let status = env
        .pebble_cert_status(&old_serial)
        .expect("pebble knows the serial");
    assert_eq!(status["Status"], "Revoked", "{status}");
    assert_eq!(
        status["Reason"], 4,
        "superseded is RFC 5280 code 4: {status}"
    );
    let out = env.cli(DOMAINS, &["state", "dump", DOMAINS]);
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dump["certificates"][0]["revoked"]["reason"], "superseded",
        "{dump}"
    );

    // The next start orders the replacement at once, with a new key.
    let mut daemon = env.start_daemon(DOMAINS);
    wait_until("a new certificate served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_serial(DOMAINS)
            .is_some_and(|s| !s.eq_ignore_ascii_case(&old_serial))
    });
    assert!(env.served_and_valid(DOMAINS, &root).is_some());
    assert_ne!(served_public_key(&env, DOMAINS), old_key, "a new key");
    daemon.terminate();
}

#[test]
fn a_revocation_the_ca_refuses_exits_2_with_its_words_and_changes_nothing() {
    let (mut env, _root, mut daemon, old_serial, _old_key) = issued();
    // A restarted pebble knows neither the account nor the certificate.
    env.restart_pebble();
    let orders = env.running_pebble_new_orders();
    let out = env.cli(
        DOMAINS,
        &[
            "revoke",
            DOMAINS,
            "--reason",
            "keyCompromise",
            "--timeout",
            "30s",
        ],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}\n{}", daemon.log_text());
    assert!(
        said.contains("the CA did not revoke serial")
            && said.contains("Unable to find specified certificate"),
        "the CA's own words: {said}"
    );
    std::thread::sleep(Duration::from_secs(2));
    daemon.assert_running();
    assert_eq!(
        env.running_pebble_new_orders(),
        orders,
        "nothing ordered after a refused revocation"
    );
    assert_eq!(env.served_serial(DOMAINS), Some(old_serial), "still served");
    let dump = env.cli(DOMAINS, &["state", "dump", DOMAINS]);
    let v: serde_json::Value =
        serde_json::from_slice(&dump.stdout).unwrap_or_else(|_| panic!("{}", text(&dump)));
    assert!(
        v["certificates"][0]["revoked"].is_null(),
        "no revocation recorded: {v}"
    );
}
