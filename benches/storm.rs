//! Renewal storm (issue 16): STORM_N certificates issued in the same second, so that all fall due
//! in the same second by the lifetime rule, renewed by the daemon against a real pebble and
//! HAProxy; what the CA sees (new orders and all requests per second and per minute, from
//! pebble's log), when each renewal came against the time the daemon planned it, and that none
//! expired (each renewed certificate installed, per the daemon's log, before the old one's
//! notAfter; HAProxy's crt-list holds them all, and a sample is checked with `show ssl cert`).
//! `cargo bench --bench storm` (release build); prints a Markdown table.
//!
//! Rows (STORM_ROWS, default "spread,outage,budget"), each with a fresh pebble, HAProxy and store:
//! - `spread`: the daemon runs while the certificates fall due: each one's renewal time is the
//!   lifetime rule's half-life point brought forward by the draw from its serial (up to a
//!   thirtieth of the lifetime, `state::timing::renewal_time_of`).
//! - `outage`: the same certificates, the daemon started once the last of them fell due (it was
//!   down): all are due at once, and only CONCURRENCY bounds what the CA sees.
//! - `budget`: `outage` with RATE_LIMITS=lets-encrypt, watched for STORM_BUDGET_WATCH_SECS.
//!   Renewals are exempt from its 300 new orders per 3 hours (as at Let's Encrypt, since the
//!   sixth pass of issue 16), so the budget defers none of them: the row shows it does not hold
//!   a renewal storm back (before, it let 300 through and deferred the rest by 3 hours).
//!
//! The certificates are seeded into the store (records only, `tests/common::issued_record`: no
//! chain, and not in HAProxy at the start, so WATCHDOG_INTERVAL=off keeps the watchdog from
//! reinstalling what the store does not hold): the daemon cannot issue 10,000 certificates in
//! one second, and a pebble certificate short enough to fall due within the run would get a
//! renewal window of its whole lifetime (pebble 2.10's `RenewalInfoSimple`), i.e. no common due
//! time. The seeded records carry no renewal window (a CA without renewal information, or one
//! whose lookup failed): the lifetime rule decides. Every renewal is a real order, validation
//! through HAProxy, certificate and install into HAProxy.
//!
//! pebble 2.10's store can deadlock under concurrent orders (letsencrypt/pebble#270; twice in
//! 20,000 orders at CONCURRENCY=8): a pebble silent for 20 s while renewals are due gets SIGQUIT
//! (its goroutines go into its log) and a new pebble takes its ports; each row counts them.
//!
//! Settings: STORM_N (default 10000), STORM_LIFETIME_SECS (the seeded certificates' lifetime,
//! default 10800: due at 90 min, spread over 6 min), STORM_LEAD_SECS (from the daemon's start to
//! the first due time in `spread`, default 30), STORM_CONCURRENCY (default 8),
//! STORM_TIMEOUT_SECS (per row, default 1200), STORM_BUDGET_WATCH_SECS (default 90).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Env;
use haproxy_acme_state::{timing, CertMeta};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Spread,
    Outage,
    Budget,
}

/// The seeded certificates: id -> (old serial, planned renewal time), and their common notAfter.
struct Seeded {
    planned: HashMap<String, (String, i64)>,
    not_before: i64,
    not_after: i64,
}

/// Seeds `n` records issued together (`not_before`, lifetime `lifetime`, serials drawn like a
/// CA's) into the sled store at `data`, and the DOMAINS_FILE `file` that wants them.
fn seed(
    data: &Path,
    file: &Path,
    directory: &str,
    prefix: &str,
    n: usize,
    not_before: i64,
    lifetime: i64,
) -> Seeded {
    let now = unix_now() as i64;
    let mut x: u64 = (unix_now().fract() * 1e9) as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let store = haproxy_acme::store::sled::SledStore::open(data).unwrap();
    let store: Arc<dyn haproxy_acme::store::Store> = Arc::new(store);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lines = String::with_capacity(n * 24);
    let mut planned = HashMap::with_capacity(n);
    let batch = 5_000;
    for start in (0..n).step_by(batch) {
        let mut records = Vec::with_capacity(batch);
        for i in start..(start + batch).min(n) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = format!("{prefix}{i}.storm.test");
            let meta = CertMeta {
                serial: format!("{x:016X}"),
                not_before,
                not_after: not_before + lifetime,
                fingerprint: format!("{i:064x}"),
                issued_at: not_before,
            };
            planned.insert(
                id.clone(),
                (meta.serial.clone(), timing::renewal_time_of(&meta)),
            );
            records.push(common::issued_record(
                vec![id.clone()],
                directory,
                i,
                meta,
                now,
            ));
            lines.push_str(&id);
            lines.push('\n');
        }
        rt.block_on(store.put_all(records)).unwrap();
    }
    drop(store);
    std::fs::write(file, lines).unwrap();
    Seeded {
        planned,
        not_before,
        not_after: not_before + lifetime,
    }
}

/// pebble's log lines (`Pebble 2026/11/27 09:00:01 POST /order-plz -> calling handler()`, local
/// time to the second) as Unix seconds: (every request, new orders, certificates issued).
fn pebble_times(log: &str) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let offset = local_offset_secs();
    let fmt = time::macros::format_description!("[year]/[month]/[day] [hour]:[minute]:[second]");
    let (mut all, mut orders, mut issued) = (Vec::new(), Vec::new(), Vec::new());
    for l in log.lines() {
        let Some(rest) = l.strip_prefix("Pebble ") else {
            continue;
        };
        let Some(stamp) = rest.get(..19) else {
            continue;
        };
        let Ok(t) = time::PrimitiveDateTime::parse(stamp, &fmt) else {
            continue;
        };
        let t = t.assume_utc().unix_timestamp() - offset;
        if l.contains("-> calling handler()") {
            all.push(t);
            if l.contains("POST /order-plz") {
                orders.push(t);
            }
        } else if l.contains("Issued certificate serial ") {
            issued.push(t);
        }
    }
    (all, orders, issued)
}

/// This machine's offset from UTC in seconds (pebble logs local time).
fn local_offset_secs() -> i64 {
    let out = std::process::Command::new("date")
        .arg("+%z")
        .output()
        .unwrap();
    let z = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let digits = z.trim_start_matches(['+', '-']);
    let (h, m) = digits.split_at(2.min(digits.len()));
    sign * (h.parse::<i64>().unwrap_or(0) * 3600 + m.parse::<i64>().unwrap_or(0) * 60)
}

/// The most events in any `window` consecutive seconds.
fn busiest(times: &[i64], window: i64) -> usize {
    let mut t = times.to_vec();
    t.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// From the daemon's JSON log: per certificate, the first "order created" and the last
/// "certificate installed" (Unix seconds, with the new serial); and the budget's deferrals
/// (until when each certificate was told to wait).
struct DaemonLog {
    ordered: HashMap<String, f64>,
    installed: HashMap<String, (f64, String)>,
    deferred_until: Vec<String>,
}

fn daemon_log(text: &str) -> DaemonLog {
    let mut d = DaemonLog {
        ordered: HashMap::new(),
        installed: HashMap::new(),
        deferred_until: Vec::new(),
    };
    for (t, v) in common::timed_json_lines(text) {
        let f = &v["fields"];
        let msg = f["message"].as_str().unwrap_or("");
        let cert = f["cert"].as_str().unwrap_or("").to_string();
        if msg == "order created" {
            d.ordered.entry(cert).or_insert(t);
        } else if msg == "certificate installed" {
            let serial = f["serial"].as_str().unwrap_or("").to_string();
            d.installed.insert(cert, (t, serial));
        } else if let Some(until) = msg
            .split("the order waits until ")
            .nth(1)
            .or_else(|| f["error"].as_str()?.split("the order waits until ").nth(1))
        {
            d.deferred_until.push(until.to_string());
        }
    }
    d
}

/// `show ssl cert FILE`'s `Serial:` (upper-case hex, no leading zeros).
fn haproxy_serial(env: &Env, id: &str) -> Option<String> {
    let file = env.certs_dir.join(format!("{id}.pem"));
    env.runtime(&format!("show ssl cert {}", file.display()))
        .lines()
        .find_map(|l| l.strip_prefix("Serial: "))
        .map(|s| s.trim().trim_start_matches('0').to_uppercase())
}

/// Sends SIGQUIT to this environment's pebble (found by its configuration file, which is this
/// environment's own) so that Go writes its goroutines into its log; returns the store calls
/// they wait in (the deadlock's signature), counted.
fn quit_pebble(env: &Env) -> String {
    let config = env.dir.path().join("pebble.json").display().to_string();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("pebble") && !cmd.contains("challtestsrv") && cmd.contains(&config)
        });
    let Some(pid) = pid else {
        return "pebble not found".into();
    };
    let _ = std::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(2));
    let log = env.running_pebble_log();
    let mut waits: BTreeMap<String, usize> = BTreeMap::new();
    for l in log.lines() {
        if let Some(f) = l.split("db.(*MemoryStore).").nth(1) {
            *waits
                .entry(f.split('(').next().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    format!("{waits:?}")
}

struct Outcome {
    kind: Kind,
    n: usize,
    conc: usize,
    lines: Vec<String>,
    row: String,
}

fn run_row(
    kind: Kind,
    n: usize,
    lifetime: i64,
    lead: i64,
    conc: usize,
    timeout: Duration,
) -> Outcome {
    let mut env = Env::start();
    let prefix = match kind {
        Kind::Spread => "sp",
        Kind::Outage => "ou",
        Kind::Budget => "bu",
    };
    let spread = lifetime / 30;
    let now = unix_now() as i64;
    // The lifetime rule's point (half of a lifetime under ten days) minus the serial's draw
    // (0 to a thirtieth): `spread` puts the earliest possible due time `lead` after now, the
    // others past the daemon's start: the latest was due 5 s before it.
    let half_point = match kind {
        Kind::Spread => now + lead + spread,
        Kind::Outage | Kind::Budget => now - 5,
    };
    let not_before = half_point - lifetime / 2;
    let data = env.dir.path().join(format!("data-{prefix}"));
    let file = env.dir.path().join(format!("domains-{prefix}.txt"));
    let t0 = Instant::now();
    let seeded = seed(
        &data,
        &file,
        &env.directory_url(),
        prefix,
        n,
        not_before,
        lifetime,
    );
    eprintln!(
        "{kind:?}: seeded {n} certificates in {:.1} s (notBefore {not_before}, notAfter {}, \
         lifetime-rule point {half_point})",
        t0.elapsed().as_secs_f64(),
        seeded.not_after
    );
    let crt_list = env.crt_list_name();
    let rate_limits = if kind == Kind::Budget {
        "lets-encrypt"
    } else {
        "off"
    };
    let started = unix_now();
    let mut d = env.start_daemon_with(
        "",
        &[
            ("DOMAINS_FILE", &file.display().to_string()),
            ("DATA_DIR", &data.display().to_string()),
            ("RATE_LIMITS", rate_limits),
            ("CONCURRENCY", &conc.to_string()),
            ("WATCHDOG_INTERVAL", "off"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
    );
    let watch = Duration::from_secs(setting("STORM_BUDGET_WATCH_SECS", "90").parse().unwrap());
    let deadline = Instant::now() + timeout;
    let since_start = Instant::now();
    let first_due = seeded.planned.values().map(|(_, t)| *t).min().unwrap_or(0);
    // Progress (the most certificates served so far), and pebble's log growth: a pebble whose
    // log stands still for 20 s while renewals are due is stuck (its store's deadlock,
    // letsencrypt/pebble#270, seen at CONCURRENCY=8 after 4,607 orders): its goroutines are
    // dumped into its log (SIGQUIT) and a new pebble is started on the same ports, which the
    // daemon meets as a CA that forgot its account and orders.
    let mut best = (0, Instant::now());
    let mut pebble_log = (0, Instant::now());
    let mut restarts = Vec::new();
    loop {
        d.assert_running();
        let k = env.served_count(&crt_list, prefix);
        if k > best.0 {
            if k / 1000 != best.0 / 1000 {
                eprintln!(
                    "{kind:?}: {k} of {n} renewed and served at {:.0} s",
                    unix_now() - started
                );
            }
            best = (k, Instant::now());
        }
        if best.0 == n || (kind == Kind::Budget && since_start.elapsed() >= watch) {
            break;
        }
        let size = std::fs::metadata(env.dir.path().join("pebble.log")).map_or(0, |m| m.len());
        if size != pebble_log.0 {
            pebble_log = (size, Instant::now());
        }
        if kind != Kind::Budget
            && unix_now() as i64 > first_due + 5
            && pebble_log.1.elapsed() > Duration::from_secs(20)
            && best.1.elapsed() > Duration::from_secs(20)
        {
            let at = unix_now() - started;
            let dump = quit_pebble(&env);
            eprintln!(
                "{kind:?}: pebble silent for 20 s at {at:.0} s with {} of {n} served; its \
                 goroutines: {dump}; starting a new pebble",
                best.0
            );
            restarts.push(format!("at {at:.0} s ({} served): {dump}", best.0));
            env.respawn_pebble();
            pebble_log = (0, Instant::now());
        }
        assert!(
            best.1.elapsed() < Duration::from_secs(300),
            "{kind:?}: stuck at {} of {n} served for 300 s",
            best.0
        );
        assert!(
            Instant::now() < deadline,
            "{kind:?}: {} of {n} served after {timeout:?}",
            best.0
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let wall = unix_now() - started;
    // A sample of HAProxy's certificates: the serial it holds is the renewal's.
    let log = daemon_log(&d.log_text());
    assert!(d.terminate().success());
    let (all, orders, issued) = pebble_times(&env.pebble_log());
    let mut sample_ok = 0;
    let mut sample = 0;
    for (id, (_, serial)) in log.installed.iter().take(100) {
        sample += 1;
        if haproxy_serial(&env, id).as_deref() == Some(serial.trim_start_matches('0')) {
            sample_ok += 1;
        }
    }
    // Per certificate: how late its order came after its planned time, and how long before
    // the old certificate's notAfter the new one was installed.
    let (mut late, mut margin) = (Vec::new(), Vec::new());
    let (mut renewed, mut expired, mut same_serial) = (0, 0, 0);
    for (id, (old_serial, at)) in &seeded.planned {
        // Counted from the daemon's start for a certificate already due then.
        if let Some(t) = log.ordered.get(id) {
            late.push(t - (*at as f64).max(started));
        }
        match log.installed.get(id) {
            Some((t, serial)) if serial != old_serial => {
                renewed += 1;
                margin.push(seeded.not_after as f64 - t);
                if *t >= seeded.not_after as f64 {
                    expired += 1;
                }
            }
            Some(_) => same_serial += 1,
            None => {
                if unix_now() >= seeded.not_after as f64 {
                    expired += 1;
                }
            }
        }
    }
    let planned: Vec<i64> = seeded.planned.values().map(|(_, t)| *t).collect();
    let (pmin, pmax) = (
        planned.iter().min().copied().unwrap_or(0),
        planned.iter().max().copied().unwrap_or(0),
    );
    let per_minute_planned = busiest(&planned, 60);
    let span = |v: &[i64]| v.iter().max().zip(v.iter().min()).map_or(0, |(a, b)| a - b);
    let minutes = |v: &[i64]| {
        let mut m: BTreeMap<i64, usize> = BTreeMap::new();
        for t in v {
            *m.entry((t - started as i64).div_euclid(60)).or_default() += 1;
        }
        m.iter()
            .map(|(k, c)| format!("{k}:{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut lines = vec![
        format!(
            "{kind:?}: N={n}, CONCURRENCY={conc}, RATE_LIMITS={rate_limits}, lifetime {lifetime} s \
             (notBefore {}, notAfter {}); planned renewal times over {} s ({pmin}..{pmax}), the \
             busiest minute of the plan {per_minute_planned}",
            seeded.not_before,
            seeded.not_after,
            pmax - pmin
        ),
        format!(
            "{kind:?}: {} new orders at the CA over {} s, {} certificates issued, {} requests in all; \
             busiest second {} orders / {} requests, busiest minute {} orders / {} requests",
            orders.len(),
            span(&orders),
            issued.len(),
            all.len(),
            busiest(&orders, 1),
            busiest(&all, 1),
            busiest(&orders, 60),
            busiest(&all, 60),
        ),
        format!("{kind:?}: new orders per minute since the daemon's start: {}", minutes(&orders)),
        format!(
            "{kind:?}: order created after its planned time (or the daemon's start):  median {:.1} s, p99 {:.1} s, max {:.1} s \
             ({} orders); renewed {renewed}, not renewed {}, renewed with the old serial \
             {same_serial}, expired {expired}; installed before notAfter by at least {:.0} s; \
             HAProxy's serial = the daemon's in {sample_ok} of {sample} sampled; wall {wall:.0} s",
            quantile(&late, 0.5),
            quantile(&late, 0.99),
            quantile(&late, 1.0),
            late.len(),
            n - renewed - same_serial,
            quantile(&margin, 0.0),
        ),
    ];
    lines.push(format!(
        "{kind:?}: pebble restarted {} times by the bench: {restarts:?}",
        restarts.len()
    ));
    if kind == Kind::Budget {
        let mut until: BTreeMap<&str, usize> = BTreeMap::new();
        for u in &log.deferred_until {
            *until.entry(u.as_str()).or_default() += 1;
        }
        lines.push(format!(
            "{kind:?}: {} deferrals by the local budget, waiting until: {:?}",
            log.deferred_until.len(),
            until.iter().take(5).collect::<Vec<_>>()
        ));
    }
    for l in &lines {
        eprintln!("{l}");
    }
    let row = format!(
        "| {} | {n} | {} s | {} | {} s | {} | {} | {} / {} | {:.1} / {:.1} s | {renewed} | {expired} | {} |",
        match kind {
            Kind::Spread => "issued together, daemon running (the serial's spread)",
            Kind::Outage => "all overdue at start (after an outage)",
            Kind::Budget => "all overdue, RATE_LIMITS=lets-encrypt (first STORM_BUDGET_WATCH_SECS)",
        },
        pmax - pmin,
        per_minute_planned,
        span(&orders),
        orders.len(),
        busiest(&orders, 1),
        busiest(&orders, 60),
        busiest(&all, 60),
        quantile(&late, 0.5),
        quantile(&late, 1.0),
        restarts.len(),
    );
    Outcome {
        kind,
        n,
        conc,
        lines,
        row,
    }
}

fn main() {
    let n: usize = setting("STORM_N", "10000").parse().unwrap();
    let lifetime: i64 = setting("STORM_LIFETIME_SECS", "10800").parse().unwrap();
    let lead: i64 = setting("STORM_LEAD_SECS", "30").parse().unwrap();
    let conc: usize = setting("STORM_CONCURRENCY", "8").parse().unwrap();
    let timeout = Duration::from_secs(setting("STORM_TIMEOUT_SECS", "1200").parse().unwrap());
    let kinds: Vec<Kind> = setting("STORM_ROWS", "spread,outage,budget")
        .split(',')
        .map(|k| match k.trim() {
            "spread" => Kind::Spread,
            "outage" => Kind::Outage,
            "budget" => Kind::Budget,
            other => panic!("STORM_ROWS: spread, outage, budget; not {other:?}"),
        })
        .collect();
    eprintln!("haproxy-acme binary: {}", common::BIN);
    let outcomes: Vec<Outcome> = kinds
        .into_iter()
        .map(|k| run_row(k, n, lifetime, lead, conc, timeout))
        .collect();
    let mut table = vec![
        "| Storm | N | Planned renewals spread over | Planned, busiest minute | New orders at the CA over | New orders | Busiest second (orders) | Busiest minute (orders / all requests) | Order after its planned time or the start (median / max) | Renewed and served | Expired | pebble restarts |".to_string(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    table.extend(outcomes.iter().map(|o| o.row.clone()));
    println!("{}", table.join("\n"));
    println!();
    for o in &outcomes {
        println!("<!-- {:?} N={} CONCURRENCY={} -->", o.kind, o.n, o.conc);
        for l in &o.lines {
            println!("- {l}");
        }
    }
}
