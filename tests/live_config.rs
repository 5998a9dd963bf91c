//! Live configuration: DOMAINS_FILE edits (by rename, as editors and ConfigMaps do) add and
//! remove certificates without a restart, an invalid edit is refused naming its line, SIGHUP
//! re-reads, and `PRUNE` removes what left the configuration from HAProxy, disk and store.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_until, Daemon, Env};

fn write_by_rename(file: &Path, content: &str) {
    let tmp = file.with_file_name(".domains.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn wait_log(daemon: &mut Daemon, what: &str) {
    wait_until(
        &format!("daemon log says {what:?}"),
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            daemon.log_text().contains(what)
        },
    );
}

#[test]
fn domains_file_changes_apply_without_restart_and_prune_removes() {
    let env = Env::start();
    let root = env.issuer_root();
    let conf = env.dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let file = conf.join("domains");
    std::fs::write(&file, "# managed by the test\nl1.example.test\n").unwrap();
    let file_s = file.display().to_string();
    let vars = [("DOMAINS", ""), ("DOMAINS_FILE", file_s.as_str())];
    let served = |n: &str| env.served_and_valid(n, &root).is_some();

    let mut daemon = env.start_daemon_with("", &vars);
    wait_until("l1 served", Duration::from_secs(30), || {
        daemon.assert_running();
        served("l1.example.test")
    });

    // Adding a certificate: issued and served, no restart.
    write_by_rename(
        &file,
        "l1.example.test\nl2.example.test, www.l2.example.test\n",
    );
    wait_until("l2 served after the edit", Duration::from_secs(30), || {
        daemon.assert_running();
        served("l2.example.test") && served("www.l2.example.test")
    });
    assert_eq!(env.pebble_new_orders(), 2);

    // An invalid edit is refused, naming the line; the running configuration stays.
    write_by_rename(
        &file,
        "l1.example.test\n*.bad.example.test\nl2.example.test,www.l2.example.test\n",
    );
    wait_log(
        &mut daemon,
        "DOMAINS_FILE line 2: \"*.bad.example.test\" is a wildcard",
    );
    assert!(daemon.log_text().contains("configuration change refused"));
    assert_eq!(env.pebble_new_orders(), 2);
    assert!(served("l1.example.test") && served("l2.example.test"));

    // Removing a certificate stops renewing it; without PRUNE its file and HAProxy entry stay.
    write_by_rename(&file, "l2.example.test,www.l2.example.test\n");
    wait_log(&mut daemon, "removed from the configuration");
    assert!(served("l1.example.test"), "kept by default");
    assert!(env.certs_dir.join("l1.example.test.pem").exists());

    // SIGHUP re-reads the configuration and the daemon keeps running.
    daemon.hup();
    wait_log(&mut daemon, "SIGHUP: reading the configuration again");
    std::thread::sleep(Duration::from_millis(300));
    daemon.assert_running();
    assert!(daemon.terminate().success());

    // With PRUNE, what is no longer configured is removed from HAProxy, disk and store.
    let vars = [
        ("DOMAINS", ""),
        ("DOMAINS_FILE", file_s.as_str()),
        ("PRUNE", "true"),
    ];
    let mut daemon = env.start_daemon_with("", &vars);
    let l1 = env.certs_dir.join("l1.example.test.pem");
    let stored = || -> Vec<String> {
        let out = env.cli("", &["state", "dump"]);
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        dump["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The file and HAProxy's entry go first, then the record (a prune that fails in HAProxy
    // keeps the record): wait for all three.
    wait_until("l1 pruned", Duration::from_secs(30), || {
        daemon.assert_running();
        !l1.exists()
            && !env
                .runtime(&format!("show ssl cert {}", l1.display()))
                .contains("Filename:")
            && stored() == ["l2.example.test"]
    });
    assert!(
        !served("l1.example.test"),
        "HAProxy no longer serves the pruned certificate"
    );
    assert!(served("l2.example.test"));
    assert_eq!(env.haproxy_reloads(), 0);
}
