//! Faults the daemon must wait out and heal from without a restart, broken for real: DATA_DIR and
//! CERTS_DIR on real tmpfs mounts filled until ENOSPC (needs root, as the test machines run),
//! HAProxy's runtime API gone (HAProxy killed; its socket unlinked), the CA unreachable (a TCP
//! relay in front of pebble, cut). While each lasts, `/healthz` (store, certificate directory),
//! `status` ("Waiting for:") and the dump (`waiting_for`) say so, although a full disk cannot
//! record its own error; once it is over, the work completes in the same process, with no
//! second certificate and no damaged file. Times to recover are printed as `FAULTS-DISK:` lines.

mod common;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;
use common::{free_port, text, wait_until, Env};
use haproxy_acme::store::sled::SledStore;
use haproxy_acme::store::{Change, Store};
use haproxy_acme_state::{KeyType, Record};

/// The serial HAProxy serves for certificate `id` (from its runtime API).
fn served_serial(env: &Env, id: &str) -> Option<String> {
    let file = env.certs_dir.join(format!("{id}.pem"));
    env.runtime(&format!("show ssl cert {}", file.display()))
        .lines()
        .find_map(|l| l.strip_prefix("Serial:"))
        .map(|s| s.trim().to_string())
}

/// Every certificate file is whole: its key belongs to its certificate, no temporary file left.
fn assert_files_whole(dir: &Path, ids: &[&str]) {
    for id in ids {
        let file = dir.join(format!("{id}.pem"));
        common::assert_key_matches_certificate(&file);
    }
    let temps: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

/// How many certificates pebble issued for exactly these names.
fn issued_for(env: &Env, names: &[&str]) -> usize {
    let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    names.sort();
    env.issued().iter().filter(|c| c.names == names).count()
}

/// The fault made no second certificate for `id`: pebble issued it twice (the first certificate
/// and its renewal). With renewal information (pebble 2.10, whose window for a certificate of
/// `validity_secs` under two days is its whole lifetime) the renewal may itself be renewed at
/// any moment, so there may be more, each the renewal of the one before it (`Issued::renews`).
fn assert_one_renewal(env: &Env, id: &str, validity_secs: i64, what: &str) {
    let n = issued_for(env, &[id]);
    if env.offers_renewal_info() {
        assert!(n >= 2, "{id}: {what}: {n} certificates");
        let duplicates = common::duplicate_issuances(&env.issued(), validity_secs, true);
        assert!(
            duplicates.is_empty(),
            "{id}: {what}: {}",
            duplicates.join("\n")
        );
    } else {
        assert_eq!(n, 2, "{id}: {what}");
    }
}

/// The dump's `waiting_for` parts.
fn waiting_parts(env: &Env, domains: &str, ov: &[(&str, &str)]) -> Vec<String> {
    let out = env.cli_with(domains, ov, &["state", "dump"]);
    assert!(out.status.success(), "state dump: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["waiting_for"]
        .as_array()
        .expect("the dump has waiting_for")
        .iter()
        .map(|w| w["part"].as_str().unwrap().to_string())
        .collect()
}

fn status(env: &Env, domains: &str, ov: &[(&str, &str)]) -> String {
    let out = env.cli_with(domains, ov, &["status"]);
    assert!(out.status.success(), "status: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `status`, or nothing while the daemon's admin socket is not up yet.
fn status_soon(env: &Env, domains: &str, ov: &[(&str, &str)]) -> String {
    let out = env.cli_with(domains, ov, &["status"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_takes_writes_again_once_the_disk_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 8);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&disk.path.join("data")).unwrap());
    let record = |i: usize, at: i64| {
        Record::new(
            vec![format!("s{}.example.test", i % 20)],
            KeyType::EcdsaP256,
            at,
        )
    };
    store
        .put_all((0..20).map(|i| record(i, 0)).collect())
        .await
        .unwrap();
    let filler = disk.fill();
    // Writes until one fails; every one acknowledged before must survive.
    let mut acked = std::collections::BTreeMap::new();
    let mut failed = None;
    for i in 0..100_000 {
        let r = record(i, i as i64 + 1);
        let put = r.clone();
        match store.update(&r.id, move |_| (Change::Put(put), ())).await {
            Ok(()) => {
                acked.insert(r.id.clone(), r);
            }
            Err(e) => {
                failed = Some((r, e));
                break;
            }
        }
    }
    let (lost, e) = failed.expect("a write fails on a full disk");
    let e = e.to_string();
    assert!(
        e.contains("No space left on device") && e.contains("is the disk full?"),
        "{e}"
    );
    // While the disk is full: reads are served, writes fail at once with the same reason.
    assert_eq!(store.records().await.unwrap().len(), 20);
    let t = Instant::now();
    let again = store.probe_write(1).await.unwrap_err().to_string();
    assert!(again.contains("No space left on device"), "{again}");
    assert!(t.elapsed() < Duration::from_millis(500), "refused at once");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        store.probe_write(2).await.is_err(),
        "a reopen is tried, and fails while the disk is still full"
    );

    let freed = filler.free();
    let mut tries = 0;
    while store.probe_write(3).await.is_err() {
        tries += 1;
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "not writable 10 s after"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = ms(freed);
    // Nothing acknowledged was lost; the failed write is there or not, whole either way.
    let stored = store.records().await.unwrap();
    assert_eq!(stored.len(), 20);
    for r in &stored {
        let want = acked.get(&r.id);
        assert!(
            Some(r) == want
                || (r.id == lost.id && *r == lost)
                || (want.is_none() && r.created_at == 0),
            "{}: stored {r:?}, acknowledged {want:?}",
            r.id
        );
    }
    // And it keeps taking writes.
    let last = record(7, 999_999);
    let put = last.clone();
    store
        .update(&last.id, move |_| (Change::Put(put), ()))
        .await
        .unwrap();
    assert_eq!(store.get(&last.id).await.unwrap(), Some(last));
    eprintln!(
        "FAULTS-DISK: store on a full 8 MiB tmpfs: {} writes acknowledged, then ENOSPC; writable again {recovered} ms after the space was freed ({tries} refused probes meanwhile)",
        acked.len()
    );
}

/// 30-second certificates: renewal is due after 15 s.
const STORE_DOMAINS: &str = "a.example.test; b.example.test";

#[test]
fn a_full_disk_under_data_and_certs_dirs_heals_without_restart() {
    let env = Env::start_with(Some(30));
    let root = env.issuer_root();
    let mut disk = Tmpfs::mount(&env.dir.path().join("disk"), 64);
    // DATA_DIR and CERTS_DIR on the one small disk (CERTS_DIR where HAProxy reads it).
    disk.bind("certs", &env.certs_dir);
    let data = disk.path.join("data").display().to_string();
    let ov = [("DATA_DIR", data.as_str())];
    let ids = ["a.example.test", "b.example.test"];
    let mut daemon = env.start_daemon_with(STORE_DOMAINS, &ov);
    wait_until("both served", Duration::from_secs(60), || {
        daemon.assert_running();
        ids.iter().all(|n| env.served_and_valid(n, &root).is_some())
    });
    let before: Vec<Option<String>> = ids.iter().map(|id| served_serial(&env, id)).collect();

    let filler = disk.fill();
    // The renewals come due while the disk is full, and fail on the store.
    let full = Instant::now();
    wait_until(
        "a renewal failed on the full store",
        Duration::from_secs(40),
        || {
            daemon.assert_running();
            daemon.log_text().contains("store error")
        },
    );
    let health = env.cli_with(STORE_DOMAINS, &ov, &["healthcheck"]);
    let why = text(&health);
    assert!(
        !health.status.success(),
        "unhealthy while the disk is full: {why}"
    );
    assert!(
        why.contains("the store does not take writes")
            && why.contains("the certificate directory does not take writes")
            && why.contains("No space left on device"),
        "both are named: {why}"
    );
    let shown = status(&env, STORE_DOMAINS, &ov);
    assert!(
        shown.contains("Waiting for:")
            && shown.contains("the store (DATA_DIR)")
            && shown.contains("No space left on device")
            && shown.contains("a.example.test"),
        "status says what is wrong and still lists the certificates:\n{shown}"
    );
    eprintln!("FAULTS-DISK: while full, healthcheck: {why}status:\n{shown}");
    let parts = waiting_parts(&env, STORE_DOMAINS, &ov);
    assert!(
        parts.contains(&"store".into()) && parts.contains(&"certs_dir".into()),
        "{parts:?}"
    );
    // An operator's command cannot be recorded either, and says why.
    let renew = env.cli_with(STORE_DOMAINS, &ov, &["renew", "--force", "a.example.test"]);
    assert!(
        !renew.status.success() && text(&renew).contains("is the disk full?"),
        "{}",
        text(&renew)
    );
    let log = daemon.log_text();
    for line in log.lines().filter(|l| {
        l.contains("waiting for") || l.contains("store error") || l.contains("store write failed")
    }) {
        eprintln!("FAULTS-DISK: daemon log: {line}");
    }
    // The old certificates are still served meanwhile.
    for id in ids {
        assert!(
            env.served_and_valid(id, &root).is_some(),
            "{id} still served"
        );
    }
    let full_for = ms(full);

    let freed = filler.free();
    let pid = daemon.pid();
    wait_until(
        "both renewed and served after the space was freed",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            ids.iter().zip(&before).all(|(id, old)| {
                served_serial(&env, id).is_some_and(|s| Some(&s) != old.as_ref())
                    && env.served_and_valid(id, &root).is_some()
            })
        },
    );
    let renewed = ms(freed);
    // Counted at once: the renewed certificates' own renewal is 15 s away (without renewal
    // information).
    for id in ids {
        assert_one_renewal(&env, id, 30, "one certificate, one renewal");
    }
    wait_until("healthy again", Duration::from_secs(10), || {
        env.cli_with(STORE_DOMAINS, &ov, &["healthcheck"])
            .status
            .success()
    });
    let healthy = ms(freed);
    assert_eq!(daemon.pid(), pid, "the same process");
    daemon.assert_running();
    assert_files_whole(&env.certs_dir, &ids);
    assert_eq!(
        waiting_parts(&env, STORE_DOMAINS, &ov),
        Vec::<String>::new()
    );
    assert!(!status(&env, STORE_DOMAINS, &ov).contains("Waiting for"));
    eprintln!(
        "FAULTS-DISK: DATA_DIR+CERTS_DIR full for {full_for} ms (renewals failed on the store); after freeing: both renewed and served in {renewed} ms, healthy in {healthy} ms; pebble: {} orders, {} finalizes",
        env.pebble_new_orders(),
        env.pebble_finalizes()
    );
}

/// 60-second certificates: renewal is due after 30 s, and the next one only 30 s later.
#[test]
fn a_full_certificate_directory_keeps_the_old_file_and_installs_once_freed() {
    let env = Env::start_with(Some(60));
    let root = env.issuer_root();
    // CERTS_DIR alone on a small disk; the store is fine.
    let disk = Tmpfs::mount(&env.certs_dir, 4);
    let id = "c.example.test";
    let mut daemon = env.start_daemon(id);
    wait_until("served", Duration::from_secs(60), || {
        daemon.assert_running();
        env.served_and_valid(id, &root).is_some()
    });
    let old_serial = served_serial(&env, id).unwrap();
    let file = env.certs_dir.join(format!("{id}.pem"));
    let old_file = std::fs::read(&file).unwrap();

    let filler = disk.fill();
    wait_until(
        "the renewed certificate's install failed on the full directory",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            status(&env, id, &[]).contains("the certificate directory (CERTS_DIR)")
        },
    );
    let shown = status(&env, id, &[]);
    assert!(
        shown.contains("install retryable") && shown.contains("No space left on device"),
        "the certificate's own error too:\n{shown}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        old_file,
        "the old file is intact"
    );
    assert_eq!(
        served_serial(&env, id).unwrap(),
        old_serial,
        "and still served"
    );
    assert!(env.served_and_valid(id, &root).is_some());
    let health = env.cli(id, &["healthcheck"]);
    let why = text(&health);
    assert!(
        !health.status.success()
            && why.contains("the certificate directory does not take writes")
            && !why.contains("the store does not take writes"),
        "{why}"
    );
    assert_eq!(waiting_parts(&env, id, &[]), vec!["certs_dir".to_string()]);

    let freed = filler.free();
    wait_until(
        "the renewed certificate installed once freed",
        Duration::from_secs(40),
        || {
            daemon.assert_running();
            served_serial(&env, id).is_some_and(|s| s != old_serial)
        },
    );
    let installed = ms(freed);
    assert!(env.served_and_valid(id, &root).is_some());
    assert_one_renewal(
        &env,
        id,
        60,
        "the stored renewal was installed, not ordered again",
    );
    assert_files_whole(&env.certs_dir, &[id]);
    assert!(env.cli(id, &["healthcheck"]).status.success());
    assert_eq!(waiting_parts(&env, id, &[]), Vec::<String>::new());
    eprintln!(
        "FAULTS-DISK: CERTS_DIR full: the renewal was stored, its install failed; installed {installed} ms after the space was freed; pebble finalizes {}",
        env.pebble_finalizes()
    );
}

/// A TCP relay to a local port that can be cut (connections refused, open ones reset) and
/// restored on the same port: a CA that becomes unreachable and comes back.
struct Relay {
    port: u16,
    to: u16,
    running: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn new(to: u16) -> Relay {
        Relay {
            port: free_port(),
            to,
            running: None,
            conns: Arc::default(),
        }
    }

    fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (halt, conns, to) = (stop.clone(), self.conns.clone(), self.to);
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let mut c = conns.lock().unwrap();
                c.push(down.try_clone().unwrap());
                c.push(up.try_clone().unwrap());
                for (mut from, mut into) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        self.running = Some((stop, thread));
    }

    fn down(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            thread.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}

#[test]
fn haproxy_and_the_ca_unreachable_are_shown_while_awaited_and_clear_on_recovery() {
    let mut env = Env::start();
    let root = env.issuer_root();
    let id = "d.example.test";
    // The daemon reaches the runtime API through a link we can take away, and the CA through a
    // relay we can cut.
    let link = env.dir.path().join("runtime-link.sock");
    std::os::unix::fs::symlink(&env.runtime_sock, &link).unwrap();
    let mut relay = Relay::new(env.acme_port);
    let api = format!("unix:{}", link.display());
    let directory = format!("https://127.0.0.1:{}/dir", relay.port);
    let ov = [
        ("HAPROXY_RUNTIME_API", api.as_str()),
        ("ACME_DIRECTORY", directory.as_str()),
    ];

    // HAProxy down at start: the daemon waits for it, says so, and is healthy meanwhile.
    env.kill_haproxy();
    let mut daemon = env.start_daemon_with(id, &ov);
    wait_until("waiting for HAProxy shown", Duration::from_secs(20), || {
        daemon.assert_running();
        status_soon(&env, id, &ov).contains("HAProxy's runtime API")
    });
    let shown = status(&env, id, &ov);
    assert!(
        shown.contains("Waiting for:") && shown.contains(id),
        "{shown}"
    );
    assert_eq!(
        waiting_parts(&env, id, &ov),
        vec!["runtime_api".to_string()]
    );
    assert!(env.cli_with(id, &ov, &["healthcheck"]).status.success());

    // HAProxy back, the CA unreachable: the first CA call fails without an answer.
    let haproxy_back = Instant::now();
    env.start_haproxy();
    wait_until("waiting for the CA shown", Duration::from_secs(20), || {
        daemon.assert_running();
        waiting_parts(&env, id, &ov) == vec!["ca".to_string()]
    });
    let runtime_api_cleared = ms(haproxy_back);
    let shown = status(&env, id, &ov);
    assert!(
        shown.contains("the ACME CA") && (shown.contains("Connect") || shown.contains("refused")),
        "the CA's condition names the connection failure:\n{shown}"
    );
    assert!(env.cli_with(id, &ov, &["healthcheck"]).status.success());

    let ca_back = Instant::now();
    relay.up();
    wait_until(
        "issued once the CA answers",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            env.served_and_valid(id, &root).is_some()
        },
    );
    let issued = ms(ca_back);
    assert_eq!(waiting_parts(&env, id, &ov), Vec::<String>::new());

    // The runtime API goes away in operation: a renewal is stored, its install waits.
    let old_serial = served_serial(&env, id).unwrap();
    std::fs::remove_file(&link).unwrap();
    let renew = env.cli_with(id, &ov, &["renew", "--force", id]);
    assert!(renew.status.success(), "{}", text(&renew));
    wait_until(
        "waiting for HAProxy shown again",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            waiting_parts(&env, id, &ov) == vec!["runtime_api".to_string()]
        },
    );
    let shown = status(&env, id, &ov);
    assert!(
        shown.contains("HAProxy's runtime API") && shown.contains("unreachable"),
        "{shown}"
    );
    assert_eq!(
        served_serial(&env, id).unwrap(),
        old_serial,
        "the old one still served"
    );
    let api_back = Instant::now();
    std::os::unix::fs::symlink(&env.runtime_sock, &link).unwrap();
    wait_until("the renewal installed", Duration::from_secs(40), || {
        daemon.assert_running();
        served_serial(&env, id).is_some_and(|s| s != old_serial)
    });
    let installed = ms(api_back);
    assert!(env.served_and_valid(id, &root).is_some());
    assert_eq!(waiting_parts(&env, id, &ov), Vec::<String>::new());
    assert_eq!(
        issued_for(&env, &[id]),
        2,
        "one issuance, one forced renewal"
    );
    assert_files_whole(&env.certs_dir, &[id]);
    eprintln!(
        "FAULTS-DISK: HAProxy started -> runtime_api condition cleared in {runtime_api_cleared} ms; CA relay up -> issued and served in {issued} ms; runtime API link back -> renewal installed in {installed} ms; pebble orders {}",
        env.pebble_new_orders()
    );
}
