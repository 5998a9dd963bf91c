//! DOMAINS_FILE's copy as the index keeps it ([`Packed`]): blocks of whole lines, of up to
//! [`BLOCK`] bytes (or one longer line), each LZ4-compressed with the xxh3-128 hash of its
//! bytes. At 1,000,000 certificates the file is 44 MiB and the blocks ~11 MiB (its lines
//! compress ~3.9 times). A comparison with the file hashes the file's bytes block by block
//! against the blocks' hashes and decompresses only the block where they first differ; the lines
//! alike at the end are found by the hashes of the last blocks as the file streams by
//! ([`rest::Rest`]), so only the lines that differ are kept; an edit packs again only the blocks
//! it touches.

use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

mod rest;
use rest::Rest;

/// The most bytes of a block, unless it is one longer line (a few bytes under test, so that the
/// tests cross block boundaries).
pub(super) const BLOCK: usize = if cfg!(test) { 13 } else { 256 * 1024 };

struct Block {
    /// Its bytes before compression.
    len: u32,
    /// xxh3-128 of its bytes.
    hash: u128,
    packed: Box<[u8]>,
}

impl Block {
    fn of(bytes: &[u8]) -> Block {
        Block {
            len: u32::try_from(bytes.len()).expect("a block is small"),
            hash: xxh3_128(bytes),
            packed: lz4_flex::block::compress(bytes).into_boxed_slice(),
        }
    }

    fn unpack(&self) -> Vec<u8> {
        lz4_flex::block::decompress(&self.packed, self.len as usize)
            .expect("a block decompresses to what was compressed")
    }
}

/// `bytes` cut into blocks of whole lines: each ends with a line end (but the last, when `bytes`
/// does not) and holds up to [`BLOCK`] bytes, or one line that is longer.
fn blocks(bytes: &[u8]) -> impl Iterator<Item = Block> + '_ {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(BLOCK);
        if end < rest.len() {
            end = match rest[..end].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest[end..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| end + i + 1),
            };
        }
        let (block, after) = rest.split_at(end);
        rest = after;
        Some(Block::of(block))
    })
}

/// A text kept compressed, in blocks of whole lines: every block but the last ends with a line
/// end, so every block starts a line.
#[derive(Default)]
pub(in crate::config::wanted) struct Packed {
    blocks: Vec<Block>,
    /// Where each block starts in the text (one more entry: the text's length).
    starts: Vec<usize>,
}

/// Where a file stops holding a [`Packed`] text ([`Packed::diverge`]).
#[derive(Debug, PartialEq)]
pub(in crate::config::wanted) enum Divergence {
    /// Byte for byte the same.
    Same,
    /// The text's bytes up to `start` (the start of a line), then `middle`, then the text's
    /// last `tail` bytes (none, or whole blocks starting a line in the file too).
    From {
        start: usize,
        middle: String,
        tail: usize,
    },
}

impl Packed {
    pub(in crate::config::wanted) fn of(text: &str) -> Packed {
        let mut p = Packed {
            blocks: blocks(text.as_bytes()).collect(),
            starts: Vec::new(),
        };
        p.count();
        p
    }

    fn count(&mut self) {
        self.starts.clear();
        self.starts.reserve_exact(self.blocks.len() + 1);
        let mut at = 0;
        self.starts.push(0);
        for b in &self.blocks {
            at += b.len as usize;
            self.starts.push(at);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block holding byte `at` (the last block for the text's end).
    fn block_of(&self, at: usize) -> usize {
        self.starts
            .partition_point(|&s| s <= at)
            .saturating_sub(1)
            .min(self.blocks.len().saturating_sub(1))
    }

    /// The text's bytes `from..to`.
    pub(super) fn read(&self, from: usize, to: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(to - from);
        if from >= to {
            return out;
        }
        for i in self.block_of(from)..self.blocks.len() {
            let (s, e) = (self.starts[i], self.starts[i + 1]);
            if s >= to {
                break;
            }
            let bytes = self.blocks[i].unpack();
            out.extend_from_slice(&bytes[from.max(s) - s..to.min(e) - s]);
        }
        out
    }

    /// The text with its bytes `from..to` replaced by `new`: the blocks wholly before or after
    /// the range are kept as they are, the one or two it starts and ends in are packed again
    /// with `new`.
    pub(super) fn replace(&mut self, from: usize, to: usize, new: &[u8]) {
        debug_assert!(from <= to && to <= self.len());
        if self.blocks.is_empty() {
            self.blocks = blocks(new).collect();
            self.count();
            return;
        }
        let first = self.block_of(from);
        // The last block the range touches; a range that ends where a block starts leaves it.
        let last = if to > from {
            self.block_of(to - 1)
        } else {
            first
        };
        let (s, mut e) = (self.starts[first], self.starts[last + 1]);
        let mut bytes = self.read(s, from);
        bytes.extend_from_slice(new);
        bytes.extend_from_slice(&self.read(to, e));
        // The blocks after must still start lines: an edit that takes a line end away joins
        // the next block's first line to the last one packed again.
        let mut last = last;
        while last + 1 < self.blocks.len() && bytes.last().is_some_and(|&b| b != b'\n') {
            last += 1;
            bytes.extend_from_slice(&self.blocks[last].unpack());
            e = self.starts[last + 1];
        }
        debug_assert_eq!(e - s, bytes.len() + (to - from) - new.len());
        let new: Vec<Block> = blocks(&bytes).collect();
        self.blocks.splice(first..=last, new);
        self.count();
    }

    /// Compares the file at `path` with the text a block at a time (by the blocks' hashes: a
    /// changed block of the same xxh3-128 hash, a chance of 2^-128, would read as unchanged),
    /// and keeps in memory only the lines that differ: from the line where they first differ
    /// to the lines alike at the end, which are found as the file streams by, by the hashes of
    /// the text's last blocks ([`Rest`]). An appended line reads that line; a line changed in
    /// the middle of 44 MiB (1,000,000 certificates) keeps a block or two, not the 22 MiB after
    /// it. Every byte of the file is given to `digest`, once and in order. A file that changes
    /// length while it is read is an error (the caller reads it in full).
    pub(in crate::config::wanted) fn diverge(
        &self,
        path: &Path,
        mut digest: Option<&mut Xxh3>,
    ) -> std::io::Result<Divergence> {
        let mut f = std::fs::File::open(path)?;
        let file_len = f.metadata()?.len() as usize;
        let mut buf = vec![0u8; BLOCK];
        let mut feed = |bytes: &[u8]| {
            if let Some(d) = digest.as_deref_mut() {
                d.update(bytes);
            }
        };
        // Where the file first differs (a line start), and the file's bytes from there that
        // were read to find it (in two parts).
        let mut found: Option<(usize, Vec<u8>)> = None;
        for (i, b) in self.blocks.iter().enumerate() {
            let len = b.len as usize;
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let n = read_up_to(&mut f, &mut buf[..len])?;
            feed(&buf[..n]);
            if n == len && xxh3_128(&buf[..n]) == b.hash {
                continue;
            }
            // The hashes differ or the file is shorter: the bytes differ before `len`. Every
            // block starts a line, so the line where they differ starts in this block.
            let ours = b.unpack();
            let alike = super::common_prefix(&ours, &buf[..n]);
            let line = ours[..alike]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let mut read = ours[line..alike].to_vec();
            read.extend_from_slice(&buf[alike..n]);
            found = Some((self.starts[i] + line, read));
            break;
        }
        let (start, read) = match found {
            Some(found) => found,
            None => {
                let n = read_up_to(&mut f, &mut buf)?;
                feed(&buf[..n]);
                if n == 0 {
                    return Ok(Divergence::Same);
                }
                // Lines appended (or the last line made longer): from the last line's start.
                let (line, mut read) = self.last_line();
                read.extend_from_slice(&buf[..n]);
                (line, read)
            }
        };
        let mut rest = Rest::new(self, start, file_len);
        rest.feed(&read);
        loop {
            let n = read_up_to(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            feed(&buf[..n]);
            rest.feed(&buf[..n]);
        }
        let (middle, tail) = rest.finish()?;
        let middle = String::from_utf8(middle)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Divergence::From {
            start,
            middle,
            tail,
        })
    }

    /// Where the text's last line starts (its length when it ends with a line end), and that
    /// line's bytes. Every block starts a line, so it is in the last block, decompressed once.
    fn last_line(&self) -> (usize, Vec<u8>) {
        let Some(b) = self.blocks.last() else {
            return (0, Vec::new());
        };
        let (s, mut bytes) = (self.starts[self.blocks.len() - 1], b.unpack());
        let line = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        bytes.drain(..line);
        (s + line, bytes)
    }
}

/// Reads until `buf` is full or the file ends; how many bytes were read.
fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text_of(p: &Packed) -> String {
        String::from_utf8(p.read(0, p.len())).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A packed text reads back as the text it models, whatever the edits; only the blocks
        /// an edit touches change, and blocks stay at most [`BLOCK`] bytes.
        #[test]
        fn a_packed_text_is_the_text_it_was_made_of_and_edited_into(
            lines in proptest::collection::vec("[a-z.]{0,20}", 0..40),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0usize..40, "[a-z.\n]{0,30}"), 0..12),
        ) {
            let mut model: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut p = Packed::of(&model);
            prop_assert_eq!(text_of(&p), model.clone());
            for (at, len, new) in edits {
                let from = at.index(model.len() + 1);
                let to = (from + len).min(model.len());
                let kept: Vec<u128> = p.blocks.iter().map(|b| b.hash).collect();
                // The blocks that end before the edit (the last one is packed again with an
                // appended line, so that appends do not leave small blocks).
                let before = p.starts[1..].iter().filter(|&&e| e <= from).count()
                    .min(p.blocks.len().saturating_sub(1));
                p.replace(from, to, new.as_bytes());
                model.replace_range(from..to, &new);
                prop_assert_eq!(text_of(&p), model.clone());
                prop_assert_eq!(p.len(), model.len());
                let texts: Vec<Vec<u8>> = p.blocks.iter().map(Block::unpack).collect();
                for (i, t) in texts.iter().enumerate() {
                    let lines_inside = t[..t.len() - 1].contains(&b'\n');
                    prop_assert!(!t.is_empty() && (t.len() <= BLOCK || !lines_inside));
                    prop_assert!(i + 1 == texts.len() || t.ends_with(b"\n"), "whole lines");
                }
                // Blocks wholly before the edit are the same blocks.
                prop_assert!(p.blocks.iter().zip(&kept).take(before).all(|(b, &h)| b.hash == h));
                let (a, b) = (from.min(model.len()), (from + 7).min(model.len()));
                prop_assert_eq!(p.read(a, b), model.as_bytes()[a..b].to_vec());
            }
        }
    }

    proptest! {
        /// Whatever the edits, the file reads back as the text's bytes up to `start`, then
        /// `middle`, then the text's last `tail` bytes; `start` and the tail start lines in
        /// both; every byte goes into the digest; and a few lines changed in a text of many
        /// blocks keep little more than those lines in memory.
        #[test]
        fn a_file_is_the_text_before_its_first_difference_what_differs_and_a_common_tail(
            lines in proptest::collection::vec("[a-z]{0,20}", 0..60),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0usize..30, "[a-z\n]{0,30}"), 0..3),
        ) {
            let old: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let p = Packed::of(&old);
            let mut now = old.clone();
            for (at, cut, new) in &edits {
                let from = at.index(now.len() + 1);
                let to = (from + cut).min(now.len());
                now.replace_range(from..to, new);
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, &now).unwrap();
            let mut h = Xxh3::new();
            let found = p.diverge(&path, Some(&mut h)).unwrap();
            prop_assert_eq!(h.digest(), xxhash_rust::xxh3::xxh3_64(now.as_bytes()));
            let (start, middle, tail) = match found {
                Divergence::Same => {
                    prop_assert_eq!(&now, &old);
                    return Ok(());
                }
                Divergence::From { start, middle, tail } => (start, middle, tail),
            };
            prop_assert!(start + tail <= old.len());
            let read = format!("{}{middle}{}", &old[..start], &old[old.len() - tail..]);
            prop_assert_eq!(&read, &now);
            let starts_line = |t: &str, at: usize| at == 0 || t.as_bytes()[at - 1] == b'\n';
            prop_assert!(starts_line(&old, start));
            prop_assert!(tail == 0 || starts_line(&old, old.len() - tail));
            prop_assert!(tail == 0 || starts_line(&now, now.len() - tail));
            // One edit: what differs, plus at most a block around it on either side (and the
            // copy's last line when lines are appended).
            if edits.len() == 1 && !middle.is_empty() {
                let (_, cut, new) = &edits[0];
                prop_assert!(middle.len() <= cut + new.len() + 2 * BLOCK + 40);
            }
        }
    }

    /// Every byte of the file goes into the digest once, in order, whatever the file holds
    /// against the copy.
    #[test]
    fn the_digest_is_of_the_file_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: String = (0..100).map(|i| format!("s{i}.example.test\n")).collect();
        let p = Packed::of(&content);
        let changed = content.replacen("s50.", "t50.", 1);
        for file in [
            content.clone(),
            format!("{content}new.test\n"),
            changed,
            content[..700].to_string(),
            String::new(),
        ] {
            std::fs::write(&path, &file).unwrap();
            let mut h = Xxh3::new();
            let found = p.diverge(&path, Some(&mut h)).unwrap();
            assert_eq!(h.digest(), xxhash_rust::xxh3::xxh3_64(file.as_bytes()));
            match found {
                Divergence::Same => assert_eq!(file, content),
                Divergence::From {
                    start,
                    middle,
                    tail,
                } => {
                    let end = &content[content.len() - tail..];
                    assert_eq!(format!("{}{middle}{end}", &content[..start]), file);
                    assert!(start == 0 || content.as_bytes()[start - 1] == b'\n');
                }
            }
        }
    }

    /// A file that does not end at the length it had when it was opened (written to as it was
    /// read) is an error, not a reading of a file that never was.
    #[test]
    fn a_file_that_changes_length_while_read_is_an_error() {
        let content: String = (0..20).map(|i| format!("s{i}.example.test\n")).collect();
        let p = Packed::of(&content);
        let start = content.find("s5.").unwrap();
        for (file_len, fed) in [
            (content.len(), 10),
            (content.len() - 3, content.len() - start),
        ] {
            let mut rest = Rest::new(&p, start, file_len);
            rest.feed(&content.as_bytes()[start..start + fed]);
            assert!(rest.finish().is_err());
        }
        let mut rest = Rest::new(&p, start, content.len());
        rest.feed(&content.as_bytes()[start..]);
        assert_eq!(rest.finish().unwrap(), (Vec::new(), content.len() - start));
    }

    /// An edit packs again only the blocks it touches: a line appended to a text of many blocks
    /// leaves all but the last as they were.
    #[test]
    fn an_appended_line_packs_only_the_last_block_again() {
        let content: String = (0..100).map(|i| format!("s{i}.example.test\n")).collect();
        let mut p = Packed::of(&content);
        let before: Vec<*const u8> = p.blocks.iter().map(|b| b.packed.as_ptr()).collect();
        p.replace(content.len(), content.len(), b"new.test\n");
        let after: Vec<*const u8> = p.blocks.iter().map(|b| b.packed.as_ptr()).collect();
        assert_eq!(after[..before.len() - 1], before[..before.len() - 1]);
        assert_eq!(text_of(&p), format!("{content}new.test\n"));
    }
}
