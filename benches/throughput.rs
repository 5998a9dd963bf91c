//! Issuance throughput (issue 16): N new certificates against pebble (a fresh one per row) with rate limits off,
//! first by a minimal ACME client written here (instant-acme, its own HTTP-01 responder behind
//! the same HAProxy: the CA's ceiling on this machine), then by haproxy-acme at each
//! CONCURRENCY, timed from its start to all N served (in HAProxy's crt-list). Prints a Markdown
//! table and writes it into BENCHMARKS.md ("## Issuance throughput (issue 16)").
//! Run with `cargo bench --bench throughput` (release build).
//!
//! Settings: THROUGHPUT_N (certificates per row, default 1000), THROUGHPUT_CLIENT_CONCURRENCY
//! (the minimal client's orders at once, default "8,16,32"), THROUGHPUT_CONCURRENCY
//! (haproxy-acme's CONCURRENCY values, default "8,16,32"), THROUGHPUT_BINS ("label=/path,...":
//! several builds in one run, for a before and after), THROUGHPUT_RUNS (medians of so many
//! runs, default 1, each with a pebble of its own), THROUGHPUT_TIMEOUT_SECS (per row, default
//! 900). A row whose pebble deadlocks (no certificate for 60 s: letsencrypt/pebble#270) says so.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{median, Env};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// The same polling as haproxy-acme's (src/acme/client.rs): the client is no slower for it.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(20))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The minimal client's HTTP-01 responder: `GET /.well-known/acme-challenge/<token>` answered
/// from `tokens`, one request per connection.
async fn respond(listener: tokio::net::TcpListener, tokens: Tokens) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let token = path.strip_prefix("/.well-known/acme-challenge/");
            let body = token.and_then(|t| tokens.lock().unwrap().get(t).cloned());
            let reply = match body {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// One certificate, the shortest way: order, answer HTTP-01, finalize with a new P-256 key,
/// download.
async fn issue(account: &Account, name: String, tokens: &Tokens) -> Result<(), String> {
    let ids = [Identifier::Dns(name.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(|e| format!("authorization: {e}"))?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or("no http-01 challenge")?;
        tokens.lock().unwrap().insert(
            ch.token.clone(),
            ch.key_authorization().as_str().to_string(),
        );
        ch.set_ready().await.map_err(|e| format!("ready: {e}"))?;
    }
    let st = order.poll_ready(&POLL).await.map_err(|e| format!("{e}"))?;
    if st != OrderStatus::Ready {
        return Err(format!("{name}: order {st:?}"));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    order
        .poll_certificate(&POLL)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(())
}

/// The CA's ceiling: `n` certificates by the minimal client, `c` at once, or how far it got
/// when no certificate came for 60 s. Its responder holds haproxy-acme's responder port (where
/// HAProxy's be_acme points) until it returns.
fn minimal_client(env: &Env, n: usize, c: usize, prefix: &str) -> Result<Duration, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tokens: Tokens = Arc::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", env.responder_port))
            .await
            .expect("the responder port is free before any daemon runs");
        let server = tokio::spawn(respond(listener, tokens.clone()));
        let (account, _) = Account::builder_with_http(
            // haproxy-acme's own HTTPS client (roots + ACME_CA_BUNDLE, TCP_NODELAY): the same
            // transport on both sides of the ratio.
            haproxy_acme::acme::http::http_client(Some(&env.listener_ca)).unwrap(),
        )
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            env.directory_url(),
            None,
        )
        .await
        .expect("account");
        let started = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(c));
        let mut tasks: tokio::task::JoinSet<Result<(), String>> = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = match tokio::time::timeout(STALL, gate.clone().acquire_owned()).await {
                Ok(permit) => permit.unwrap(),
                Err(_) => return Err(stuck(i - c, n)),
            };
            let (account, tokens) = (account.clone(), tokens.clone());
            let name = format!("{prefix}{i}.tp.test");
            tasks.spawn(async move {
                let _permit = permit;
                // One more try on an error (a badNonce): the ceiling, not the error handling.
                match issue(&account, name.clone(), &tokens).await {
                    Ok(()) => Ok(()),
                    Err(_) => issue(&account, name, &tokens).await,
                }
            });
        }
        loop {
            match tokio::time::timeout(STALL, tasks.join_next()).await {
                Ok(Some(finished)) => finished.unwrap().expect("the minimal client's issuance"),
                Ok(None) => break,
                Err(_) => return Err(stuck(n - tasks.len(), n)),
            }
        }
        let took = started.elapsed();
        server.abort();
        Ok(took)
    })
}

/// No certificate for so long: pebble 2.10's store deadlocked (letsencrypt/pebble#270).
const STALL: Duration = Duration::from_secs(60);

/// The CPU seconds of the harness's processes, in words.
fn cpu_of(env: &Env) -> String {
    let parts: Vec<String> = env
        .cpu_seconds()
        .iter()
        .map(|(name, s)| format!("{name} {s:.1} s"))
        .collect();
    parts.join(", ")
}

fn stuck(k: usize, n: usize) -> String {
    format!("not measured: pebble deadlocked at {k} of {n} (pebble#270)")
}

/// haproxy-acme with CONCURRENCY=`conc`: time from its start to all `n` served, and its log;
/// or how far it got when none was served for 60 s.
fn daemon(
    bin: &str,
    env: &Env,
    n: usize,
    conc: usize,
    prefix: &str,
    timeout: Duration,
) -> (Result<Duration, String>, String) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}.tp.test")).collect();
    let data_dir = env.dir.path().join(format!("data-{prefix}"));
    let crt_list = env.crt_list_name();
    let started = Instant::now();
    let mut d = env.start_daemon_bin(
        bin,
        &ids.join(";"),
        &[
            ("RATE_LIMITS", "off"),
            ("CONCURRENCY", &conc.to_string()),
            ("DATA_DIR", &data_dir.display().to_string()),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
    );
    let mut last = (0, Instant::now());
    loop {
        d.assert_running();
        let k = env.served_count(&crt_list, prefix);
        if k == n {
            break;
        }
        if k != last.0 {
            last = (k, Instant::now());
        }
        // Seen at CONCURRENCY=32: pebble's in-memory store deadlocked (its goroutines waiting
        // on each other's locks, FindValidAuthorization vs an authorization's POST-as-GET):
        // say so rather than wait for the timeout.
        if last.1.elapsed() > STALL {
            assert!(d.terminate().success());
            return (Err(stuck(k, n)), d.log_text());
        }
        assert!(
            started.elapsed() < timeout,
            "CONCURRENCY={conc}: {k} of {n} served after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let cpu = common::tree_cpu_ticks(d.pid()) as f64 / 100.0;
    assert!(d.terminate().success());
    eprintln!("CPU: haproxy-acme {cpu:.1} s, {}", cpu_of(env));
    (Ok(took), d.log_text())
}

/// From a JSON log: when orders were created, and the medians of each certificate's phases
/// (order created → issued and stored → installed → renewal window asked), to see where the
/// time goes.
fn log_marks(log: &str) -> String {
    let mut first: Option<f64> = None;
    let (mut orders, mut last_order) = (0, 0.0);
    let mut at: HashMap<String, [Option<f64>; 4]> = HashMap::new();
    for (t, v) in common::timed_json_lines(log) {
        let t0 = *first.get_or_insert(t);
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        let phase = match msg {
            "order created" => 0,
            "certificate issued and stored" => 1,
            "certificate installed" => 2,
            "renewal window from the CA" => 3,
            _ => continue,
        };
        if phase == 0 {
            orders += 1;
            last_order = t - t0;
        }
        let cert = v["fields"]["cert"].as_str().unwrap_or("").to_string();
        at.entry(cert).or_default()[phase].get_or_insert(t);
    }
    let step = |a: usize, b: usize| {
        let d: Vec<f64> = at
            .values()
            .filter_map(|p| Some((p[b]? - p[a]?) * 1000.0))
            .collect();
        median(&d)
    };
    format!(
        "{orders} orders, the last created at {last_order:.1} s; per certificate (medians): \
         created → stored {:.0} ms, → installed {:.0} ms, → renewal window {:.0} ms",
        step(0, 1),
        step(1, 2),
        step(2, 3)
    )
}

/// A row's figure: the median of the runs that finished, or why none did.
fn figure(runs: &[Result<Duration, String>]) -> Result<f64, String> {
    let done: Vec<f64> = runs.iter().flatten().map(Duration::as_secs_f64).collect();
    match runs.iter().find_map(|r| r.as_ref().err()) {
        Some(e) if done.is_empty() => Err(e.clone()),
        _ => Ok(median(&done)),
    }
}

fn list(name: &str, default: &str) -> Vec<usize> {
    setting(name, default)
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: numbers"))
        })
        .collect()
}

fn main() {
    let n: usize = setting("THROUGHPUT_N", "1000").parse().unwrap();
    let client_cs = list("THROUGHPUT_CLIENT_CONCURRENCY", "8,16,32");
    let concs = list("THROUGHPUT_CONCURRENCY", "8,16,32");
    let runs: usize = setting("THROUGHPUT_RUNS", "1").parse().unwrap();
    let timeout = Duration::from_secs(setting("THROUGHPUT_TIMEOUT_SECS", "900").parse().unwrap());
    let bins = common::bins("THROUGHPUT_BINS");
    eprintln!("haproxy-acme builds: {bins:?}");
    let mut client: Vec<Vec<Result<Duration, String>>> = vec![Vec::new(); client_cs.len()];
    let rows: Vec<(&str, &str, usize)> = concs
        .iter()
        .flat_map(|&c| bins.iter().map(move |(l, b)| (l.as_str(), b.as_str(), c)))
        .collect();
    let mut ours: Vec<Vec<Result<Duration, String>>> = vec![Vec::new(); rows.len()];
    // A pebble of its own per row: each row starts from the same CA state.
    for run in 0..runs {
        for (k, &c) in client_cs.iter().enumerate() {
            let env = Env::start();
            let own = common::cpu_ticks(std::process::id());
            let t = minimal_client(&env, n, c, &format!("m{run}c{c}-"));
            let own = (common::cpu_ticks(std::process::id()) - own) as f64 / 100.0;
            eprintln!("run {run}: minimal client, {c} at once: {t:.1?}");
            eprintln!("CPU: the client {own:.1} s, {}", cpu_of(&env));
            client[k].push(t);
        }
        for (k, &(label, bin, conc)) in rows.iter().enumerate() {
            let env = Env::start();
            let prefix = format!("h{run}c{conc}{k}-");
            let (t, log) = daemon(bin, &env, n, conc, &prefix, timeout);
            eprintln!(
                "run {run}: {label} CONCURRENCY={conc}: {t:.1?} ({})",
                log_marks(&log)
            );
            ours[k].push(t);
        }
    }
    let client: Vec<Result<f64, String>> = client.iter().map(|r| figure(r)).collect();
    let ceiling = client
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let row = |who: &str, secs: &Result<f64, String>, same: Option<&Result<f64, String>>| {
        let ratio = |to: f64, secs: f64| format!("{:.2}", to / secs);
        match secs {
            Ok(secs) => format!(
                "| {who} | {n} | {secs:.1} s | {:.1} | {} | {} |",
                n as f64 / secs,
                ratio(ceiling, *secs),
                match same {
                    Some(Ok(c)) => ratio(*c, *secs),
                    _ => "—".to_string(),
                }
            ),
            Err(e) => format!("| {who} | {n} | {e} | — | — | — |"),
        }
    };
    let mut table = vec![
        "| Client | N | Time to all issued (served) | Certificates/s | Ratio to the ceiling | \
         Ratio to the client at the same concurrency |"
            .to_string(),
        "|---|---:|---:|---:|---:|---:|".to_string(),
    ];
    for (k, &c) in client_cs.iter().enumerate() {
        table.push(row(
            &format!("minimal instant-acme client, {c} at once"),
            &client[k],
            None,
        ));
    }
    for (k, &(label, _, conc)) in rows.iter().enumerate() {
        let same = client_cs
            .iter()
            .position(|&c| c == conc)
            .map(|i| &client[i]);
        table.push(row(
            &format!("{label}, CONCURRENCY={conc}"),
            &figure(&ours[k]),
            same,
        ));
    }
    let table = table.join("\n");
    println!("{table}");
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let section = format!(
        "## Issuance throughput (issue 16)\n\n\
         `cargo bench --bench throughput` (release build): {n} new single-name certificates, a \
         fresh pebble per row (`PEBBLE_VA_NOSLEEP=1`, no authorization reuse; pebble 2.10 can \
         deadlock under concurrent orders, letsencrypt/pebble#270), `RATE_LIMITS=off`, HTTP-01 \
         through HAProxy. The ceiling is the fastest row of a minimal instant-acme client in the \
         same run against such a pebble (order, answer, finalize, download; nothing stored, \
         nothing installed). \
         haproxy-acme is timed from its start to all {n} in HAProxy's crt-list (`show ssl \
         crt-list`), each CONCURRENCY with a new data directory and new names. {} run(s){}; \
         {cores} cores, pebble, HAProxy and the client or daemon on the same cores; a row's \
         median is of the runs its pebble finished.\n\n{table}\n\n",
        runs,
        if runs > 1 { ", medians" } else { "" },
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let heading = "## Issuance throughput (issue 16)";
    let text = match text.find(heading) {
        Some(at) => {
            let end = text[at + heading.len()..]
                .find("\n## ")
                .map_or(text.len(), |e| at + heading.len() + e + 1);
            format!("{}{section}{}", &text[..at], &text[end..])
        }
        None => format!(
            "{}\n{section}",
            text.trim_end_matches('\n').to_string() + "\n"
        ),
    };
    std::fs::write(&path, text).unwrap();
    eprintln!("written to {}", path.display());
}
