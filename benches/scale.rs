//! Issue 16's scale benchmark: the daemon with SCALE_N issued certificates (default 100000; a
//! list such as "100000,1000000" runs each), measured on what an operator does often: start-up
//! to healthy and to the end of the pass over every record, idle RSS and CPU, `/metrics`, `status` (summary, one certificate, every certificate),
//! `status --check`, `domains add`, a DOMAINS_FILE change of one line (SIGHUP), and `state dump`
//! (time and the peak RSS of the CLI and of the daemon), then a restart after a clean stop. No CA and no HAProxy are involved
//! (HAPROXY_RUNTIME_API unset): what is measured is the daemon's own cost per operation.
//!
//! `cargo bench --bench scale` (release build). Settings (environment): SCALE_N, SCALE_RUNS
//! (daemon starts per binary, default 3; each operation is sampled 5 times per start),
//! SCALE_BINS ("label=/path,label=/path": several builds alternately in one run, for
//! before/after; default this build's binary), SCALE_KEEP (a directory: the seeded store is kept
//! there for profiling). The table goes to stdout and to target/bench-scale.md.
//!
//! The seeded store (records written through the store's own API, shaped like issued and
//! installed certificates, none due) is made once per N and day under target/bench-scale-seed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_ticks, median, proc_status};

const DIRECTORY: &str = "https://127.0.0.1:9/dir";

fn main() {
    let ns: Vec<usize> = std::env::var("SCALE_N")
        .unwrap_or_else(|_| "100000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("SCALE_N: numbers, comma-separated"))
        .collect();
    let runs: usize = std::env::var("SCALE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bins = common::bins("SCALE_BINS");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut table = Table::default();
    for &n in &ns {
        let seed = seed(&target.join("bench-scale-seed"), n);
        if let Ok(keep) = std::env::var("SCALE_KEEP") {
            copy_dir(&seed, Path::new(&keep));
            eprintln!("SCALE: the seeded store of {n} certificates is in {keep}");
        }
        for run in 0..runs {
            for (label, bin) in &bins {
                let work = tempfile::tempdir().unwrap();
                copy_dir(&seed, work.path());
                let mut rows = Rows {
                    table: &mut table,
                    n,
                    label,
                };
                measure(&mut rows, bin, work.path(), run);
            }
        }
    }
    let text = table.markdown();
    print!("{text}");
    std::fs::write(target.join("bench-scale.md"), text).unwrap();
}

/// The seeded store of `n` certificates (DATA_DIR `data` and `domains.txt` under the returned
/// directory), made again when older than a day (its certificates would start falling due).
fn seed(root: &Path, n: usize) -> PathBuf {
    let dir = root.join(n.to_string());
    let done = dir.join("seeded");
    let fresh = std::fs::metadata(&done)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(86_400));
    if fresh {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let store = haproxy_acme::store::sled::SledStore::open(&dir.join("data")).unwrap();
    let store: std::sync::Arc<dyn haproxy_acme::store::Store> = std::sync::Arc::new(store);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lines = String::with_capacity(n * 40);
    // In batches: a million records at once would hold several GiB.
    let batch = 50_000;
    for start in (0..n).step_by(batch) {
        let (records, names) =
            common::issued_records_from(start, (start + batch).min(n), DIRECTORY, now);
        rt.block_on(store.put_all(records)).unwrap();
        lines.push_str(&names);
    }
    drop(store);
    std::fs::write(dir.join("domains.txt"), lines).unwrap();
    std::fs::write(&done, "").unwrap();
    eprintln!(
        "SCALE: seeded {n} certificates in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copying {} to {}", from.display(), to.display());
}

/// A row's key: certificates, operation, binary.
type Key = (usize, String, String);

/// The samples of every row: key -> (unit, note, samples).
#[derive(Default)]
struct Table(BTreeMap<Key, (String, String, Vec<f64>)>);

impl Table {
    fn markdown(&self) -> String {
        let mut out = String::from(
            "| Certificates | Operation | Binary | Median | Samples | Note |\n|---:|---|---|---:|---:|---|\n",
        );
        for ((n, what, bin), (unit, note, samples)) in &self.0 {
            out.push_str(&format!(
                "| {n} | {what} | {bin} | {:.1} {unit} | {} | {note} |\n",
                median(samples),
                samples.len()
            ));
        }
        out
    }
}

struct Rows<'a> {
    table: &'a mut Table,
    n: usize,
    label: &'a str,
}

impl Rows<'_> {
    fn push(&mut self, what: &str, unit: &str, value: f64, note: &str) {
        eprintln!(
            "SCALE {} {what} [{}]: {value:.1} {unit}",
            self.n, self.label
        );
        let e = self
            .table
            .0
            .entry((self.n, what.to_string(), self.label.to_string()))
            .or_insert_with(|| (unit.to_string(), note.to_string(), Vec::new()));
        e.2.push(value);
    }
}

/// GET `path` from the admin endpoint: the status code and the body's length.
fn get(admin: SocketAddr, path: &str) -> Option<(u16, usize)> {
    let mut s = TcpStream::connect(admin).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    let code = std::str::from_utf8(body.get(9..12)?).ok()?.parse().ok()?;
    Some((code, body.len()))
}

/// The `ms=` of the `nth` (from 1) log line of `log` containing `what`, waiting for it.
fn logged_ms(log: &Path, what: &str, nth: usize) -> f64 {
    let found = || field(log, what, "ms", nth);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(ms) = found() {
            return ms;
        }
        assert!(Instant::now() < deadline, "no log line {nth} {what:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number in field `key` of the `nth` log line that contains `what`, if there is one.
fn field(log: &Path, what: &str, key: &str, nth: usize) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().filter(|l| l.contains(what)).nth(nth - 1)?;
    line.split(format!(" {key}=").as_str())
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn measure(rows: &mut Rows, bin: &str, dir: &Path, run: usize) {
    let data = dir.join("data");
    let file = dir.join("domains.txt");
    let log = dir.join("daemon.log");
    let admin: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let responder = format!("127.0.0.1:{}", common::free_port());
    let env = |c: &mut Command| {
        c.env_clear()
            .env("DOMAINS_FILE", &file)
            .env("ACME_DIRECTORY", DIRECTORY)
            .env("DATA_DIR", &data)
            .env("CERTS_DIR", dir.join("certs"));
    };
    let cli = |args: &[&str]| -> (f64, Output) {
        let mut c = Command::new(bin);
        env(&mut c);
        let t0 = Instant::now();
        let out = c.args(args).output().unwrap();
        (t0.elapsed().as_secs_f64() * 1000.0, out)
    };
    let (child, t0) = start(bin, &env, admin, &responder, &log);
    let pid = child.id();
    rows.push(
        "start-up to healthy",
        "ms",
        t0.elapsed().as_secs_f64() * 1000.0,
        "spawn to /healthz 200; sled replays all the seeding wrote (as after a crash)",
    );
    rows.push(
        "peak RSS when healthy (VmHWM)",
        "MiB",
        proc_status(pid, "VmHWM:") as f64 / 1024.0,
        "",
    );
    // The pass over every record (the view filled, admin answers other than /healthz).
    ready(&log);
    rows.push(
        "start-up to the pass over every record done",
        "ms",
        t0.elapsed().as_secs_f64() * 1000.0,
        "spawn to `reconciler ready` in the log",
    );
    std::thread::sleep(Duration::from_secs(5));
    rows.push(
        "RSS, idle",
        "MiB",
        proc_status(pid, "VmRSS:") as f64 / 1024.0,
        "5 s after the reconciler is ready",
    );
    // Idle: a heartbeat pass every 30 s, nothing due; the CPU it all costs.
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(35));
    rows.push(
        "CPU while idle for 35 s",
        "ms",
        (cpu_ticks(pid) - c0) as f64 * 10.0,
        "one heartbeat pass",
    );
    for _ in 0..5 {
        let t0 = Instant::now();
        let (code, len) = get(admin, "/metrics").expect("/metrics");
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(code, 200);
        rows.push(
            "/metrics",
            "ms",
            ms,
            &format!("ADMIN_LISTEN, {} KiB", len >> 10),
        );
        for (what, args) in [
            ("status", &["status"][..]),
            ("status ID", &["status", "s7.example.test"][..]),
            ("status --check", &["status", "--check"][..]),
            ("status --all", &["status", "--all"][..]),
        ] {
            let (ms, out) = cli(args);
            // `--all` is new (issue 16): an older binary refuses it; no row then.
            if !out.status.success() && what == "status --all" {
                continue;
            }
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let note = format!("CLI round trip, {} KiB", out.stdout.len() >> 10);
            rows.push(what, "ms", ms, &note);
        }
    }
    for i in 0..5 {
        let name = format!("r{run}-{i}.added.example.test");
        let (ms, out) = cli(&["domains", "add", &name]);
        assert!(
            out.status.success(),
            "domains add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rows.push("domains add", "ms", ms, "CLI round trip");
    }
    std::thread::sleep(Duration::from_secs(1));
    let seen = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let k = seen("configuration re-read: unchanged");
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    rows.push(
        "configuration re-read, unchanged (SIGHUP)",
        "ms",
        logged_ms(&log, "configuration re-read: unchanged", k + 1),
        "the daemon's ms",
    );
    std::thread::sleep(Duration::from_millis(600));
    // One line added to DOMAINS_FILE; one line in its middle changed (the file replaced by a
    // rename: the lines after it are alike, and only the index's blocks around it need reading).
    // Each then SIGHUP (the file watch may see it first: either way one re-read applies it).
    // The daemon's own figure, from its log.
    let append = |i: usize| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        writeln!(f, "hup{run}-{i}.example.test").unwrap();
    };
    // The new file is written and renamed over the old one; `synced`: its data flushed to the
    // disk first (as an editor that fsyncs does). Unsynced, the daemon's own flush waits for
    // the disk to take the 44 MiB at 1,000,000 (ext4's ordered mode and its replace-by-rename
    // flush), which the log's `store_ms` shows.
    let change_middle = |i: usize, synced: bool| {
        let content = std::fs::read_to_string(&file).unwrap();
        let mid = content.len() / 2;
        let start = content[..mid].rfind('\n').map_or(0, |p| p + 1);
        let end = content[mid..]
            .find('\n')
            .map_or(content.len(), |p| mid + p + 1);
        let changed = format!(
            "{}mid{run}-{i}.example.test\n{}",
            &content[..start],
            &content[end..]
        );
        let tmp = file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(changed.as_bytes()).unwrap();
        if synced {
            f.sync_all().unwrap();
        }
        drop(f);
        std::fs::rename(&tmp, &file).unwrap();
    };
    let edits: [(&str, &dyn Fn(usize)); 3] = [
        ("DOMAINS_FILE re-read, one line added", &append),
        (
            "DOMAINS_FILE re-read, one line in the middle changed",
            &|i| change_middle(i, false),
        ),
        (
            "DOMAINS_FILE re-read, one line in the middle changed, the file synced first",
            &|i| change_middle(i, true),
        ),
    ];
    for (what, edit) in edits {
        for i in 1..=5 {
            let k = seen("configuration reloaded");
            edit(i);
            let _ = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
            let ms = logged_ms(&log, "configuration reloaded", k + 1);
            rows.push(what, "ms", ms, "the daemon's `configuration reloaded` ms");
            // Builds before the field have none.
            if let Some(store_ms) = field(&log, "configuration reloaded", "store_ms", k + 1) {
                rows.push(
                    &format!("{what}: the store's write"),
                    "ms",
                    store_ms,
                    "its `store_ms` (the flush)",
                );
            }
            std::thread::sleep(Duration::from_millis(600));
        }
    }
    let hwm = proc_status(pid, "VmHWM:");
    let mut c = Command::new(bin);
    env(&mut c);
    let t0 = Instant::now();
    let mut dump = c
        .args(["state", "dump"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = dump.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut sink = [0u8; 1 << 16];
        let mut total = 0usize;
        while let Ok(n) = out.read(&mut sink) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut rss = 0;
    let ok = loop {
        rss = rss.max(proc_status(dump.id(), "VmHWM:"));
        if let Some(status) = dump.try_wait().unwrap() {
            break status.success();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let bytes = reader.join().unwrap();
    assert!(ok, "state dump failed");
    rows.push(
        "state dump",
        "s",
        t0.elapsed().as_secs_f64(),
        &format!("{} MiB of JSON", bytes >> 20),
    );
    rows.push(
        "state dump, the CLI's peak RSS",
        "MiB",
        rss as f64 / 1024.0,
        "",
    );
    rows.push(
        "state dump, the daemon's peak RSS rise",
        "MiB",
        proc_status(pid, "VmHWM:").saturating_sub(hwm) as f64 / 1024.0,
        "VmHWM after minus before",
    );
    rows.push(
        "peak RSS over the run (VmHWM)",
        "MiB",
        proc_status(pid, "VmHWM:") as f64 / 1024.0,
        "start-up pass, reads, dump",
    );
    stop(child);
    // A restart after that clean stop, as an upgrade or a reboot does: sled replays its log
    // from the snapshot it wrote when it was last opened, so only what this run wrote.
    let log = dir.join("daemon-restart.log");
    let (child, t0) = start(bin, &env, admin, &responder, &log);
    rows.push(
        "restart after a clean stop, to healthy",
        "ms",
        t0.elapsed().as_secs_f64() * 1000.0,
        "spawn to /healthz 200",
    );
    ready(&log);
    rows.push(
        "restart after a clean stop, to the pass over every record done",
        "ms",
        t0.elapsed().as_secs_f64() * 1000.0,
        "spawn to `reconciler ready` in the log",
    );
    stop(child);
}

/// Starts the daemon (`run`) and waits until `/healthz` answers 200: the child and when it was
/// spawned.
fn start(
    bin: &str,
    env: &dyn Fn(&mut Command),
    admin: SocketAddr,
    responder: &str,
    log: &Path,
) -> (Child, Instant) {
    let mut c = Command::new(bin);
    env(&mut c);
    let t0 = Instant::now();
    let mut child = c
        .arg("run")
        .env("ADMIN_LISTEN", admin.to_string())
        .env("RESPONDER_LISTEN", responder)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    loop {
        if let Some((200, _)) = get(admin, "/healthz") {
            return (child, t0);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the daemon exited ({status}):\n{log}");
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "never healthy");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for the daemon's pass over every record (`reconciler ready` in its log).
fn ready(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("reconciler ready")
    {
        assert!(Instant::now() < deadline, "no pass over the store");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
