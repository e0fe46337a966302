//! `huffman_bit_writer.go`: klauspost's block writer. Unlike Go's standard library it can keep
//! a dynamic table open across calls (`lastHeader`), estimates whether a new table pays
//! (`EstimatedBits`, `logNewTablePenalty`), and has a literal-only block path
//! (`writeBlockHuff`) that may store a block whose byte histogram looks flat.

use std::sync::OnceLock;

use super::huffman::{HCode, HuffmanEncoder};
use super::token::{
    token_length, token_offset, Token, Tokens, END_BLOCK_MARKER, LENGTH_CODES, LITERAL_COUNT,
    MATCH_OFFSET_ONLY_MASK, MAX_STORE_BLOCK_SIZE, OFFSET_CODE_COUNT,
};

const LENGTH_CODES_START: usize = 257;
const CODEGEN_CODE_COUNT: usize = 19;
const BAD_CODE: u8 = 255;
/// Below this many tokens a fixed table is considered.
const MAX_PREDEFINED_TOKENS: u16 = 250;
const LENGTH_EXTRA_BITS_MIN_CODE: usize = 8;
const OFFSET_EXTRA_BITS_MIN_CODE: u32 = 4;

pub(crate) static LENGTH_EXTRA_BITS: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0, 0, 0, 0,
];
static LENGTH_BASE: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255, 0, 0, 0,
];
pub(crate) static OFFSET_EXTRA_BITS: [i8; 32] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13, 14, 14,
];
static OFFSET_BASE: [u32; 32] = [
    0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
    0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
    0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
    0x003000, 0x004000, 0x006000, 0x008000, 0x00c000,
];
static CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// `offsetCombined`: extra bits in the low byte, the base above.
fn offset_combined(code: u32) -> u32 {
    let i = code as usize;
    if OFFSET_EXTRA_BITS[i] == 0 || OFFSET_BASE[i] > 0x006000 {
        return 0;
    }
    OFFSET_EXTRA_BITS[i] as u32 | (OFFSET_BASE[i] << 8)
}

struct Fixed {
    literal: HuffmanEncoder,
    offset: HuffmanEncoder,
    /// `huffOffset`: the offset code of a literal-only block (one code of length 1).
    huff_offset: HuffmanEncoder,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut freq = [0u16; OFFSET_CODE_COUNT];
        freq[0] = 1;
        let mut huff_offset = HuffmanEncoder::new(OFFSET_CODE_COUNT);
        huff_offset.generate(&freq, 15);
        Fixed {
            literal: HuffmanEncoder::fixed_literal(),
            offset: HuffmanEncoder::fixed_offset(),
            huff_offset,
        }
    })
}

/// `huffmanBitWriter`, writing into `out` (the caller drains it).
pub(crate) struct HuffmanBitWriter {
    pub(crate) out: Vec<u8>,
    bits: u64,
    nbits: u32,
    last_huff_man: bool,
    literal_encoding: HuffmanEncoder,
    tmp_lit_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
    /// Size in bits of the open dynamic table's header, 0 when no block is open.
    last_header: i32,
    pub(crate) log_new_table_penalty: u32,
    literal_freq: [u16; LENGTH_CODES_START + 32],
    offset_freq: [u16; 32],
    codegen_freq: [u16; CODEGEN_CODE_COUNT],
    codegen: [u8; LITERAL_COUNT + OFFSET_CODE_COUNT + 1],
}

impl HuffmanBitWriter {
    pub(crate) fn new() -> Self {
        HuffmanBitWriter {
            out: Vec::new(),
            bits: 0,
            nbits: 0,
            last_huff_man: false,
            literal_encoding: HuffmanEncoder::new(LITERAL_COUNT),
            tmp_lit_encoding: HuffmanEncoder::new(LITERAL_COUNT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
            last_header: 0,
            log_new_table_penalty: 0,
            literal_freq: [0; LENGTH_CODES_START + 32],
            offset_freq: [0; 32],
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            codegen: [0; LITERAL_COUNT + OFFSET_CODE_COUNT + 1],
        }
    }

    /// `reset`: the tables themselves are kept, as in Go.
    pub(crate) fn reset(&mut self) {
        self.bits = 0;
        self.nbits = 0;
        self.last_header = 0;
        self.last_huff_man = false;
    }

    fn can_reuse(&self, t: &Tokens) -> bool {
        let off = &self.offset_encoding.codes;
        if t.off_hist[..OFFSET_CODE_COUNT]
            .iter()
            .zip(off.iter())
            .any(|(&v, c)| v != 0 && c.zero())
        {
            return false;
        }
        let lit = &self.literal_encoding.codes;
        if t.extra_hist[..LITERAL_COUNT - 256]
            .iter()
            .zip(lit[256..LITERAL_COUNT].iter())
            .any(|(&v, c)| v != 0 && c.zero())
        {
            return false;
        }
        !t.lit_hist
            .iter()
            .zip(lit[..256].iter())
            .any(|(&v, c)| v != 0 && c.zero())
    }

    /// `flush`: end an open block and write out all bits, padded to a byte.
    pub(crate) fn flush(&mut self) {
        if self.last_header > 0 {
            // We owe an EOB
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits = self.nbits.saturating_sub(8);
        }
        self.bits = 0;
    }

    fn write_bits(&mut self, b: i32, nb: u32) {
        self.bits |= (b as u64) << (self.nbits & 63);
        self.nbits += nb;
        if self.nbits >= 48 {
            self.write_out_bits();
        }
    }

    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        assert!(self.nbits & 7 == 0, "writeBytes with unfinished bits");
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits -= 8;
        }
        self.out.extend_from_slice(bytes);
    }

    fn write_code(&mut self, c: HCode) {
        self.bits |= c.code64() << (self.nbits & 63);
        self.nbits += u32::from(c.len());
        if self.nbits >= 48 {
            self.write_out_bits();
        }
    }

    /// `writeOutBits`: six bytes out.
    fn write_out_bits(&mut self) {
        let bits = self.bits;
        self.bits >>= 48;
        self.nbits -= 48;
        self.out.extend_from_slice(&bits.to_le_bytes()[..6]);
    }

    fn generate_codegen(&mut self, num_literals: usize, num_offsets: usize, huff_offset: bool) {
        self.codegen_freq = [0; CODEGEN_CODE_COUNT];
        for i in 0..num_literals {
            self.codegen[i] = self.literal_encoding.codes[i].len();
        }
        for i in 0..num_offsets {
            self.codegen[num_literals + i] = if huff_offset {
                fixed().huff_offset.codes[i].len()
            } else {
                self.offset_encoding.codes[i].len()
            };
        }
        let codegen = &mut self.codegen;
        codegen[num_literals + num_offsets] = BAD_CODE;
        let mut size = codegen[0];
        let mut count: i32 = 1;
        let mut out_index = 0usize;
        let mut in_index = 1usize;
        while size != BAD_CODE {
            let next_size = codegen[in_index];
            in_index += 1;
            if next_size == size {
                count += 1;
                continue;
            }
            if size != 0 {
                codegen[out_index] = size;
                out_index += 1;
                self.codegen_freq[size as usize] += 1;
                count -= 1;
                while count >= 3 {
                    let n = count.min(6);
                    codegen[out_index] = 16;
                    codegen[out_index + 1] = (n - 3) as u8;
                    out_index += 2;
                    self.codegen_freq[16] += 1;
                    count -= n;
                }
            } else {
                while count >= 11 {
                    let n = count.min(138);
                    codegen[out_index] = 18;
                    codegen[out_index + 1] = (n - 11) as u8;
                    out_index += 2;
                    self.codegen_freq[18] += 1;
                    count -= n;
                }
                if count >= 3 {
                    codegen[out_index] = 17;
                    codegen[out_index + 1] = (count - 3) as u8;
                    out_index += 2;
                    self.codegen_freq[17] += 1;
                    count = 0;
                }
            }
            count -= 1;
            while count >= 0 {
                codegen[out_index] = size;
                out_index += 1;
                self.codegen_freq[size as usize] += 1;
                count -= 1;
            }
            size = next_size;
            count = 1;
        }
        codegen[out_index] = BAD_CODE;
    }

    fn codegens(&self) -> usize {
        let mut num = CODEGEN_CODE_COUNT;
        while num > 4 && self.codegen_freq[CODEGEN_ORDER[num - 1]] == 0 {
            num -= 1;
        }
        num
    }

    fn header_size(&self) -> (i32, usize) {
        let num = self.codegens();
        (
            3 + 5
                + 5
                + 4
                + 3 * num as i32
                + self.codegen_encoding.bit_length(&self.codegen_freq)
                + i32::from(self.codegen_freq[16]) * 2
                + i32::from(self.codegen_freq[17]) * 3
                + i32::from(self.codegen_freq[18]) * 7,
            num,
        )
    }

    fn dynamic_reuse_size(&self) -> i32 {
        self.literal_encoding.bit_length(&self.literal_freq)
            + self.offset_encoding.bit_length(&self.offset_freq)
    }

    fn dynamic_size(&self, extra_bits: i32) -> (i32, usize) {
        let (header, num) = self.header_size();
        (header + self.dynamic_reuse_size() + extra_bits, num)
    }

    fn extra_bit_size(&self) -> i32 {
        let mut total = 0i32;
        for (i, &n) in self.literal_freq[257..LITERAL_COUNT].iter().enumerate() {
            total += i32::from(n) * i32::from(LENGTH_EXTRA_BITS[i & 31]);
        }
        for (i, &n) in self.offset_freq[..OFFSET_CODE_COUNT].iter().enumerate() {
            total += i32::from(n) * i32::from(OFFSET_EXTRA_BITS[i & 31]);
        }
        total
    }

    fn fixed_size(&self, extra_bits: i32) -> i32 {
        3 + fixed().literal.bit_length(&self.literal_freq)
            + fixed().offset.bit_length(&self.offset_freq)
            + extra_bits
    }

    /// `storedSize`.
    fn stored_size(input: Option<&[u8]>) -> Option<i32> {
        match input {
            Some(b) if b.len() <= MAX_STORE_BLOCK_SIZE => Some((b.len() as i32 + 5) * 8),
            _ => None,
        }
    }

    fn write_dynamic_header(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        num_codegens: usize,
        is_eof: bool,
    ) {
        self.write_bits(if is_eof { 5 } else { 4 }, 3);
        self.write_bits(num_literals as i32 - 257, 5);
        self.write_bits(num_offsets as i32 - 1, 5);
        self.write_bits(num_codegens as i32 - 4, 4);
        for &order in &CODEGEN_ORDER[..num_codegens] {
            let value = self.codegen_encoding.codes[order].len();
            self.write_bits(i32::from(value), 3);
        }
        let mut i = 0;
        loop {
            let code_word = self.codegen[i];
            i += 1;
            if code_word == BAD_CODE {
                break;
            }
            self.write_code(self.codegen_encoding.codes[code_word as usize]);
            let extra = match code_word {
                16 => 2,
                17 => 3,
                18 => 7,
                _ => continue,
            };
            self.write_bits(i32::from(self.codegen[i]), extra);
            i += 1;
        }
    }

    /// `writeStoredHeader`.
    pub(crate) fn write_stored_header(&mut self, length: usize, is_eof: bool) {
        if self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        // To write EOF, use a fixed encoding block. 10 bits instead of 5 bytes.
        if length == 0 && is_eof {
            self.write_fixed_header(is_eof);
            // EOB: 7 bits, value: 0
            self.write_bits(0, 7);
            self.flush();
            return;
        }
        self.write_bits(i32::from(is_eof), 3);
        self.flush();
        self.write_bits(length as i32, 16);
        self.write_bits(i32::from(!(length as u16)), 16);
    }

    fn write_fixed_header(&mut self, is_eof: bool) {
        if self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        self.write_bits(if is_eof { 3 } else { 2 }, 3);
    }

    fn write_stored(&mut self, input: &[u8], eof: bool) {
        self.write_stored_header(input.len(), eof);
        self.write_bytes(input);
    }

    /// `writeBlockDynamic`: `tokens` as a dynamic block, reusing the open table when that is
    /// estimated cheaper, or as fixed or stored when smaller. With `sync`, the block is ended.
    pub(crate) fn write_block_dynamic(
        &mut self,
        tokens: &mut Tokens,
        eof: bool,
        input: Option<&[u8]>,
        sync: bool,
    ) {
        let sync = sync || eof;
        if sync {
            tokens.add_eob();
        }
        self.end_unreusable_block(tokens, eof);
        let (num_literals, num_offsets) = self.index_tokens(tokens, !sync);
        let stored_size = Self::stored_size(input);
        let extra_bits = if stored_size.is_some() || self.last_header > 0 {
            self.extra_bit_size()
        } else {
            0
        };
        let block = DynamicBlock {
            input,
            stored_size,
            extra_bits,
            eof,
            sync,
        };
        if self.last_header > 0 && self.write_cheaper_than_reuse(tokens, &block) {
            return;
        }
        // We want a new block/table
        if self.last_header == 0
            && self.write_cheaper_than_new_table(tokens, &block, num_literals, num_offsets)
        {
            return;
        }
        if sync {
            self.last_header = 0;
        }
        self.write_tokens(tokens.slice(), Table::Dynamic);
    }

    /// `writeBlockDynamic`'s first checks: end the open block (write the EOB it owes) when its
    /// table cannot serve `tokens`: it is a Huffman-only table, this block is the last, or
    /// `tokens` use codes it lacks (`canReuse`; `fillReuse` is false in 1.15.12).
    fn end_unreusable_block(&mut self, tokens: &Tokens, eof: bool) {
        // We cannot reuse pure huffman table, and must mark as EOF.
        if (self.last_huff_man || eof) && self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            self.last_huff_man = false;
        }
        if self.last_header > 0 && !self.can_reuse(tokens) {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
    }

    /// `writeBlockDynamic`'s "Check if we should reuse" branch, with a table open: estimates
    /// a new table against reusing it (ending the open block if the new one wins), then writes
    /// the block fixed or stored if either is clearly smaller. Whether the block is written.
    fn write_cheaper_than_reuse(&mut self, tokens: &mut Tokens, block: &DynamicBlock) -> bool {
        // Estimate size for using a new table.
        let mut new_size = self.last_header + tokens.estimated_bits();
        new_size += i32::from(self.literal_encoding.codes[END_BLOCK_MARKER].len())
            + (new_size >> self.log_new_table_penalty);
        let reuse_size = self.dynamic_reuse_size() + block.extra_bits;
        let size = if new_size < reuse_size {
            // Write the EOB we owe.
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            new_size
        } else {
            reuse_size
        };
        if tokens.n < MAX_PREDEFINED_TOKENS {
            let pre_size = self.fixed_size(block.extra_bits) + 7;
            if pre_size < size {
                // Check if we get a reasonable size decrease.
                if block.stored_fits(size) {
                    self.write_stored(block.input.unwrap_or_default(), block.eof);
                } else {
                    self.write_fixed_block(tokens, block);
                }
                return true;
            }
        }
        // Check if we get a reasonable size decrease.
        if block.stored_fits(size) {
            self.write_stored(block.input.unwrap_or_default(), block.eof);
            return true;
        }
        false
    }

    /// `writeBlockDynamic`'s "We want a new block/table" branch: builds the table, then writes
    /// the block fixed or stored if that is no larger; otherwise writes the dynamic header
    /// (the tokens are still to follow). Whether the block is written.
    fn write_cheaper_than_new_table(
        &mut self,
        tokens: &mut Tokens,
        block: &DynamicBlock,
        num_literals: usize,
        num_offsets: usize,
    ) -> bool {
        self.literal_freq[END_BLOCK_MARKER] = 1;
        self.generate();
        self.generate_codegen(num_literals, num_offsets, false);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(block.extra_bits);
        if tokens.n < MAX_PREDEFINED_TOKENS {
            let pre_size = self.fixed_size(block.extra_bits);
            if pre_size <= size {
                if block.stored_fits(pre_size) {
                    self.write_stored(block.input.unwrap_or_default(), block.eof);
                } else {
                    self.write_fixed_block(tokens, block);
                }
                return true;
            }
        }
        if block.stored_fits(size) {
            self.write_stored(block.input.unwrap_or_default(), block.eof);
            return true;
        }
        self.write_dynamic_header(num_literals, num_offsets, num_codegens, block.eof);
        if !block.sync {
            self.last_header = self.header_size().0;
        }
        self.last_huff_man = false;
        false
    }

    /// `tokens` as a block with the fixed codes (the EOB is added unless `sync` added it).
    fn write_fixed_block(&mut self, tokens: &mut Tokens, block: &DynamicBlock) {
        self.write_fixed_header(block.eof);
        if !block.sync {
            tokens.add_eob();
        }
        self.write_tokens(tokens.slice(), Table::Fixed);
    }

    /// `indexTokens`: copy the histograms; the number of literal/length and offset codes.
    fn index_tokens(&mut self, t: &Tokens, filled: bool) -> (usize, usize) {
        self.literal_freq[..256].copy_from_slice(&t.lit_hist);
        self.literal_freq[256..256 + 32].copy_from_slice(&t.extra_hist);
        self.offset_freq = t.off_hist;
        if t.n == 0 {
            return (0, 0);
        }
        if filled {
            return (LITERAL_COUNT, OFFSET_CODE_COUNT);
        }
        let mut num_literals = self.literal_freq.len();
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = self.offset_freq.len();
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        (num_literals, num_offsets)
    }

    fn generate(&mut self) {
        self.literal_encoding
            .generate(&self.literal_freq[..LITERAL_COUNT], 15);
        self.offset_encoding
            .generate(&self.offset_freq[..OFFSET_CODE_COUNT], 15);
    }

    /// `writeTokens`; a trailing end-of-block token is written last, as Go defers it.
    fn write_tokens(&mut self, tokens: &[Token], table: Table) {
        if tokens.is_empty() {
            return;
        }
        // Copies (316 codes per block), since the codes are read while bits are written.
        let (le, oe) = match table {
            Table::Fixed => (fixed().literal.codes.clone(), fixed().offset.codes.clone()),
            Table::Dynamic => (
                self.literal_encoding.codes.clone(),
                self.offset_encoding.codes.clone(),
            ),
        };
        let (tokens, defer_eob) = match tokens.split_last() {
            Some((&last, rest)) if last == END_BLOCK_MARKER as Token => (rest, true),
            _ => (tokens, false),
        };
        for &t in tokens {
            if t < 256 {
                self.write_code(le[t as usize]);
                continue;
            }
            let length = token_length(t);
            let length_code = (LENGTH_CODES[length as usize] & 31) as usize;
            self.write_code(le[LENGTH_CODES_START + length_code]);
            if length_code >= LENGTH_EXTRA_BITS_MIN_CODE {
                let extra_length_bits = LENGTH_EXTRA_BITS[length_code];
                let extra_length = length.wrapping_sub(LENGTH_BASE[length_code]);
                self.write_bits(i32::from(extra_length), u32::from(extra_length_bits));
            }
            let offset = token_offset(t);
            let offset_code = (offset >> 16) & 31;
            self.write_code(oe[offset_code as usize]);
            if offset_code >= OFFSET_EXTRA_BITS_MIN_CODE {
                let comb = offset_combined(offset_code);
                self.write_bits(
                    (offset.wrapping_sub(comb >> 8) & MATCH_OFFSET_ONLY_MASK) as i32,
                    comb & 0xff,
                );
            }
        }
        if defer_eob {
            self.write_code(le[END_BLOCK_MARKER]);
        }
    }

    /// `writeBlockHuff`: `input` as literals only, reusing the open table when cheaper, or
    /// stored when its histogram is flat or storing is smaller.
    pub(crate) fn write_block_huff(&mut self, eof: bool, input: &[u8], sync: bool) {
        self.literal_freq = [0; LENGTH_CODES_START + 32];
        if !self.last_huff_man {
            self.offset_freq = [0; 32];
        }
        const NUM_LITERALS: usize = END_BLOCK_MARKER + 1;
        const NUM_OFFSETS: usize = 1;
        const GUESS_HEADER_SIZE_BITS: i32 = 70 * 8;
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        let ssize = Self::stored_size(Some(input));
        if ssize.is_some() && input.len() > 1024 {
            // Quick check for incompressible content.
            let mut abs = 0f64;
            let avg = input.len() as f64 / 256.0;
            let max = (input.len() * 2) as f64;
            for &v in &self.literal_freq[..256] {
                let diff = f64::from(v) - avg;
                abs += diff * diff;
                if abs > max {
                    break;
                }
            }
            if abs < max {
                self.write_stored(input, eof);
                return;
            }
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        self.tmp_lit_encoding
            .generate(&self.literal_freq[..NUM_LITERALS], 15);
        let mut est_bits = self
            .tmp_lit_encoding
            .can_reuse_bits(&self.literal_freq[..NUM_LITERALS]);
        if est_bits < i32::MAX {
            est_bits += self.last_header;
            if self.last_header == 0 {
                est_bits += GUESS_HEADER_SIZE_BITS;
            }
            est_bits += est_bits >> self.log_new_table_penalty;
        }
        // Store bytes, if we don't get a reasonable improvement.
        if ssize.is_some_and(|s| s <= est_bits) {
            self.write_stored(input, eof);
            return;
        }
        if self.last_header > 0 {
            let reuse_size = self
                .literal_encoding
                .can_reuse_bits(&self.literal_freq[..256]);
            if est_bits < reuse_size {
                // We owe an EOB
                self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
                self.last_header = 0;
            }
        }
        if self.last_header == 0 {
            // Use the temp encoding, so swap.
            std::mem::swap(&mut self.literal_encoding, &mut self.tmp_lit_encoding);
            self.generate_codegen(NUM_LITERALS, NUM_OFFSETS, true);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let num_codegens = self.codegens();
            self.write_dynamic_header(NUM_LITERALS, NUM_OFFSETS, num_codegens, eof);
            self.last_huff_man = true;
            self.last_header = self.header_size().0;
        }
        for &t in input {
            let c = self.literal_encoding.codes[t as usize];
            self.write_code(c);
        }
        if eof || sync {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            self.last_huff_man = false;
        }
    }
}

#[derive(Clone, Copy)]
enum Table {
    Fixed,
    Dynamic,
}

/// What `writeBlockDynamic` weighs its encodings with, besides the tokens.
struct DynamicBlock<'a> {
    /// The input the tokens cover, when the block may be stored.
    input: Option<&'a [u8]>,
    /// `storedSize`: the block's size stored, in bits (`None`: it cannot be stored).
    stored_size: Option<i32>,
    /// `extraBitSize`: the length and offset extra bits, which every encoding pays.
    extra_bits: i32,
    /// The block is the stream's last (BFINAL).
    eof: bool,
    /// The block ends here (a flush or `eof`).
    sync: bool,
}

impl DynamicBlock<'_> {
    /// `storable && ssize <= size`: the block can be stored in at most `size` bits.
    fn stored_fits(&self, size: i32) -> bool {
        self.stored_size.is_some_and(|s| s <= size)
    }
}
