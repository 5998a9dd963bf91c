//! dns-persist-01 (draft-ietf-acme-dns-persist) end to end: pebble 2.10 validating through a
//! real BIND 9 (the harness's `named` on a free loopback port, authoritative for the test
//! zone, pebble's `-dnsserver`), HAProxy serving the certificate. The standing record is the
//! one `haproxy-acme dns-persist-record` prints, added to BIND's zone by `nsupdate` as the
//! operator would; the daemon itself never writes to DNS. A wildcard plus apex certificate is
//! issued with a persistUntil 20 days away (warned about: log, metric, `status`); a missing
//! record, then a wrong one (no `policy=wildcard`), fail before the CA is told to validate (no
//! challenge request in pebble's log), the message showing the record, and the certificate is
//! issued once the right record exists.

mod common;

use std::time::Duration;

use common::bind::Bind;
use common::{wait_until, Env, Options};
use serde_json::Value;

const DOMAINS: &str = "example.test,*.example.test challenge=dns-persist-01";
const RECORD: &str = "_validation-persist.example.test";

/// BIND authoritative for `example.test` (its NS on loopback), and pebble asking it.
fn start() -> (Bind, Env) {
    let bind = Bind::start(&[("example.test", "@ NS ns1\nns1 A 127.0.0.1\n@ A 127.0.0.1\n")]);
    let env = Env::start_opts(Options {
        dns_port: Some(bind.port),
        ..Default::default()
    });
    (bind, env)
}

/// The daemon's dns-persist-01 settings: BIND resolves, and answers as the zone's NS.
fn settings(bind: &Bind) -> Vec<(&'static str, String)> {
    vec![
        ("DNS_RESOLVER", format!("127.0.0.1:{}", bind.port)),
        ("DNS_AUTHORITATIVE_PORT", bind.port.to_string()),
    ]
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `dns-persist-record example.test ARGS...`: its standard output (it must succeed).
fn printed(env: &Env, vars: &[(&'static str, String)], args: &[&str]) -> String {
    let mut all = vec!["dns-persist-record", "example.test"];
    all.extend_from_slice(args);
    let out = env.cli_with(DOMAINS, &refs(vars), &all);
    assert!(
        out.status.success(),
        "dns-persist-record: {}",
        common::text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `accounturi=` of a printed line.
fn account_of(line: &str) -> String {
    let start = line.find("accounturi=").expect("an accounturi") + "accounturi=".len();
    line[start..].split([';', '"']).next().unwrap().to_string()
}

/// Waits for the recorded failure of example.test whose message contains `containing`.
fn recorded_failure(env: &Env, daemon: &mut common::Daemon, containing: &str) -> Value {
    let mut failure = Value::Null;
    wait_until("the failure is recorded", Duration::from_secs(60), || {
        daemon.assert_running();
        let out = env.cli(DOMAINS, &["state", "dump"]);
        if !out.status.success() {
            return false; // starting: the admin socket is not up yet
        }
        let d: Value = serde_json::from_slice(&out.stdout).unwrap();
        failure = d["certificates"][0]["last_error"].clone();
        failure["message"]
            .as_str()
            .is_some_and(|m| m.contains(containing))
    });
    failure
}

fn challenge_requests(env: &Env) -> usize {
    env.pebble_log().matches("POST /chalZ/").count()
}

#[test]
fn a_wildcard_and_its_apex_are_issued_with_the_printed_record_and_a_near_persist_until_is_warned() {
    let (bind, env) = start();
    let vars = settings(&bind);
    // No daemon yet: the command registers the account and prints the record for it.
    let line = printed(&env, &vars, &["--until", "20d"]);
    let line = line.trim();
    assert_eq!(
        line.lines().count(),
        1,
        "one record for the apex and its wildcard: {line}"
    );
    let account = account_of(line);
    assert!(
        account.starts_with(&format!("https://127.0.0.1:{}/my-account/", env.acme_port)),
        "{line}"
    );
    let want_prefix = format!(
        "{RECORD}. 3600 IN TXT \"pebble.letsencrypt.org; accounturi={account}; policy=wildcard; \
         persistUntil="
    );
    assert!(line.starts_with(&want_prefix), "{line}");
    let until: i64 = line[want_prefix.len()..]
        .trim_end_matches('"')
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((until - now - 20 * 86_400).abs() < 60, "{until} vs {now}");
    let json: Value = serde_json::from_str(&printed(&env, &vars, &["--json"])).unwrap();
    assert_eq!(json[0]["name"], RECORD, "{json}");
    assert_eq!(
        json[0]["value"],
        format!("pebble.letsencrypt.org; accounturi={account}; policy=wildcard"),
        "{json}"
    );
    // The operator adds the printed record (a zone-file line is nsupdate's `update add` syntax).
    bind.nsupdate(&format!("update add {line}"));
    assert_eq!(bind.txt(RECORD).len(), 1);

    let mut daemon = env.start_daemon_with(DOMAINS, &refs(&vars));
    wait_until(
        "the wildcard certificate is served",
        Duration::from_secs(120),
        || {
            daemon.assert_running();
            env.served_sans("foo.example.test")
                .contains("DNS:*.example.test")
        },
    );
    env.assert_serves_apex_and_wildcard(
        "example.test",
        &["example.test", "foo.example.test", "bar.example.test"],
    );
    assert_eq!(challenge_requests(&env), 2, "the apex's and the wildcard's");
    assert_eq!(env.issued().len(), 1);
    // With the daemon running, the account comes from it: the same one.
    let again = printed(&env, &vars, &[]);
    assert_eq!(account_of(&again), account, "{again}");
    assert!(!again.contains("persistUntil"), "{again}");
    // persistUntil 20 days away: a warning, a metric and a `status` line.
    let log = daemon.log_text();
    assert!(log.contains("persistUntil is within 30 days"), "{log}");
    let metrics = common::daemon_metrics(&env.data_dir);
    let labels = format!("{{name=\"example.test\",record=\"{RECORD}\"}}");
    assert!(
        metrics.contains(&format!("haproxy_acme_dns_persist_expiring{labels} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "haproxy_acme_dns_persist_until_timestamp_seconds{labels} {until}"
        )),
        "{metrics}"
    );
    let status = common::text(&env.cli(DOMAINS, &["status"]));
    // 20 days from when the record was printed, whole days left counted down: 20 within the
    // same second, 19 after it.
    assert!(
        ["19", "20"].iter().any(|d| status.contains(&format!(
            "example.test: dns-persist-01 record {RECORD}: persistUntil {until} (in {d} day(s))"
        ))),
        "{status}"
    );
    // Nothing but the operator's update reached BIND: the daemon never writes to DNS.
    let bind_log = bind.log();
    assert_eq!(
        bind_log.matches("adding an RR").count(),
        1,
        "only the operator's record: {bind_log}"
    );
    assert!(!bind_log.contains("_acme-challenge"), "{bind_log}");
    assert!(daemon.terminate().success());
}

#[test]
fn a_missing_record_fails_before_the_ca_is_asked_and_its_message_shows_the_record() {
    let (bind, env) = start();
    let vars = settings(&bind);
    let mut daemon = env.start_daemon_with(DOMAINS, &refs(&vars));
    let failure = recorded_failure(&env, &mut daemon, "");
    let message = failure["message"].as_str().unwrap_or_default();
    eprintln!("failure message: {message}");
    assert_eq!(failure["kind"], "retryable", "{failure}");
    assert_eq!(failure["step"], "validation", "{failure}");
    // The record to create, exactly as the command prints it (for the daemon's account).
    let line = printed(&env, &vars, &[]);
    let line = line.trim();
    assert!(message.contains(line), "{line:?} in {message}");
    for want in [
        "(the CA was not asked to validate)",
        &format!("answers 0 TXT value(s) at {RECORD}"),
        "policy=wildcard",
    ] {
        assert!(message.contains(want), "{want:?} in {message}");
    }
    assert_eq!(
        challenge_requests(&env),
        0,
        "no challenge request reached pebble"
    );
    assert_eq!(
        env.pebble_new_orders(),
        1,
        "the order was placed, not validated"
    );
    // A wrong record (no policy=wildcard, which the wildcard needs) is refused the same way.
    let wrong = line.replace("; policy=wildcard", "");
    bind.nsupdate(&format!("update add {wrong}"));
    let out = env.cli(DOMAINS, &["retry", "example.test"]);
    assert!(out.status.success(), "retry: {}", common::text(&out));
    let failure = recorded_failure(&env, &mut daemon, "policy=wildcard, which");
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("answers 1 TXT value(s)") && message.contains(line),
        "{message}"
    );
    assert_eq!(challenge_requests(&env), 0, "still no challenge request");
    // The operator creates it; `retry` tries at once, and the certificate is issued.
    bind.nsupdate(&format!("update add {line}"));
    let out = env.cli(DOMAINS, &["retry", "example.test"]);
    assert!(out.status.success(), "retry: {}", common::text(&out));
    wait_until(
        "the certificate is served",
        Duration::from_secs(120),
        || {
            daemon.assert_running();
            env.served_sans("foo.example.test")
                .contains("DNS:*.example.test")
        },
    );
    assert_eq!(challenge_requests(&env), 2);
    assert_eq!(env.pebble_new_orders(), 1, "the same order went on");
    assert!(daemon.terminate().success());
}
