//! Go's BestSpeed matcher (`deflatefast.go`): one hash table of the last position of each
//! 4-byte hash, Snappy-style skipping over incompressible input, matches into the previous
//! block through `prev`.

use super::bitwriter::MAX_STORE_BLOCK_SIZE;
use super::token::{literal_token, match_token, Token};
use super::{MAX_MATCH_LENGTH, MAX_MATCH_OFFSET};

const TABLE_BITS: u32 = 14;
const TABLE_SIZE: usize = 1 << TABLE_BITS;
const TABLE_MASK: u32 = TABLE_SIZE as u32 - 1;
const TABLE_SHIFT: u32 = 32 - TABLE_BITS;
/// When `cur` reaches this, table offsets are rebased so that they never overflow.
const BUFFER_RESET: i32 = i32::MAX - MAX_STORE_BLOCK_SIZE as i32 * 2;
const INPUT_MARGIN: i32 = 16 - 1;
const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;

#[derive(Debug, Clone, Copy, Default)]
struct TableEntry {
    /// The four bytes at `offset`.
    val: u32,
    offset: i32,
}

/// `deflateFast`.
#[derive(Clone)]
pub(crate) struct DeflateFast {
    table: Vec<TableEntry>,
    /// The previous block; empty if unknown.
    prev: Vec<u8>,
    /// Offset of the current block's start in the table's coordinates.
    cur: i32,
}

fn load32(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn load64(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// The table index of four bytes.
pub(crate) fn hash(u: u32) -> u32 {
    u.wrapping_mul(0x1e35a7bd) >> TABLE_SHIFT
}

fn emit_literals(dst: &mut Vec<Token>, lit: &[u8]) {
    dst.extend(lit.iter().map(|&b| literal_token(b)));
}

impl DeflateFast {
    pub(crate) fn new() -> Self {
        DeflateFast {
            table: vec![TableEntry::default(); TABLE_SIZE],
            prev: Vec::with_capacity(MAX_STORE_BLOCK_SIZE),
            cur: MAX_STORE_BLOCK_SIZE as i32,
        }
    }

    /// `encode`: append the tokens of `src` (one block) to `dst`.
    pub(crate) fn encode(&mut self, dst: &mut Vec<Token>, src: &[u8]) {
        if self.cur >= BUFFER_RESET {
            self.shift_offsets();
        }
        if src.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            // Too short to find matches worth it: literals, and forget the history.
            self.cur += MAX_STORE_BLOCK_SIZE as i32;
            self.prev.clear();
            emit_literals(dst, src);
            return;
        }
        let next_emit = self.encode_matches(dst, src);
        if next_emit < src.len() {
            emit_literals(dst, &src[next_emit..]);
        }
        self.cur += src.len() as i32;
        self.prev.clear();
        self.prev.extend_from_slice(src);
    }

    /// The main loop of `encode`; returns `nextEmit`, where the remaining literals start.
    fn encode_matches(&mut self, dst: &mut Vec<Token>, src: &[u8]) -> usize {
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit: i32 = 0;
        let mut s: i32 = 0;
        let mut cv = load32(src, s);
        let mut next_hash = hash(cv);
        loop {
            // Look for a 4-byte match, skipping faster the longer nothing matches.
            let mut skip: i32 = 32;
            let mut next_s = s;
            let mut candidate;
            loop {
                s = next_s;
                let step = skip >> 5;
                next_s = s + step;
                skip += step;
                if next_s > s_limit {
                    return next_emit as usize;
                }
                candidate = self.table[(next_hash & TABLE_MASK) as usize];
                let now = load32(src, next_s);
                self.table[(next_hash & TABLE_MASK) as usize] = TableEntry {
                    offset: s + self.cur,
                    val: cv,
                };
                next_hash = hash(now);
                let offset = s - (candidate.offset - self.cur);
                if offset > MAX_MATCH_OFFSET as i32 || cv != candidate.val {
                    cv = now;
                    continue;
                }
                break;
            }
            emit_literals(dst, &src[next_emit as usize..s as usize]);

            // Emit matches for as long as the position after one starts another.
            loop {
                s += 4;
                let t = candidate.offset - self.cur + 4;
                let l = self.match_len(s, t, src);
                dst.push(match_token((l + 4 - 3) as u32, (s - t - 1) as u32));
                s += l;
                next_emit = s;
                if s >= s_limit {
                    return next_emit as usize;
                }
                let mut x = load64(src, s - 1);
                let prev_hash = hash(x as u32);
                self.table[(prev_hash & TABLE_MASK) as usize] = TableEntry {
                    offset: self.cur + s - 1,
                    val: x as u32,
                };
                x >>= 8;
                let curr_hash = hash(x as u32);
                candidate = self.table[(curr_hash & TABLE_MASK) as usize];
                self.table[(curr_hash & TABLE_MASK) as usize] = TableEntry {
                    offset: self.cur + s,
                    val: x as u32,
                };
                let offset = s - (candidate.offset - self.cur);
                if offset > MAX_MATCH_OFFSET as i32 || x as u32 != candidate.val {
                    cv = (x >> 8) as u32;
                    next_hash = hash(cv);
                    s += 1;
                    break;
                }
            }
        }
    }

    /// `matchLen`: how far `src[s..]` matches from `t` on (`t < 0`: in `prev`, continuing into
    /// `src`), at most `maxMatchLength - 4` bytes.
    fn match_len(&self, s: i32, t: i32, src: &[u8]) -> i32 {
        let s = s as usize;
        let s1 = (s + MAX_MATCH_LENGTH - 4).min(src.len());
        let a = &src[s..s1];
        if t >= 0 {
            return common_prefix(a, &src[t as usize..]) as i32;
        }
        let tp = self.prev.len() as i32 + t;
        if tp < 0 {
            return 0;
        }
        let b = &self.prev[tp as usize..];
        let n = common_prefix(a, b);
        if n < b.len().min(a.len()) || s + n == s1 {
            return n as i32;
        }
        (n + common_prefix(&src[s + n..s1], src)) as i32
    }

    /// `reset`: forget the history (after a block written without this matcher).
    pub(crate) fn reset(&mut self) {
        self.prev.clear();
        self.cur += MAX_MATCH_OFFSET as i32;
        if self.cur >= BUFFER_RESET {
            self.shift_offsets();
        }
    }

    /// `shiftOffsets`: rebase the table so `cur` restarts just past the largest offset.
    fn shift_offsets(&mut self) {
        if self.prev.is_empty() {
            self.table.fill(TableEntry::default());
        } else {
            for entry in &mut self.table {
                entry.offset = (entry.offset - self.cur + MAX_MATCH_OFFSET as i32 + 1).max(0);
            }
        }
        self.cur = MAX_MATCH_OFFSET as i32 + 1;
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goflate_fast_hash() {
        // (u * 0x1e35a7bd) >> 18 on uint32, as Go computes it.
        assert_eq!(hash(0), 0);
        assert_eq!(hash(1), 0x1e35a7bd >> 18);
        assert_eq!(
            hash(0xffff_ffff),
            0xffff_ffffu32.wrapping_mul(0x1e35a7bd) >> 18
        );
    }
}
