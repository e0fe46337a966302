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

    /// `deflate` (levels 2 to 9).
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
        let p = c.params;
        let greedy = p.fast_skip_hashing != SKIP_NEVER;
        loop {
            let lookahead = window_end - c.index;
            if lookahead < MIN_LOOKAHEAD {
                if !self.sync {
                    break;
                }
                if lookahead == 0 {
                    if c.byte_available {
                        tokens.push(literal_token(window[c.index - 1]));
                        c.byte_available = false;
                    }
                    if !tokens.is_empty() {
                        write_block(c, w, window, tokens, c.index);
                        tokens.clear();
                    }
                    break;
                }
            }
            if (c.index as isize) < c.max_insert_index {
                let hash = hash4(&window[c.index..]);
                let hh = &mut c.hash_head[(hash & HASH_MASK) as usize];
                c.chain_head = *hh as isize;
                c.hash_prev[c.index & WINDOW_MASK] = c.chain_head as u32;
                *hh = (c.index as isize + c.hash_offset) as u32;
            }
            let prev_length = c.length;
            let prev_offset = c.offset;
            c.length = MIN_MATCH_LENGTH - 1;
            c.offset = 0;
            let min_index = (c.index as isize - WINDOW_SIZE as isize).max(0);

            if c.chain_head - c.hash_offset >= min_index
                && (greedy && lookahead > MIN_MATCH_LENGTH - 1
                    || !greedy && lookahead > prev_length && prev_length < p.lazy)
            {
                if let Some((length, offset)) = find_match(
                    c,
                    window,
                    c.index,
                    c.chain_head - c.hash_offset,
                    MIN_MATCH_LENGTH - 1,
                    lookahead,
                ) {
                    c.length = length;
                    c.offset = offset;
                }
            }
            if greedy && c.length >= MIN_MATCH_LENGTH
                || !greedy && prev_length >= MIN_MATCH_LENGTH && c.length <= prev_length
            {
                // There was a match at the previous step, and the current match is not
                // better: output the previous match (or, greedy, the current one).
                if greedy {
                    tokens.push(match_token((c.length - 3) as u32, (c.offset - 1) as u32));
                } else {
                    tokens.push(match_token(
                        (prev_length - 3) as u32,
                        (prev_offset - 1) as u32,
                    ));
                }
                if c.length <= p.fast_skip_hashing {
                    let new_index = if greedy {
                        c.index + c.length
                    } else {
                        c.index + prev_length - 1
                    };
                    let mut index = c.index + 1;
                    while index < new_index {
                        if (index as isize) < c.max_insert_index {
                            let hash = hash4(&window[index..]);
                            let hh = &mut c.hash_head[(hash & HASH_MASK) as usize];
                            c.hash_prev[index & WINDOW_MASK] = *hh;
                            *hh = (index as isize + c.hash_offset) as u32;
                        }
                        index += 1;
                    }
                    c.index = index;
                    if !greedy {
                        c.byte_available = false;
                        c.length = MIN_MATCH_LENGTH - 1;
                    }
                } else {
                    // Greedy, long match: skip it without hashing.
                    c.index += c.length;
                }
                if tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                    write_block(c, w, window, tokens, c.index);
                    tokens.clear();
                }
            } else {
                if greedy || c.byte_available {
                    let i = if greedy { c.index } else { c.index - 1 };
                    tokens.push(literal_token(window[i]));
                    if tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                        write_block(c, w, window, tokens, i + 1);
                        tokens.clear();
                    }
                }
                c.index += 1;
                if !greedy {
                    c.byte_available = true;
                }
            }
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
