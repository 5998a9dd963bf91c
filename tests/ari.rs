//! ACME Renewal Information (RFC 9773) end to end against pebble 2.10 and HAProxy: a window the
//! CA moves renews at once with `replaces` and is served without a reload; `alreadyReplaced`
//! (a store restored from a backup) orders again without it; a CA that does not echo
//! `replaces`, and one whose directory stops offering `renewalInfo`, still get exactly one order
//! per renewal (the last two through `common::ca_proxy`, which edits pebble's answers); a
//! renewal in the window is not held back by the local rate-limit budget.

mod common;

use std::time::Duration;

use common::ca_proxy::CaProxy;
use common::{text, wait_until, Env};
use serde_json::Value;

const ID: &str = "ari.example.test";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The dump of the one certificate (`Null` while a starting daemon does not answer yet).
fn cert(env: &Env, overrides: &[(&str, &str)]) -> Value {
    let out = env.cli_with(ID, overrides, &["state", "dump", ID]);
    if !out.status.success() {
        return Value::Null;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["certificates"][0].clone()
}

/// The leaf certificate of `<id>.pem` in CERTS_DIR, as PEM.
fn leaf_pem(env: &Env) -> String {
    let pem = std::fs::read_to_string(env.certs_dir.join(format!("{ID}.pem"))).unwrap();
    let end = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----").unwrap();
    let stop = pem[start..].find(end).unwrap() + start + end.len();
    format!("{}\n", &pem[start..stop])
}

/// Orders pebble created, and how many of them it recorded as replacements (its log).
fn orders(env: &Env) -> (usize, usize) {
    let log = env.pebble_log();
    (
        log.lines().filter(|l| l.contains("Added order")).count(),
        log.lines()
            .filter(|l| l.contains("is a replacement of"))
            .count(),
    )
}

/// How many replacements pebble records for a renewal of the certificate `serial`: none when
/// pebble 2.10 cannot find it (letsencrypt/pebble#550, one serial in 256) and the daemon orders
/// without `replaces`.
fn replacement_of(serial: &str) -> usize {
    usize::from(!common::pebble_cannot_find(serial))
}

/// Waits until HAProxy serves the stored certificate of ID and it is not `old` (None: any);
/// returns its serial.
fn served_other_than(
    env: &Env,
    overrides: &[(&str, &str)],
    old: Option<&str>,
    daemon: &mut common::Daemon,
) -> String {
    let mut serial = None;
    wait_until("a new certificate served", Duration::from_secs(60), || {
        daemon.assert_running();
        let stored = cert(env, overrides)["serial"]
            .as_str()
            .map(|s| s.trim_start_matches('0').to_uppercase());
        serial = env
            .served_serial(ID)
            .filter(|s| Some(s) == stored.as_ref() && Some(s.as_str()) != old);
        serial.is_some()
    });
    serial.unwrap()
}

/// Waits until a (re)started daemon answers on its admin socket.
fn answering(env: &Env, overrides: &[(&str, &str)], daemon: &mut common::Daemon) {
    wait_until("the daemon answers", Duration::from_secs(30), || {
        daemon.assert_running();
        !cert(env, overrides).is_null()
    });
}

/// Waits until the dump shows a window from the CA, and returns the certificate's dump.
fn window_received(env: &Env, overrides: &[(&str, &str)]) -> Value {
    let mut c = Value::Null;
    wait_until(
        "the CA's renewal window stored",
        Duration::from_secs(30),
        || {
            c = cert(env, overrides);
            c["renew_at_source"] == "ari" && c["installed"] == true
        },
    );
    c
}

/// The CA moves the window of the served certificate into the past; `renew ID` asks for it now.
fn move_window_into_the_past(env: &Env, overrides: &[(&str, &str)]) {
    let t = now();
    env.pebble_set_renewal_window(&leaf_pem(env), t - 7200, t - 3600);
    let out = env.cli_with(ID, overrides, &["renew", ID]);
    assert!(out.status.success(), "renew: {}", text(&out));
    assert!(
        text(&out).contains("asking the CA for its renewal window now"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_window_the_ca_moves_renews_at_once_with_replaces_served_without_reload() {
    let env = Env::start();
    let mut daemon = env.start_daemon(ID);
    let first = served_other_than(&env, &[], None, &mut daemon);
    let c = window_received(&env, &[]);
    // pebble's own window for a fresh certificate; renew_at is a point inside it.
    let w = c["renewal_window"].as_array().expect("a window").clone();
    let renew_at = c["renew_at"].as_str().unwrap();
    assert!(
        w[0].as_str().unwrap() <= renew_at && renew_at <= w[1].as_str().unwrap(),
        "{c}"
    );
    assert_eq!(orders(&env), (1, 0));

    move_window_into_the_past(&env, &[]);
    let second = served_other_than(&env, &[], Some(&first), &mut daemon);
    let r = replacement_of(&first);
    assert_eq!(
        orders(&env),
        (2, r),
        "one new order, which names the certificate it replaces"
    );
    assert_eq!(env.haproxy_reloads(), 0, "served through the runtime API");
    let c = window_received(&env, &[]);
    assert_eq!(
        c["serial"].as_str().unwrap().trim_start_matches('0'),
        second.trim_start_matches('0')
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(orders(&env), (2, r), "nothing ordered after the renewal");
}

/// Let's Encrypt counts a renewal ordered in the CA's window, naming the certificate it
/// replaces, against no limit: with a budget of one certificate per set of names a week, spent
/// on the first certificate, a window the CA moves into the past still renews at once (a key
/// type change outside the window is deferred: `e2e::the_local_rate_limit_budget_defers...`).
#[test]
fn a_renewal_in_the_window_is_not_held_back_by_the_local_budget() {
    let env = Env::start();
    let budget = [("RATE_LIMITS", "exact-set=1/7d")];
    let mut daemon = env.start_daemon_with(ID, &budget);
    let first = served_other_than(&env, &budget, None, &mut daemon);
    window_received(&env, &budget);
    move_window_into_the_past(&env, &budget);
    let second = served_other_than(&env, &budget, Some(&first), &mut daemon);
    assert_ne!(first, second);
    let r = replacement_of(&first);
    assert_eq!(orders(&env), (2, r), "the renewal reached the CA");
    let c = cert(&env, &budget);
    assert!(c["last_error"].is_null(), "not deferred: {c}");
    assert!(
        !daemon.log_text().contains("local rate-limit budget"),
        "no deferral logged"
    );
}

#[test]
fn already_replaced_after_a_restore_orders_again_without_replaces() {
    let env = Env::start();
    let mut daemon = env.start_daemon(ID);
    let first = served_other_than(&env, &[], None, &mut daemon);
    window_received(&env, &[]);
    let backup = env.dir.path().join("backup.ndjson");
    let out = env.cli(ID, &["backup", backup.to_str().unwrap()]);
    assert!(out.status.success(), "backup: {}", text(&out));

    move_window_into_the_past(&env, &[]);
    let second = served_other_than(&env, &[], Some(&first), &mut daemon);
    let r = replacement_of(&first);
    assert_eq!(orders(&env), (2, r));

    // The store goes back to the first certificate, which the CA knows as replaced.
    assert!(daemon.terminate().success());
    let out = env.cli(ID, &["restore", backup.to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", text(&out));
    let mut daemon = env.start_daemon(ID);
    answering(&env, &[], &mut daemon);
    let out = env.cli(ID, &["renew", ID, "--force"]);
    assert!(out.status.success(), "renew --force: {}", text(&out));
    wait_until(
        "a third certificate served",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            env.served_serial(ID)
                .is_some_and(|s| s != first && s != second)
        },
    );
    let log = daemon.log_text();
    assert!(
        log.contains("the CA refused `replaces`: ordering without it")
            && (log.contains("alreadyReplaced") || r == 0),
        "{log}"
    );
    assert_eq!(
        orders(&env),
        (3, r),
        "the refused request created nothing; the order after it has no `replaces`"
    );
}

/// The daemon started against the CA behind `proxy`, its first certificate served and the CA's
/// window stored: the daemon and that certificate's serial.
fn issued_behind(env: &Env, proxy: &CaProxy) -> (common::Daemon, String) {
    let dir = proxy.directory_url();
    let via: [(&str, &str); 1] = [("ACME_DIRECTORY", dir.as_str())];
    let mut daemon = env.start_daemon_with(ID, &via);
    let first = served_other_than(env, &via, None, &mut daemon);
    window_received(env, &via);
    (daemon, first)
}

/// `issued_behind`, then the CA's window moved into the past and the renewal served: the
/// daemon and the first certificate's serial.
fn renewed_behind(env: &Env, proxy: &CaProxy) -> (common::Daemon, String) {
    let (mut daemon, first) = issued_behind(env, proxy);
    let dir = proxy.directory_url();
    let via: [(&str, &str); 1] = [("ACME_DIRECTORY", dir.as_str())];
    move_window_into_the_past(env, &via);
    served_other_than(env, &via, Some(&first), &mut daemon);
    (daemon, first)
}

#[test]
fn a_ca_that_does_not_echo_replaces_gets_one_order_per_renewal() {
    let env = Env::start();
    let proxy = CaProxy::start(&env);
    proxy.strip_replaces(true);
    let (daemon, first) = renewed_behind(&env, &proxy);
    std::thread::sleep(Duration::from_secs(3));
    let r = replacement_of(&first);
    assert_eq!(
        orders(&env),
        (2, r),
        "the CA took `replaces`; its answer without it is kept, not ordered again"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("without echoing `replaces`") || r == 0,
        "{log}"
    );
}

#[test]
fn a_ca_that_fails_orders_carrying_replaces_gets_the_renewal_ordered_without_it() {
    // pebble 2.10 answers 500 to a `replaces` whose serial starts with a byte >= 0x80 (one in
    // 256 of its serials; letsencrypt/pebble#550), ZeroSSL 401 to some: a renewal must not wait on
    // that forever (it did: the CI run of 2026-11-26 retried one for 90 s).
    let env = Env::start();
    let proxy = CaProxy::start(&env);
    proxy.refuse_replaces(true);
    let (daemon, _) = renewed_behind(&env, &proxy);
    assert_eq!(proxy.refused(), 1, "one request with `replaces`, refused");
    assert_eq!(
        orders(&env),
        (2, 0),
        "the refused request created nothing; the renewal was ordered at once without it"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("the CA refused `replaces`: ordering without it")
            && log.contains("serverInternal"),
        "{log}"
    );
    assert!(
        !log.contains("CA refused: could not find"),
        "no failed step: {log}"
    );
}

#[test]
fn a_directory_that_stops_offering_renewal_info_falls_back_to_the_lifetime_rule() {
    let env = Env::start();
    let proxy = CaProxy::start(&env);
    let (mut daemon, first) = issued_behind(&env, &proxy);
    let dir = proxy.directory_url();
    let via: [(&str, &str); 1] = [("ACME_DIRECTORY", dir.as_str())];

    // The CA drops renewal information; the daemon reads the directory when it connects.
    proxy.strip_renewal_info(true);
    assert!(daemon.terminate().success());
    let mut daemon = env.start_daemon_with(ID, &via);
    answering(&env, &via, &mut daemon);
    let out = env.cli_with(ID, &via, &["renew", ID]);
    assert!(out.status.success(), "renew: {}", text(&out));
    let mut c = Value::Null;
    wait_until("the stored window dropped", Duration::from_secs(30), || {
        daemon.assert_running();
        c = cert(&env, &via);
        c["renew_at_source"] == "lifetime"
    });
    assert!(c["renewal_window"].is_null(), "{c}");
    assert!(c["renewal_info_check_at"].is_null(), "no more asking: {c}");
    // Two thirds into the lifetime (half-way below ten days).
    let ts = |k: &str| {
        time::OffsetDateTime::parse(
            c[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp()
    };
    let (nb, na) = (ts("not_before"), ts("not_after"));
    let life = na - nb;
    let expected = if life < 10 * 86_400 {
        nb + life / 2
    } else {
        nb + life * 2 / 3
    };
    // Brought forward by at most a thirtieth of the lifetime (the serial's spread).
    let renew_at = ts("renew_at");
    assert!(
        renew_at <= expected && renew_at >= expected - life / 30,
        "{c}"
    );

    // A renewal now names no certificate it replaces (RFC 9773 §5: not without renewalInfo).
    let out = env.cli_with(ID, &via, &["renew", ID, "--force"]);
    assert!(out.status.success(), "renew --force: {}", text(&out));
    served_other_than(&env, &via, Some(&first), &mut daemon);
    assert_eq!(orders(&env), (2, 0));
}
