//! Fleet benchmarks (issue 15): time from the instances' start to every certificate served by
//! every node, for N = 3 and a larger N, and the handover time after `kill -9` of the leader.
//! Real pebble, PostgreSQL and one HAProxy per node, all on loopback (tests/common/fleet.rs).
//! Run with `cargo bench --bench fleet` (release build); prints a Markdown table for
//! BENCHMARKS.md. Medians of FLEET_BENCH_RUNS runs (default 3).
//!
//! Settings: FLEET_BENCH_NODES (comma-separated N, default "3,10"), FLEET_BENCH_CERTS
//! (certificates, default 5), FLEET_BENCH_RUNS (default 3), FLEET_BENCH_KILLS (handovers
//! measured per run, default 5), FLEET_BENCH_LEASE_MS (default 2000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::fleet::Fleet;
use common::Options;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() {
    let nodes: Vec<usize> = setting("FLEET_BENCH_NODES", "3,10")
        .split(',')
        .map(|n| n.trim().parse().expect("FLEET_BENCH_NODES: numbers"))
        .collect();
    let certs: usize = setting("FLEET_BENCH_CERTS", "5").parse().unwrap();
    let runs: usize = setting("FLEET_BENCH_RUNS", "3").parse().unwrap();
    let kills: usize = setting("FLEET_BENCH_KILLS", "5").parse().unwrap();
    let lease = Duration::from_millis(setting("FLEET_BENCH_LEASE_MS", "2000").parse().unwrap());
    let mut rows = Vec::new();
    for &n in &nodes {
        let (mut served, mut handover) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let mut f = Fleet::start(n, Options::default(), lease);
            let ids: Vec<String> = (0..certs).map(|i| format!("b{i}.fleet.test")).collect();
            let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
            let domains = ids.join(";");
            for (k, id) in ids.iter().enumerate() {
                // Validations spread over the nodes.
                f.dns_a(id, &[&format!("127.0.0.{}", 2 + k % n)]);
            }
            let db_start: f64 =
                f.pg.psql("SELECT extract(epoch from clock_timestamp())")
                    .trim()
                    .parse()
                    .unwrap();
            for i in 0..n {
                f.start_daemon(i, &domains);
            }
            f.wait("all served on all nodes", Duration::from_secs(180), |f| {
                f.all_served(&ids_ref)
            });
            // When the last node confirmed the last certificate (each install is noted once
            // HAProxy serves it), by PostgreSQL's clock: checking N x M handshakes from here
            // takes longer than the fleet does.
            let last_installed: f64 = f
                .pg
                .psql("SELECT extract(epoch from max(installed_at)) FROM haproxy_acme.installed")
                .trim()
                .parse()
                .unwrap();
            served.push(last_installed - db_start);
            for _ in 0..kills {
                let leader = f.wait_leader(Duration::from_secs(30));
                f.kill_daemon(leader);
                let killed = Instant::now();
                f.wait_leader(lease * 5);
                handover.push(killed.elapsed().as_secs_f64());
                f.start_daemon(leader, &domains);
            }
            eprintln!(
                "N={n} run {run}: served on all {:.2} s, handovers so far {handover:.2?}",
                served.last().unwrap()
            );
        }
        rows.push(format!(
            "| {n} | {certs} | {:.2} s | {:.2} s (max {:.2} s, {} kills) |",
            median(&mut served),
            median(&mut handover),
            handover.iter().cloned().fold(0.0, f64::max),
            handover.len()
        ));
    }
    println!(
        "| nodes | certificates | instances started to all served on all nodes (median) | handover after kill -9 of the leader, lease {} ms (median) |",
        lease.as_millis()
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
