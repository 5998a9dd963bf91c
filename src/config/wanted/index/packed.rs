//! DOMAINS_FILE's copy as the index keeps it ([`Packed`]): blocks of whole lines, of up to
//! [`BLOCK`] bytes (or one longer line), each LZ4-compressed with the xxh3-128 hash of its
//! bytes. At 1,000,000 certificates the file is 44 MiB and the blocks ~11 MiB (its lines
//! compress ~3.9 times). A comparison with the file hashes the file's bytes block by block
//! against the blocks' hashes and decompresses only the block where they first differ; the lines
//! alike at the end are found the same way from the end ([`Packed::common_tail`]); an edit packs
//! again only the blocks it touches.

use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

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
    /// The same up to `start` (the start of a line), then `rest` (to the end of the file).
    From { start: usize, rest: String },
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
    /// and reads into memory only what follows the line where they first differ: an appended
    /// line reads that line, not the whole file (44 MiB at 1,000,000 certificates). Every byte
    /// of the file read is given to `digest`, once and in order.
    pub(in crate::config::wanted) fn diverge(
        &self,
        path: &Path,
        mut digest: Option<&mut Xxh3>,
    ) -> std::io::Result<Divergence> {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; BLOCK];
        let mut feed = |bytes: &[u8]| {
            if let Some(d) = digest.as_deref_mut() {
                d.update(bytes);
            }
        };
        let mut found = None;
        for (i, b) in self.blocks.iter().enumerate() {
            let len = b.len as usize;
            buf.resize(len, 0);
            let n = read_up_to(&mut f, &mut buf)?;
            feed(&buf[..n]);
            if n == len && xxh3_128(&buf) == b.hash {
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
            // The copy's part of the line, what was read of the file after it, and the rest of
            // the file, read into the same buffer (22 MiB for a change in the middle at
            // 1,000,000 certificates: one buffer, not two).
            let start = self.starts[i] + line;
            let file_len = f.metadata().map_or(0, |m| m.len() as usize);
            let mut rest = Vec::with_capacity(file_len.saturating_sub(start));
            rest.extend_from_slice(&ours[line..alike]);
            rest.extend_from_slice(&buf[alike..n]);
            found = Some((start, rest));
            break;
        }
        let found_nothing = found.is_none();
        let (mut start, mut rest) = found.unwrap_or((self.len(), Vec::new()));
        let from = rest.len();
        f.read_to_end(&mut rest)?;
        feed(&rest[from..]);
        if found_nothing && rest.is_empty() {
            return Ok(Divergence::Same);
        }
        if found_nothing {
            // Lines appended (or the last line made longer): from the last line's start.
            let line = self.line_start(start);
            let mut text = self.read(line, start);
            text.extend_from_slice(&rest);
            (start, rest) = (line, text);
        }
        let rest = String::from_utf8(rest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Divergence::From { start, rest })
    }

    /// How many bytes at the end of the text, from `start` (a line start) on, are alike at the
    /// end of `rest`: whole blocks, compared by their hashes from the last one back, each
    /// starting a line in `rest` too. What is before them is all [`changed_lines`] needs to see
    /// (the lines alike at the end are the same with or without them), so a change in the
    /// middle of a large file decompresses a block or two, not the rest of the file.
    ///
    /// [`changed_lines`]: super::changed_lines
    pub(super) fn common_tail(&self, start: usize, rest: &[u8]) -> usize {
        let mut tail = 0;
        for (i, b) in self.blocks.iter().enumerate().rev() {
            let (s, len) = (self.starts[i], b.len as usize);
            if s < start || tail + len > rest.len() {
                break;
            }
            let at = rest.len() - tail - len;
            if at > 0 && rest[at - 1] != b'\n' || xxh3_128(&rest[at..at + len]) != b.hash {
                break;
            }
            tail += len;
        }
        tail
    }

    /// The start of the line that holds byte `at` (or ends just before it). Every block starts
    /// a line, so it is in the block that holds the byte before `at`.
    fn line_start(&self, at: usize) -> usize {
        if at == 0 {
            return 0;
        }
        let s = self.starts[self.block_of(at - 1)];
        self.read(s, at)
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(s, |p| s + p + 1)
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
        /// The tail [`Packed::common_tail`] finds is alike in both texts and starts a line in
        /// both; what is before it holds every difference.
        #[test]
        fn the_common_tail_is_alike_and_starts_lines(
            lines in proptest::collection::vec("[a-z]{0,20}", 0..40),
            at in any::<prop::sample::Index>(),
            cut in 0usize..30,
            new in "[a-z\n]{0,30}",
        ) {
            let old: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let p = Packed::of(&old);
            let from = at.index(old.len() + 1);
            let to = (from + cut).min(old.len());
            let mut now = old.clone();
            now.replace_range(from..to, &new);
            let same = super::super::common_prefix(old.as_bytes(), now.as_bytes());
            let start = old[..same].rfind('\n').map_or(0, |i| i + 1);
            let tail = p.common_tail(start, &now.as_bytes()[start..]);
            prop_assert!(tail <= old.len() - start && tail <= now.len() - start);
            prop_assert_eq!(&old[old.len() - tail..], &now[now.len() - tail..]);
            let starts_line = |t: &str, at: usize| at == start || t.as_bytes()[at - 1] == b'\n';
            prop_assert!(tail == 0 || starts_line(&old, old.len() - tail));
            prop_assert!(tail == 0 || starts_line(&now, now.len() - tail));
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
                Divergence::From { start, rest } => {
                    assert_eq!(format!("{}{rest}", &content[..start]), file);
                    assert!(start == 0 || content.as_bytes()[start - 1] == b'\n');
                }
            }
        }
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
