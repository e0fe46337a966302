//! Go's block writer (`huffman_bit_writer.go`): chooses stored, fixed or dynamic Huffman for
//! each block exactly as Go does and writes its bits.
//!
//! Output goes to an in-memory `Vec` that the caller drains after every step; Go's 248-byte
//! staging buffer only decides when bytes reach its writer, never which bytes, so it is not
//! reproduced.

use super::huffman::{HCode, HuffmanEncoder};
use super::token::{
    is_literal, length_code, offset_code, token_length, token_offset, Token, END_BLOCK_MARKER,
    LENGTH_BASE, LENGTH_EXTRA_BITS, OFFSET_BASE, OFFSET_EXTRA_BITS,
};

/// Literal/length symbols (`maxNumLit`).
pub(crate) const MAX_NUM_LIT: usize = 286;
/// Offset symbols.
pub(crate) const OFFSET_CODE_COUNT: usize = 30;
const CODEGEN_CODE_COUNT: usize = 19;
const LENGTH_CODES_START: usize = 257;
const BAD_CODE: u8 = 255;
/// Largest stored block.
pub(crate) const MAX_STORE_BLOCK_SIZE: usize = 65535;

const CODEGEN_ORDER: [usize; CODEGEN_CODE_COUNT] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Which code a block is written with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Codes {
    Fixed,
    Dynamic,
}

#[derive(Clone)]
pub(crate) struct HuffmanBitWriter {
    /// Bytes written and not yet taken by [`HuffmanBitWriter::take_output`].
    out: Vec<u8>,
    bits: u64,
    nbits: u32,
    literal_freq: [i32; MAX_NUM_LIT],
    offset_freq: [i32; OFFSET_CODE_COUNT],
    codegen_freq: [i32; CODEGEN_CODE_COUNT],
    codegen: [u8; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
    literal_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
    fixed_literal: HuffmanEncoder,
    fixed_offset: HuffmanEncoder,
    /// `huffOffset`: the offset code of a block without matches (one symbol, one bit).
    huff_offset: HuffmanEncoder,
}

impl HuffmanBitWriter {
    pub(crate) fn new() -> Self {
        let mut huff_offset = HuffmanEncoder::new(OFFSET_CODE_COUNT);
        let mut freq = [0i32; OFFSET_CODE_COUNT];
        freq[0] = 1;
        huff_offset.generate(&freq, 15);
        HuffmanBitWriter {
            out: Vec::new(),
            bits: 0,
            nbits: 0,
            literal_freq: [0; MAX_NUM_LIT],
            offset_freq: [0; OFFSET_CODE_COUNT],
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            codegen: [0; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
            literal_encoding: HuffmanEncoder::new(MAX_NUM_LIT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
            fixed_literal: HuffmanEncoder::fixed_literal(),
            fixed_offset: HuffmanEncoder::fixed_offset(),
            huff_offset,
        }
    }

    /// The bytes completed so far (the partial last byte stays until [`Self::flush`]).
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Pad to a byte boundary with zero bits and emit everything.
    pub(crate) fn flush(&mut self) {
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits = self.nbits.saturating_sub(8);
        }
        self.bits = 0;
    }

    fn write_bits(&mut self, b: u32, nb: u32) {
        self.bits |= u64::from(b) << self.nbits;
        self.nbits += nb;
        if self.nbits >= 48 {
            self.out.extend_from_slice(&self.bits.to_le_bytes()[..6]);
            self.bits >>= 48;
            self.nbits -= 48;
        }
    }

    fn write_code(&mut self, c: HCode) {
        self.write_bits(u32::from(c.code), u32::from(c.len));
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.nbits % 8, 0, "writeBytes with unfinished bits");
        self.flush();
        self.out.extend_from_slice(bytes);
    }

    /// `writeStoredHeader`: block type 0, aligned, then LEN and NLEN.
    pub(crate) fn write_stored_header(&mut self, length: usize, eof: bool) {
        self.write_bits(u32::from(eof), 3);
        self.flush();
        self.write_bits(length as u32, 16);
        self.write_bits(u32::from(!(length as u16)), 16);
    }

    /// A stored block of `data` (at most [`MAX_STORE_BLOCK_SIZE`] bytes).
    pub(crate) fn write_stored_block(&mut self, data: &[u8], eof: bool) {
        self.write_stored_header(data.len(), eof);
        self.write_bytes(data);
    }

    fn write_fixed_header(&mut self, eof: bool) {
        self.write_bits(if eof { 3 } else { 2 }, 3);
    }

    /// `writeBlock`: the smallest of fixed, dynamic and (when `input` is known) stored.
    pub(crate) fn write_block(&mut self, tokens: &[Token], eof: bool, input: Option<&[u8]>) {
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        let stored_size = stored_size(input);
        let mut extra_bits = 0i64;
        if stored_size.is_some() {
            for code in LENGTH_CODES_START + 8..num_literals {
                extra_bits += i64::from(self.literal_freq[code])
                    * i64::from(LENGTH_EXTRA_BITS[code - LENGTH_CODES_START]);
            }
            // Empty when fewer than 5 offset codes are used.
            let offsets = self.offset_freq.iter().take(num_offsets).skip(4);
            extra_bits += offsets
                .zip(&OFFSET_EXTRA_BITS[4..])
                .map(|(&freq, &bits)| i64::from(freq) * i64::from(bits))
                .sum::<i64>();
        }
        let mut codes = Codes::Fixed;
        let mut size = 3
            + self.fixed_literal.bit_length(&self.literal_freq)
            + self.fixed_offset.bit_length(&self.offset_freq)
            + extra_bits;
        generate_codegen(
            &mut self.codegen,
            &mut self.codegen_freq,
            &self.literal_encoding.codes[..num_literals],
            &self.offset_encoding.codes[..num_offsets],
        );
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (dynamic_size, num_codegens) = self.dynamic_size(false, extra_bits);
        if dynamic_size < size {
            size = dynamic_size;
            codes = Codes::Dynamic;
        }
        if let (Some(stored), Some(input)) = (stored_size, input) {
            if stored < size {
                self.write_stored_block(input, eof);
                return;
            }
        }
        match codes {
            Codes::Fixed => {
                self.write_fixed_header(eof);
                let (lit, off) = (&self.fixed_literal.codes, &self.fixed_offset.codes);
                write_tokens(
                    &mut self.out,
                    &mut self.bits,
                    &mut self.nbits,
                    tokens,
                    lit,
                    off,
                );
            }
            Codes::Dynamic => {
                self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
                let (lit, off) = (&self.literal_encoding.codes, &self.offset_encoding.codes);
                write_tokens(
                    &mut self.out,
                    &mut self.bits,
                    &mut self.nbits,
                    tokens,
                    lit,
                    off,
                );
            }
        }
    }

    /// `writeBlockDynamic`: always a dynamic code, unless stored is clearly smaller (BestSpeed).
    pub(crate) fn write_block_dynamic(&mut self, tokens: &[Token], eof: bool, input: &[u8]) {
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        generate_codegen(
            &mut self.codegen,
            &mut self.codegen_freq,
            &self.literal_encoding.codes[..num_literals],
            &self.offset_encoding.codes[..num_offsets],
        );
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(false, 0);
        if let Some(stored) = stored_size(Some(input)) {
            if stored < size + (size >> 4) {
                self.write_stored_block(input, eof);
                return;
            }
        }
        self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
        let (lit, off) = (&self.literal_encoding.codes, &self.offset_encoding.codes);
        write_tokens(
            &mut self.out,
            &mut self.bits,
            &mut self.nbits,
            tokens,
            lit,
            off,
        );
    }

    /// `writeBlockHuff`: literals only, with a dynamic code (HuffmanOnly, and BestSpeed's
    /// incompressible blocks).
    pub(crate) fn write_block_huff(&mut self, eof: bool, input: &[u8]) {
        self.literal_freq = [0; MAX_NUM_LIT];
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        const NUM_LITERALS: usize = END_BLOCK_MARKER + 1;
        // Go sets only the first offset frequency; the others keep stale counts that weigh
        // nothing, since `huffOffset` gives their symbols no code.
        self.offset_freq[0] = 1;
        self.literal_encoding.generate(&self.literal_freq, 15);
        generate_codegen(
            &mut self.codegen,
            &mut self.codegen_freq,
            &self.literal_encoding.codes[..NUM_LITERALS],
            &self.huff_offset.codes[..1],
        );
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(true, 0);
        if let Some(stored) = stored_size(Some(input)) {
            if stored < size + (size >> 4) {
                self.write_stored_block(input, eof);
                return;
            }
        }
        self.write_dynamic_header(NUM_LITERALS, 1, num_codegens, eof);
        for &b in input {
            let c = self.literal_encoding.codes[b as usize];
            self.write_code(c);
        }
        let end = self.literal_encoding.codes[END_BLOCK_MARKER];
        self.write_code(end);
    }

    /// `indexTokens`: symbol frequencies of `tokens` plus the end-of-block marker, and the
    /// dynamic codes built from them. Returns how many literal and offset symbols are sent.
    fn index_tokens(&mut self, tokens: &[Token]) -> (usize, usize) {
        self.literal_freq = [0; MAX_NUM_LIT];
        self.offset_freq = [0; OFFSET_CODE_COUNT];
        for &t in tokens {
            if is_literal(t) {
                self.literal_freq[t as usize] += 1;
                continue;
            }
            self.literal_freq[LENGTH_CODES_START + length_code(token_length(t))] += 1;
            self.offset_freq[offset_code(token_offset(t))] += 1;
        }
        self.literal_freq[END_BLOCK_MARKER] += 1;
        let mut num_literals = MAX_NUM_LIT;
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = OFFSET_CODE_COUNT;
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            // We haven't found a single match: Go sends one offset code all the same.
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.offset_encoding.generate(&self.offset_freq, 15);
        (num_literals, num_offsets)
    }

    /// `dynamicSize`: bits of a dynamic block with the current codegen, and how many code
    /// length codes its header sends. `huff` uses `huffOffset` as the offset code.
    fn dynamic_size(&self, huff: bool, extra_bits: i64) -> (i64, usize) {
        let mut num_codegens = CODEGEN_CODE_COUNT;
        while num_codegens > 4 && self.codegen_freq[CODEGEN_ORDER[num_codegens - 1]] == 0 {
            num_codegens -= 1;
        }
        let header = 3
            + 5
            + 5
            + 4
            + 3 * num_codegens as i64
            + self.codegen_encoding.bit_length(&self.codegen_freq)
            + i64::from(self.codegen_freq[16]) * 2
            + i64::from(self.codegen_freq[17]) * 3
            + i64::from(self.codegen_freq[18]) * 7;
        let offsets = if huff {
            &self.huff_offset
        } else {
            &self.offset_encoding
        };
        let size = header
            + self.literal_encoding.bit_length(&self.literal_freq)
            + offsets.bit_length(&self.offset_freq)
            + extra_bits;
        (size, num_codegens)
    }

    fn write_dynamic_header(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        num_codegens: usize,
        eof: bool,
    ) {
        self.write_bits(if eof { 5 } else { 4 }, 3);
        self.write_bits((num_literals - 257) as u32, 5);
        self.write_bits((num_offsets - 1) as u32, 5);
        self.write_bits((num_codegens - 4) as u32, 4);
        for &symbol in &CODEGEN_ORDER[..num_codegens] {
            let len = self.codegen_encoding.codes[symbol].len;
            self.write_bits(u32::from(len), 3);
        }
        let mut i = 0;
        loop {
            let word = self.codegen[i];
            i += 1;
            if word == BAD_CODE {
                break;
            }
            let code = self.codegen_encoding.codes[word as usize];
            self.write_code(code);
            let extra = match word {
                16 => 2,
                17 => 3,
                18 => 7,
                _ => continue,
            };
            let value = u32::from(self.codegen[i]);
            i += 1;
            self.write_bits(value, extra);
        }
    }
}

/// `storedSize`: bits of a stored block of `input`, when it can be stored.
fn stored_size(input: Option<&[u8]>) -> Option<i64> {
    match input {
        Some(input) if input.len() <= MAX_STORE_BLOCK_SIZE => Some((input.len() as i64 + 5) * 8),
        _ => None,
    }
}

/// `generateCodegen`: the run-length coded code lengths of both codes in `codegen`, ended by
/// `BAD_CODE`, and the frequency of each codegen symbol.
fn generate_codegen(
    codegen: &mut [u8],
    codegen_freq: &mut [i32; CODEGEN_CODE_COUNT],
    lit_codes: &[HCode],
    off_codes: &[HCode],
) {
    *codegen_freq = [0; CODEGEN_CODE_COUNT];
    let total = lit_codes.len() + off_codes.len();
    for (slot, code) in codegen.iter_mut().zip(lit_codes.iter().chain(off_codes)) {
        *slot = code.len as u8;
    }
    codegen[total] = BAD_CODE;

    // Compacted in place: the output never overtakes the input.
    let mut size = codegen[0];
    let mut count: i32 = 1;
    let mut out = 0usize;
    let mut input = 1usize;
    while size != BAD_CODE {
        let next = codegen[input];
        input += 1;
        if next == size {
            count += 1;
            continue;
        }
        let mut emit = |out: &mut usize, value: u8| {
            codegen[*out] = value;
            *out += 1;
        };
        if size != 0 {
            emit(&mut out, size);
            codegen_freq[size as usize] += 1;
            count -= 1;
            while count >= 3 {
                let n = count.min(6);
                emit(&mut out, 16);
                emit(&mut out, (n - 3) as u8);
                codegen_freq[16] += 1;
                count -= n;
            }
        } else {
            while count >= 11 {
                let n = count.min(138);
                emit(&mut out, 18);
                emit(&mut out, (n - 11) as u8);
                codegen_freq[18] += 1;
                count -= n;
            }
            if count >= 3 {
                emit(&mut out, 17);
                emit(&mut out, (count - 3) as u8);
                codegen_freq[17] += 1;
                count = 0;
            }
        }
        while count > 0 {
            emit(&mut out, size);
            codegen_freq[size as usize] += 1;
            count -= 1;
        }
        size = next;
        count = 1;
    }
    codegen[out] = BAD_CODE;
}

/// `writeTokens`: the tokens, then the end-of-block marker.
fn write_tokens(
    out: &mut Vec<u8>,
    bits: &mut u64,
    nbits: &mut u32,
    tokens: &[Token],
    lit: &[HCode],
    off: &[HCode],
) {
    let mut put = |b: u32, nb: u32| {
        *bits |= u64::from(b) << *nbits;
        *nbits += nb;
        if *nbits >= 48 {
            out.extend_from_slice(&bits.to_le_bytes()[..6]);
            *bits >>= 48;
            *nbits -= 48;
        }
    };
    for &t in tokens {
        if is_literal(t) {
            let c = lit[t as usize];
            put(u32::from(c.code), u32::from(c.len));
            continue;
        }
        let length = token_length(t);
        let lcode = length_code(length);
        let c = lit[lcode + LENGTH_CODES_START];
        put(u32::from(c.code), u32::from(c.len));
        let extra = u32::from(LENGTH_EXTRA_BITS[lcode]);
        if extra > 0 {
            put(length - LENGTH_BASE[lcode], extra);
        }
        let offset = token_offset(t);
        let ocode = offset_code(offset);
        let c = off[ocode];
        put(u32::from(c.code), u32::from(c.len));
        let extra = u32::from(OFFSET_EXTRA_BITS[ocode]);
        if extra > 0 {
            put(offset - OFFSET_BASE[ocode], extra);
        }
    }
    let c = lit[END_BLOCK_MARKER];
    put(u32::from(c.code), u32::from(c.len));
}
