//! Opening the sled database, past sled 0.34's one crash-recovery gap: a snapshot file it was
//! writing when the process died (`snap.<lsn>.generating`) is taken for a finished one.
//!
//! sled writes its page-table snapshot (only when it opens a database whose log grew since the
//! last snapshot) into `snap.<lsn>.generating`, syncs it and renames it to `snap.<lsn>`. Its reader
//! lists every `snap.` file except a `.in___motion` suffix it no longer writes, sorts them and
//! reads the last: a `.generating` file left by a kill sorts after the finished snapshot of the
//! same or an older position, and a short one is refused as corruption. Such a file holds
//! nothing the log and the finished snapshot do not: removing it gives exactly the disk a kill
//! just before the write began would have left, which sled recovers as any crash. So a
//! corruption error with such a file present removes it and opens once more; any other damage
//! is still refused.

use std::path::{Path, PathBuf};

/// The suffix sled 0.34 gives a snapshot it has not finished writing.
const UNFINISHED: &str = ".generating";

/// Opens the sled database in `path` with the store's settings.
pub(super) fn open(path: &Path) -> sled::Result<sled::Db> {
    match configured(path).open() {
        Err(sled::Error::Corruption { .. }) if !unfinished_snapshots(path).is_empty() => {
            for file in unfinished_snapshots(path) {
                tracing::warn!(
                    file = %file.display(),
                    "removing a snapshot sled was writing when the process was stopped (it is \
                     rebuilt from the store's log)"
                );
                std::fs::remove_file(&file).map_err(sled::Error::Io)?;
            }
            configured(path).open()
        }
        other => other,
    }
}

fn configured(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        // sled's page cache defaults to 1 GiB; records are small and read once at start.
        .cache_capacity(32 * 1024 * 1024)
        // Every write is flushed explicitly; no background flusher waking an idle daemon.
        .flush_every_ms(None)
}

/// The snapshot files in `path` that sled did not finish writing.
fn unfinished_snapshots(path: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap.") && n.ends_with(UNFINISHED))
        })
        .collect()
}

/// sled's newest finished snapshot in `path` and its log position.
#[cfg(test)]
pub(super) fn newest_snapshot(path: &Path) -> Option<(PathBuf, u64)> {
    let finished = std::fs::read_dir(path)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("snap.") && !name.ends_with(UNFINISHED)
        })
        .max()?;
    let name = finished.file_name()?.to_str()?;
    let lsn = u64::from_str_radix(name.trim_start_matches("snap."), 16).ok()?;
    Some((finished, lsn))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{filled, reopen};
    use super::super::STORE_DIR;
    use super::*;
    use crate::store::StoreError;

    /// A store as the daemon leaves it, opened once more so sled wrote a finished snapshot;
    /// its generation, and that snapshot's path and log position.
    fn snapshotted(dir: &Path) -> (u64, PathBuf, u64) {
        drop(filled(dir, 3));
        let store = reopen(dir).unwrap();
        let generation = store.generation().unwrap();
        drop(store);
        let (finished, lsn) = newest_snapshot(&dir.join(STORE_DIR))
            .expect("sled writes a snapshot when it opens a log that grew");
        (generation, finished, lsn)
    }

    #[test]
    fn a_snapshot_a_kill_left_unfinished_is_removed_and_the_store_opens_whole() {
        for (what, halves) in [("created, nothing written", 0), ("half written", 1)] {
            let dir = tempfile::tempdir().unwrap();
            let (generation, finished, lsn) = snapshotted(dir.path());
            let bytes = std::fs::read(&finished).unwrap();
            // What a kill leaves while sled writes its next snapshot, further on in the log.
            let store = dir.path().join(STORE_DIR);
            let unfinished = store.join(format!("snap.{:016X}{UNFINISHED}", lsn + 1));
            std::fs::write(&unfinished, &bytes[..bytes.len() * halves / 2]).unwrap();
            assert!(
                matches!(
                    configured(&store).open(),
                    Err(sled::Error::Corruption { .. })
                ),
                "{what}: sled alone takes it for its latest snapshot and refuses the store"
            );

            let reopened = reopen(dir.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(reopened.generation().unwrap(), generation, "{what}");
            let mut ids = Vec::new();
            reopened.for_each_record(|r| ids.push(r.id)).unwrap();
            assert_eq!(ids, ["s0.test", "s1.test", "s2.test"], "{what}");
            for id in &ids {
                assert!(reopened.certificate(id).unwrap().is_some(), "{what}: {id}");
            }
            assert!(
                !unfinished.exists(),
                "{what}: the unfinished snapshot is gone"
            );
        }
    }

    #[test]
    fn a_damaged_finished_snapshot_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, finished, _) = snapshotted(dir.path());
        let len = std::fs::metadata(&finished).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&finished)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        match reopen(dir.path()) {
            Err(StoreError::Damaged { detail, .. }) => {
                assert!(detail.starts_with("sled cannot read it"), "{detail}")
            }
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("a damaged snapshot was read as if whole"),
        }
        assert!(finished.exists(), "a finished snapshot is never removed");
    }
}
