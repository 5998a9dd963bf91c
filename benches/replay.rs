//! What a start pays for sled's log (issue 16): a store of REPLAY_N certificate records is
//! rewritten REPLAY_WRITES times (in batches of 50, one durable write each, as a daemon's
//! renewals and reloads rewrite records), then closed and opened again, timed. sled 0.34 writes
//! the snapshot a start reads only when it opens a database and replays the whole log after it,
//! so the open's time grows with what was written since the last one. Two rows in one run:
//! `never reopened` (a command's store, and the daemon before `blocking/reopen.rs`) and `the
//! daemon` (`shed_pages`: the store opened again once 64 MiB of log were flushed since it was).
//! No CA, no HAProxy: the store alone, in a temporary directory on this disk.
//!
//! `cargo bench --bench replay` (release build). REPLAY_N (default 100000), REPLAY_WRITES
//! (default 1000000: ten rewrites of each record), REPLAY_RUNS (default 3). Prints a Markdown
//! table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::median;
use haproxy_acme::store::sled::SledStore;
use haproxy_acme::store::Store;

const BATCH: usize = 50;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_or("REPLAY_N", 100_000);
    let writes = env_or("REPLAY_WRITES", 1_000_000);
    let runs = env_or("REPLAY_RUNS", 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("never reopened", Vec::new(), Vec::new()),
        ("the daemon (reopened after 64 MiB)", Vec::new(), Vec::new()),
    ];
    for run in 0..runs {
        for (daemon, row) in rows.iter_mut().enumerate() {
            let (write_s, open_ms) = rt.block_on(one(n, writes, daemon == 1));
            eprintln!(
                "REPLAY run {run} {}: {writes} writes in {write_s:.1} s, then opened in {open_ms:.0} ms",
                row.0
            );
            row.1.push(write_s);
            row.2.push(open_ms);
        }
    }
    println!(
        "| {n} records, {writes} rewritten | writing (s) | opening again (ms) | runs |\n|---|---:|---:|---:|"
    );
    for (what, write_s, open_ms) in &rows {
        println!(
            "| {what} | {:.1} | {:.0} | {} |",
            median(write_s),
            median(open_ms),
            open_ms.len()
        );
    }
}

/// One store: filled, rewritten, closed, opened again. The writing's seconds and the open's ms.
async fn one(n: usize, writes: usize, daemon: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = 1_790_000_000;
    let (records, _) = common::issued_records_from(0, n, "https://127.0.0.1:9/dir", now);
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    {
        // Filled, then opened again (as the daemon's start does): the rewrites are what follows.
        let store = SledStore::open(&data).unwrap();
        (&store as &dyn Store).put_all(records).await.unwrap();
    }
    let sled = Arc::new(open(&data));
    if daemon {
        sled.shed_pages();
    }
    let store: Arc<dyn Store> = sled.clone();
    let t0 = Instant::now();
    for (k, batch) in (0..writes / BATCH).zip(ids.chunks(BATCH).cycle()) {
        let stamp = now + 1 + k as i64;
        store
            .update_some(
                batch.to_vec(),
                Box::new(move |_, r| {
                    let mut r = r?.clone();
                    r.updated_at = stamp;
                    Some(r)
                }),
            )
            .await
            .unwrap();
    }
    let write_s = t0.elapsed().as_secs_f64();
    // A reopen the last writes started runs on; it is done well within this.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(store);
    drop(sled);
    let (store, open_ms) = open_timed(&data);
    let store: &dyn Store = &store;
    assert_eq!(store.records().await.unwrap().len(), n);
    (write_s, open_ms)
}

fn open(data: &std::path::Path) -> SledStore {
    open_timed(data).0
}

/// Opens the store, again while the one just dropped lets go of its lock (sled's threads end
/// after the drop): the store and the ms of the open that succeeded.
fn open_timed(data: &std::path::Path) -> (SledStore, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t0 = Instant::now();
        match SledStore::open(data) {
            Ok(s) => return (s, t0.elapsed().as_secs_f64() * 1000.0),
            Err(e) if Instant::now() < deadline => {
                eprintln!("REPLAY: {e}; again");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
