//! What a read of the wanted set keeps to read the next one by what changed ([`Index`]):
//! DOMAINS_FILE's content (compressed, [`Packed`]) and a hash of each configured name. A reload
//! that edits a few lines parses those lines only ([`WantedSet::read_changes`]), and `domains
//! add` checks its names against the configured ones without parsing DOMAINS_FILE
//! ([`WantedSet::check`]). At 100,000 certificates a parse is ~40 ms; the index is about a
//! quarter of the file's size and 8 bytes a name (~2.7 MiB). The file is compared with the
//! index's copy a block at a time ([`Packed::diverge`]): only the lines that differ are kept in
//! memory, and only the blocks of the copy that changed are packed again.
//! Whatever it cannot answer exactly (a problem to report, two names of one hash, many
//! changes) is read in full, so every answer is the one a read in full gives.

use std::hash::Hasher;
use std::sync::PoisonError;

use fxhash::FxHashSet;
pub(super) use packed::{Divergence, Packed};

use super::{parse_added, parse_domains_file, read_file, WantedSet};
use crate::config::names::{CertId, CertSpec};

/// Above this many bytes of changed lines (before and after) a re-read is in full.
const MAX_CHANGED_BYTES: usize = 256 * 1024;

/// Up to this many names removed and added, the index's names are edited in place (a few under
/// test, so that the property tests take both ways).
const IN_PLACE_MAX: usize = if cfg!(test) { 4 } else { 64 };

/// The last read that was valid: its sources' digest, DOMAINS_FILE's content, the names.
pub(super) struct Index {
    /// The digest of the sources it is of (`WantedSet::sources`).
    sources: u64,
    /// DOMAINS_FILE's content (empty without one).
    content: Packed,
    /// A hash of each name of DOMAINS and DOMAINS_FILE (`name_hash`), sorted; no two alike.
    names: Vec<u64>,
    /// How many certificates DOMAINS and DOMAINS_FILE list.
    configured: usize,
    /// The certificates added at runtime.
    added: Vec<Vec<String>>,
}

/// What [`WantedSet::read_changes`] read.
pub enum Reading {
    /// The sources are those last applied, byte for byte.
    Unchanged,
    /// Every wanted certificate, read in full.
    All(Vec<CertSpec>),
    /// What may have changed since the sources last applied.
    Changes(Changes),
}

/// The certificates that may have changed since a read, and those no longer listed.
pub struct Changes {
    /// The certificates of the lines of DOMAINS_FILE that changed and every one added at
    /// runtime (some may be as they were).
    pub specs: Vec<CertSpec>,
    /// The certificates listed then and no longer.
    pub gone: Vec<CertId>,
    /// How many certificates are wanted now.
    pub total: usize,
}

/// How the names of an [`Index`] change with [`Changes`].
struct Update {
    /// The hashes of the names of the lines that changed, before.
    removed: FxHashSet<u64>,
    /// The hashes of the names of the lines that changed, after.
    added: FxHashSet<u64>,
    configured: usize,
}

/// A hash of a name for the index. SipHash, not FxHash: FxHash gives names that differ in a few
/// characters one hash too often (2,464 pairs among the 200,000 names of `s<N>.example.test`
/// and `www.s<N>.example.test`), and an index with two names of one hash is not kept.
fn name_hash(name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(name.as_bytes());
    h.finish()
}

fn name_hashes(specs: &[CertSpec]) -> impl Iterator<Item = u64> + '_ {
    specs
        .iter()
        .flat_map(|s| s.names().iter())
        .map(|n| name_hash(n))
}

impl Index {
    /// The index of a valid read of digest `sources`: DOMAINS_FILE's `content`, the
    /// certificates of DOMAINS and DOMAINS_FILE (`configured`) and those `added`. `None` when
    /// two names share a hash (then every read is in full).
    pub(super) fn of(
        sources: u64,
        content: String,
        configured: &[CertSpec],
        added: &[Vec<String>],
    ) -> Option<Index> {
        let mut names: Vec<u64> = name_hashes(configured).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        Some(Index {
            sources,
            content: Packed::of(&content),
            names,
            configured: configured.len(),
            added: added.to_vec(),
        })
    }

    fn has(&self, name: u64) -> bool {
        self.names.binary_search(&name).is_ok()
    }

    /// The index after `update`, of `sources`.
    fn update(&mut self, sources: u64, added: &[Vec<String>], update: Update) {
        let mut new: Vec<u64> = update.added.into_iter().collect();
        new.sort_unstable();
        let names = if update.removed.len() + new.len() <= IN_PLACE_MAX {
            // A few names: removed and inserted where they are (a move of the vector's tail
            // each, ~2 ms at 2,000,000 names), not a new vector merged from the old one and a
            // look-up of every name in `removed` (~20 ms).
            let mut names = std::mem::take(&mut self.names);
            for name in &update.removed {
                if let Ok(i) = names.binary_search(name) {
                    names.remove(i);
                }
            }
            for name in new {
                if let Err(i) = names.binary_search(&name) {
                    names.insert(i, name);
                }
            }
            names
        } else {
            let mut names = Vec::with_capacity(self.names.len() + new.len());
            let mut new = new.into_iter().peekable();
            for &name in &self.names {
                if update.removed.contains(&name) {
                    continue;
                }
                while let Some(n) = new.next_if(|&n| n < name) {
                    names.push(n);
                }
                names.push(name);
            }
            names.extend(new);
            names
        };
        self.sources = sources;
        self.names = names;
        self.configured = update.configured;
        self.added = added.to_vec();
    }
}

impl WantedSet {
    /// Whether the wanted set is valid with `added` (`domains add`): the answer of
    /// `read(added)`, errors included; without parsing DOMAINS_FILE when it is as last read and
    /// no name of `added` is configured.
    pub fn check(&self, added: &[Vec<String>]) -> Result<(), Vec<String>> {
        let quick = {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            index.as_ref().is_some_and(|ix| {
                self.file_holds(&ix.content) && self.fit(ix, &Update::none(), added).is_some()
            })
        };
        if quick {
            return Ok(());
        }
        self.combine(&read_file(self.domains_file()), added)
            .map(drop)
    }

    /// Whether a read with `added` now is of the sources of digest `sources` (DOMAINS_FILE
    /// compared with the index's copy a block at a time: at 1,000,000 certificates the file is
    /// 44 MiB, and reading it into a new buffer to hash it costs more than comparing it).
    /// `false` when it cannot tell (no index, or one of other sources).
    pub fn still_reads_as(&self, sources: u64, added: &[Vec<String>]) -> bool {
        let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        index.as_ref().is_some_and(|ix| {
            ix.sources == sources
                && ix.added == added
                && self.domains.is_ok()
                && self.file_holds(&ix.content)
        })
    }

    /// Whether DOMAINS_FILE holds exactly `content` (empty without a DOMAINS_FILE); `false`
    /// when it cannot be read.
    fn file_holds(&self, content: &Packed) -> bool {
        match self.domains_file() {
            None => content.is_empty(),
            Some(path) => {
                std::fs::metadata(path).is_ok_and(|m| m.len() == content.len() as u64)
                    && content
                        .diverge(path, None)
                        .is_ok_and(|d| d == Divergence::Same)
            }
        }
    }

    /// Like `read_since(added, Some(applied))`, by what changed: when the last read is of the
    /// sources of digest `applied` (what the caller applied), only the lines of DOMAINS_FILE
    /// that changed and the additions are parsed, unless more than about `max` certificates
    /// changed or there is a problem (the read in full reports it).
    pub fn read_changes(
        &self,
        added: &[Vec<String>],
        applied: u64,
        max: usize,
    ) -> Result<(u64, Reading), Vec<String>> {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ix) = index
            .as_mut()
            .filter(|ix| ix.sources == applied && self.domains.is_ok())
        {
            // DOMAINS_FILE compared with the copy the index keeps: what follows the first line
            // that differs is all that is read into memory. Every byte of the file goes into
            // the digest as it is read.
            let mut digest = self.digest_start().expect("DOMAINS is valid");
            let found = match self.domains_file() {
                None => Ok(Divergence::Same),
                Some(path) => ix.content.diverge(path, Some(&mut digest)),
            };
            if let Ok(found) = found {
                let (start, middle, tail) = match found {
                    Divergence::Same if ix.added == added => {
                        return Ok((applied, Reading::Unchanged));
                    }
                    Divergence::Same => (ix.content.len(), String::new(), 0),
                    Divergence::From {
                        start,
                        middle,
                        tail,
                    } => (start, middle, tail),
                };
                let digest = Self::digest_end(digest, self.domains_file().is_some(), added);
                if digest == applied {
                    return Ok((digest, Reading::Unchanged));
                }
                // The lines alike at the end, in whole blocks of the copy, were left out: only
                // the copy's blocks between them and `start` are decompressed.
                let end = ix.content.len() - tail;
                let old = text(ix.content.read(start, end));
                let now = &middle;
                let (s, old_end, new_end) = changed_lines(&old, now);
                if let Some((changes, update)) =
                    self.changes_since(ix, &old[s..old_end], &now[s..new_end], added, max)
                {
                    let new = &now.as_bytes()[s..new_end];
                    ix.content.replace(start + s, start + old_end, new);
                    ix.update(digest, added, update);
                    return Ok((digest, Reading::Changes(changes)));
                }
                // Read in full, from what was read and the copy.
                let path = self.domains_file();
                let content = text(ix.content.read(0, start))
                    + &middle
                    + &text(ix.content.read(end, ix.content.len()));
                drop(index);
                return self
                    .read_all(path.map(|p| (p, Ok(content))), added, digest)
                    .map(|s| (digest, Reading::All(s)));
            }
        }
        drop(index);
        let file = read_file(self.domains_file());
        let Some(digest) = self.sources(&file, added) else {
            return self
                .combine(&file, added)
                .map(|(s, _)| (0, Reading::All(s)));
        };
        if digest == applied {
            return Ok((digest, Reading::Unchanged));
        }
        self.read_all(file, added, digest)
            .map(|s| (digest, Reading::All(s)))
    }

    /// What changed from `ix` (whose lines `was` became `now`, the others alike) and `added`;
    /// `None` when that is for a read in full to say (too much, a problem, a name that may be
    /// listed twice).
    fn changes_since(
        &self,
        ix: &Index,
        was: &str,
        now: &str,
        added: &[Vec<String>],
        max: usize,
    ) -> Option<(Changes, Update)> {
        if was.len() + now.len() > MAX_CHANGED_BYTES {
            return None;
        }
        // The lines read last were valid; the new ones may not be.
        let was = parse_domains_file(was).ok()?;
        let now = parse_domains_file(now).ok()?;
        let added_was = parse_added(&ix.added).ok()?;
        if was.len() + now.len() + added_was.len() + added.len() > max {
            return None;
        }
        let mut update = Update {
            removed: name_hashes(&was).collect(),
            added: FxHashSet::default(),
            configured: ix.configured + now.len() - was.len(),
        };
        for name in name_hashes(&now) {
            let listed = ix.has(name) && !update.removed.contains(&name);
            if listed || !update.added.insert(name) {
                return None;
            }
        }
        if self.unvalidated(&now).next().is_some() {
            return None;
        }
        let added_now = self.fit(ix, &update, added)?;
        let gone = {
            let listed: FxHashSet<&str> = now
                .iter()
                .chain(&added_now)
                .map(|s| s.id().as_str())
                .collect();
            was.iter()
                .chain(&added_was)
                .map(CertSpec::id)
                .filter(|id| !listed.contains(id.as_str()))
                .cloned()
                .collect()
        };
        let total = update.configured + added_now.len();
        let mut specs = now;
        specs.extend(added_now);
        Some((Changes { specs, gone, total }, update))
    }

    /// The certificates `added` when they fit the configured ones of `ix` changed by `update`:
    /// each valid, none listing a configured name; `None` otherwise (or for a name that only
    /// shares a hash with one).
    fn fit(&self, ix: &Index, update: &Update, added: &[Vec<String>]) -> Option<Vec<CertSpec>> {
        let specs = parse_added(added).ok()?;
        let configured = |name: u64| {
            (ix.has(name) && !update.removed.contains(&name)) || update.added.contains(&name)
        };
        if name_hashes(&specs).any(configured) || self.unvalidated(&specs).next().is_some() {
            return None;
        }
        Some(specs)
    }
}

impl Update {
    fn none() -> Update {
        Update {
            removed: FxHashSet::default(),
            added: FxHashSet::default(),
            configured: 0,
        }
    }
}

/// Bytes of the index's copy of DOMAINS_FILE that start and end at a line's start or the end:
/// text, as the whole file was when it was read.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("a copy of valid text cut at line starts")
}

/// Where `old` and `new` differ, in whole lines: `old[start..old_end]` became
/// `new[start..new_end]`, the lines before and after being the same.
fn changed_lines(old: &str, new: &str) -> (usize, usize, usize) {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    let same = common_prefix(o, n);
    let start = o[..same]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let mut tail = common_prefix_rev(&o[start..], &n[start..]);
    // The common tail must start a line in both; else it starts after its first line end.
    let starts_line = |b: &[u8], at: usize| at == start || b[at - 1] == b'\n';
    if !(starts_line(o, o.len() - tail) && starts_line(n, n.len() - tail)) {
        tail = match o[o.len() - tail..].iter().position(|&b| b == b'\n') {
            Some(i) => tail - i - 1,
            None => 0,
        };
    }
    (start, o.len() - tail, n.len() - tail)
}

/// How many bytes `a` and `b` start with alike (compared a block at a time).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let len = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= len && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    i + a[i..len]
        .iter()
        .zip(&b[i..len])
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many bytes `a` and `b` end with alike.
fn common_prefix_rev(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let len = a.len().min(b.len());
    let (a, b) = (&a[a.len() - len..], &b[b.len() - len..]);
    let mut i = 0;
    while i + BLOCK <= len && a[len - i - BLOCK..len - i] == b[len - i - BLOCK..len - i] {
        i += BLOCK;
    }
    i + a[..len - i]
        .iter()
        .rev()
        .zip(b[..len - i].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

mod packed;
#[cfg(test)]
mod props;
