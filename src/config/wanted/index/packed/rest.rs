//! The part of a file after the line where it first differs from a [`Packed`] text, as it
//! streams by ([`Rest`]): what differs is kept; the lines alike at the end, in whole blocks of
//! the text, are found by the blocks' hashes and not kept.

use xxhash_rust::xxh3::xxh3_128;

use super::Packed;

/// The file's bytes from `start` (a line start where the file first differs from the text),
/// fed in order. The text's blocks that start at or after `start` may be the end of the file
/// too: block `j` would lie at the text's offset moved by the difference in length. Each such
/// place is hashed as it streams by; the blocks alike since the last that differs are the
/// common tail, the rest is kept.
pub(super) struct Rest<'a> {
    text: &'a Packed,
    /// The file's offset of the next byte fed.
    at: usize,
    /// The file's length when it was opened.
    file_len: usize,
    /// The next block whose place in the file is not yet passed (`blocks.len()`: none left).
    next: usize,
    /// The first of the blocks found alike since the last one that differed.
    alike_from: usize,
    /// The bytes that differ, from `start`, but the blocks alike since the last that differed.
    middle: Vec<u8>,
    /// The file's bytes so far at block `next`'s place.
    seg: Vec<u8>,
    /// Whether the byte before `at` ends a line (or `at` is `start`).
    at_line_start: bool,
    /// Whether block `next`'s place starts a line in the file.
    seg_starts_line: bool,
}

impl<'a> Rest<'a> {
    pub(super) fn new(text: &'a Packed, start: usize, file_len: usize) -> Rest<'a> {
        let n = text.blocks.len();
        // The blocks that start at or after `start` in the text and whose place in the file
        // does too.
        let from = start.max((start + text.len()).saturating_sub(file_len));
        let first = text.starts[..n].partition_point(|&s| s < from);
        Rest {
            text,
            at: start,
            file_len,
            next: first,
            alike_from: first,
            middle: Vec::new(),
            seg: Vec::new(),
            at_line_start: true,
            seg_starts_line: true,
        }
    }

    /// Where block `j` lies in the file if it is in the common tail.
    fn place(&self, j: usize) -> usize {
        self.text.starts[j] + self.file_len - self.text.len()
    }

    fn advance(&mut self, bytes: &[u8]) {
        self.at += bytes.len();
        if let Some(&last) = bytes.last() {
            self.at_line_start = last == b'\n';
        }
    }

    /// The file's next bytes.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.next == self.text.blocks.len() {
                // No block's place left: kept (or bytes past the length the file was opened
                // with, which `finish` refuses).
                self.middle.extend_from_slice(bytes);
                self.advance(bytes);
                return;
            }
            let place = self.place(self.next);
            if self.at < place {
                let (before, after) = bytes.split_at((place - self.at).min(bytes.len()));
                self.middle.extend_from_slice(before);
                self.advance(before);
                bytes = after;
                continue;
            }
            if self.seg.is_empty() {
                self.seg_starts_line = self.at_line_start;
            }
            let len = self.text.blocks[self.next].len as usize;
            let (part, after) = bytes.split_at((len - self.seg.len()).min(bytes.len()));
            self.seg.extend_from_slice(part);
            self.advance(part);
            bytes = after;
            if self.seg.len() == len {
                self.passed();
            }
        }
    }

    /// Block `next`'s place is read: alike, or kept with the blocks alike before it.
    fn passed(&mut self) {
        let b = &self.text.blocks[self.next];
        if !(self.seg_starts_line && xxh3_128(&self.seg) == b.hash) {
            for p in self.alike_from..self.next {
                self.middle.extend_from_slice(&self.text.blocks[p].unpack());
            }
            self.middle.extend_from_slice(&self.seg);
            self.alike_from = self.next + 1;
        }
        self.seg.clear();
        self.next += 1;
    }

    /// The bytes that differ and the length of the common tail; an error when the file did
    /// not end at the length it was opened with (it changed while it was read).
    pub(super) fn finish(self) -> std::io::Result<(Vec<u8>, usize)> {
        if self.at != self.file_len {
            return Err(std::io::Error::other(
                "the file changed length while it was read",
            ));
        }
        debug_assert!(self.seg.is_empty() && self.next == self.text.blocks.len());
        let tail = self.text.len() - self.text.starts[self.alike_from];
        Ok((self.middle, tail))
    }
}
