//! Scale: 100,000 certificate records in the store (written through the store's own API, shaped
//! like real issued certificates). The daemon must start, schedule them all without working on
//! any (nothing is due), stay idle (no CA traffic), and serve `state dump`. The figures
//! (start-up, RSS, dump time) are printed for the notes and BENCHMARKS.md, not asserted: speed is
//! measured, not asserted. `SCALE_RECORDS` changes the count.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, BIN};
use haproxy_acme::store::sled::SledStore;
use haproxy_acme::store::Store;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_thousand_issued_certificates_start_fast_and_stay_idle() {
    let n: usize = std::env::var("SCALE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let certs = dir.path().join("certs");
    // Nothing listens there: any ACME request would fail and be logged.
    let directory = "https://127.0.0.1:9/dir";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let seeding = Instant::now();
    let (records, names) = common::issued_records(n, directory, now);
    {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(SledStore::open(&data).unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(store.put_all(records)).unwrap();
    }
    let domains_file = dir.path().join("domains");
    std::fs::write(&domains_file, names).unwrap();
    eprintln!(
        "SCALE: seeded {n} records in {} ms",
        seeding.elapsed().as_millis()
    );

    let log = dir.path().join("daemon.log");
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("DOMAINS_FILE", &domains_file)
        .env("ACME_DIRECTORY", directory)
        .env("DATA_DIR", &data)
        .env("CERTS_DIR", &certs)
        .env("RESPONDER_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let healthy = || {
        Command::new(BIN)
            .arg("healthcheck")
            .env_clear()
            .env("DATA_DIR", &data)
            .output()
            .unwrap()
            .status
            .success()
    };
    wait_until("the daemon is healthy", Duration::from_secs(120), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            log_text()
        );
        healthy()
    });
    let startup = started.elapsed();
    wait_until("the reconciler is ready", Duration::from_secs(60), || {
        log_text().contains("reconciler ready")
    });
    let ready_line = log_text()
        .lines()
        .find(|l| l.contains("reconciler ready"))
        .unwrap()
        .to_string();
    assert!(
        ready_line.contains(&format!("certificates={n}")),
        "{ready_line}"
    );
    assert!(
        ready_line.contains("due_now=0"),
        "nothing is due: {ready_line}"
    );

    // Idle: no certificate is worked on, the CA is never contacted.
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(child.id());
    let cpu_before = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let cpu_after = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    let ticks = |stat: &str| -> u64 {
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let idle_ticks = ticks(&cpu_after) - ticks(&cpu_before);
    let text = log_text();
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "an idle daemon does nothing:\n{}",
        &text[..text.len().min(4000)]
    );

    let dumping = Instant::now();
    let out = Command::new(BIN)
        .args(["state", "dump"])
        .env_clear()
        .env("DATA_DIR", &data)
        .output()
        .unwrap();
    let dump_time = dumping.elapsed();
    assert!(out.status.success());
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dump["certificates"].as_array().unwrap().len(), n);

    if std::env::var_os("SCALE_VERBOSE").is_some() {
        eprintln!("{}", log_text());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    eprintln!(
        "SCALE: {n} records: start to healthy {} ms; {ready_line}; RSS {} MiB; CPU while idle 3 s: {idle_ticks} ticks; \
         state dump {} ms ({} MiB of JSON)",
        startup.as_millis(),
        rss / 1024,
        dump_time.as_millis(),
        out.stdout.len() / (1024 * 1024)
    );
}
