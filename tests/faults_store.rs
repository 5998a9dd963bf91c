//! A damaged store, for real (issue 12, item 4), against real pebble and HAProxy: certificates
//! are issued, the daemon is stopped, the store's files are really damaged (the sled directory
//! emptied, its log truncated or half overwritten, DATA_DIR wiped), and the daemon must refuse
//! to start (exit 4, the damage named) with pebble asked for nothing; `rebuild` then recreates
//! the records from the certificate files and the daemon serves them without a new order.
//! Also: `backup` of the running daemon and `restore`, a missing key that `retry` resolves with a
//! new key, and the modes of every file the service creates under a permissive umask.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{text, wait_until, Env, BIN};

const DOMAINS: &str = "d1.example.test;d2.example.test,www.d2.example.test;d3.example.test";
const IDS: [&str; 3] = ["d1.example.test", "d2.example.test", "d3.example.test"];

/// The `state dump` certificates, by the CLI (daemon or store); `None` while a starting daemon
/// holds the store before its admin socket answers.
fn try_dump(env: &Env, domains: &str) -> Option<Vec<serde_json::Value>> {
    let out = env.cli(domains, &["state", "dump"]);
    if !out.status.success() && text(&out).contains("has not answered") {
        return None;
    }
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["certificates"].as_array().unwrap().clone())
}

fn dump(env: &Env, domains: &str) -> Vec<serde_json::Value> {
    try_dump(env, domains).expect("the store is readable")
}

/// Waits until the daemon answers its health check, then until every certificate of `ids` is
/// installed (HAProxy confirmed its serial).
fn wait_installed(env: &Env, domains: &str, ids: &[&str], daemon: &mut common::Daemon) {
    wait_until("the daemon healthy", Duration::from_secs(30), || {
        daemon.assert_running();
        env.cli(domains, &["healthcheck"]).status.success()
    });
    wait_until(
        "every certificate installed",
        Duration::from_secs(90),
        || {
            daemon.assert_running();
            let Some(certs) = try_dump(env, domains) else {
                return false;
            };
            ids.iter().all(|id| {
                certs
                    .iter()
                    .any(|c| c["id"] == *id && c["installed"] == true)
            })
        },
    );
}

/// Runs `haproxy-acme run` and expects it to exit by itself within 30 s: (exit code, log).
fn run_refused(env: &Env, domains: &str) -> (Option<i32>, String) {
    let log = env.dir.path().join(format!(
        "refused-{}.log",
        std::fs::read_dir(env.dir.path()).unwrap().count()
    ));
    let mut child = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.daemon_env(domains))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The length of a file up to its last non-zero byte (sled pads its log with zeros).
fn used_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

type Damage = fn(&Path);

/// Each damage, done to DATA_DIR: (name, what it does). `old-store` beside DATA_DIR is a copy
/// of its sled directory from before the last renewal.
const DAMAGES: [(&str, Damage); 5] = [
    ("the sled directory emptied", |data| {
        let store = data.join("store");
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::create_dir(&store).unwrap();
    }),
    ("the sled log truncated", |data| {
        let db = data.join("store/db");
        let used = used_len(&db);
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(used / 2).unwrap();
    }),
    ("half of the sled log overwritten", |data| {
        let db = data.join("store/db");
        let used = used_len(&db);
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.write_all_at(&vec![0xA5; (used - used / 2) as usize], used / 2)
            .unwrap();
    }),
    ("DATA_DIR wiped, marker and all", |data| {
        std::fs::remove_dir_all(data).unwrap();
    }),
    (
        "the sled directory replaced by a copy from before a renewal",
        |data| {
            std::fs::remove_dir_all(data.join("store")).unwrap();
            copy_dir(
                &data.parent().unwrap().join("old-store"),
                &data.join("store"),
            );
        },
    ),
];

#[test]
fn a_damaged_store_is_refused_and_rebuilt_from_the_certificate_files_without_a_new_order() {
    let started = Instant::now();
    let env = Env::start();
    let root = env.issuer_root();
    let mut daemon = env.start_daemon(DOMAINS);
    wait_installed(&env, DOMAINS, &IDS, &mut daemon);
    let issued_at = started.elapsed();
    assert!(daemon.terminate().success());
    // A copy of the store as it is now, then one certificate renewed.
    copy_dir(
        &env.data_dir.join("store"),
        &env.dir.path().join("old-store"),
    );
    let serial = |id: &str| {
        dump(&env, DOMAINS)
            .into_iter()
            .find(|c| c["id"] == id)
            .map(|c| c["serial"].as_str().unwrap().to_string())
    };
    let first = serial(IDS[0]);
    let mut daemon = env.start_daemon(DOMAINS);
    wait_installed(&env, DOMAINS, &IDS, &mut daemon);
    let out = env.cli(DOMAINS, &["renew", "--force", IDS[0]]);
    assert!(out.status.success(), "{}", text(&out));
    wait_installed(&env, DOMAINS, &IDS, &mut daemon);
    wait_until("renewed", Duration::from_secs(60), || {
        serial(IDS[0]) != first && dump(&env, DOMAINS)[0]["installed"] == true
    });
    assert!(daemon.terminate().success());
    let serials: Vec<String> = dump(&env, DOMAINS)
        .iter()
        .map(|c| c["serial"].as_str().unwrap().to_string())
        .collect();
    let orders = env.pebble_new_orders();
    let issued = env.issued().len();
    assert_eq!((orders, issued), (4, 4));
    let pristine = env.dir.path().join("pristine-data");
    copy_dir(&env.data_dir, &pristine);

    for (what, damage) in DAMAGES {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(&env.data_dir);
        copy_dir(&pristine, &env.data_dir);
        damage(&env.data_dir);

        let (code, log) = run_refused(&env, DOMAINS);
        assert_eq!(
            code,
            Some(4),
            "{what}: the daemon must refuse; its log:\n{log}"
        );
        assert!(
            log.contains("is damaged:") && log.contains("haproxy-acme rebuild"),
            "{what}: {log}"
        );
        // The damage is named: what the marker expected, what sled said, or which files.
        let by = if log.contains("writes were lost") {
            "the marker"
        } else if log.contains("sled cannot read it") {
            "sled itself"
        } else if log.contains("holds certificates the store has no issued record of")
            && IDS.iter().all(|id| log.contains(&format!("{id}.pem")))
        {
            "the certificate directory check"
        } else {
            panic!("{what}: the damage is not named: {log}")
        };
        let refused_in = t.elapsed();
        // Again: a restart policy cannot get past it.
        let (again, log2) = run_refused(&env, DOMAINS);
        assert_eq!(again, Some(4), "{what}: refused again; its log:\n{log2}");
        if what != "DATA_DIR wiped, marker and all" {
            // `status` on the damaged store says the same (exit 4), and changes nothing.
            let st = env.cli(DOMAINS, &["status"]);
            assert_eq!(st.status.code(), Some(4), "{what}: {}", text(&st));
        }

        let out = env.cli(DOMAINS, &["rebuild"]);
        assert!(out.status.success(), "{what}: {}", text(&out));
        let report = text(&out);
        assert!(
            report.contains("3 of 3 certificates imported"),
            "{what}: {report}"
        );
        if what != "DATA_DIR wiped, marker and all" {
            let aside: Vec<_> = std::fs::read_dir(&env.data_dir)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
                .collect();
            assert_eq!(aside.len(), 1, "{what}: moved aside once: {report}");
            assert!(
                aside[0].path().join("store").is_dir(),
                "{what}: the damaged store is kept"
            );
        }

        let mut daemon = env.start_daemon(DOMAINS);
        wait_installed(&env, DOMAINS, &IDS, &mut daemon);
        for id in IDS {
            assert!(
                env.served_and_valid(id, &root).is_some(),
                "{what}: {id} served"
            );
        }
        let now: Vec<String> = dump(&env, DOMAINS)
            .iter()
            .map(|c| c["serial"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(now, serials, "{what}: the same certificates");
        assert_eq!(
            (env.pebble_new_orders(), env.issued().len()),
            (orders, issued),
            "{what}: nothing ordered, nothing issued"
        );
        assert!(daemon.terminate().success());
        eprintln!(
            "FAULTS_STORE {what}: refused (found by {by}) in {} ms; rebuilt and served again in \
             {} ms; pebble orders {} (unchanged), certificates {} (unchanged)",
            refused_in.as_millis(),
            (t.elapsed() - refused_in).as_millis(),
            env.pebble_new_orders(),
            env.issued().len()
        );
    }
    eprintln!(
        "FAULTS_STORE: 3 certificates issued in {} ms, the whole test {} ms",
        issued_at.as_millis(),
        started.elapsed().as_millis()
    );
}

#[test]
fn a_backup_of_the_running_daemon_restores_the_same_records_and_keys() {
    const TWO: &str = "b1.example.test;b2.example.test";
    let env = Env::start();
    let root = env.issuer_root();
    let admin_listen = format!("127.0.0.1:{}", common::free_port());
    let mut daemon = env.start_daemon_with(TWO, &[("ADMIN_LISTEN", admin_listen.as_str())]);
    wait_installed(
        &env,
        TWO,
        &["b1.example.test", "b2.example.test"],
        &mut daemon,
    );
    // Keys never leave through the read-only TCP endpoint.
    let tcp = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{admin_listen}/backup"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tcp.stdout), "403");
    let backup = env.dir.path().join("backups/store.snapshot");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let t = Instant::now();
    let out = env.cli(TWO, &["backup", backup.to_str().unwrap()]);
    let backup_ms = t.elapsed().as_millis();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("from the running daemon")
            && text(&out).contains("2 certificate records"),
        "{}",
        text(&out)
    );
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A restore while the daemon runs is refused.
    let out = env.cli(TWO, &["restore", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("stop it first"), "{}", text(&out));
    assert!(daemon.terminate().success());

    let before = dump(&env, TWO);
    let keys = |env: &Env| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = haproxy_acme::store::sled::SledStore::open(&env.data_dir).unwrap();
        use haproxy_acme::store::Store;
        let certs: Vec<_> = ["b1.example.test", "b2.example.test"]
            .iter()
            .map(|id| rt.block_on(store.certificate(id)).unwrap().unwrap())
            .collect();
        let account = rt.block_on(store.account(&env.directory_url())).unwrap();
        (certs, account)
    };
    let keys_before = keys(&env);
    assert!(keys_before.1.is_some(), "an ACME account is stored");
    // sled's threads let go of the store's lock a moment after it is dropped.
    let unlocked = || !haproxy_acme::store::sled::SledStore::in_use(&env.data_dir).unwrap();
    wait_until("the store unlocked", Duration::from_secs(5), unlocked);

    // Damaged and foreign snapshots are refused, and nothing changes.
    let bytes = std::fs::read(&backup).unwrap();
    let cut = env.dir.path().join("cut.snapshot");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let foreign = env.certs_dir.join("b1.example.test.pem");
    for (file, why) in [
        (&cut, "truncated"),
        (&foreign, "not a haproxy-acme snapshot"),
    ] {
        let out = env.cli(TWO, &["restore", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(why) && text(&out).contains("Nothing was changed"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(dump(&env, TWO), before, "refusals change nothing");

    // The store is lost: emptied. Restore brings it back; the damaged one is moved aside.
    DAMAGES[0].1(&env.data_dir);
    let t = Instant::now();
    let out = env.cli(TWO, &["restore", backup.to_str().unwrap()]);
    let restore_ms = t.elapsed().as_millis();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the previous store is in"),
        "{}",
        text(&out)
    );
    let replaced: Vec<_> = std::fs::read_dir(&env.data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("replaced-"))
        .collect();
    assert_eq!(replaced.len(), 1);
    // Unmarked until a daemon start has checked it against CERTS_DIR.
    let marker = env.data_dir.join("store-marker.json");
    assert!(!marker.exists());
    assert_eq!(keys(&env), keys_before, "the same chains, keys and account");
    wait_until("the store unlocked", Duration::from_secs(5), unlocked);
    let after = dump(&env, TWO);
    let strip = |certs: &[serde_json::Value]| {
        certs
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.as_object_mut().unwrap().remove("updated_at");
                c
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&after), strip(&before), "the same records");

    let orders = env.pebble_new_orders();
    let mut daemon = env.start_daemon(TWO);
    wait_installed(
        &env,
        TWO,
        &["b1.example.test", "b2.example.test"],
        &mut daemon,
    );
    assert!(env.served_and_valid("b2.example.test", &root).is_some());
    assert!(marker.exists(), "sealed by the daemon");
    // The daemon is up and idle; the account was restored, so no new one was needed either.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(env.pebble_new_orders(), orders, "nothing ordered");
    let accounts = env
        .pebble_log()
        .lines()
        .filter(|l| l.contains("POST /sign-me-up"))
        .count();
    assert_eq!(accounts, 1, "the restored account, no second one");
    assert!(daemon.terminate().success());
    eprintln!(
        "FAULTS_STORE backup of the running daemon: {backup_ms} ms, {} bytes; restore: \
         {restore_ms} ms",
        bytes.len()
    );
}

/// Edits a stored record and the keys tree with sled itself, as damage would (the daemon is
/// stopped): `edit` gets the record's JSON; `drop_key` names a key to remove.
fn damage_record(env: &Env, id: &str, drop_key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let db = sled::open(env.data_dir.join("store")).unwrap();
    let records = db.open_tree("records").unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&records.get(id).unwrap().unwrap()).unwrap();
    edit(&mut v);
    records.insert(id, serde_json::to_vec(&v).unwrap()).unwrap();
    db.open_tree("keys").unwrap().remove(drop_key).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_missing_key_is_a_visible_failure_that_retry_resolves_with_a_new_key() {
    const K: &str = "k.example.test";
    let env = Env::start();
    let root = env.issuer_root();
    let mut daemon = env.start_daemon(K);
    wait_installed(&env, K, &[K], &mut daemon);
    assert!(daemon.terminate().success());
    let serial1 = dump(&env, K)[0]["serial"].as_str().unwrap().to_string();
    let file = env.certs_dir.join(format!("{K}.pem"));
    let key_of = |pem: &str| pem[pem.find("-----BEGIN PRIVATE KEY").unwrap()..].to_string();
    let key1 = key_of(&std::fs::read_to_string(&file).unwrap());

    // 1. The stored certificate's key is gone, and it is not installed yet.
    damage_record(&env, K, &format!("current/{K}"), |r| {
        r["installed_fingerprint"] = serde_json::Value::Null
    });
    let orders = env.pebble_new_orders();
    let mut daemon = env.start_daemon(K);
    let t = Instant::now();
    wait_until("the permanent failure", Duration::from_secs(30), || {
        daemon.assert_running();
        let Some(c) = try_dump(&env, K) else {
            return false;
        };
        let c = &c[0];
        c["last_error"]["kind"] == "permanent" && c["last_error"]["step"] == "install"
    });
    let visible_ms = t.elapsed().as_millis();
    let c = &dump(&env, K)[0];
    assert!(
        c["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("is missing from the store")
            && c["last_error"]["next_attempt_at"].is_null(),
        "{c}"
    );
    let status = text(&env.cli(K, &["status"]));
    assert!(status.contains("missing from the store"), "{status}");
    // Not a loop: nothing more happens on its own.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        // (the alert step quotes the failure once more, as a WARN line)
        daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("is missing from the store"))
            .count(),
        1,
        "{}",
        daemon.log_text()
    );
    assert_eq!(env.pebble_new_orders(), orders);
    // The old file still serves meanwhile.
    assert!(env.served_and_valid(K, &root).is_some());

    let out = env.cli(K, &["retry", K]);
    assert!(out.status.success(), "{}", text(&out));
    wait_installed(&env, K, &[K], &mut daemon);
    let serial2 = dump(&env, K)[0]["serial"].as_str().unwrap().to_string();
    assert_ne!(serial2, serial1);
    assert_eq!(env.pebble_new_orders(), orders + 1, "one new order");
    let key2 = key_of(&std::fs::read_to_string(&file).unwrap());
    assert_ne!(key2, key1, "a new key");
    assert!(env.served_and_valid(K, &root).is_some());
    let log = daemon.log_text();
    assert!(daemon.terminate().success());

    // 2. The order's key is gone after finalize: the order is valid at the CA, its certificate
    // can never be stored. Rewind the record to that order (its URL from the log).
    let url = log
        .lines()
        .rev()
        .filter(|l| l.contains("order created"))
        .filter_map(|l| l.split("order=").nth(1))
        .map(|u| u.split_whitespace().next().unwrap().to_string())
        .next()
        .expect("an order URL in the log");
    damage_record(&env, K, &format!("pending/{K}"), |r| {
        r["phase"] = "validating".into();
        r["order"] = serde_json::json!({
            "url": url, "created_at": 1, "challenges": [], "key_generated": true
        });
    });
    let orders = env.pebble_new_orders();
    let mut daemon = env.start_daemon(K);
    wait_until("the permanent failure", Duration::from_secs(30), || {
        daemon.assert_running();
        let Some(c) = try_dump(&env, K) else {
            return false;
        };
        let c = &c[0];
        c["last_error"]["kind"] == "permanent" && c["last_error"]["step"] == "finalize"
    });
    let c = &dump(&env, K)[0];
    assert!(
        c["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("of order"),
        "{c}"
    );
    assert_eq!(
        c["order_url"],
        serde_json::Value::Null,
        "the order is dropped"
    );
    assert_eq!(c["installed"], true, "the served certificate stays");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.pebble_new_orders(), orders, "nothing on its own");
    let out = env.cli(K, &["retry", K]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("a new certificate", Duration::from_secs(60), || {
        daemon.assert_running();
        let Some(c) = try_dump(&env, K) else {
            return false;
        };
        let c = &c[0];
        c["installed"] == true && c["serial"] != serial2.as_str() && c["last_error"].is_null()
    });
    assert_eq!(env.pebble_new_orders(), orders + 1, "one new order");
    assert!(daemon.terminate().success());
    eprintln!("FAULTS_STORE missing key: visible as a permanent failure in {visible_ms} ms");
}

#[test]
fn every_file_the_service_creates_is_private_whatever_the_umask() {
    const P: &str = "p.example.test";
    let env = Env::start();
    let hook_umask = env.dir.path().join("hook-umask");
    let hook = format!("umask > {}", hook_umask.display());
    // The daemon started from a shell whose umask is 022 (files 0644 unless told otherwise).
    let log = env.dir.path().join("daemon-umask.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; exec {BIN} run"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.daemon_env(P))
        .env("DEPLOY_HOOK", &hook)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(
        "issued, installed, hook run",
        Duration::from_secs(90),
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            hook_umask.exists()
        },
    );
    // The process mask itself, for what sled creates later (blobs, snapshot files).
    let umask = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:").map(|m| m.trim().to_string()));
    assert_eq!(umask.as_deref(), Some("0077"));
    let backup = env.dir.path().join("p.snapshot");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; exec {BIN} backup {}", backup.display()))
        .env_clear()
        .envs(env.daemon_env(P))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());

    let mut seen = Vec::new();
    let mut stack = vec![env.data_dir.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        seen.push(p);
    }
    for e in std::fs::read_dir(&env.certs_dir).unwrap() {
        let p = e.unwrap().path();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
        seen.push(p);
    }
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup");
    // sled's own files and the marker are among them.
    for must in [
        "store/db",
        "store/conf",
        "store-marker.json",
        "live/p.example.test/privkey.pem",
    ] {
        assert!(
            seen.contains(&env.data_dir.join(must)),
            "{must} not found in {seen:?}"
        );
    }
    // The hook, the operator's program, runs with the umask the daemon was started with.
    assert_eq!(std::fs::read_to_string(&hook_umask).unwrap().trim(), "0022");
    eprintln!(
        "FAULTS_STORE modes: {} files and directories checked",
        seen.len()
    );
}
