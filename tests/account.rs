//! Account creation against real pebble 2.10 (issue 13, items 3 and 5): the contact (`EMAIL`)
//! and the External Account Binding travel in the one new-account request; a CA that requires
//! EAB gets it from `EAB_KID` + `EAB_HMAC_KEY_FILE`; without one, or with a wrong HMAC key, the
//! certificate's failure says what to set and nothing is ordered; the HMAC key never appears in
//! the daemon's log, `state dump` or `check-config`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use common::{text, wait_until, Daemon, Env, Options};

/// pebble's own test key (test/config/pebble-config-external-account-bindings.json).
const KID: &str = "kid-1";
const HMAC_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
/// Another key of the same form, which pebble does not have for `KID`.
const WRONG_KEY: &str = "HjudV5qnbreN-n9WyFSH-t4HXuEx_XFen45zuxY-G1h6fr74V3cUM_dVlwQZBWmc";
const NAME: &str = "eab.test";

/// pebble 2.10 (EAB in its directory's meta): the lab's, unless the environment names one.
fn pebble_2_10() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (var, bin) in [
            ("PEBBLE_BIN", "/var/cache/haproxy-acme-lab/bin/pebble"),
            (
                "CHALLTESTSRV_BIN",
                "/var/cache/haproxy-acme-lab/bin/pebble-challtestsrv",
            ),
        ] {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                std::env::set_var(var, bin);
            }
        }
    });
}

fn eab_env() -> Env {
    pebble_2_10();
    Env::start_opts(Options {
        eab_required: true,
        eab_keys: vec![(KID.into(), HMAC_KEY.into())],
        ..Options::default()
    })
}

/// The HMAC key in a 0600 file, as a container secret.
fn key_file(env: &Env, key: &str) -> PathBuf {
    let path = env.dir.path().join("eab-hmac-key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn dump(env: &Env) -> serde_json::Value {
    let out = env.cli(NAME, &["state", "dump", NAME]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Waits for the certificate's recorded failure and returns it.
fn wait_failure(env: &Env, daemon: &mut Daemon) -> serde_json::Value {
    let mut failure = serde_json::Value::Null;
    wait_until(
        "an account failure recorded",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            failure = dump(env)["certificates"][0]["last_error"].clone();
            !failure.is_null()
        },
    );
    failure
}

fn occurrences(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_ca_that_requires_eab_gets_it_from_the_key_file_and_the_key_never_prints() {
    let env = eab_env();
    let root = env.issuer_root();
    let file = key_file(&env, HMAC_KEY);
    let file_s = file.display().to_string();
    let eab = [("EAB_KID", KID), ("EAB_HMAC_KEY_FILE", file_s.as_str())];
    let mut daemon = env.start_daemon_with(NAME, &eab);
    wait_until("served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid(NAME, &root).is_some()
    });
    let pebble = env.pebble_log();
    assert_eq!(
        occurrences(
            &pebble,
            &format!("Successful newAccount Binding with CA using kid \"{KID}\"")
        ),
        1,
        "{pebble}"
    );
    assert_eq!(occurrences(&pebble, "POST /sign-me-up"), 1, "{pebble}");
    // Nowhere: the daemon's log, the dump, check-config (file form and variable form), --help.
    let log = daemon.log_text();
    assert!(log.contains("ACME account ready"), "{log}");
    let dump = text(&env.cli_with(NAME, &eab, &["state", "dump"]));
    assert!(dump.contains(NAME), "{dump}");
    let checked = text(&env.cli_with(NAME, &eab, &["check-config"]));
    assert!(
        checked.contains(KID) && checked.contains("(set)"),
        "{checked}"
    );
    let in_env = [("EAB_KID", KID), ("EAB_HMAC_KEY", HMAC_KEY)];
    let checked_env = env.cli_with(NAME, &in_env, &["check-config"]);
    assert!(checked_env.status.success(), "{}", text(&checked_env));
    let checked_env = text(&checked_env);
    let help = text(&env.cli_with(NAME, &in_env, &["run", "--help"]));
    assert!(help.contains("EAB_HMAC_KEY"), "{help}");
    for (what, out) in [
        ("the daemon's log", &log),
        ("state dump", &dump),
        ("check-config", &checked),
        ("check-config (EAB_HMAC_KEY)", &checked_env),
        ("run --help", &help),
    ] {
        assert!(!out.contains(HMAC_KEY), "the HMAC key in {what}:\n{out}");
        assert!(
            !out.contains(&HMAC_KEY[..16]),
            "part of the HMAC key in {what}:\n{out}"
        );
    }
    // The stored account is used from now on, without the binding.
    daemon.terminate();
    let mut again = env.start_daemon(NAME);
    wait_until("daemon healthy", Duration::from_secs(30), || {
        again.assert_running();
        env.cli(NAME, &["healthcheck"]).status.success()
    });
    let force = env.cli(NAME, &["renew", NAME, "--force"]);
    assert!(force.status.success(), "{}", text(&force));
    wait_until("renewed", Duration::from_secs(60), || {
        again.assert_running();
        env.issued().len() == 2
    });
    let pebble = env.pebble_log();
    assert_eq!(occurrences(&pebble, "POST /sign-me-up"), 1, "{pebble}");
    assert_eq!(occurrences(&pebble, "Successful newAccount Binding"), 1);
}

#[test]
fn a_ca_that_requires_eab_and_none_is_set_names_the_settings() {
    let env = eab_env();
    let mut daemon = env.start_daemon(NAME);
    let failure = wait_failure(&env, &mut daemon);
    let message = failure["message"].as_str().unwrap();
    eprintln!("ACCOUNT no EAB: {message}");
    assert!(
        message.contains("EAB_KID") && message.contains("EAB_HMAC_KEY"),
        "{failure}"
    );
    assert_eq!(failure["step"], "account", "{failure}");
    assert_eq!(failure["kind"], "permanent", "{failure}");
    let status = text(&env.cli(NAME, &["status"]));
    assert!(status.contains("EAB_KID"), "{status}");
    // Known from the directory: no account request, no order; the daemon keeps running.
    std::thread::sleep(Duration::from_secs(1));
    daemon.assert_running();
    let pebble = env.pebble_log();
    assert_eq!(occurrences(&pebble, "POST /sign-me-up"), 0, "{pebble}");
    assert_eq!(env.pebble_new_orders(), 0);
    // A start with the settings is the configuration change the failure waited for.
    daemon.terminate();
    let file = key_file(&env, HMAC_KEY);
    let file_s = file.display().to_string();
    let mut daemon = env.start_daemon_with(
        NAME,
        &[("EAB_KID", KID), ("EAB_HMAC_KEY_FILE", file_s.as_str())],
    );
    let root = env.issuer_root();
    wait_until("served once EAB is set", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid(NAME, &root).is_some()
    });
}

#[test]
fn a_wrong_hmac_key_is_a_clear_failure_and_nothing_is_ordered() {
    let env = eab_env();
    let file = key_file(&env, WRONG_KEY);
    let file_s = file.display().to_string();
    let mut daemon = env.start_daemon_with(
        NAME,
        &[("EAB_KID", KID), ("EAB_HMAC_KEY_FILE", file_s.as_str())],
    );
    let failure = wait_failure(&env, &mut daemon);
    let message = failure["message"].as_str().unwrap();
    eprintln!("ACCOUNT wrong HMAC key: {message}");
    // pebble's words, and what to check.
    assert!(
        message.contains("external account binding JWS verification error"),
        "{failure}"
    );
    assert!(message.contains("EAB_KID"), "{failure}");
    assert_eq!(failure["kind"], "permanent", "{failure}");
    assert!(!message.contains(WRONG_KEY));
    std::thread::sleep(Duration::from_secs(1));
    daemon.assert_running();
    let pebble = env.pebble_log();
    assert_eq!(occurrences(&pebble, "Successful newAccount Binding"), 0);
    assert_eq!(env.pebble_new_orders(), 0, "{pebble}");
    assert!(!daemon.log_text().contains(WRONG_KEY));
}

#[test]
fn the_contact_is_sent_with_the_new_account_request() {
    pebble_2_10();
    let env = Env::start();
    let root = env.issuer_root();
    // The harness's daemon sets EMAIL=e2e@example.test.
    let mut daemon = env.start_daemon(NAME);
    wait_until("served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid(NAME, &root).is_some()
    });
    let pebble = env.pebble_log();
    assert_eq!(occurrences(&pebble, "POST /sign-me-up"), 1, "{pebble}");
    assert_eq!(
        occurrences(&pebble, "POST /my-account/"),
        0,
        "no second request to set the contact:\n{pebble}"
    );
    // The account object pebble returned lists it.
    let log = daemon.log_text();
    let ready = log
        .lines()
        .find(|l| l.contains("ACME account ready"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(ready.contains("mailto:e2e@example.test"), "{ready}");
}
