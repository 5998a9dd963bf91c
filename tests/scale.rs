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
    seed(&data, records);
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

/// `status` of more than 100 certificates is a summary, the same from the store (no daemon) and
/// from a running daemon's view; `status --all` is the table of every one; `status --check`
/// from the view is the report from the records.
#[test]
fn status_of_more_than_a_hundred_certificates_is_a_summary_offline_and_from_the_daemon() {
    use haproxy_acme_state::machine::FailureReport;
    use haproxy_acme_state::{apply, Event, FailureKind, Step};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let directory = "https://127.0.0.1:9/dir";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (mut records, names) = common::issued_records(150, directory, now);
    // Every second one of the first 120 failing for good: 60 need attention.
    for r in records.iter_mut().step_by(2).take(60) {
        let report = FailureReport {
            step: Step::Order,
            kind: FailureKind::Permanent,
            error: "rejectedIdentifier".into(),
            retry_after: None,
            jitter_permille: 0,
            order_dead: false,
        };
        *r = apply(r, Event::Failed(report), now);
    }
    seed(&data, records);
    let domains_file = dir.path().join("domains");
    std::fs::write(&domains_file, names).unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("DATA_DIR", &data)
            .output()
            .unwrap()
    };
    // What does not depend on the second it is read: the lines that are not table rows, and
    // the ids of the rows.
    let shape = |out: &std::process::Output| -> Vec<String> {
        assert!(out.status.success(), "{out:?}");
        common::text(out)
            .lines()
            .map(|l| match l.split_once(".example.test") {
                Some((id, _)) => id.to_string(),
                None => l.to_string(),
            })
            .collect()
    };

    let offline = cli(&["status"]);
    assert!(offline.status.success(), "{offline:?}");
    if std::env::var_os("SCALE_VERBOSE").is_some() {
        eprintln!("{}", common::text(&offline));
    }
    let summary = shape(&offline);
    assert_eq!(
        summary[0],
        "150 certificates: 0 pending, 0 validating, 150 issued, 0 expiring"
    );
    assert_eq!(summary[1], "60 need attention (60 failing):");
    assert!(summary[2].starts_with("ID "));
    assert_eq!(summary[3], "s0");
    assert_eq!(
        summary[53],
        "… and 10 more need attention: `haproxy-acme status --all`"
    );
    assert_eq!(summary[55], "Next renewals:");
    assert_eq!(
        summary.last().unwrap(),
        "150 certificates: `haproxy-acme status --all` for every one, `status ID` for one"
    );
    let every = cli(&["status", "--all"]);
    assert!(every.status.success(), "{every:?}");
    assert_eq!(common::text(&every).lines().count(), 151);
    assert_eq!(
        cli(&["status", "--all", "s1.example.test"]).status.code(),
        Some(2)
    );
    let check = cli(&["status", "--check"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    assert!(common::text(&check).starts_with(
        "HAPROXY-ACME WARNING - 60 of 150 certificates need attention: s0.example.test, "
    ));

    let log = dir.path().join("daemon.log");
    let mut child = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("DOMAINS_FILE", &domains_file)
        .env("ACME_DIRECTORY", directory)
        .env("DATA_DIR", &data)
        .env("CERTS_DIR", dir.path().join("certs"))
        .env("RESPONDER_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("the daemon is healthy", Duration::from_secs(60), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        cli(&["healthcheck"]).status.success()
    });
    let daemon = shape(&cli(&["status"]));
    assert_eq!(daemon[..summary.len()], summary[..], "the daemon's screen");
    assert_eq!(
        common::text(&cli(&["status", "--all"])).lines().count(),
        151
    );
    let from_view = cli(&["status", "--check"]);
    assert_eq!(from_view.status.code(), Some(1));
    assert_eq!(common::text(&from_view), common::text(&check));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// Writes `records` into a new sled store in `data`, closed again (the daemon takes its lock).
fn seed(data: &std::path::Path, records: Vec<haproxy_acme_state::Record>) {
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(SledStore::open(data).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.put_all(records)).unwrap();
}
