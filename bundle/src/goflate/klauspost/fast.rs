//! `fast_encoder.go` and `level5.go`: klauspost's fast matchers (levels 1 to 6 share the
//! history handling; level 5, the default, is ported so far).

use super::token::{Tokens, MAX_STORE_BLOCK_SIZE};

const TABLE_BITS: u32 = 15;
const TABLE_SIZE: usize = 1 << TABLE_BITS;
const BASE_MATCH_OFFSET: i32 = 1;
pub(crate) const MAX_MATCH_OFFSET: i32 = 1 << 15;
const MAX_MATCH_LENGTH: i32 = 258;
/// `allocHistory`: the history buffer's capacity.
const ALLOC_HISTORY: usize = MAX_STORE_BLOCK_SIZE * 5;
/// `bufferReset`: when `cur` reaches this, the tables are rebased.
const BUFFER_RESET: i32 = i32::MAX - ALLOC_HISTORY as i32 - MAX_STORE_BLOCK_SIZE as i32 - 1;

const PRIME4BYTES: u32 = 2654435761;
const PRIME7BYTES: u64 = 58295818150454627;

fn load3232(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn load6432(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// `hashLen(u, tableBits, 4)`.
fn hash4(u: u64) -> usize {
    ((u as u32).wrapping_mul(PRIME4BYTES) >> (32 - TABLE_BITS)) as usize
}

/// `hash7(u, tableBits)`.
fn hash7(u: u64) -> usize {
    ((u << (64 - 56)).wrapping_mul(PRIME7BYTES) >> ((64 - TABLE_BITS) & 63)) as usize
}

/// `matchLen`: how many leading bytes of `a` equal `b`'s.
fn match_len(a: &[u8], b: &[u8]) -> i32 {
    a.iter().zip(b).take_while(|(x, y)| x == y).count() as i32
}

/// `fastGen`: the history the fast levels match against, and `cur`, the offset that makes
/// table entries absolute.
struct FastGen {
    hist: Vec<u8>,
    cur: i32,
}

impl FastGen {
    fn new() -> Self {
        FastGen {
            hist: Vec::new(),
            cur: MAX_STORE_BLOCK_SIZE as i32,
        }
    }

    /// `addBlock`: append `src`, first sliding the last 32 KiB to the front if the buffer's
    /// capacity would be exceeded. Returns where `src` starts.
    fn add_block(&mut self, src: &[u8]) -> i32 {
        if self.hist.len() + src.len() > ALLOC_HISTORY {
            // Go allocates the buffer on first use; a fresh one has nothing to slide.
            if self.hist.capacity() == 0 {
                self.hist.reserve_exact(ALLOC_HISTORY);
            } else {
                let offset = self.hist.len() as i32 - MAX_MATCH_OFFSET;
                self.hist.copy_within(offset as usize.., 0);
                self.cur += offset;
                self.hist.truncate(MAX_MATCH_OFFSET as usize);
            }
        }
        let s = self.hist.len() as i32;
        self.hist.extend_from_slice(src);
        s
    }

    /// `matchlen`: at most 254 more bytes.
    fn matchlen(&self, s: i32, t: i32, src: &[u8]) -> i32 {
        let s1 = ((s + MAX_MATCH_LENGTH - 4) as usize).min(src.len());
        match_len(&src[s as usize..s1], &src[t as usize..])
    }

    fn matchlen_long(&self, s: i32, t: i32, src: &[u8]) -> i32 {
        match_len(&src[s as usize..], &src[t as usize..])
    }

    /// `Reset`: forget the history; old table entries fall out of reach by moving `cur`.
    fn reset(&mut self) {
        if self.hist.capacity() < ALLOC_HISTORY {
            self.hist.reserve_exact(ALLOC_HISTORY);
        }
        if self.cur <= BUFFER_RESET {
            self.cur += MAX_MATCH_OFFSET + self.hist.len() as i32;
        }
        self.hist.clear();
    }
}

/// `fastEnc`: one of the fast levels' matchers.
pub(crate) enum FastEnc {
    L5(Box<FastEncL5>),
}

impl FastEnc {
    /// `newFastEnc`; `None` for the levels not ported yet.
    pub(crate) fn new(level: i32) -> Option<FastEnc> {
        match level {
            5 => Some(FastEnc::L5(Box::new(FastEncL5::new()))),
            _ => None,
        }
    }

    pub(crate) fn encode(&mut self, dst: &mut Tokens, src: &[u8]) {
        match self {
            FastEnc::L5(e) => e.encode(dst, src),
        }
    }

    pub(crate) fn reset(&mut self) {
        match self {
            FastEnc::L5(e) => e.gen.reset(),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct TableEntryPrev {
    cur: i32,
    prev: i32,
}

/// `fastEncL5`: a 4-byte hash table and a 7-byte hash table keeping two candidates.
pub(crate) struct FastEncL5 {
    gen: FastGen,
    table: Vec<i32>,
    b_table: Vec<TableEntryPrev>,
}

impl FastEncL5 {
    fn new() -> Self {
        FastEncL5 {
            gen: FastGen::new(),
            table: vec![0; TABLE_SIZE],
            b_table: vec![TableEntryPrev::default(); TABLE_SIZE],
        }
    }

    fn rebase(&mut self) {
        // Protect against e.cur wraparound.
        while self.gen.cur >= BUFFER_RESET {
            if self.gen.hist.is_empty() {
                self.table.fill(0);
                self.b_table.fill(TableEntryPrev::default());
                self.gen.cur = MAX_MATCH_OFFSET;
                break;
            }
            let cur = self.gen.cur;
            let min_off = cur + self.gen.hist.len() as i32 - MAX_MATCH_OFFSET;
            let shift = |v: i32| {
                if v <= min_off {
                    0
                } else {
                    v - cur + MAX_MATCH_OFFSET
                }
            };
            for v in self.table.iter_mut() {
                *v = shift(*v);
            }
            for v in self.b_table.iter_mut() {
                if v.cur <= min_off {
                    v.cur = 0;
                    v.prev = 0;
                } else {
                    v.cur = v.cur - cur + MAX_MATCH_OFFSET;
                    v.prev = shift(v.prev);
                }
            }
            self.gen.cur = MAX_MATCH_OFFSET;
        }
    }

    fn put_long(&mut self, h: usize, offset: i32) {
        let e = &mut self.b_table[h];
        e.prev = e.cur;
        e.cur = offset;
    }

    fn encode(&mut self, dst: &mut Tokens, src: &[u8]) {
        const INPUT_MARGIN: i32 = 12 - 1;
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;
        self.rebase();
        let s0 = self.gen.add_block(src);
        if src.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            // Go counts the bytes as tokens without writing them; its callers never encode so
            // little except a dictionary, whose tokens are thrown away.
            dst.n = src.len() as u16;
            return;
        }
        // Matches are found in the whole history; `src` is its tail.
        let hist = std::mem::take(&mut self.gen.hist);
        self.encode_hist(dst, &hist, s0);
        self.gen.hist = hist;
    }

    fn encode_hist(&mut self, dst: &mut Tokens, src: &[u8], mut s: i32) {
        const INPUT_MARGIN: i32 = 12 - 1;
        const SKIP_LOG: i32 = 6;
        const DO_EVERY: i32 = 1;
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = load6432(src, s);
        'outer: loop {
            let mut next_s = s;
            let mut l: i32 = 0;
            let mut t: i32;
            loop {
                let mut next_hash_s = hash4(cv);
                let mut next_hash_l = hash7(cv);
                s = next_s;
                next_s = s + DO_EVERY + ((s - next_emit) >> SKIP_LOG);
                if next_s > s_limit {
                    break 'outer;
                }
                let cur = self.gen.cur;
                let s_candidate = self.table[next_hash_s];
                let mut l_candidate = self.b_table[next_hash_l];
                let next = load6432(src, next_s);
                let entry = s + cur;
                self.table[next_hash_s] = entry;
                self.put_long(next_hash_l, entry);

                next_hash_s = hash4(next);
                next_hash_l = hash7(next);

                t = l_candidate.cur - cur;
                if s - t < MAX_MATCH_OFFSET {
                    if cv as u32 == load3232(src, l_candidate.cur - cur) {
                        // Store the next match
                        self.table[next_hash_s] = next_s + cur;
                        self.put_long(next_hash_l, next_s + cur);

                        let t2 = l_candidate.prev - cur;
                        if s - t2 < MAX_MATCH_OFFSET && cv as u32 == load3232(src, t2) {
                            l = self.gen.matchlen(s + 4, t + 4, src) + 4;
                            let ml1 = self.gen.matchlen(s + 4, t2 + 4, src) + 4;
                            if ml1 > l {
                                t = t2;
                                l = ml1;
                                break;
                            }
                        }
                        break;
                    }
                    t = l_candidate.prev - cur;
                    if s - t < MAX_MATCH_OFFSET && cv as u32 == load3232(src, t) {
                        // Store the next match
                        self.table[next_hash_s] = next_s + cur;
                        self.put_long(next_hash_l, next_s + cur);
                        break;
                    }
                }

                t = s_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == load3232(src, t) {
                    // Found a 4 match...
                    l = self.gen.matchlen(s + 4, t + 4, src) + 4;
                    l_candidate = self.b_table[next_hash_l];

                    // Store the next match
                    self.table[next_hash_s] = next_s + cur;
                    self.put_long(next_hash_l, next_s + cur);

                    // If the next long is a candidate, use that...
                    let mut t2 = l_candidate.cur - cur;
                    if next_s - t2 < MAX_MATCH_OFFSET {
                        if load3232(src, t2) == next as u32 {
                            let ml = self.gen.matchlen(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                                break;
                            }
                        }
                        // If the previous long is a candidate, use that...
                        t2 = l_candidate.prev - cur;
                        if next_s - t2 < MAX_MATCH_OFFSET && load3232(src, t2) == next as u32 {
                            let ml = self.gen.matchlen(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                                break;
                            }
                        }
                    }
                    break;
                }
                cv = next;
            }

            // A 4-byte match has been found. Extend it as far as it goes.
            if l == 0 {
                l = self.gen.matchlen_long(s + 4, t + 4, src) + 4;
            } else if l == MAX_MATCH_LENGTH {
                l += self.gen.matchlen_long(s + l, t + l, src);
            }

            // Try to locate a better match by checking the end of best match...
            let s_at = s + l;
            if l < 30 && s_at < s_limit {
                // Allow some bytes at the beginning to mismatch.
                const SKIP_BEGINNING: i32 = 2;
                let e_long = self.b_table[hash7(load6432(src, s_at))].cur;
                let t2 = e_long - self.gen.cur - l + SKIP_BEGINNING;
                let s2 = s + SKIP_BEGINNING;
                let off = s2 - t2;
                if t2 >= 0 && off < MAX_MATCH_OFFSET && off > 0 {
                    let l2 = self.gen.matchlen_long(s2, t2, src);
                    if l2 > l {
                        t = t2;
                        l = l2;
                        s = s2;
                    }
                }
            }

            // Extend backwards
            while t > 0 && s > next_emit && src[t as usize - 1] == src[s as usize - 1] {
                s -= 1;
                t -= 1;
                l += 1;
            }
            if next_emit < s {
                dst.emit_literals(&src[next_emit as usize..s as usize]);
            }
            dst.add_match_long(l, (s - t - BASE_MATCH_OFFSET) as u32);
            s += l;
            next_emit = s;
            if next_s >= s {
                s = next_s + 1;
            }
            if s >= s_limit {
                break 'outer;
            }

            // Store every 3rd hash in-between.
            let cur = self.gen.cur;
            const HASH_EVERY: i32 = 3;
            let mut i = s - l + 1;
            if i < s - 1 {
                let mut cv = load6432(src, i);
                let mut t = i + cur;
                self.table[hash4(cv)] = t;
                self.put_long(hash7(cv), t);

                // Do an long at i+1
                cv >>= 8;
                t += 1;
                self.put_long(hash7(cv), t);

                // We only have enough bits for a short entry at i+2
                cv >>= 8;
                t += 1;
                self.table[hash4(cv)] = t;

                // Skip one - otherwise we risk hitting 's'
                i += 4;
                while i < s - 1 {
                    let cv = load6432(src, i);
                    let t = i + cur;
                    self.put_long(hash7(cv), t);
                    self.table[hash4(cv >> 8)] = t + 1;
                    i += HASH_EVERY;
                }
            }

            // We could immediately start working at s now, but to improve
            // compression we first update the hash table at s-1 and at s.
            let x = load6432(src, s - 1);
            let o = cur + s - 1;
            self.table[hash4(x)] = o;
            self.put_long(hash7(x), o);
            cv = x >> 8;
        }

        // emitRemainder
        if (next_emit as usize) < src.len() {
            // If nothing was added, don't encode literals.
            if dst.n == 0 {
                return;
            }
            dst.emit_literals(&src[next_emit as usize..]);
        }
    }
}
