//! Go's compressor (`deflate.go`): the window, the hash chains, the lazy and greedy matchers
//! of levels 2 to 9, and the stored, Huffman-only and BestSpeed steps.
//!
//! Sans-I/O: [`Compressor`] writes into its block writer's buffer and the caller takes the
//! bytes after every call; no call produces more than about one window of output.

use super::bitwriter::{HuffmanBitWriter, MAX_STORE_BLOCK_SIZE};
use super::fast::DeflateFast;
use super::token::{literal_token, match_token, Token};
use super::{Level, MAX_MATCH_LENGTH};

const LOG_WINDOW_SIZE: u32 = 15;
const WINDOW_SIZE: usize = 1 << LOG_WINDOW_SIZE;
const WINDOW_MASK: usize = WINDOW_SIZE - 1;
/// The smallest match the compressor emits.
const MIN_MATCH_LENGTH: usize = 4;
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 14;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = HASH_SIZE as u32 - 1;
const MAX_HASH_OFFSET: isize = 1 << 24;
const SKIP_NEVER: usize = i32::MAX as usize;
/// `blockStart` after a slide passed it: the block's input is gone, so it cannot be stored.
const BLOCK_START_GONE: usize = i32::MAX as usize;
/// Lookahead the matchers wait for before working without a flush.
const MIN_LOOKAHEAD: usize = MIN_MATCH_LENGTH + MAX_MATCH_LENGTH;

/// `compressionLevel`: the matcher's parameters of one level.
#[derive(Debug, Clone, Copy)]
struct Params {
    good: usize,
    lazy: usize,
    nice: usize,
    chain: usize,
    /// Levels 2 and 3 match greedily and skip hashing inside matches of up to this length;
    /// `SKIP_NEVER` means lazy matching.
    fast_skip_hashing: usize,
}

/// `levels` of deflate.go, for levels 2 to 9.
fn params(level: i32) -> Params {
    let (good, lazy, nice, chain, fast_skip_hashing) = match level {
        2 => (4, 0, 16, 8, 5),
        3 => (4, 0, 32, 32, 6),
        4 => (4, 4, 16, 16, SKIP_NEVER),
        5 => (8, 16, 32, 32, SKIP_NEVER),
        6 => (8, 16, 128, 128, SKIP_NEVER),
        7 => (8, 32, 128, 256, SKIP_NEVER),
        8 => (32, 128, 258, 1024, SKIP_NEVER),
        9 => (32, 258, 258, 4096, SKIP_NEVER),
        _ => unreachable!("params of level {level}"),
    };
    Params {
        good,
        lazy,
        nice,
        chain,
        fast_skip_hashing,
    }
}

/// `hash4`: the hash-chain index of the four bytes at the start of `b` (big-endian).
pub(crate) fn hash4(b: &[u8]) -> u32 {
    let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    v.wrapping_mul(0x1e35a7bd) >> (32 - HASH_BITS)
}

/// The matcher state of levels 2 to 9.
#[derive(Clone)]
struct Chains {
    params: Params,
    /// Position + `hash_offset` of the newest string with each hash (0: none).
    hash_head: Vec<u32>,
    /// Per window position, the previous string with the same hash.
    hash_prev: Vec<u32>,
    hash_offset: isize,
    chain_head: isize,
    index: usize,
    block_start: usize,
    /// Lazy matching: `window[index - 1]` is still to be emitted.
    byte_available: bool,
    length: usize,
    offset: usize,
    max_insert_index: isize,
}

/// What each step does with the window (`step` and `fill` in Go).
#[derive(Clone)]
enum Mode {
    Store,
    HuffmanOnly,
    BestSpeed(Box<DeflateFast>),
    Chains(Box<Chains>),
}

/// Go's `compressor`.
#[derive(Clone)]
pub(crate) struct Compressor {
    mode: Mode,
    pub(crate) w: HuffmanBitWriter,
    window: Vec<u8>,
    window_end: usize,
    tokens: Vec<Token>,
    /// Requesting a flush: process all input.
    sync: bool,
}

impl Compressor {
    pub(crate) fn new(level: Level) -> Self {
        let level = level.flate_level();
        let (mode, window_size, tokens) = match level {
            0 => (Mode::Store, MAX_STORE_BLOCK_SIZE, 0),
            -2 => (Mode::HuffmanOnly, MAX_STORE_BLOCK_SIZE, 0),
            1 => (
                Mode::BestSpeed(Box::new(DeflateFast::new())),
                MAX_STORE_BLOCK_SIZE,
                MAX_STORE_BLOCK_SIZE,
            ),
            _ => (
                Mode::Chains(Box::new(Chains {
                    params: params(level),
                    hash_head: vec![0; HASH_SIZE],
                    hash_prev: vec![0; WINDOW_SIZE],
                    hash_offset: 1,
                    chain_head: -1,
                    index: 0,
                    block_start: 0,
                    byte_available: false,
                    length: MIN_MATCH_LENGTH - 1,
                    offset: 0,
                    max_insert_index: 0,
                })),
                2 * WINDOW_SIZE,
                MAX_FLATE_BLOCK_TOKENS + 1,
            ),
        };
        Compressor {
            mode,
            w: HuffmanBitWriter::new(),
            window: vec![0; window_size],
            window_end: 0,
            tokens: Vec::with_capacity(tokens),
            sync: false,
        }
    }

    /// One round of Go's `write` loop: process what the window holds (if it is full enough),
    /// then copy as much of `b` into it as fits. Returns the bytes taken; Go's `Write` is this
    /// round repeated until all of `b` is taken.
    pub(crate) fn write_round(&mut self, b: &[u8]) -> usize {
        if b.is_empty() {
            return 0;
        }
        self.step();
        self.fill(b)
    }

    /// `syncFlush`: process everything, then an empty stored block.
    pub(crate) fn sync_flush(&mut self) {
        self.sync = true;
        self.step();
        self.w.write_stored_header(0, false);
        self.w.flush();
        self.sync = false;
    }

    /// `close`: process everything, then an empty final stored block.
    pub(crate) fn close(&mut self) {
        self.sync = true;
        self.step();
        self.w.write_stored_header(0, true);
        self.w.flush();
    }

    fn fill(&mut self, b: &[u8]) -> usize {
        if let Mode::Chains(c) = &mut self.mode {
            slide(c, &mut self.window, &mut self.window_end);
        }
        let n = b.len().min(self.window.len() - self.window_end);
        self.window[self.window_end..self.window_end + n].copy_from_slice(&b[..n]);
        self.window_end += n;
        n
    }

    fn step(&mut self) {
        match &mut self.mode {
            Mode::Store => self.store(),
            Mode::HuffmanOnly => self.store_huff(),
            Mode::BestSpeed(_) => self.enc_speed(),
            Mode::Chains(_) => self.deflate(),
        }
    }

    /// `store` (NoCompression): a stored block per full window, or on flush.
    fn store(&mut self) {
        if self.window_end > 0 && (self.window_end == MAX_STORE_BLOCK_SIZE || self.sync) {
            self.w
                .write_stored_block(&self.window[..self.window_end], false);
            self.window_end = 0;
        }
    }

    /// `storeHuff` (HuffmanOnly): a literal-only block per full window, or on flush.
    fn store_huff(&mut self) {
        if self.window_end < self.window.len() && !self.sync || self.window_end == 0 {
            return;
        }
        self.w
            .write_block_huff(false, &self.window[..self.window_end]);
        self.window_end = 0;
    }

    /// `encSpeed` (BestSpeed): one block per full window, or on flush.
    fn enc_speed(&mut self) {
        let Mode::BestSpeed(fast) = &mut self.mode else {
            unreachable!("enc_speed without BestSpeed");
        };
        let end = self.window_end;
        if end < MAX_STORE_BLOCK_SIZE {
            if !self.sync {
                return;
            }
            // Short flushed blocks: stored or literal-only, and the history is forgotten.
            if end < 128 {
                match end {
                    0 => return,
                    1..=16 => self.w.write_stored_block(&self.window[..end], false),
                    _ => self.w.write_block_huff(false, &self.window[..end]),
                }
                self.window_end = 0;
                fast.reset();
                return;
            }
        }
        self.tokens.clear();
        fast.encode(&mut self.tokens, &self.window[..end]);
        // A block that barely compresses is written literal-only.
        if self.tokens.len() > end - (end >> 4) {
            self.w.write_block_huff(false, &self.window[..end]);
        } else {
            self.w
                .write_block_dynamic(&self.tokens, false, &self.window[..end]);
        }
        self.window_end = 0;
    }

    /// `deflate` (levels 2 to 9): Go's loop over the window, a literal or a match a step,
    /// until too little lookahead is left (or, on a flush, none).
    fn deflate(&mut self) {
        let Mode::Chains(c) = &mut self.mode else {
            unreachable!("deflate without hash chains");
        };
        let c: &mut Chains = c;
        let window = &self.window[..];
        let window_end = self.window_end;
        let tokens = &mut self.tokens;
        let w = &mut self.w;
        if window_end - c.index < MIN_LOOKAHEAD && !self.sync {
            return;
        }
        c.max_insert_index = window_end as isize - (MIN_MATCH_LENGTH as isize - 1);
        loop {
            let lookahead = window_end - c.index;
            if lookahead < MIN_LOOKAHEAD {
                if !self.sync {
                    break;
                }
                if lookahead == 0 {
                    c.flush_tokens(window, tokens, w);
                    break;
                }
            }
            c.insert_index(window);
            let prev_length = c.length;
            let prev_offset = c.offset;
            c.length = MIN_MATCH_LENGTH - 1;
            c.offset = 0;
            c.search(window, lookahead, prev_length);
            if c.emits_match(prev_length) {
                c.emit_match(window, tokens, w, prev_length, prev_offset);
            } else {
                c.emit_literal(window, tokens, w);
            }
        }
    }
}

impl Chains {
    /// Levels 2 and 3: greedy matching (Go: `fastSkipHashing != skipNever`).
    fn greedy(&self) -> bool {
        self.params.fast_skip_hashing != SKIP_NEVER
    }

    /// The end of a flush in `deflate`: the pending literal (lazy matching), then the block of
    /// all tokens so far.
    fn flush_tokens(&mut self, window: &[u8], tokens: &mut Vec<Token>, w: &mut HuffmanBitWriter) {
        if self.byte_available {
            // There is still one pending token that needs to be flushed
            tokens.push(literal_token(window[self.index - 1]));
            self.byte_available = false;
        }
        if !tokens.is_empty() {
            write_block(self, w, window, tokens, self.index);
            tokens.clear();
        }
    }

    /// "Update the hash": put the string at `index` at the head of its hash chain, keeping
    /// the old head (where `search` starts) in `chain_head`.
    fn insert_index(&mut self, window: &[u8]) {
        if (self.index as isize) < self.max_insert_index {
            let hash = hash4(&window[self.index..]);
            let hh = &mut self.hash_head[(hash & HASH_MASK) as usize];
            self.chain_head = *hh as isize;
            self.hash_prev[self.index & WINDOW_MASK] = self.chain_head as u32;
            *hh = (self.index as isize + self.hash_offset) as u32;
        }
    }

    /// `deflate`'s call of `findMatch`, when the chain reaches into the window and a match
    /// could help: greedy, whenever a match fits the lookahead; lazy, when it could beat the
    /// previous step's match and that one is shorter than `lazy`. Sets `length` and `offset`.
    fn search(&mut self, window: &[u8], lookahead: usize, prev_length: usize) {
        let min_index = (self.index as isize - WINDOW_SIZE as isize).max(0);
        let greedy = self.greedy();
        if self.chain_head - self.hash_offset >= min_index
            && (greedy && lookahead > MIN_MATCH_LENGTH - 1
                || !greedy && lookahead > prev_length && prev_length < self.params.lazy)
        {
            if let Some((length, offset)) = find_match(
                self,
                window,
                self.index,
                self.chain_head - self.hash_offset,
                MIN_MATCH_LENGTH - 1,
                lookahead,
            ) {
                self.length = length;
                self.offset = offset;
            }
        }
    }

    /// Whether this step outputs a match: greedy, the one just found; lazy, the previous
    /// step's, when the one just found is not better.
    fn emits_match(&self, prev_length: usize) -> bool {
        if self.greedy() {
            self.length >= MIN_MATCH_LENGTH
        } else {
            prev_length >= MIN_MATCH_LENGTH && self.length <= prev_length
        }
    }

    /// `deflate`'s match branch: the match token (greedy, this step's; lazy, the previous
    /// step's), then the window position moves past the match, hashing the strings it covers
    /// unless a greedy match is longer than `fast_skip_hashing`.
    fn emit_match(
        &mut self,
        window: &[u8],
        tokens: &mut Vec<Token>,
        w: &mut HuffmanBitWriter,
        prev_length: usize,
        prev_offset: usize,
    ) {
        let greedy = self.greedy();
        // There was a match at the previous step, and the current match is not better:
        // output the previous match (or, greedy, the current one).
        let (length, offset) = if greedy {
            (self.length, self.offset)
        } else {
            (prev_length, prev_offset)
        };
        tokens.push(match_token((length - 3) as u32, (offset - 1) as u32));
        if self.length <= self.params.fast_skip_hashing {
            let new_index = if greedy {
                self.index + self.length
            } else {
                self.index + prev_length - 1
            };
            self.insert_up_to(window, new_index);
            if !greedy {
                self.byte_available = false;
                self.length = MIN_MATCH_LENGTH - 1;
            }
        } else {
            // Greedy, long match: skip it without hashing.
            self.index += self.length;
        }
        if tokens.len() == MAX_FLATE_BLOCK_TOKENS {
            // The block includes the current character
            write_block(self, w, window, tokens, self.index);
            tokens.clear();
        }
    }

    /// Insert the strings after `index` up to `new_index` (a match's extent) into the hash
    /// chains, and move `index` there; `index` itself is already inserted, and strings too
    /// close to the window's end are not.
    fn insert_up_to(&mut self, window: &[u8], new_index: usize) {
        let mut index = self.index + 1;
        while index < new_index {
            if (index as isize) < self.max_insert_index {
                let hash = hash4(&window[index..]);
                // The string's chain points to the previous head with the same hash.
                let hh = &mut self.hash_head[(hash & HASH_MASK) as usize];
                self.hash_prev[index & WINDOW_MASK] = *hh;
                *hh = (index as isize + self.hash_offset) as u32;
            }
            index += 1;
        }
        self.index = index;
    }

    /// `deflate`'s literal branch: greedy, the byte at `index`; lazy, the byte before it if
    /// still pending (and the byte at `index` becomes pending). Moves on one byte.
    fn emit_literal(&mut self, window: &[u8], tokens: &mut Vec<Token>, w: &mut HuffmanBitWriter) {
        let greedy = self.greedy();
        if greedy || self.byte_available {
            let i = if greedy { self.index } else { self.index - 1 };
            tokens.push(literal_token(window[i]));
            if tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                write_block(self, w, window, tokens, i + 1);
                tokens.clear();
            }
        }
        self.index += 1;
        if !greedy {
            self.byte_available = true;
        }
    }
}

/// `fillDeflate`'s slide: when the window is nearly full, move its upper half down, and
/// rebase the hash chains before their offsets could overflow.
fn slide(c: &mut Chains, window: &mut [u8], window_end: &mut usize) {
    if c.index < 2 * WINDOW_SIZE - MIN_LOOKAHEAD {
        return;
    }
    window.copy_within(WINDOW_SIZE..2 * WINDOW_SIZE, 0);
    c.index -= WINDOW_SIZE;
    *window_end -= WINDOW_SIZE;
    // Go subtracts from a start already gone too; it stays far beyond any index.
    c.block_start = if c.block_start >= WINDOW_SIZE {
        c.block_start - WINDOW_SIZE
    } else {
        BLOCK_START_GONE
    };
    c.hash_offset += WINDOW_SIZE as isize;
    if c.hash_offset > MAX_HASH_OFFSET {
        let delta = c.hash_offset - 1;
        c.hash_offset -= delta;
        c.chain_head -= delta;
        let rebase = |v: &mut u32| {
            *v = if *v as isize > delta {
                (*v as isize - delta) as u32
            } else {
                0
            };
        };
        c.hash_prev.iter_mut().for_each(rebase);
        c.hash_head.iter_mut().for_each(rebase);
    }
}

/// `writeBlock` of the compressor: the tokens up to window position `index`, with the input
/// they cover when the window still holds it (so the block may be stored).
fn write_block(
    c: &mut Chains,
    w: &mut HuffmanBitWriter,
    window: &[u8],
    tokens: &[Token],
    index: usize,
) {
    if index == 0 {
        return;
    }
    let input = (c.block_start <= index).then(|| &window[c.block_start..index]);
    c.block_start = index;
    w.write_block(tokens, false, input);
}

/// `findMatch`: the best match for `pos` along the hash chain from `prev_head`, better than
/// `prev_length`. Returns (length, offset).
fn find_match(
    c: &Chains,
    window: &[u8],
    pos: usize,
    prev_head: isize,
    prev_length: usize,
    lookahead: usize,
) -> Option<(usize, usize)> {
    let p = &c.params;
    let min_match_look = lookahead.min(MAX_MATCH_LENGTH);
    let win = &window[..pos + min_match_look];
    let nice = p.nice.min(min_match_look);
    let mut tries = p.chain;
    let mut length = prev_length;
    if length >= p.good {
        tries >>= 2;
    }
    let mut found = None;
    let mut w_end = win[pos + length];
    let w_pos = &win[pos..];
    let min_index = pos as isize - WINDOW_SIZE as isize;
    let mut i = prev_head;
    while tries > 0 {
        let iu = i as usize;
        if w_end == win[iu + length] {
            let n = match_len(&win[iu..], w_pos, min_match_look);
            if n > length && (n > MIN_MATCH_LENGTH || pos - iu <= 4096) {
                length = n;
                found = Some((n, pos - iu));
                if n >= nice {
                    // The match is good enough that we don't try to find a better one.
                    break;
                }
                w_end = win[pos + n];
            }
        }
        if i == min_index {
            // hash_prev[i & WINDOW_MASK] has already been overwritten.
            break;
        }
        i = c.hash_prev[iu & WINDOW_MASK] as isize - c.hash_offset;
        if i < min_index || i < 0 {
            break;
        }
        tries -= 1;
    }
    found
}

/// `matchLen`: the common prefix of `a` and `b`, at most `max` bytes.
fn match_len(a: &[u8], b: &[u8], max: usize) -> usize {
    a[..max]
        .iter()
        .zip(&b[..max])
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goflate_hash4_is_big_endian() {
        let expect = 0x0102_0304u32.wrapping_mul(0x1e35a7bd) >> 15;
        assert_eq!(hash4(&[1, 2, 3, 4, 99]), expect);
        assert!(hash4(&[0xff; 4]) < HASH_SIZE as u32);
    }
}
