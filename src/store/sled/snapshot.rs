//! Snapshots of the sled store (`backup FILE`, `restore FILE`): every tree, keys and account
//! credentials included, as JSON lines: a header naming the format, one line per entry (tree,
//! key and value in base64), and an end line with the entry count and the SHA-256 of everything
//! before it, so a truncated, damaged or foreign file is refused before anything is touched.
//! A snapshot is taken under the record lock and the additions' lock (records, chains and keys
//! change together only under the first), so it is consistent; it is built in memory (a few KiB
//! per certificate).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use haproxy_acme_state::UnixTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    current_key, decode, marker, write_err, Inner, SledStore, ACCOUNTS, CERTS, GENERATION, KEYS,
    LEDGER, RECORDS, SETTINGS, STORE_DIR,
};
use crate::store::StoreError;

/// The first line's `snapshot` value: what makes a file one of ours.
const MAGIC: &str = "haproxy-acme store";
const VERSION: u32 = 1;
/// Every tree of the store.
const TREES: [&str; 6] = [RECORDS, CERTS, KEYS, ACCOUNTS, LEDGER, SETTINGS];

#[derive(Serialize, Deserialize)]
struct Header {
    snapshot: String,
    version: u32,
    created_at: UnixTime,
    generation: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    tree: String,
    key: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
struct End {
    entries: usize,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: End,
}

/// A snapshot read back and checked.
pub struct Snapshot {
    pub created_at: UnixTime,
    pub generation: u64,
    /// (index into `TREES`, key, value)
    entries: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

// Key material: never print it.
impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("created_at", &self.created_at)
            .field("generation", &self.generation)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Snapshot {
    fn tree(&self, name: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
        let i = TREES.iter().position(|t| *t == name).expect("a known tree");
        self.entries
            .iter()
            .filter(move |e| e.0 == i)
            .map(|e| (e.1.as_slice(), e.2.as_slice()))
    }

    /// One line on what it holds: certificates, keys, accounts, generation, when taken.
    pub fn summary(&self) -> String {
        let records = self.tree(RECORDS).count();
        let keys: Vec<&[u8]> = self.tree(KEYS).map(|(k, _)| k).collect();
        let missing: Vec<String> = self
            .tree(RECORDS)
            .filter_map(|(k, v)| {
                let id = String::from_utf8_lossy(k);
                let has_cert = decode(&id, v).ok()?.cert.is_some();
                let key = current_key(&id);
                (has_cert && !keys.contains(&key.as_bytes())).then(|| id.into_owned())
            })
            .collect();
        let mut s = format!(
            "{records} certificate records, {} keys, {} ACME accounts (store generation {}, taken \
             at {})",
            keys.len(),
            self.tree(ACCOUNTS).count(),
            self.generation,
            haproxy_acme_state::dump::rfc3339(self.created_at)
        );
        if !missing.is_empty() {
            s.push_str(&format!(
                "; warning: no key for the certificate of {} (`retry ID` orders a new one)",
                missing.join(", ")
            ));
        }
        s
    }
}

impl Inner {
    /// The trees in `TREES` order.
    fn trees(&self) -> [&sled::Tree; 6] {
        [
            &self.records,
            &self.certs,
            &self.keys,
            &self.accounts,
            &self.ledger,
            &self.settings,
        ]
    }

    /// Every tree as a snapshot file's bytes, taken under the record and additions locks.
    pub(super) fn export(&self, now: UnixTime) -> Result<Vec<u8>, StoreError> {
        let _records = self.lock_records();
        let _added = self
            .added_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let header = Header {
            snapshot: MAGIC.into(),
            version: VERSION,
            created_at: now,
            generation: self.generation()?,
        };
        let mut out = line(&header);
        let mut entries = 0;
        let trees = self.trees();
        for (name, tree) in TREES.iter().zip(trees) {
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| StoreError::Corrupt {
                    id: format!("tree {name}"),
                    detail: e.to_string(),
                })?;
                out.extend(line(&Line {
                    tree: (*name).into(),
                    key: B64.encode(&k),
                    value: B64.encode(&v),
                }));
                entries += 1;
            }
        }
        let sha256 = hex(&Sha256::digest(&out));
        out.extend(line(&Trailer {
            end: End { entries, sha256 },
        }));
        Ok(out)
    }

    /// Writes every entry of `snap` into this (new, empty) store and flushes.
    fn import(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let trees = self.trees();
        for (i, tree) in trees.into_iter().enumerate() {
            let mut batch = sled::Batch::default();
            for (t, k, v) in &snap.entries {
                if *t == i {
                    batch.insert(k.as_slice(), v.as_slice());
                }
            }
            tree.apply_batch(batch).map_err(write_err)?;
        }
        self.flush()
    }
}

impl SledStore {
    /// Creates the store of `data_dir` from `snap`. Refused when a store is there: move it aside
    /// first ([`SledStore::move_aside`]). It is left unmarked, so the daemon's next start checks
    /// it against the certificate directory ([`SledStore::unmarked`]): certificates issued after
    /// the snapshot are not in it.
    pub fn restore(data_dir: &Path, snap: &Snapshot) -> Result<(), StoreError> {
        let path = data_dir.join(STORE_DIR);
        if path.exists() || marker::path(data_dir).exists() {
            return Err(StoreError::Open {
                path,
                detail: "a store is there; it must be moved aside first".into(),
            });
        }
        Inner::open(data_dir)?.import(snap)
    }

    /// Moves the store of `data_dir` (the sled directory and its marker) into a new directory
    /// `DATA_DIR/<label>-<time>/`, never deleting anything. `None`: there was no store. The
    /// store must not be open (see [`SledStore::in_use`]).
    pub fn move_aside(
        data_dir: &Path,
        label: &str,
        now: UnixTime,
    ) -> std::io::Result<Option<PathBuf>> {
        use std::os::unix::fs::DirBuilderExt;
        let store = data_dir.join(STORE_DIR);
        let mark = marker::path(data_dir);
        if !store.exists() && !mark.exists() {
            return Ok(None);
        }
        let stamp = haproxy_acme_state::dump::rfc3339(now).replace([':', '-'], "");
        let mut aside = data_dir.join(format!("{label}-{stamp}"));
        let mut n = 1;
        while aside.exists() {
            n += 1;
            aside = data_dir.join(format!("{label}-{stamp}-{n}"));
        }
        std::fs::DirBuilder::new().mode(0o700).create(&aside)?;
        if store.exists() {
            std::fs::rename(&store, aside.join(STORE_DIR))?;
        }
        if mark.exists() {
            std::fs::rename(&mark, aside.join(marker::FILE))?;
        }
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(Some(aside))
    }

    /// True when another process holds the store of `data_dir` open (sled's exclusive lock on
    /// its `db` file: a running daemon, or a command reading the store).
    pub fn in_use(data_dir: &Path) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        let db = data_dir.join(STORE_DIR).join("db");
        let file = match std::fs::File::open(&db) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // SAFETY: flock(2) on a descriptor we own; the lock goes with the file when it closes.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(true),
            _ => Err(e),
        }
    }
}

fn line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(value).expect("snapshot lines serialize");
    v.push(b'\n');
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a snapshot file's bytes, refusing (with the reason) anything that is not a complete,
/// intact snapshot of this format whose records this build can read.
pub fn parse(bytes: &[u8]) -> Result<Snapshot, String> {
    let foreign = "it is not a haproxy-acme snapshot (`haproxy-acme backup FILE` writes them)";
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let header: Header = serde_json::from_slice(first).map_err(|_| foreign.to_string())?;
    if header.snapshot != MAGIC {
        return Err(foreign.into());
    }
    if header.version != VERSION {
        return Err(format!(
            "it is a snapshot of format {}, this build reads {VERSION}",
            header.version
        ));
    }
    let truncated = "it is truncated (no end line): the copy is incomplete";
    let body_end = match bytes.strip_suffix(b"\n") {
        Some(b) => b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1),
        None => return Err(truncated.into()),
    };
    let trailer: Trailer =
        serde_json::from_slice(&bytes[body_end..]).map_err(|_| truncated.to_string())?;
    let body = &bytes[..body_end];
    if hex(&Sha256::digest(body)) != trailer.end.sha256 {
        return Err("it is damaged: its SHA-256 does not match its end line".into());
    }
    let mut entries = Vec::new();
    for (n, l) in body.split(|b| *b == b'\n').enumerate().skip(1) {
        if l.is_empty() {
            continue;
        }
        let bad = |why: String| format!("line {}: {why}", n + 1);
        let l: Line = serde_json::from_slice(l).map_err(|e| bad(e.to_string()))?;
        let tree = TREES
            .iter()
            .position(|t| *t == l.tree)
            .ok_or_else(|| bad(format!("unknown tree {:?}", l.tree)))?;
        let key = B64.decode(&l.key).map_err(|e| bad(e.to_string()))?;
        let value = B64.decode(&l.value).map_err(|e| bad(e.to_string()))?;
        if TREES[tree] == RECORDS {
            decode(&String::from_utf8_lossy(&key), &value).map_err(|e| bad(e.to_string()))?;
        }
        entries.push((tree, key, value));
    }
    if entries.len() != trailer.end.entries {
        return Err(format!(
            "it holds {} entries, its end line says {}",
            entries.len(),
            trailer.end.entries
        ));
    }
    let snap = Snapshot {
        created_at: header.created_at,
        generation: header.generation,
        entries,
    };
    let stored = snap
        .tree(SETTINGS)
        .find(|(k, _)| *k == GENERATION.as_bytes())
        .map_or(0, |(_, v)| {
            <[u8; 8]>::try_from(v).map_or(0, u64::from_be_bytes)
        });
    if stored != header.generation {
        return Err(format!(
            "its header says generation {}, its settings {stored}",
            header.generation
        ));
    }
    Ok(snap)
}
