//! `huffman_code.go`: klauspost's length-limited Huffman code builder. The algorithm is Go's
//! (the same `bitCounts`), with 16-bit frequencies, codes packed as `hcode`, and — what the
//! block writer relies on — codes of absent symbols set to zero so that `canReuse` can see them.

/// `hcode`: length in the low 8 bits, the (bit-reversed) code above.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HCode(u32);

impl HCode {
    pub(crate) fn new(code: u16, len: u8) -> Self {
        HCode(u32::from(len) | (u32::from(code) << 8))
    }
    pub(crate) fn len(self) -> u8 {
        self.0 as u8
    }
    pub(crate) fn code64(self) -> u64 {
        u64::from(self.0 >> 8)
    }
    pub(crate) fn zero(self) -> bool {
        self.0 == 0
    }
}

const MAX_BITS_LIMIT: usize = 16;

#[derive(Clone, Copy)]
struct LiteralNode {
    literal: u16,
    freq: u16,
}

#[derive(Default, Clone, Copy)]
struct LevelInfo {
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

/// `huffmanEncoder`.
#[derive(Clone)]
pub(crate) struct HuffmanEncoder {
    pub(crate) codes: Vec<HCode>,
    list: Vec<LiteralNode>,
}

impl HuffmanEncoder {
    pub(crate) fn new(size: usize) -> Self {
        HuffmanEncoder {
            codes: vec![HCode::default(); size],
            list: Vec::with_capacity(size + 1),
        }
    }

    /// `generateFixedLiteralEncoding`.
    pub(crate) fn fixed_literal() -> Self {
        let mut h = Self::new(super::token::LITERAL_COUNT);
        for ch in 0..super::token::LITERAL_COUNT as u16 {
            let (bits, size) = match ch {
                0..=143 => (ch + 48, 8),
                144..=255 => (ch + 400 - 144, 9),
                256..=279 => (ch - 256, 7),
                _ => (ch + 192 - 280, 8),
            };
            h.codes[ch as usize] = HCode::new(reverse_bits(bits, size), size);
        }
        h
    }

    /// `generateFixedOffsetEncoding`.
    pub(crate) fn fixed_offset() -> Self {
        let mut h = Self::new(30);
        for ch in 0..30u16 {
            h.codes[ch as usize] = HCode::new(reverse_bits(ch, 5), 5);
        }
        h
    }

    /// `bitLength`.
    pub(crate) fn bit_length(&self, freq: &[u16]) -> i32 {
        freq.iter()
            .zip(&self.codes)
            .filter(|(f, _)| **f != 0)
            .map(|(f, c)| i32::from(*f) * i32::from(c.len()))
            .sum()
    }

    /// `canReuseBits`: the size with these codes, `i32::MAX` if a present symbol has none.
    pub(crate) fn can_reuse_bits(&self, freq: &[u16]) -> i32 {
        let mut total = 0i32;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                let code = self.codes[i];
                if code.zero() {
                    return i32::MAX;
                }
                total += i32::from(f) * i32::from(code.len());
            }
        }
        total
    }

    /// `generate`: codes for `freq` (only `codes[..freq.len()]` are touched).
    pub(crate) fn generate(&mut self, freq: &[u16], max_bits: i32) {
        self.list.clear();
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                self.list.push(LiteralNode {
                    literal: i as u16,
                    freq: f,
                });
            } else {
                self.codes[i] = HCode::default();
            }
        }
        if self.list.len() <= 2 {
            for (i, node) in self.list.iter().enumerate() {
                self.codes[node.literal as usize] = HCode::new(i as u16, 1);
            }
            return;
        }
        // sortByFreq orders by (freq, literal), a total order: any sort agrees.
        self.list
            .sort_unstable_by_key(|node| (node.freq, node.literal));
        let bit_count = bit_counts(&self.list, max_bits);
        // assignEncodingAndSize.
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
                self.codes[node.literal as usize] =
                    HCode::new(reverse_bits(code, n as u8), n as u8);
                code = code.wrapping_add(1);
            }
            end -= bits as usize;
        }
    }
}

/// `bitCounts`, as in Go's standard library (see the standard port's `huffman.rs`).
fn bit_counts(list: &[LiteralNode], max_bits: i32) -> Vec<i32> {
    assert!(
        (max_bits as usize) < MAX_BITS_LIMIT,
        "flate: maxBits too large"
    );
    let n = list.len() as i32;
    // Go appends a sentinel of maximal frequency (and literal) after the list.
    let freq = |i: i32| -> i32 {
        list.get(i as usize)
            .map_or(i32::from(u16::MAX), |node| i32::from(node.freq))
    };
    let is_sentinel = |i: i32| (i as usize) >= list.len();
    let max_bits = max_bits.min(n - 1) as usize;

    let mut levels = [LevelInfo::default(); MAX_BITS_LIMIT + 1];
    let mut leaf_counts = [[0i32; MAX_BITS_LIMIT]; MAX_BITS_LIMIT];
    let l2f = freq(2);
    let l1f = freq(1);
    let l0f = freq(0) + freq(1);
    for level in 1..=max_bits {
        levels[level] = LevelInfo {
            last_freq: l1f,
            next_char_freq: l2f,
            next_pair_freq: if level == 1 { i32::MAX } else { l0f },
            needed: 0,
        };
        leaf_counts[level][level] = 2;
    }
    levels[max_bits].needed = 2 * n - 4;

    let mut level = max_bits;
    while level < 16 {
        if levels[level].next_pair_freq == i32::MAX && levels[level].next_char_freq == i32::MAX {
            levels[level].needed = 0;
            levels[level + 1].next_pair_freq = i32::MAX;
            level += 1;
            continue;
        }
        let prev_freq = levels[level].last_freq;
        if levels[level].next_char_freq < levels[level].next_pair_freq {
            let leaves = leaf_counts[level][level] + 1;
            levels[level].last_freq = levels[level].next_char_freq;
            leaf_counts[level][level] = leaves;
            levels[level].next_char_freq = if is_sentinel(leaves) {
                i32::MAX
            } else {
                freq(leaves)
            };
        } else {
            levels[level].last_freq = levels[level].next_pair_freq;
            // Take the leaf counts of the level below, keeping ours at [level].
            let save = leaf_counts[level][level];
            leaf_counts[level] = leaf_counts[level - 1];
            leaf_counts[level][level] = save;
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
pub(crate) fn reverse_bits(number: u16, bit_length: u8) -> u16 {
    (number << ((16 - u32::from(bit_length)) & 15)).reverse_bits()
}
