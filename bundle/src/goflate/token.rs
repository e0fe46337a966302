//! Go's token encoding (`token.go`): a literal or a (length, offset) match in one `u32`, and
//! the length and offset code tables of RFC 1951 section 3.2.5.

/// A literal byte, the end-of-block marker (literal 256) or a match.
pub(crate) type Token = u32;

const LENGTH_SHIFT: u32 = 22;
const OFFSET_MASK: u32 = (1 << LENGTH_SHIFT) - 1;
const MATCH_TYPE: u32 = 1 << 30;

/// The end-of-block symbol.
pub(crate) const END_BLOCK_MARKER: usize = 256;

/// Extra bits of each length code (257 + index).
pub(crate) const LENGTH_EXTRA_BITS: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// Smallest `length - 3` of each length code.
pub(crate) const LENGTH_BASE: [u32; 29] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255,
];

/// Extra bits of each offset code.
pub(crate) const OFFSET_EXTRA_BITS: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Smallest `offset - 1` of each offset code.
pub(crate) const OFFSET_BASE: [u32; 30] = [
    0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
    0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
    0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
    0x003000, 0x004000, 0x006000,
];

/// `lengthCodes` of `token.go`: the length code (minus 257) of each `length - 3`.
const LENGTH_CODES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut code = 0;
    let mut len = 0;
    while len < 256 {
        while code + 1 < LENGTH_BASE.len() && LENGTH_BASE[code + 1] as usize <= len {
            code += 1;
        }
        table[len] = code as u8;
        len += 1;
    }
    table
};

/// `offsetCodes` of `token.go`: the offset code of each `offset - 1` below 256.
const OFFSET_CODES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut code = 0;
    let mut off = 0;
    while off < 256 {
        while code + 1 < OFFSET_BASE.len() && OFFSET_BASE[code + 1] as usize <= off {
            code += 1;
        }
        table[off] = code as u8;
        off += 1;
    }
    table
};

pub(crate) fn literal_token(literal: u8) -> Token {
    literal as Token
}

/// A match of `xlength = length - 3` and `xoffset = offset - 1`.
pub(crate) fn match_token(xlength: u32, xoffset: u32) -> Token {
    MATCH_TYPE + (xlength << LENGTH_SHIFT) + xoffset
}

pub(crate) fn is_literal(t: Token) -> bool {
    t < MATCH_TYPE
}

pub(crate) fn token_length(t: Token) -> u32 {
    (t - MATCH_TYPE) >> LENGTH_SHIFT
}

pub(crate) fn token_offset(t: Token) -> u32 {
    t & OFFSET_MASK
}

/// Length code (minus 257) of `xlength = length - 3`.
pub(crate) fn length_code(xlength: u32) -> usize {
    LENGTH_CODES[xlength as usize] as usize
}

/// Offset code of `xoffset = offset - 1`.
pub(crate) fn offset_code(xoffset: u32) -> usize {
    let off = xoffset as usize;
    if off < OFFSET_CODES.len() {
        OFFSET_CODES[off] as usize
    } else if off >> 7 < OFFSET_CODES.len() {
        OFFSET_CODES[off >> 7] as usize + 14
    } else {
        OFFSET_CODES[off >> 14] as usize + 28
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goflate_code_tables_match_go() {
        // Spot values of `lengthCodes` and `offsetCodes` as token.go spells them.
        let lengths = [
            (0, 0),
            (7, 7),
            (8, 8),
            (9, 8),
            (10, 9),
            (18, 12),
            (223, 26),
            (224, 27),
        ];
        for (len, code) in lengths {
            assert_eq!(length_code(len), code, "length {len}");
        }
        assert_eq!(length_code(254), 27);
        assert_eq!(length_code(255), 28);
        let offsets = [(0, 0), (4, 4), (5, 4), (6, 5), (12, 7), (16, 8), (255, 15)];
        for (off, code) in offsets {
            assert_eq!(offset_code(off), code, "offset {off}");
        }
        assert_eq!(offset_code(256), 16);
        assert_eq!(offset_code(32767), 29);
        assert_eq!(offset_code(16384), 28);
    }

    #[test]
    fn goflate_tokens_round_trip() {
        let t = match_token(255, 32767);
        assert!(!is_literal(t));
        assert_eq!(token_length(t), 255);
        assert_eq!(token_offset(t), 32767);
        assert!(is_literal(literal_token(200)));
    }
}
