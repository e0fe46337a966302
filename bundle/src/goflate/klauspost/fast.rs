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

/// `inputMargin` of level 5: the search stops this many bytes before the end of the input.
const L5_INPUT_MARGIN: i32 = 12 - 1;
/// `skipLog` of level 5: the search's step grows by one per this many bytes without a match.
const L5_SKIP_LOG: i32 = 6;
/// `doEvery` of level 5: the search's smallest step.
const L5_DO_EVERY: i32 = 1;

/// A match level 5's search found: the `l` bytes at `s` equal those at `t` (`l == 0`: the
/// first 4 do, the rest is not measured yet). `next_s` is where the search would have looked
/// next (Go's `nextS`).
#[derive(Clone, Copy)]
struct Match {
    s: i32,
    t: i32,
    l: i32,
    next_s: i32,
}

/// The position level 5's search looks at after the current one (Go's `nextS`, `next`,
/// `nextHashS` and `nextHashL`).
struct Lookahead {
    s: i32,
    cv: u64,
    hash_s: usize,
    hash_l: usize,
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
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + L5_INPUT_MARGIN as usize;
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

    /// The body of `fastEncL5.Encode` after `addBlock`: tokens for `src[s..]`, matched against
    /// all of `src` (the history). Go's outer loop, split along its phases: the search for a
    /// match ([`Self::find_match`]), extending it ([`Self::extend_match`]), emitting it, and
    /// indexing the bytes it covered ([`Self::index_match`]); then `emitRemainder`.
    fn encode_hist(&mut self, dst: &mut Tokens, src: &[u8], s: i32) {
        let s_limit = src.len() as i32 - L5_INPUT_MARGIN;
        let mut next_emit = s;
        let mut s = s;
        let mut cv = load6432(src, s);
        while let Some(mut m) = self.find_match(src, s, cv, next_emit, s_limit) {
            self.extend_match(src, &mut m, next_emit, s_limit);
            if next_emit < m.s {
                dst.emit_literals(&src[next_emit as usize..m.s as usize]);
            }
            dst.add_match_long(m.l, (m.s - m.t - BASE_MATCH_OFFSET) as u32);
            s = m.s + m.l;
            next_emit = s;
            if m.next_s >= s {
                s = m.next_s + 1;
            }
            if s >= s_limit {
                break;
            }
            cv = self.index_match(src, s, m.l);
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

    /// Go's inner search loop: step through `src` from `s` (skipping faster the longer nothing
    /// matched since `next_emit`), indexing each position, until a candidate from either table
    /// holds the 4 bytes at the position. `cv` holds the 8 bytes at `s`. `None` (Go's
    /// `goto emitRemainder`) when the search passes `s_limit`.
    #[inline]
    fn find_match(
        &mut self,
        src: &[u8],
        s: i32,
        mut cv: u64,
        next_emit: i32,
        s_limit: i32,
    ) -> Option<Match> {
        let mut next_s = s;
        loop {
            let hash_s = hash4(cv);
            let hash_l = hash7(cv);
            let s = next_s;
            next_s = s + L5_DO_EVERY + ((s - next_emit) >> L5_SKIP_LOG);
            if next_s > s_limit {
                return None;
            }
            // Fetch a short+long candidate
            let s_candidate = self.table[hash_s];
            let l_candidate = self.b_table[hash_l];
            let next = load6432(src, next_s);
            let entry = s + self.gen.cur;
            self.table[hash_s] = entry;
            self.put_long(hash_l, entry);

            let ahead = Lookahead {
                s: next_s,
                cv: next,
                hash_s: hash4(next),
                hash_l: hash7(next),
            };
            if let Some(m) = self.long_candidate_match(src, s, cv, l_candidate, &ahead) {
                return Some(m);
            }
            if let Some(m) = self.short_candidate_match(src, s, cv, s_candidate, &ahead) {
                return Some(m);
            }
            cv = next;
        }
    }

    /// The search loop's checks of the long table's entry (`lCandidate`, its newest and its
    /// previous position) for the 4 bytes `cv` at `s`. On a hit the next position is indexed
    /// too, and when both entries hit, the longer match wins.
    #[inline(always)]
    fn long_candidate_match(
        &mut self,
        src: &[u8],
        s: i32,
        cv: u64,
        l_candidate: TableEntryPrev,
        ahead: &Lookahead,
    ) -> Option<Match> {
        let cur = self.gen.cur;
        let mut m = Match {
            s,
            t: l_candidate.cur - cur,
            l: 0,
            next_s: ahead.s,
        };
        if s - m.t >= MAX_MATCH_OFFSET {
            return None;
        }
        if cv as u32 == load3232(src, m.t) {
            self.store_lookahead(ahead);
            let t2 = l_candidate.prev - cur;
            if s - t2 < MAX_MATCH_OFFSET && cv as u32 == load3232(src, t2) {
                m.l = self.gen.matchlen(s + 4, m.t + 4, src) + 4;
                let ml1 = self.gen.matchlen(s + 4, t2 + 4, src) + 4;
                if ml1 > m.l {
                    m.t = t2;
                    m.l = ml1;
                }
            }
            return Some(m);
        }
        m.t = l_candidate.prev - cur;
        if s - m.t < MAX_MATCH_OFFSET && cv as u32 == load3232(src, m.t) {
            self.store_lookahead(ahead);
            return Some(m);
        }
        None
    }

    /// The search loop's check of the short table's entry (`sCandidate`) for the 4 bytes `cv`
    /// at `s`. On a hit ("Found a 4 match...") the next position is indexed, and a longer
    /// match starting there, from the long table's entry for it, is preferred.
    #[inline(always)]
    fn short_candidate_match(
        &mut self,
        src: &[u8],
        s: i32,
        cv: u64,
        s_candidate: i32,
        ahead: &Lookahead,
    ) -> Option<Match> {
        let cur = self.gen.cur;
        let t = s_candidate - cur;
        if s - t >= MAX_MATCH_OFFSET || cv as u32 != load3232(src, t) {
            return None;
        }
        let m = Match {
            s,
            t,
            l: self.gen.matchlen(s + 4, t + 4, src) + 4,
            next_s: ahead.s,
        };
        // Read before storing the next match, which overwrites it.
        let l_candidate = self.b_table[ahead.hash_l];
        self.store_lookahead(ahead);

        // If the next long is a candidate, use that...
        let t2 = l_candidate.cur - cur;
        if ahead.s - t2 < MAX_MATCH_OFFSET {
            if load3232(src, t2) == ahead.cv as u32 {
                let ml = self.gen.matchlen(ahead.s + 4, t2 + 4, src) + 4;
                if ml > m.l {
                    return Some(Match {
                        s: ahead.s,
                        t: t2,
                        l: ml,
                        ..m
                    });
                }
            }
            // If the previous long is a candidate, use that...
            let t2 = l_candidate.prev - cur;
            if ahead.s - t2 < MAX_MATCH_OFFSET && load3232(src, t2) == ahead.cv as u32 {
                let ml = self.gen.matchlen(ahead.s + 4, t2 + 4, src) + 4;
                if ml > m.l {
                    return Some(Match {
                        s: ahead.s,
                        t: t2,
                        l: ml,
                        ..m
                    });
                }
            }
        }
        Some(m)
    }

    /// "Store the next match": index the search's next position in both tables.
    #[inline(always)]
    fn store_lookahead(&mut self, ahead: &Lookahead) {
        let entry = ahead.s + self.gen.cur;
        self.table[ahead.hash_s] = entry;
        self.put_long(ahead.hash_l, entry);
    }

    /// After the search: measure a match known only to 4 bytes (or cut at 258), look for a
    /// longer one ending where it ends ("Try to locate a better match by checking the end of
    /// best match"), then extend it backwards over bytes not yet emitted.
    #[inline]
    fn extend_match(&self, src: &[u8], m: &mut Match, next_emit: i32, s_limit: i32) {
        if m.l == 0 {
            // Extend the 4-byte match as long as possible.
            m.l = self.gen.matchlen_long(m.s + 4, m.t + 4, src) + 4;
        } else if m.l == MAX_MATCH_LENGTH {
            m.l += self.gen.matchlen_long(m.s + m.l, m.t + m.l, src);
        }

        // Try to locate a better match by checking the end of best match...
        let s_at = m.s + m.l;
        if m.l < 30 && s_at < s_limit {
            // Allow some bytes at the beginning to mismatch; Extend backwards picks them up
            // again if they match after all.
            const SKIP_BEGINNING: i32 = 2;
            let e_long = self.b_table[hash7(load6432(src, s_at))].cur;
            let t2 = e_long - self.gen.cur - m.l + SKIP_BEGINNING;
            let s2 = m.s + SKIP_BEGINNING;
            let off = s2 - t2;
            if t2 >= 0 && off < MAX_MATCH_OFFSET && off > 0 {
                let l2 = self.gen.matchlen_long(s2, t2, src);
                if l2 > m.l {
                    m.t = t2;
                    m.l = l2;
                    m.s = s2;
                }
            }
        }

        // Extend backwards
        while m.t > 0 && m.s > next_emit && src[m.t as usize - 1] == src[m.s as usize - 1] {
            m.s -= 1;
            m.t -= 1;
            m.l += 1;
        }
    }

    /// After emitting a match of length `l` that the search resumes behind at `s`: "Store
    /// every 3rd hash in-between", then index `s - 1` and `s` ("to improve compression").
    /// Returns the 8 bytes at `s`, the search's next `cv`.
    #[inline]
    fn index_match(&mut self, src: &[u8], s: i32, l: i32) -> u64 {
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
        x >> 8
    }
}
