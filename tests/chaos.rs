//! Chaos: every fault class of the reliability work at once, against the real parts. The daemon
//! issues and renews short-lived certificates for several ids while pebble answers a share of
//! requests with `badNonce`, is restarted (forgetting every account and order), HAProxy is
//! killed and started again from the files, and the filesystem holding the store (a real tmpfs)
//! fills up and is freed. The daemon itself is never restarted. At the end every certificate is
//! served and matches the store, every file's key matches its certificate, and pebble (across
//! its restarts) never issued two certificates for one id within a renewal period.
//!
//! `CHAOS_SECS` (default 100) and `CHAOS_SEED` (default: from the clock, printed) reproduce a run.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;
use common::{Env, Options};
use rand::{Rng, SeedableRng};

/// Pebble's certificate lifetime here: renewal is due at half of it.
const VALIDITY_SECS: i64 = 40;
const IDS: usize = 8;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The log lines that mention `id`, or that name no certificate (store, CA, HAProxy conditions).
fn lines_of(log: &str, id: &str) -> String {
    log.lines()
        .filter(|l| l.contains(id) || !l.contains("cert="))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Default, Debug)]
struct Faults {
    pebble_restarts: u32,
    haproxy_restarts: u32,
    disk_fills: u32,
}

#[test]
fn every_fault_at_once_heals_without_a_restart_or_a_duplicate() {
    let seed = common::env_u64("CHAOS_SEED", common::clock_seed);
    let secs = common::env_u64("CHAOS_SECS", || 100);
    eprintln!("CHAOS_SEED={seed} CHAOS_SECS={secs}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut env = Env::start_opts(Options {
        validity_secs: Some(VALIDITY_SECS as u64),
        nonce_reject: 15,
        ..Options::default()
    });
    let fs = Tmpfs::mount(&env.dir.path().join("fs"), 24);
    let data_dir = fs.path.join("data");
    let data = data_dir.display().to_string();
    let ids: Vec<String> = (0..IDS).map(|i| format!("chaos{i}.example.test")).collect();
    let domains = ids.join(";");
    let mut daemon = env.start_daemon_with(&domains, &[("DATA_DIR", &data)]);

    let mut faults = Faults::default();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..5_000)));
        daemon.assert_running();
        let fault = rng.random_range(0..3);
        eprintln!(
            "{:.3} fault {}",
            common::clock_seed() as f64 / 1e9,
            ["pebble restart", "haproxy restart", "disk fill"][fault]
        );
        match fault {
            0 => {
                env.restart_pebble();
                faults.pebble_restarts += 1;
            }
            1 => {
                env.kill_haproxy();
                std::thread::sleep(Duration::from_millis(rng.random_range(200..3_000)));
                env.start_haproxy();
                faults.haproxy_restarts += 1;
            }
            _ => {
                let filler = fs.fill();
                std::thread::sleep(Duration::from_millis(rng.random_range(1_000..6_000)));
                filler.free();
                faults.disk_fills += 1;
            }
        }
    }
    let chaos_secs = started.elapsed().as_secs_f64();

    // Left alone, it converges: every id served with the certificate the store holds, unexpired.
    let calm = Instant::now();
    let mut last;
    let dump: serde_json::Value = loop {
        daemon.assert_running();
        let out = env.cli_with(&domains, &[("DATA_DIR", &data)], &["state", "dump"]);
        if out.status.success() {
            let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let now = haproxy_acme_state::dump::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64,
            );
            let certs = dump["certificates"].as_array().unwrap();
            let waiting: Vec<String> = certs
                .iter()
                .filter(|c| {
                    let Some(serial) = c["serial"].as_str() else {
                        return true;
                    };
                    c["installed"] != true
                        // RFC 3339 in UTC, one format: compared as text.
                        || c["not_after"].as_str().unwrap_or("") <= now.as_str()
                        || env.served_serial(c["id"].as_str().unwrap()).as_deref()
                            != Some(serial.trim_start_matches('0'))
                })
                .map(|c| {
                    let served = env.served_serial(c["id"].as_str().unwrap());
                    format!("served {served:?}; stored: {c}")
                })
                .collect();
            if certs.len() == IDS && waiting.is_empty() {
                break dump;
            }
            last = waiting.join("\n");
        } else {
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(
            calm.elapsed() < Duration::from_secs(120),
            "not every certificate served as stored 120 s after the faults ({faults:?}) stopped; \
             waiting:\n{last}\ndaemon log tail:\n{}",
            tail(&daemon.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let converged = calm.elapsed();
    daemon.assert_running();

    for c in dump["certificates"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let file = env.certs_dir.join(format!("{id}.pem"));
        common::assert_key_matches_certificate(&file);
    }

    // No duplicate issuance across pebble restarts.
    let issued = env.issued();
    // A certificate the daemon never stored was never handed to it: pebble issued it and was
    // restarted before the daemon downloaded it (the CA forgot the order; a new one is the only
    // way). Anything the daemon downloaded it stores, even after a full disk (it keeps the chain
    // until the store takes it), so no other certificate may come early.
    let log = daemon.log_text();
    let norm = |s: &str| s.trim_start_matches('0').to_uppercase();
    let stored: std::collections::HashSet<String> = log
        .lines()
        .filter(|l| l.contains("certificate issued and stored"))
        .filter_map(|l| l.split("serial=").nth(1)?.split_whitespace().next())
        .map(norm)
        .collect();
    // Every certificate after the first of an id is the renewal of the one before it
    // (`Issued::renews`: named as its replacement where pebble offers renewal information,
    // otherwise half the lifetime later).
    let ari = env.offers_renewal_info();
    let mut per_id: BTreeMap<Vec<String>, Vec<&common::Issued>> = BTreeMap::new();
    for c in &issued {
        per_id.entry(c.names.clone()).or_default().push(c);
    }
    let mut never_delivered = 0;
    for (names, certs) in per_id.iter() {
        for w in certs.windows(2) {
            if !stored.contains(&norm(&w[0].serial)) && faults.pebble_restarts > 0 {
                never_delivered += 1;
                continue;
            }
            assert!(
                w[1].renews(w[0], VALIDITY_SECS, ari),
                "{names:?}: {} is not a renewal of {} ({}s apart; duplicate issuance): {certs:?} \
                 (stored by the daemon: {:?})\nfaults: {faults:?}; the daemon's log of {}:\n{}",
                w[1].serial,
                w[0].serial,
                w[1].not_before - w[0].not_before,
                certs
                    .iter()
                    .map(|c| stored.contains(&norm(&c.serial)))
                    .collect::<Vec<_>>(),
                names[0],
                tail(&lines_of(&daemon.log_text(), &names[0]), 80)
            );
        }
    }
    let m = common::daemon_metrics(&data_dir);
    let count = |name: &str| common::metric_sum(&m, name);
    eprintln!(
        "CHAOS: {faults:?} over {chaos_secs:.1}s; pebble: {} certificates for {} ids, {} orders; \
         daemon: {} ACME requests, {} badNonce answers sent again, {} re-registrations, {} step \
         failures, {} drifts repaired; converged {} ms after the faults stopped; \
         {never_delivered} certificates pebble forgot before the daemon could download them",
        issued.len(),
        per_id.len(),
        env.pebble_new_orders(),
        count("haproxy_acme_http_acme_client_request_total"),
        count("haproxy_acme_acme_bad_nonces_total"),
        count("haproxy_acme_acme_accounts_registered_again_total"),
        count("haproxy_acme_certificate_step_failures_total"),
        count("haproxy_acme_certificate_drifts_total"),
        converged.as_millis()
    );
    assert!(
        count("haproxy_acme_acme_bad_nonces_total") > 0,
        "pebble rejected no nonce: the schedule did not test bad nonces"
    );
    assert!(
        faults.pebble_restarts + faults.haproxy_restarts + faults.disk_fills > 0,
        "the schedule applied no fault"
    );
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM: {status}\n{}", daemon.log_text());
}
