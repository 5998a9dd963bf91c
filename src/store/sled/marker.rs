//! The store's marker, `DATA_DIR/store-marker.json` (0600, written atomically beside the sled
//! directory): the generation the store had reached when it was last written. The store counts
//! its generations itself (`settings/generation`), one more with every write that adds, stores or
//! removes a certificate (new records, a certificate with its key, an adoption, a deletion, the
//! runtime additions), and the marker is written after that write is flushed. So the marker is
//! never ahead of an intact store, and a store behind its marker lost writes: sled recovers an
//! emptied, truncated or half-overwritten log as the longest intact prefix, silently, often as an
//! empty store (measured with sled 0.34.7: only a garbage `conf` file is an error).
//!
//! A store opened without a marker (new, restored from a snapshot, written by an older version,
//! or DATA_DIR wiped) stays *unmarked*, and no marker is written, until it is sealed: by the
//! daemon once the store passed its check against the certificate directory, or by `rebuild`.
//! So a refused start, or a command run in between, never makes a wiped store look trusted.

use std::path::{Path, PathBuf};

use haproxy_acme_state::UnixTime;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::sync::atomic::Ordering;

use super::{Inner, GENERATION};
use crate::store::StoreError;

/// The marker's file name in DATA_DIR.
pub const FILE: &str = "store-marker.json";
/// The only format written and read.
const FORMAT: u32 = 1;

/// What the marker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    /// The store's generation when the marker was written.
    pub generation: u64,
    pub written_at: UnixTime,
}

/// What to do with a store at `generation` and its marker.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// They agree.
    Fine,
    /// No marker yet (a new store, or one an older version wrote), or the store is ahead (a
    /// crash between the store's flush and the marker's write): write it.
    Write,
    /// The store is behind its marker: it lost writes. The text says how far.
    Damaged(String),
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads the marker of `data_dir`: `Ok(None)` when there is none, `Err` (why) when it cannot be
/// read or is not a marker of this format.
pub fn read(data_dir: &Path) -> Result<Option<Marker>, String> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{} cannot be read: {e}", path.display())),
    };
    match serde_json::from_slice::<Marker>(&bytes) {
        Ok(m) if m.format == FORMAT => Ok(Some(m)),
        Ok(m) => Err(format!(
            "{} has format {}, this build reads {FORMAT}",
            path.display(),
            m.format
        )),
        Err(e) => Err(format!(
            "{} is not a store marker ({e}); if the store is known to be intact, remove the file \
             and it is written anew",
            path.display()
        )),
    }
}

/// Writes the marker for `generation`, atomically, 0600.
pub fn write(data_dir: &Path, generation: u64, now: UnixTime) -> Result<(), String> {
    let marker = Marker {
        format: FORMAT,
        generation,
        written_at: now,
    };
    let json = serde_json::to_vec(&marker).expect("a marker serializes");
    crate::installer::write_atomic(data_dir, FILE, &json).map_err(|e| e.to_string())
}

/// Takes group and other permissions from the sled directory and everything in it (it holds
/// keys; files created before the process set its umask, or by an older version, were 0644).
pub fn make_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700));
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        }
    }
}

/// Compares the store's `generation` (`records`: how many it holds) with its marker.
pub fn judge(marker: Option<&Marker>, generation: u64, records: impl FnOnce() -> usize) -> Verdict {
    match marker {
        None => Verdict::Write,
        Some(m) if m.generation == generation => Verdict::Fine,
        Some(m) if m.generation < generation => Verdict::Write,
        Some(m) => {
            let found = match (generation, records()) {
                (0, 0) => "is empty".to_string(),
                (g, n) => format!("is at generation {g} ({n} certificate records)"),
            };
            Verdict::Damaged(format!(
                "{FILE} says the store had reached generation {} (written at {}), but the store \
                 {found}: writes were lost (the store was emptied, truncated or overwritten, or \
                 replaced by an older copy)",
                m.generation,
                haproxy_acme_state::dump::rfc3339(m.written_at)
            ))
        }
    }
}

impl Inner {
    /// Refuses a store behind its marker (see the module's comment); writes the marker when it
    /// is behind; notes a store without one as unmarked. `path`: the sled directory, for the
    /// error.
    pub(super) fn check_marker(&self, path: &Path) -> Result<(), StoreError> {
        // Files an older version (or another umask) created readable by others.
        make_private(path);
        let generation = self.generation()?;
        let found = read(&self.data_dir).map_err(|detail| StoreError::Damaged {
            path: path.to_path_buf(),
            detail,
        })?;
        let mut marked = self.lock_marked();
        if found.is_none() {
            self.unmarked.store(true, Ordering::Relaxed);
            *marked = generation;
            return Ok(());
        }
        match judge(found.as_ref(), generation, || self.records.len()) {
            Verdict::Fine => *marked = generation,
            Verdict::Write => self.mark(&mut marked, generation),
            Verdict::Damaged(detail) => {
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    detail,
                })
            }
        }
        Ok(())
    }

    /// The store's generation (see `marker`): 0 for a new store.
    pub(super) fn generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .get_bytes(&self.settings, GENERATION)?
            .map_or(0, |v| decode_generation(&v)))
    }

    /// One more generation, written (not flushed) outside any transaction; returns it. The caller
    /// holds `lock_marked` (as for `bump_in`).
    pub(super) fn bump(&self) -> Result<u64, StoreError> {
        self.settings
            .update_and_fetch(GENERATION, |old| {
                Some(
                    (old.map_or(0, decode_generation) + 1)
                        .to_be_bytes()
                        .to_vec(),
                )
            })
            .map_err(|e| self.write_err(e))
            .map(|v| v.map_or(0, |v| decode_generation(&v)))
    }

    /// Writes the marker of an unmarked store: from now on it is judged by it.
    pub(super) fn seal(&self) -> Result<(), StoreError> {
        let mut marked = self.lock_marked();
        self.unmarked.store(false, Ordering::Relaxed);
        let generation = self.generation()?;
        *marked = 0;
        self.mark(&mut marked, generation);
        Ok(())
    }

    /// Held from a write that bumps the generation until its marker is written: one generation
    /// at a time, so the store's generation and the marker's only grow.
    pub(super) fn lock_marked(&self) -> std::sync::MutexGuard<'_, u64> {
        self.marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the marker for `generation` once the store holding it is flushed (`marked`: the
    /// guard of `lock_marked`). A marker that cannot be written stays behind the store, which is
    /// safe (it only catches less), so it is logged, not raised: the store's write succeeded.
    pub(super) fn mark(&self, marked: &mut u64, generation: u64) {
        if generation < *marked || self.unmarked.load(Ordering::Relaxed) {
            return;
        }
        match write(&self.data_dir, generation, crate::clock::unix_now()) {
            Ok(()) => *marked = generation,
            Err(e) => tracing::warn!(error = %e, "cannot write the store marker"),
        }
    }
}

/// One more generation, inside a transaction; returns it. The caller holds `lock_marked`.
pub(super) fn bump_in(
    settings: &TransactionalTree,
) -> Result<u64, ConflictableTransactionError<()>> {
    let next = settings
        .get(GENERATION)?
        .map_or(0, |v| decode_generation(&v))
        + 1;
    settings.insert(GENERATION, &next.to_be_bytes())?;
    Ok(next)
}

/// A stored generation; anything but 8 bytes reads as 0, behind any marker, so it is reported.
fn decode_generation(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_behind_its_marker_is_damaged_and_nothing_else_is() {
        let m = Marker {
            format: FORMAT,
            generation: 5,
            written_at: 0,
        };
        assert_eq!(judge(None, 0, || 0), Verdict::Write);
        assert_eq!(judge(Some(&m), 5, || unreachable!()), Verdict::Fine);
        assert_eq!(judge(Some(&m), 6, || unreachable!()), Verdict::Write);
        let Verdict::Damaged(why) = judge(Some(&m), 0, || 0) else {
            panic!("an emptied store is damage");
        };
        assert!(
            why.contains("generation 5") && why.contains("the store is empty"),
            "{why}"
        );
        let Verdict::Damaged(why) = judge(Some(&m), 3, || 2) else {
            panic!("a truncated store is damage");
        };
        assert!(
            why.contains("is at generation 3 (2 certificate records)"),
            "{why}"
        );
    }

    #[test]
    fn the_marker_round_trips_privately_and_garbage_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        write(dir.path(), 7, 1_700_000_000).unwrap();
        let m = read(dir.path()).unwrap().unwrap();
        assert_eq!((m.generation, m.written_at), (7, 1_700_000_000));
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(path(dir.path()), b"\x00garbage").unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.contains(FILE) && e.contains("not a store marker"), "{e}");
    }
}
