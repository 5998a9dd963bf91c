//! Issuance throughput (issue 16): N new certificates against pebble (a fresh one per row) with rate limits off,
//! first by a minimal ACME client written here (instant-acme, its own HTTP-01 responder behind
//! the same HAProxy: the CA's ceiling on this machine), then by haproxy-acme at each
//! CONCURRENCY, timed from its start to all N served (in HAProxy's crt-list). Prints a Markdown
//! table and writes it into BENCHMARKS.md ("## Issuance throughput (issue 16)").
//! Run with `cargo bench --bench throughput` (release build).
//!
//! Settings: THROUGHPUT_N (certificates per row, default 1000), THROUGHPUT_CLIENT_CONCURRENCY
//! (the minimal client's orders at once, default 32), THROUGHPUT_CONCURRENCY (haproxy-acme's
//! CONCURRENCY values, default "8,32,64"), THROUGHPUT_RUNS (medians of so many runs, default 1,
//! each with a pebble of its own), THROUGHPUT_TIMEOUT_SECS (per row, default 900).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Env, BIN};
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    match v.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => v[m],
        _ => (v[m - 1] + v[m]) / 2.0,
    }
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

/// The CA's ceiling: `n` certificates by the minimal client, `c` at once. Its responder holds
/// haproxy-acme's responder port (where HAProxy's be_acme points) until it returns.
fn minimal_client(env: &Env, n: usize, c: usize, prefix: &str) -> Duration {
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
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = gate.clone().acquire_owned().await.unwrap();
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
        while let Some(done) = tasks.join_next().await {
            done.unwrap().expect("the minimal client's issuance");
        }
        let took = started.elapsed();
        server.abort();
        took
    })
}

/// haproxy-acme with CONCURRENCY=`conc`: time from its start to all `n` served, and its log.
fn daemon(env: &Env, n: usize, conc: usize, prefix: &str, timeout: Duration) -> (Duration, String) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}.tp.test")).collect();
    let data_dir = env.dir.path().join(format!("data-{prefix}"));
    let crt_list = env.crt_list_name();
    let started = Instant::now();
    let mut d = env.start_daemon_with(
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
        // Seen once at CONCURRENCY=32: pebble's in-memory store deadlocked (its goroutines
        // waiting on each other's locks, FindValidAuthorization vs AddChallenge): say so
        // rather than wait for the timeout.
        assert!(
            last.1.elapsed() < Duration::from_secs(60),
            "CONCURRENCY={conc}: stuck at {k} of {n} served for 60 s (pebble deadlocked? \
             kill -QUIT it for its goroutines)"
        );
        assert!(
            started.elapsed() < timeout,
            "CONCURRENCY={conc}: {k} of {n} served after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert!(d.terminate().success());
    (took, d.log_text())
}

/// From a JSON log: seconds after the first line of the first and last "order created", and of
/// the last "installed" line, to see where the time goes.
fn log_marks(log: &str) -> String {
    let mut first: Option<f64> = None;
    let (mut orders, mut last_order, mut last_install) = (0, 0.0, 0.0);
    for (t, v) in common::timed_json_lines(log) {
        let t0 = *first.get_or_insert(t);
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        if msg == "order created" {
            orders += 1;
            last_order = t - t0;
        }
        if msg.contains("installed") {
            last_install = t - t0;
        }
    }
    format!("{orders} orders, last created at {last_order:.1} s, last install line at {last_install:.1} s")
}

fn main() {
    let n: usize = setting("THROUGHPUT_N", "1000").parse().unwrap();
    let client_c: usize = setting("THROUGHPUT_CLIENT_CONCURRENCY", "32")
        .parse()
        .unwrap();
    let concs: Vec<usize> = setting("THROUGHPUT_CONCURRENCY", "8,32,64")
        .split(',')
        .map(|c| c.trim().parse().expect("THROUGHPUT_CONCURRENCY: numbers"))
        .collect();
    let runs: usize = setting("THROUGHPUT_RUNS", "1").parse().unwrap();
    let timeout = Duration::from_secs(setting("THROUGHPUT_TIMEOUT_SECS", "900").parse().unwrap());
    eprintln!("haproxy-acme binary: {BIN}");
    let mut client = Vec::new();
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); concs.len()];
    for run in 0..runs {
        let env = Env::start();
        let t = minimal_client(&env, n, client_c, &format!("m{run}-"));
        eprintln!(
            "run {run}: minimal client (C={client_c}): {n} in {:.1} s",
            t.as_secs_f64()
        );
        client.push(t.as_secs_f64());
        drop(env);
        for (k, &conc) in concs.iter().enumerate() {
            // A pebble of its own per row, as the client's: each row starts from the same CA
            // state. (pebble 2.10 can still deadlock under concurrent orders, its store's lock
            // order, letsencrypt/pebble#270: BENCHMARKS.md.)
            let env = Env::start();
            let (t, log) = daemon(&env, n, conc, &format!("h{run}c{conc}-"), timeout);
            eprintln!(
                "run {run}: haproxy-acme CONCURRENCY={conc}: {n} served in {:.1} s ({})",
                t.as_secs_f64(),
                log_marks(&log)
            );
            ours[k].push(t.as_secs_f64());
        }
    }
    let ceiling = median(&mut client);
    let row = |who: &str, secs: f64| {
        format!(
            "| {who} | {n} | {secs:.1} s | {:.1} | {:.2} |",
            n as f64 / secs,
            ceiling / secs
        )
    };
    let mut table = vec![
        "| Client | N | Time to all issued (served) | Certificates/s | Ratio to the ceiling |"
            .to_string(),
        "|---|---:|---:|---:|---:|".to_string(),
        row(
            &format!("minimal instant-acme client, {client_c} at once (the ceiling)"),
            ceiling,
        ),
    ];
    for (k, &conc) in concs.iter().enumerate() {
        table.push(row(
            &format!("haproxy-acme, CONCURRENCY={conc}"),
            median(&mut ours[k]),
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
         through HAProxy. The ceiling is a minimal instant-acme client in the same run against \
         such a pebble (order, answer, finalize, download; nothing stored, nothing installed). \
         haproxy-acme is timed from its start to all {n} in HAProxy's crt-list (`show ssl \
         crt-list`), each CONCURRENCY with a new data directory and new names. {} run(s){}; \
         {cores} cores, shared and noisy (another build running beside it), pebble, HAProxy and \
         the client on the same cores.\n\n{table}\n",
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
