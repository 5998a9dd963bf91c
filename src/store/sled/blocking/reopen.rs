//! The daemon's store opened again while it runs, for two reasons: after a pass over many
//! records (to drop the pages it read) and after much was written since it was last opened (so
//! that the next start, after a stop or a crash, replays little of sled's log).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Broken, Inner, Shared, SledStore};

/// A pass over this many records or more is followed by opening the store again
/// ([`SledStore::shed_after`]).
pub(super) const SHED_AFTER: usize = 10_000;

/// The bytes of sled's log flushed since the store was opened after which it is opened again
/// ([`Shared::note_written`]).
pub(super) const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Why the store is opened again (its log line).
#[derive(Clone, Copy)]
pub(super) enum Why {
    /// A pass over many records read their pages.
    Pass,
    /// Much was written since the last open.
    Written,
}

impl SledStore {
    /// After a pass over `n` records: when they are many, the database is opened again, which
    /// drops every page the pass read. sled 0.34 counts only written pages towards its cache
    /// limit and never evicts a page it only read, so one pass over 100,000 records kept ~110
    /// MiB of nodes (heaptrack, BENCHMARKS.md) for good; opening again takes ~0.1 s at 100,000
    /// records, ~1 s at 1,000,000 (its debug log line), and loses nothing (every write is
    /// flushed).
    /// Not waited for: a call meanwhile waits for the database, not the pass's caller. Only
    /// once [`SledStore::shed_pages`] asked for it.
    pub(super) fn shed_after(&self, n: usize) {
        if n >= SHED_AFTER && self.shared.sheds.load(Ordering::Relaxed) {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.reopen(Why::Pass));
        }
    }

    /// Opens the database again, not waited for, when a write found it due
    /// ([`Shared::note_written`]).
    pub(super) fn checkpoint_if_due(&self) {
        if self.shared.checkpoint_due.swap(false, Ordering::Relaxed) {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.reopen(Why::Written));
        }
    }
}

impl Shared {
    /// After a write to `inner`: asks for one reopen once its log since it was opened passed
    /// [`CHECKPOINT_BYTES`]. sled 0.34 writes the snapshot a start reads (its page table, up
    /// to a log position) only when it opens a database, and replays the log after that
    /// position at the next open: a daemon up for months replays what it wrote since its
    /// start, bounded only by sled's segment reuse. After ten rewrites of each of 100,000
    /// records the next open took 112 ms, 53 ms with this (`benches/replay.rs`). Only once
    /// [`SledStore::shed_pages`] asked for it (the daemon).
    pub(super) fn note_written(&self, inner: &Inner) {
        if self.sheds.load(Ordering::Relaxed)
            && inner.flushed.load(Ordering::Relaxed)
                >= self.checkpoint_bytes.load(Ordering::Relaxed)
            && !inner.checkpoint_asked.swap(true, Ordering::Relaxed)
        {
            self.checkpoint_due.store(true, Ordering::Relaxed);
        }
    }

    /// Drops the open database and opens it again, then gives the freed memory back to the
    /// system. A failed open leaves the store broken, as after a failed write:
    /// [`Shared::heal`] tries again.
    pub(super) fn reopen(&self, why: Why) {
        let t0 = Instant::now();
        let mut state = self.write();
        if state.broken.is_some() || state.inner.is_none() {
            return;
        }
        let flushed = state
            .inner
            .as_ref()
            .map_or(0, |i| i.flushed.load(Ordering::Relaxed));
        state.inner = None;
        match Inner::open(&self.data_dir) {
            Ok(inner) => {
                state.inner = Some(inner);
                self.shed_count.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the store again; retrying");
                state.broken = Some(Broken {
                    error: e.to_string(),
                    last_try: Some(Instant::now()),
                });
            }
        }
        drop(state);
        crate::memory::trim();
        let ms = t0.elapsed().as_millis() as u64;
        match why {
            Why::Pass => tracing::debug!(
                ms,
                "store opened again to drop the pages a pass over every record read"
            ),
            Why::Written => tracing::info!(
                ms,
                log_mib = flushed >> 20,
                "store opened again after much was written, so that a start replays little of its log"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use haproxy_acme_state::{KeyType, Record};

    use super::super::super::{open::newest_snapshot, STORE_DIR};
    use super::*;
    use crate::store::{Change, Store};

    /// Puts a new record `id`: one durable write.
    async fn put(store: &Arc<dyn Store>, id: &str) {
        let r = Record::new(vec![id.to_string()], KeyType::EcdsaP256, 1);
        store
            .update(id, move |_| (Change::Put(r), ()))
            .await
            .unwrap();
    }

    /// Puts records one durable write each, ids from `from` on, until the store was opened
    /// again `sheds` times: how many.
    async fn write_until(
        sled: &SledStore,
        store: &Arc<dyn Store>,
        from: usize,
        sheds: u64,
    ) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut written = 0;
        while sled.sheds() < sheds {
            assert!(Instant::now() < deadline, "{written} writes and no reopen");
            put(store, &format!("w{}.test", from + written)).await;
            written += 1;
        }
        written
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn much_written_opens_the_store_again_so_a_start_replays_little_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledStore::open(dir.path()).unwrap());
        sled.shed_pages();
        let checkpoint = 64 << 10;
        sled.shared
            .checkpoint_bytes
            .store(checkpoint, Ordering::Relaxed);
        let store: Arc<dyn Store> = sled.clone();
        let store_dir = dir.path().join(STORE_DIR);
        let before = newest_snapshot(&store_dir).map_or(0, |(_, lsn)| lsn);

        let first = write_until(&sled, &store, 0, 1).await;
        // The snapshot sled wrote as it opened again covers what was written before.
        let (_, after) = newest_snapshot(&store_dir).expect("a snapshot");
        assert!(
            after >= before + checkpoint,
            "the snapshot moved from {before} to {after} after {first} writes"
        );
        // Counted again from the reopen: the next one is as far away.
        let second = write_until(&sled, &store, first, 2).await;
        assert!(
            second * 2 >= first,
            "{first} writes to the first reopen, {second} to the second"
        );
        let all = store.records().await.unwrap();
        assert_eq!(all.len(), first + second, "every write kept across both");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commands_store_is_never_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledStore::open(dir.path()).unwrap());
        sled.shared.checkpoint_bytes.store(1, Ordering::Relaxed);
        let store: Arc<dyn Store> = sled.clone();
        for i in 0..20 {
            put(&store, &format!("c{i}.test")).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sled.sheds(), 0);
    }
}
