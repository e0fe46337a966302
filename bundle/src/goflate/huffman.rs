//! Go's length-limited Huffman code builder (`huffman_code.go`).
//!
//! Code lengths come from Go's package-merge variant (`bitCounts`), codes are assigned
//! canonically, shortest first and by symbol within a length. Ties in frequency are broken by
//! symbol, so the result is a function of the frequencies alone.

/// One code: `code` already bit-reversed for LSB-first output, and its length (0: unused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HCode {
    pub(crate) code: u16,
    pub(crate) len: u16,
}

#[derive(Debug, Clone, Copy)]
struct LiteralNode {
    literal: u16,
    freq: i32,
}

#[derive(Debug, Clone, Copy, Default)]
struct LevelInfo {
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

/// `maxBitsLimit` of huffman_code.go.
const MAX_BITS_LIMIT: usize = 16;

/// A Huffman code over `codes.len()` symbols, rebuilt in place by [`HuffmanEncoder::generate`]
/// (like Go's, a symbol whose frequency is 0 keeps its stale `code` with `len` 0).
#[derive(Debug, Clone)]
pub(crate) struct HuffmanEncoder {
    pub(crate) codes: Vec<HCode>,
    list: Vec<LiteralNode>,
}

impl HuffmanEncoder {
    pub(crate) fn new(size: usize) -> Self {
        HuffmanEncoder {
            codes: vec![HCode::default(); size],
            list: Vec::with_capacity(size),
        }
    }

    /// The fixed literal/length code of RFC 1951 section 3.2.6.
    pub(crate) fn fixed_literal() -> Self {
        let mut h = HuffmanEncoder::new(super::bitwriter::MAX_NUM_LIT);
        for (ch, code) in h.codes.iter_mut().enumerate() {
            let ch = ch as u16;
            let (bits, size) = match ch {
                0..=143 => (ch + 48, 8),
                144..=255 => (ch + 400 - 144, 9),
                256..=279 => (ch - 256, 7),
                _ => (ch + 192 - 280, 8),
            };
            *code = HCode {
                code: reverse_bits(bits, size),
                len: size,
            };
        }
        h
    }

    /// The fixed offset code: 5 bits each.
    pub(crate) fn fixed_offset() -> Self {
        let mut h = HuffmanEncoder::new(super::bitwriter::OFFSET_CODE_COUNT);
        for (ch, code) in h.codes.iter_mut().enumerate() {
            *code = HCode {
                code: reverse_bits(ch as u16, 5),
                len: 5,
            };
        }
        h
    }

    /// Bits the symbols of `freq` take in this code.
    pub(crate) fn bit_length(&self, freq: &[i32]) -> i64 {
        freq.iter()
            .zip(&self.codes)
            .filter(|(f, _)| **f != 0)
            .map(|(f, c)| i64::from(*f) * i64::from(c.len))
            .sum()
    }

    /// Build the code for `freq` (one entry per symbol) with codes of at most `max_bits`.
    pub(crate) fn generate(&mut self, freq: &[i32], max_bits: i32) {
        self.list.clear();
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                self.list.push(LiteralNode {
                    literal: i as u16,
                    freq: f,
                });
            } else {
                self.codes[i].len = 0;
            }
        }
        if self.list.len() <= 2 {
            // Go gives each present symbol the code of its rank, one bit long.
            for (i, node) in self.list.iter().enumerate() {
                self.codes[node.literal as usize] = HCode {
                    code: i as u16,
                    len: 1,
                };
            }
            return;
        }
        self.list
            .sort_unstable_by_key(|node| (node.freq, node.literal));
        let bit_count = bit_counts(&self.list, max_bits);
        self.assign_encoding(&bit_count);
    }

    /// `assignEncodingAndSize`: the least frequent symbols get the longest codes; within one
    /// length, codes ascend with the symbol.
    fn assign_encoding(&mut self, bit_count: &[i32]) {
        let mut code: u16 = 0;
        let mut end = self.list.len();
        for (n, &bits) in bit_count.iter().enumerate() {
            code <<= 1;
            if n == 0 || bits == 0 {
                continue;
            }
            let chunk = &mut self.list[end - bits as usize..end];
            chunk.sort_unstable_by_key(|node| node.literal);
            for node in chunk.iter() {
                self.codes[node.literal as usize] = HCode {
                    code: reverse_bits(code, n as u16),
                    len: n as u16,
                };
                code = code.wrapping_add(1);
            }
            end -= bits as usize;
        }
    }
}

/// `bitCounts`: how many symbols get each code length (index = length), for `list` sorted by
/// frequency (at least 3 symbols), lengths limited to `max_bits`.
fn bit_counts(list: &[LiteralNode], max_bits: i32) -> Vec<i32> {
    assert!(
        (max_bits as usize) < MAX_BITS_LIMIT,
        "flate: maxBits too large"
    );
    let n = list.len() as i32;
    // Go appends a sentinel of maximal frequency after the list.
    let freq = |i: i32| -> i32 { list.get(i as usize).map_or(i32::MAX, |node| node.freq) };
    let max_bits = max_bits.min(n - 1) as usize;

    // One more level than Go's array: Go never writes `levels[maxBits + 1]` on valid input, but
    // the bounds check would be the only difference if it did.
    let mut levels = [LevelInfo::default(); MAX_BITS_LIMIT + 1];
    let mut leaf_counts = [[0i32; MAX_BITS_LIMIT]; MAX_BITS_LIMIT];
    for level in 1..=max_bits {
        levels[level] = LevelInfo {
            last_freq: freq(1),
            next_char_freq: freq(2),
            next_pair_freq: if level == 1 {
                i32::MAX
            } else {
                freq(0).wrapping_add(freq(1))
            },
            needed: 0,
        };
        leaf_counts[level][level] = 2;
    }
    levels[max_bits].needed = 2 * n - 4;

    let mut level = max_bits;
    loop {
        if levels[level].next_pair_freq == i32::MAX && levels[level].next_char_freq == i32::MAX {
            // Both sources at this level are used up: it needs nothing more.
            levels[level].needed = 0;
            levels[level + 1].next_pair_freq = i32::MAX;
            level += 1;
            continue;
        }
        let prev_freq = levels[level].last_freq;
        if levels[level].next_char_freq < levels[level].next_pair_freq {
            // The next leaf is cheaper than the next pair of the level below.
            let leaves = leaf_counts[level][level] + 1;
            levels[level].last_freq = levels[level].next_char_freq;
            leaf_counts[level][level] = leaves;
            levels[level].next_char_freq = freq(leaves);
        } else {
            // Take the pair from the level below, which must then make two more.
            levels[level].last_freq = levels[level].next_pair_freq;
            let (below, here) = leaf_counts.split_at_mut(level);
            here[0][..level].copy_from_slice(&below[level - 1][..level]);
            levels[level - 1].needed = 2;
        }
        levels[level].needed -= 1;
        if levels[level].needed == 0 {
            if level == max_bits {
                break;
            }
            levels[level + 1].next_pair_freq = prev_freq.wrapping_add(levels[level].last_freq);
            level += 1;
        } else {
            while levels[level - 1].needed > 0 {
                level -= 1;
            }
        }
    }
    assert_eq!(
        leaf_counts[max_bits][max_bits], n,
        "leafCounts[maxBits][maxBits] != n"
    );

    let counts = &leaf_counts[max_bits];
    let mut bit_count = vec![0i32; max_bits + 1];
    for (bits, level) in (1..=max_bits).rev().enumerate() {
        bit_count[bits + 1] = counts[level] - counts[level - 1];
    }
    bit_count
}

/// The low `bit_length` bits of `number`, reversed.
pub(crate) fn reverse_bits(number: u16, bit_length: u16) -> u16 {
    (number << (16 - bit_length)).reverse_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (lengths, codes) of the code for `freq`.
    fn generated(freq: &[i32], max_bits: i32) -> (Vec<u16>, Vec<u16>) {
        let mut h = HuffmanEncoder::new(freq.len());
        h.generate(freq, max_bits);
        (
            h.codes.iter().map(|c| c.len).collect(),
            h.codes.iter().map(|c| c.code).collect(),
        )
    }

    fn fibonacci(n: usize) -> Vec<i32> {
        let (mut a, mut b) = (1, 1);
        (0..n)
            .map(|_| {
                let f = a;
                (a, b) = (b, a + b);
                f
            })
            .collect()
    }

    /// Expected values printed by Go 1.19.8's own `huffman_code.go` (copied into a `main`
    /// package, `generate` on a fresh encoder).
    #[test]
    fn goflate_huffman_codes_match_go() {
        let (lens, codes) = generated(&[1; 8], 15);
        assert_eq!(lens, [3; 8]);
        assert_eq!(codes, [0, 4, 2, 6, 1, 5, 3, 7]);

        let (lens, codes) = generated(&[5, 0, 3, 9, 1, 1, 0, 40, 2, 2], 15);
        assert_eq!(lens, [3, 0, 5, 2, 6, 6, 0, 1, 5, 5]);
        assert_eq!(codes, [3, 0, 7, 1, 31, 63, 0, 0, 23, 15]);

        // Fibonacci frequencies: the length limit binds.
        let (lens, codes) = generated(&fibonacci(20), 7);
        assert_eq!(
            lens,
            [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 4, 4, 3, 3, 2, 2]
        );
        assert_eq!(
            codes,
            [23, 87, 55, 119, 15, 79, 47, 111, 31, 95, 63, 127, 7, 39, 3, 11, 1, 5, 0, 2]
        );
        let (lens, codes) = generated(&fibonacci(20), 15);
        assert_eq!(
            lens,
            [15, 15, 15, 15, 14, 14, 13, 13, 12, 12, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(
            codes,
            [
                8191, 24575, 16383, 32767, 4095, 12287, 2047, 6143, 1023, 3071, 511, 255, 127, 63,
                31, 15, 7, 3, 1, 0
            ]
        );

        // One and two symbols: one bit each, by rank.
        let (lens, codes) = generated(&[0, 7, 0, 2], 15);
        assert_eq!((lens, codes), (vec![0, 1, 0, 1], vec![0, 0, 0, 1]));
    }

    #[test]
    fn goflate_reverse_bits() {
        assert_eq!(reverse_bits(1, 1), 1);
        assert_eq!(reverse_bits(0b110, 3), 0b011);
        assert_eq!(reverse_bits(0b1, 5), 0b10000);
    }

    #[test]
    fn goflate_fixed_codes() {
        let lit = HuffmanEncoder::fixed_literal();
        assert_eq!(lit.codes[0], HCode { code: 0x0c, len: 8 });
        assert_eq!(lit.codes[256], HCode { code: 0, len: 7 });
        assert_eq!(lit.codes[255].len, 9);
    }
}
