//! `token.go`: tokens as klauspost packs them, and the per-block histograms the encoders keep
//! as they emit.

/// A literal (`< 256`), the end-of-block marker (256) or a match
/// (`MATCH_TYPE | (length - 3) << 22 | offset code << 16 | (offset - 1)`).
pub(crate) type Token = u32;

const LENGTH_SHIFT: u32 = 22;
const OFFSET_MASK: u32 = (1 << LENGTH_SHIFT) - 1;
pub(crate) const MATCH_TYPE: u32 = 1 << 30;
pub(crate) const MATCH_OFFSET_ONLY_MASK: u32 = 0xffff;
pub(crate) const END_BLOCK_MARKER: usize = 256;
pub(crate) const LITERAL_COUNT: usize = 286;
pub(crate) const OFFSET_CODE_COUNT: usize = 30;
/// `maxStoreBlockSize`: the fast levels' window, and the most tokens a block holds (+1 EOB).
pub(crate) const MAX_STORE_BLOCK_SIZE: usize = 65535;
pub(crate) const BASE_MATCH_LENGTH: i32 = 3;

/// `lengthCodes`: length code (minus 257) of `length - 3`.
pub(crate) static LENGTH_CODES: [u8; 256] = length_codes(0);
/// `lengthCodes1`: `lengthCodes` + 1, the index into `extraHist`.
static LENGTH_CODES1: [u8; 256] = length_codes(1);

const fn length_codes(add: u8) -> [u8; 256] {
    // Length code boundaries (of length - 3) from RFC 1951.
    const BASE: [u16; 29] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112,
        128, 160, 192, 224, 255,
    ];
    let mut out = [0u8; 256];
    let mut code = 0;
    let mut i = 0;
    while i < 256 {
        while code + 1 < 29 && BASE[code + 1] as usize <= i {
            code += 1;
        }
        out[i] = code as u8 + add;
        i += 1;
    }
    out
}

/// `offsetCodes`.
static OFFSET_CODES: [u32; 256] = offset_codes();

const fn offset_codes() -> [u32; 256] {
    let mut out = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = if i < 4 {
            i as u32
        } else {
            // 2 * (bit length - 1) + the bit below the top one.
            let bl = 32 - (i as u32).leading_zeros();
            2 * (bl - 1) + ((i as u32 >> (bl - 2)) & 1)
        };
        i += 1;
    }
    out
}

/// `offsetCode`: the offset code of `off` (the offset minus 1).
pub(crate) fn offset_code(off: u32) -> u32 {
    if off < 256 {
        OFFSET_CODES[off as usize]
    } else {
        // offsetCodes14[x] == offsetCodes[x] + 14.
        OFFSET_CODES[((off >> 7) & 255) as usize] + 14
    }
}

pub(crate) fn token_length(t: Token) -> u8 {
    (t >> LENGTH_SHIFT) as u8
}

pub(crate) fn token_offset(t: Token) -> u32 {
    t & OFFSET_MASK
}

/// `tokens`: a block's tokens and their histograms.
pub(crate) struct Tokens {
    /// Length codes (index 0 is end of block, 1.. are codes 257..).
    pub(crate) extra_hist: [u16; 32],
    pub(crate) off_hist: [u16; 32],
    pub(crate) lit_hist: [u16; 256],
    pub(crate) n_filled: i32,
    pub(crate) n: u16,
    pub(crate) tokens: Vec<Token>,
}

impl Tokens {
    pub(crate) fn new() -> Self {
        Tokens {
            extra_hist: [0; 32],
            off_hist: [0; 32],
            lit_hist: [0; 256],
            n_filled: 0,
            n: 0,
            tokens: vec![0; MAX_STORE_BLOCK_SIZE + 1],
        }
    }

    /// `Reset`: note it does nothing when no token was added (Go's early return).
    pub(crate) fn reset(&mut self) {
        if self.n == 0 {
            return;
        }
        self.n = 0;
        self.n_filled = 0;
        self.lit_hist = [0; 256];
        self.extra_hist = [0; 32];
        self.off_hist = [0; 32];
    }

    pub(crate) fn add_literal(&mut self, lit: u8) {
        self.tokens[self.n as usize] = Token::from(lit);
        self.lit_hist[lit as usize] += 1;
        self.n += 1;
    }

    pub(crate) fn emit_literals(&mut self, lits: &[u8]) {
        for &v in lits {
            self.add_literal(v);
        }
    }

    /// `AddMatchLong`: a match of any length, split into matches of at most 258.
    pub(crate) fn add_match_long(&mut self, mut xlength: i32, xoffset: u32) {
        let oc = offset_code(xoffset);
        let xoffset = xoffset | (oc << 16);
        while xlength > 0 {
            let mut xl = xlength;
            if xl > 258 {
                // Never leave a remainder shorter than 3.
                xl = if xl > 258 + BASE_MATCH_LENGTH {
                    258
                } else {
                    258 - BASE_MATCH_LENGTH
                };
            }
            xlength -= xl;
            xl -= BASE_MATCH_LENGTH;
            self.extra_hist[LENGTH_CODES1[(xl as u8) as usize] as usize] += 1;
            self.off_hist[(oc & 31) as usize] += 1;
            self.tokens[self.n as usize] = MATCH_TYPE | ((xl as u32) << LENGTH_SHIFT) | xoffset;
            self.n += 1;
        }
    }

    /// `AddEOB`.
    pub(crate) fn add_eob(&mut self) {
        self.tokens[self.n as usize] = END_BLOCK_MARKER as Token;
        self.extra_hist[0] += 1;
        self.n += 1;
    }

    pub(crate) fn slice(&self) -> &[Token] {
        &self.tokens[..self.n as usize]
    }

    /// `EstimatedBits`: a Shannon estimate of the block's size with fresh tables, in Go's
    /// float32 arithmetic (no fused multiply-add, as Go on amd64 compiles it).
    pub(crate) fn estimated_bits(&self) -> i32 {
        let mut shannon = 0f32;
        let mut bits: i32 = 0;
        let mut n_matches: i32 = 0;
        let total = i32::from(self.n) + self.n_filled;
        if total > 0 {
            let inv_total = 1.0f32 / total as f32;
            for &v in &self.lit_hist {
                if v > 0 {
                    let n = f32::from(v);
                    shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
                }
            }
            // Just add 15 for EOB
            shannon += 15.0;
            for (i, &v) in self.extra_hist[1..LITERAL_COUNT - 256].iter().enumerate() {
                if v > 0 {
                    let n = f32::from(v);
                    shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
                    bits += i32::from(super::bitwriter::LENGTH_EXTRA_BITS[i & 31]) * i32::from(v);
                    n_matches += i32::from(v);
                }
            }
        }
        if n_matches > 0 {
            let inv_total = 1.0f32 / n_matches as f32;
            for (i, &v) in self.off_hist[..OFFSET_CODE_COUNT].iter().enumerate() {
                if v > 0 {
                    let n = f32::from(v);
                    shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
                    bits += i32::from(super::bitwriter::OFFSET_EXTRA_BITS[i & 31]) * i32::from(v);
                }
            }
        }
        shannon as i32 + bits
    }
}

/// `atLeastOne`: clamp to 1..=15 (NaN stays NaN, as in Go).
fn at_least_one(v: f32) -> f32 {
    v.clamp(1.0, 15.0)
}

/// `mFastLog2`: klauspost's polynomial approximation of log2. The constants are Go's literals,
/// rounded to float32 as Go rounds them.
#[allow(clippy::excessive_precision)]
fn m_fast_log2(val: f32) -> f32 {
    let mut ux = val.to_bits() as i32;
    let mut log2 = (((ux >> 23) & 255) - 128) as f32;
    ux &= -0x7f80_0001;
    ux += 127 << 23;
    let uval = f32::from_bits(ux as u32);
    log2 += ((-0.34484843f32) * uval + 2.02466578f32) * uval - 0.67487759f32;
    log2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgzip_code_tables_match_klauspost() {
        // Spot values from token.go's tables.
        assert_eq!(&LENGTH_CODES[..12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9]);
        assert_eq!(LENGTH_CODES[254], 27);
        assert_eq!(LENGTH_CODES[255], 28);
        assert_eq!(LENGTH_CODES1[255], 29);
        assert_eq!(
            &OFFSET_CODES[..17],
            &[0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8]
        );
        assert_eq!(OFFSET_CODES[255], 15);
        assert_eq!(offset_code(256), 16);
        assert_eq!(offset_code(32767), 29);
    }
}
