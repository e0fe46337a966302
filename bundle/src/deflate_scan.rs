//! Walks a raw deflate stream one block at a time: where each block starts and ends (to the
//! bit), what it decodes to, and whether `preflate-rs` 0.7.6 can parse it.
//!
//! [`crate::gzip_recipe`] needs this because preflate refuses some streams every inflater
//! accepts, and refuses them for the whole stream: its parser builds every Huffman code with
//! `calculate_huffman_code_tree` (preflate-rs 0.7.6, `src/deflate/huffman_encoding.rs`, line
//! 111), which rejects a code that does not fill its code space ("Invalid Huffman code
//! lengths"). RFC 1951 allows one such code: a distance code with a single code of one bit
//! (3.2.7: "If only one distance code is used, it is encoded using one bit, not zero bits"),
//! or none at all; zlib's and Go's inflaters accept both. Go's `compress/flate` writes a single
//! one-bit distance code in every dynamic block that has at most one distance code in use
//! (`huffmanEncoder.generate` gives each of one or two symbols one bit, and a block without
//! matches counts one distance code 0), and so does klauspost's flate; zlib never does (it
//! always codes two). preflate also refuses a length of 258 coded as code 284 with all extra
//! bits set, and non-zero padding bits, both of which inflaters accept. The recipe's analyser
//! asks [`scan_block`] about each block before preflate sees it, feeds preflate only the blocks
//! it can parse, and writes the others without it: verbatim, or re-encoded from their header,
//! plain text and matches by [`encode_block`] (`gzip_recipe/preflate.rs`).
//!
//! The scanner is a complete inflater (it checks what zlib checks and writes the plain text),
//! so a stream it accepts is a valid deflate stream. It keeps no state between blocks but the
//! plain text the caller hands back ([`scan_block`]'s `text`), and re-reads a block from its
//! start when the caller had not buffered all of it yet.

use std::sync::OnceLock;

/// Why `preflate-rs` 0.7.6 refuses a block that zlib inflates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreflateRefusal {
    /// A literal/length or distance code that does not fill its code space (a single one-bit
    /// distance code, as Go writes, or no distance code at all): "Invalid Huffman code
    /// lengths".
    IncompleteCode,
    /// Length 258 coded as length code 284 with all extra bits set: "Non-standard 258 length
    /// code".
    Long258,
    /// Non-zero bits where the stream pads to a byte (before a stored block's length, or after
    /// the final block): `NonZeroPadding`.
    NonZeroPadding,
}

/// One deflate block, as [`scan_block`] found it. Bit positions count from the first bit of
/// the slice scanned (bit `n` is bit `n % 8` of byte `n / 8`, least significant first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScannedBlock {
    /// First bit (the BFINAL bit).
    pub start: u64,
    /// The bit after the block's last bit (before the final block's padding).
    pub end: u64,
    /// BFINAL: the stream's last block.
    pub last: bool,
    /// Plain-text bytes the block decodes to.
    pub plain_len: usize,
    /// Why preflate cannot parse it, if it cannot.
    pub refusal: Option<PreflateRefusal>,
    /// For a dynamic block, the bit after its last code length (where its codes start);
    /// `start` for the others.
    pub header_end: u64,
    /// A dynamic block that [`encode_block`] writes again, bit for bit, from its header, its
    /// plain text and its matches (no length 258 coded the long way, zero padding if final).
    pub reencodable: bool,
}

/// A back-reference of a deflate block, after `literals` literals since the block's start or
/// the match before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Literals before it.
    pub literals: u32,
    /// 3-258.
    pub len: u16,
    /// 1-32768.
    pub dist: u16,
}

/// Why a stream is not valid deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Invalid(pub &'static str);

/// Reading ran past the bytes given.
struct Short;

/// Decodes the block that starts at bit `start` of `data`, appending its plain text to `text`.
/// `text` must hold the stream's plain text before the block (at least its last 32 KiB, or all
/// of it from the stream's start), which back-references copy from; `max_plain` bounds what
/// one block may add. `Ok(None)`: the block runs past the end of `data` (`text` is left as it
/// was; scan again with more data).
pub(crate) fn scan_block(
    data: &[u8],
    start: u64,
    text: &mut Vec<u8>,
    max_plain: usize,
) -> Result<Option<ScannedBlock>, Invalid> {
    scan_block_matches(data, start, text, max_plain, None)
}

/// [`scan_block`], also listing the block's matches in `matches` (cleared first).
pub(crate) fn scan_block_matches(
    data: &[u8],
    start: u64,
    text: &mut Vec<u8>,
    max_plain: usize,
    mut matches: Option<&mut Vec<Match>>,
) -> Result<Option<ScannedBlock>, Invalid> {
    let before = text.len();
    let mut bits = Bits {
        data,
        pos: start,
        end: data.len() as u64 * 8,
    };
    if let Some(m) = matches.as_deref_mut() {
        m.clear();
    }
    match block(&mut bits, text, before + max_plain, matches) {
        Ok(found) => {
            let padding = found.last && bad_padding(&bits);
            Ok(Some(ScannedBlock {
                start,
                end: bits.pos,
                last: found.last,
                plain_len: text.len() - before,
                refusal: found
                    .refusal
                    .or(padding.then_some(PreflateRefusal::NonZeroPadding)),
                header_end: found.header_end.unwrap_or(start),
                reencodable: found.header_end.is_some() && !found.long258 && !padding,
            }))
        }
        Err(Step::Short) => {
            text.truncate(before);
            Ok(None)
        }
        Err(Step::Invalid(e)) => {
            text.truncate(before);
            Err(e)
        }
    }
}

/// True when the bits after the final block, up to the next byte boundary, are not all zero.
fn bad_padding(bits: &Bits) -> bool {
    let pad = (8 - bits.pos % 8) % 8;
    pad > 0 && bits.peek(pad as u32) != 0
}

enum Step {
    Short,
    Invalid(Invalid),
}

impl From<Short> for Step {
    fn from(_: Short) -> Step {
        Step::Short
    }
}

fn invalid<T>(why: &'static str) -> Result<T, Step> {
    Err(Step::Invalid(Invalid(why)))
}

/// A little-endian bit reader over a byte slice.
struct Bits<'a> {
    data: &'a [u8],
    pos: u64,
    end: u64,
}

impl Bits<'_> {
    /// The next `n` (at most 32) bits without consuming them; zeros past the end.
    fn peek(&self, n: u32) -> u64 {
        let at = (self.pos / 8) as usize;
        let word = match self.data.get(at..at + 8) {
            Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
            None => {
                let mut w = [0u8; 8];
                let tail = self.data.get(at..).unwrap_or(&[]);
                w[..tail.len()].copy_from_slice(tail);
                u64::from_le_bytes(w)
            }
        };
        (word >> (self.pos % 8)) & ((1u64 << n) - 1)
    }

    fn take(&mut self, n: u32) -> Result<u32, Short> {
        if self.pos + u64::from(n) > self.end {
            return Err(Short);
        }
        let v = self.peek(n) as u32;
        self.pos += u64::from(n);
        Ok(v)
    }
}

/// Bits the decoding table resolves at once; longer codes are walked bit by bit.
const FAST_BITS: u32 = 9;

/// A canonical Huffman code (RFC 1951 3.2.2).
struct Huffman {
    /// Codes of each length.
    count: [u16; 16],
    /// Symbols by code (length, then symbol order).
    symbols: Vec<u16>,
    /// By the next `FAST_BITS` bits: `symbol << 4 | length` for codes that short, 0 otherwise.
    fast: Vec<u32>,
    /// By symbol: its code as the stream holds it (bit-reversed) and its length (0: none).
    codes: Vec<(u32, u8)>,
}

/// How a set of code lengths fills the code space.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Complete,
    /// Codes left over: a single one-bit code, or no code at all (zlib allows these for
    /// literal/length and distance codes).
    Sparse,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Result<(Huffman, Fill), Step> {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[l as usize] += 1;
        }
        count[0] = 0;
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left = (left << 1) - i32::from(c);
            if left < 0 {
                return invalid("over-subscribed Huffman code");
            }
        }
        let fill = if left == 0 {
            Fill::Complete
        } else if count[2..].iter().all(|&c| c == 0) {
            // zlib (inflate_table) accepts an incomplete code only if no code is longer than
            // one bit: one one-bit code, or none.
            Fill::Sparse
        } else {
            return invalid("incomplete Huffman code");
        };
        let mut offsets = [0u16; 16];
        for len in 1..15 {
            offsets[len + 1] = offsets[len] + count[len];
        }
        let mut symbols = vec![0u16; lengths.iter().filter(|&&l| l != 0).count()];
        let mut fast = vec![0u32; 1 << FAST_BITS];
        let mut codes = vec![(0u32, 0u8); lengths.len()];
        // RFC 1951's canonical codes: the first code of each length.
        let mut next = [0u32; 16];
        let mut code = 0u32;
        for len in 1..16 {
            code = (code + u32::from(count[len - 1])) << 1;
            next[len] = code;
        }
        for (sym, &len) in lengths.iter().enumerate() {
            if len == 0 {
                continue;
            }
            let len = len as usize;
            symbols[offsets[len] as usize] = sym as u16;
            offsets[len] += 1;
            let code = next[len];
            next[len] += 1;
            // The stream holds the code's bits most significant first.
            let reversed = code.reverse_bits() >> (32 - len);
            codes[sym] = (reversed, len as u8);
            if len as u32 <= FAST_BITS {
                let mut i = reversed as usize;
                while i < fast.len() {
                    fast[i] = (sym as u32) << 4 | len as u32;
                    i += 1 << len;
                }
            }
        }
        Ok((
            Huffman {
                count,
                symbols,
                fast,
                codes,
            },
            fill,
        ))
    }

    fn decode(&self, bits: &mut Bits) -> Result<u16, Step> {
        let entry = self.fast[bits.peek(FAST_BITS) as usize];
        if entry != 0 {
            let len = entry & 15;
            if bits.pos + u64::from(len) > bits.end {
                return Err(Step::Short);
            }
            bits.pos += u64::from(len);
            return Ok((entry >> 4) as u16);
        }
        // A longer code, or bits that are no code: one bit at a time (puff.c's decode).
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.count[len]);
            if code - count < first {
                return Ok(self.symbols[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        invalid("invalid Huffman code")
    }
}

/// Deflate's fixed codes (RFC 1951 3.2.6).
fn fixed() -> &'static (Huffman, Huffman) {
    static FIXED: OnceLock<(Huffman, Huffman)> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut lit = [8u8; 288];
        lit[144..256].fill(9);
        lit[256..280].fill(7);
        let lit = Huffman::new(&lit).ok().expect("the fixed code is valid").0;
        let dist = Huffman::new(&[5u8; 32])
            .ok()
            .expect("the fixed code is valid")
            .0;
        (lit, dist)
    })
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// The order code length code lengths are sent in.
const CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// What [`block`] found.
struct Found {
    last: bool,
    refusal: Option<PreflateRefusal>,
    /// Where a dynamic block's codes start.
    header_end: Option<u64>,
    /// A length 258 coded as code 284 with all extra bits set.
    long258: bool,
}

/// One block: its BFINAL bit and what preflate makes of it.
fn block(
    bits: &mut Bits,
    text: &mut Vec<u8>,
    max_text: usize,
    matches: Option<&mut Vec<Match>>,
) -> Result<Found, Step> {
    let last = bits.take(1)? == 1;
    let mut found = Found {
        last,
        refusal: None,
        header_end: None,
        long258: false,
    };
    match bits.take(2)? {
        0 => {
            let pad = ((8 - bits.pos % 8) % 8) as u32;
            found.refusal = (bits.take(pad)? != 0).then_some(PreflateRefusal::NonZeroPadding);
            let len = bits.take(16)?;
            if bits.take(16)? != !len & 0xffff {
                return invalid("stored block length does not match its complement");
            }
            let from = (bits.pos / 8) as usize;
            let stored = bits.data.get(from..from + len as usize).ok_or(Short)?;
            if text.len() + stored.len() > max_text {
                return invalid("a deflate block decodes to too much plain text");
            }
            text.extend_from_slice(stored);
            bits.pos += u64::from(len) * 8;
        }
        1 => {
            let (lit, dist) = fixed();
            found.long258 = codes(bits, lit, dist, text, max_text, matches)?;
            found.refusal = found.long258.then_some(PreflateRefusal::Long258);
        }
        2 => {
            let (lit, dist, fill) = dynamic_codes(bits)?;
            found.header_end = Some(bits.pos);
            found.long258 = codes(bits, &lit, &dist, text, max_text, matches)?;
            found.refusal = match (fill, found.long258) {
                (Fill::Sparse, _) => Some(PreflateRefusal::IncompleteCode),
                (_, true) => Some(PreflateRefusal::Long258),
                _ => None,
            };
        }
        _ => return invalid("invalid block type"),
    }
    Ok(found)
}

/// A dynamic block's code lengths (HLIT to the last length): its literal/length and distance
/// codes, and whether both fill their code space.
fn dynamic_codes(bits: &mut Bits) -> Result<(Huffman, Huffman, Fill), Step> {
    let hlit = bits.take(5)? as usize + 257;
    let hdist = bits.take(5)? as usize + 1;
    let hclen = bits.take(4)? as usize + 4;
    if hlit > 286 || hdist > 30 {
        return invalid("too many length or distance symbols");
    }
    let mut codegen_lengths = [0u8; 19];
    for &i in &CODEGEN_ORDER[..hclen] {
        codegen_lengths[i] = bits.take(3)? as u8;
    }
    let (codegen, fill) = Huffman::new(&codegen_lengths)?;
    if fill != Fill::Complete {
        return invalid("incomplete code length code");
    }
    let mut lengths = [0u8; 286 + 30];
    let mut n = 0;
    while n < hlit + hdist {
        let (value, repeat) = match codegen.decode(bits)? {
            sym @ 0..=15 => (sym as u8, 1),
            16 => {
                if n == 0 {
                    return invalid("length repeat with no first length");
                }
                (lengths[n - 1], 3 + bits.take(2)? as usize)
            }
            17 => (0, 3 + bits.take(3)? as usize),
            _ => (0, 11 + bits.take(7)? as usize),
        };
        if n + repeat > hlit + hdist {
            return invalid("length repeat past the last length");
        }
        lengths[n..n + repeat].fill(value);
        n += repeat;
    }
    if lengths[256] == 0 {
        return invalid("no end-of-block code");
    }
    let (lit, lit_fill) = Huffman::new(&lengths[..hlit])?;
    let (dist, dist_fill) = Huffman::new(&lengths[hlit..hlit + hdist])?;
    let fill = match (lit_fill, dist_fill) {
        (Fill::Complete, Fill::Complete) => Fill::Complete,
        _ => Fill::Sparse,
    };
    Ok((lit, dist, fill))
}

/// The block's literals and matches, to its end-of-block code.
/// True when a length 258 is coded as code 284 with all extra bits set.
fn codes(
    bits: &mut Bits,
    lit: &Huffman,
    dist: &Huffman,
    text: &mut Vec<u8>,
    max_text: usize,
    mut matches: Option<&mut Vec<Match>>,
) -> Result<bool, Step> {
    let mut long258 = false;
    let mut literals = 0u32;
    loop {
        let sym = lit.decode(bits)?;
        if sym < 256 {
            text.push(sym as u8);
            literals += 1;
            if text.len() > max_text {
                return invalid("a deflate block decodes to too much plain text");
            }
            continue;
        }
        if sym == 256 {
            return Ok(long258);
        }
        let code = (sym - 257) as usize;
        if code >= 29 {
            return invalid("invalid length code");
        }
        let extra = bits.take(u32::from(LENGTH_EXTRA[code]))?;
        let len = LENGTH_BASE[code] as usize + extra as usize;
        long258 |= code == 27 && len == 258;
        let dcode = dist.decode(bits)? as usize;
        if dcode >= 30 {
            return invalid("invalid distance code");
        }
        let distance =
            DIST_BASE[dcode] as usize + bits.take(u32::from(DIST_EXTRA[dcode]))? as usize;
        if distance > text.len() {
            return invalid("distance too far back");
        }
        if text.len() + len > max_text {
            return invalid("a deflate block decodes to too much plain text");
        }
        if let Some(m) = matches.as_deref_mut() {
            m.push(Match {
                literals,
                len: len as u16,
                dist: distance as u16,
            });
        }
        literals = 0;
        let from = text.len() - distance;
        if distance >= len {
            text.extend_from_within(from..from + len);
        } else {
            for i in 0..len {
                let b = text[from + i];
                text.push(b);
            }
        }
    }
}

/// Writes bits least significant first, as deflate packs them.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// The `bits` (at most 32) low bits of `value`.
    pub(crate) fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// The first `bits` bits of `bytes`.
    pub(crate) fn append(&mut self, bytes: &[u8], bits: u64) {
        let whole = (bits / 8) as usize;
        if self.n == 0 {
            self.out.extend_from_slice(&bytes[..whole]);
        } else {
            bytes[..whole]
                .iter()
                .for_each(|&b| self.put(u32::from(b), 8));
        }
        if !bits.is_multiple_of(8) {
            self.put(
                u32::from(bytes[whole]) & ((1 << (bits % 8)) - 1),
                (bits % 8) as u32,
            );
        }
    }

    /// Bits written.
    pub(crate) fn bits(&self) -> u64 {
        self.out.len() as u64 * 8 + u64::from(self.n)
    }

    /// The whole bytes written, and the bits after them (fewer than 8: their value and count).
    pub(crate) fn into_parts(self) -> (Vec<u8>, u8, u32) {
        (self.out, self.acc as u8, self.n)
    }

    /// The bytes, the last one zero-padded.
    pub(crate) fn finish(self) -> Vec<u8> {
        let (mut out, partial, n) = self.into_parts();
        if n > 0 {
            out.push(partial);
        }
        out
    }
}

/// Writes a dynamic block again: `header` (its first `header_bits` bits, from BFINAL to the
/// last code length, as [`ScannedBlock::header_end`] ends them), then `text` coded with that
/// header's codes as literals but for `matches`, then end-of-block. For a block
/// [`ScannedBlock::reencodable`] says so, these are the block's bits.
pub(crate) fn encode_block(
    w: &mut BitWriter,
    header: &[u8],
    header_bits: u64,
    text: &[u8],
    matches: &[Match],
) -> Result<(), Invalid> {
    let mut bits = Bits {
        data: header,
        pos: 0,
        end: header_bits.min(header.len() as u64 * 8),
    };
    let read = |bits: &mut Bits| -> Result<(Huffman, Huffman), Step> {
        bits.take(1)?;
        if bits.take(2)? != 2 {
            return invalid("a re-encoded block that is not a dynamic block");
        }
        let (lit, dist, _) = dynamic_codes(bits)?;
        Ok((lit, dist))
    };
    let (lit, dist) = match read(&mut bits) {
        Ok(codes) if bits.pos == header_bits => codes,
        Ok(_) | Err(Step::Short) => return Err(Invalid("a block header of the wrong length")),
        Err(Step::Invalid(e)) => return Err(e),
    };
    w.append(header, header_bits);
    let put = |w: &mut BitWriter, code: &Huffman, sym: usize| match code.codes.get(sym) {
        Some(&(bits, len)) if len > 0 => {
            w.put(bits, u32::from(len));
            Ok(())
        }
        _ => Err(Invalid("a symbol the block's code has no code for")),
    };
    let mut at = 0usize;
    for m in matches {
        let literals = text
            .get(at..at + m.literals as usize)
            .ok_or(Invalid("matches past the block's text"))?;
        literals
            .iter()
            .try_for_each(|&b| put(w, &lit, usize::from(b)))?;
        at += literals.len();
        if !(3..=258).contains(&m.len) || m.dist == 0 || m.dist > 32768 {
            return Err(Invalid("a match of an impossible length or distance"));
        }
        let code = LENGTH_BASE
            .iter()
            .rposition(|&b| b <= m.len)
            .expect("len >= 3");
        put(w, &lit, 257 + code)?;
        w.put(
            u32::from(m.len - LENGTH_BASE[code]),
            u32::from(LENGTH_EXTRA[code]),
        );
        let code = DIST_BASE
            .iter()
            .rposition(|&b| b <= m.dist)
            .expect("dist >= 1");
        put(w, &dist, code)?;
        w.put(
            u32::from(m.dist - DIST_BASE[code]),
            u32::from(DIST_EXTRA[code]),
        );
        at += usize::from(m.len);
        if at > text.len() {
            return Err(Invalid("matches past the block's text"));
        }
    }
    text[at..]
        .iter()
        .try_for_each(|&b| put(w, &lit, usize::from(b)))?;
    put(w, &lit, 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Scans a whole raw deflate stream; returns the blocks and the plain text.
    pub(crate) fn scan_all(data: &[u8]) -> (Vec<ScannedBlock>, Vec<u8>) {
        let mut text = Vec::new();
        let mut blocks = Vec::new();
        let mut at = 0;
        loop {
            let b = scan_block(data, at, &mut text, usize::MAX / 2)
                .unwrap()
                .expect("whole");
            blocks.push(b);
            at = b.end;
            if b.last {
                return (blocks, text);
            }
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        // Words and random bytes, as in layers.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                out.extend_from_slice(&x.to_le_bytes());
            } else {
                out.extend_from_slice(format!("word{} ", x % 500).as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn decodes_what_zlib_writes_at_every_level_and_strategy() {
        let plain = sample(700_000);
        for level in 0..=9 {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
            enc.write_all(&plain[..300_000]).unwrap();
            enc.flush().unwrap();
            enc.write_all(&plain[300_000..]).unwrap();
            let stream = enc.finish().unwrap();
            let (blocks, text) = scan_all(&stream);
            assert!(text == plain, "level {level}");
            assert_eq!(blocks.last().unwrap().end.div_ceil(8), stream.len() as u64);
            assert!(blocks.iter().all(|b| b.refusal.is_none()), "level {level}");
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn a_block_cut_short_asks_for_more_and_leaves_the_text() {
        let plain = sample(200_000);
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&plain).unwrap();
        let stream = enc.finish().unwrap();
        let (blocks, _) = scan_all(&stream);
        let first = blocks[0];
        for cut in [0, 1, 10, (first.end / 8) as usize] {
            let mut text = b"kept".to_vec();
            let scanned = scan_block(&stream[..cut.min(stream.len())], 0, &mut text, 1 << 30);
            if cut as u64 * 8 >= first.end {
                assert_eq!(scanned.unwrap(), Some(first));
            } else {
                assert_eq!(scanned.unwrap(), None, "cut {cut}");
                assert_eq!(text, b"kept");
            }
        }
    }

    #[test]
    fn go_style_blocks_are_accepted_and_flagged() {
        // A dynamic block whose distance code is a single one-bit code (what Go writes for a
        // block without matches): literal 'a' and end-of-block, one bit each; distance code 0
        // alone, one bit. HLIT 257, HDIST 1, HCLEN 18 (code length symbols 1 and 18 used).
        let mut w = BitWriter::default();
        w.put(1, 1); // BFINAL
        w.put(2, 2); // dynamic
        w.put(0, 5); // HLIT - 257
        w.put(0, 5); // HDIST - 1
        w.put(18 - 4, 4); // HCLEN - 4
        for &sym in &CODEGEN_ORDER[..18] {
            // Symbols 18 and 1 get one bit each (18 is code 1, 1 is code 0).
            w.put(u32::from(sym == 18 || sym == 1), 3);
        }
        let one = |w: &mut BitWriter| w.put(0, 1);
        let zeros = |w: &mut BitWriter, n: u32| {
            w.put(1, 1);
            w.put(n - 11, 7);
        };
        // Literal lengths: 97 zeros, 'a' = 1, 158 zeros, end-of-block = 1.
        zeros(&mut w, 97);
        one(&mut w);
        zeros(&mut w, 138);
        zeros(&mut w, 20);
        one(&mut w);
        // Distance lengths: code 0 = 1.
        one(&mut w);
        // 'a' (code 0), 'a', end of block (code 1).
        w.put(0, 1);
        w.put(0, 1);
        w.put(1, 1);
        let stream = w.finish();
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&stream[..])
            .read_to_end(&mut inflated)
            .expect("zlib inflates it");
        assert_eq!(inflated, b"aa");
        let (blocks, text) = scan_all(&stream);
        assert_eq!(text, b"aa");
        assert_eq!(blocks[0].refusal, Some(PreflateRefusal::IncompleteCode));
    }

    use std::io::Read;

    #[test]
    fn invalid_streams_are_refused() {
        // Block type 3.
        let mut text = Vec::new();
        assert!(scan_block(&[0x07], 0, &mut text, 100).is_err());
        // A stored block whose length does not match its complement.
        assert!(scan_block(&[0x01, 5, 0, 5, 0, 1, 2, 3, 4, 5], 0, &mut text, 100).is_err());
        // A fixed block whose first match reaches before the stream.
        let mut w = BitWriter::default();
        w.put(1, 1);
        w.put(1, 2);
        w.put(0b100_0000, 7); // length code 257 (3): code 0000001, sent first bit first
        w.put(0, 5); // distance code 0 (1)
        let stream = w.finish();
        assert_eq!(
            scan_block(&stream, 0, &mut text, 100),
            Err(Invalid("distance too far back"))
        );
    }
}
