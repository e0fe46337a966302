//! bsdiff patches laid out as three streams, as Colin Percival's BSDIFF40 does: all control
//! triples, then all diff bytes, then all extra bytes.
//!
//! The `bsdiff` crate writes each control triple followed by its diff and extra bytes. Diff
//! bytes are mostly zeros and extra bytes are new data; apart, each stream compresses better
//! (on the demo's app layer, 4,709 bytes of payload against 4,853 interleaved, with the
//! payload's zstd; controls as varints). The diff stream is run-length coded: a patch of a
//! whole 8 MB layer is megabytes of zeros, which LZMA, whose longest match is 273 bytes, pays
//! for at about a byte per kilobyte (the demo's whole-layer patch: 2.9 KB of payload with raw
//! zeros, 2.3 KB run-length coded). [`split`] converts the crate's patch; [`apply`] applies a
//! split patch with bounds checked on every length, since the patch comes from a bundle.
//! Written by hand: no crate offers this layout with a checked reader.
//!
//! ```text
//! varint count
//! count × (varint mix_len, varint copy_len, varint zigzag(seek))
//! diff runs, until they make Σ mix_len bytes: (varint zeros, varint n, n bytes)
//!                   diff: added bytewise (mod 256) to old bytes at the old cursor
//! Σ copy_len bytes  extra: copied as they are
//! ```

/// Converts a patch of the `bsdiff` crate into the split layout, so tests and measurements can
/// hold the encoder against the reference bsdiff. `None` if it is malformed (it never is when it
/// comes from `bsdiff::diff`).
pub fn split(raw: &[u8]) -> Option<Vec<u8>> {
    let mut controls = Vec::new();
    let mut diff = Vec::new();
    let mut extra = Vec::new();
    let mut at = 0usize;
    while at < raw.len() {
        let control = raw.get(at..at + 24)?;
        let mix = u64::from_le_bytes(control[0..8].try_into().ok()?);
        let copy = u64::from_le_bytes(control[8..16].try_into().ok()?);
        let seek_raw = u64::from_le_bytes(control[16..24].try_into().ok()?);
        // Sign and magnitude, as bsdiff's offtout writes it.
        let magnitude = (seek_raw & !(1 << 63)) as i64;
        let seek = if seek_raw >> 63 == 1 {
            -magnitude
        } else {
            magnitude
        };
        at += 24;
        let mix_end = at.checked_add(usize::try_from(mix).ok()?)?;
        let copy_end = mix_end.checked_add(usize::try_from(copy).ok()?)?;
        diff.extend_from_slice(raw.get(at..mix_end)?);
        extra.extend_from_slice(raw.get(mix_end..copy_end)?);
        at = copy_end;
        controls.push((mix, copy, seek));
    }
    Some(encode(&controls, &diff, &extra))
}

/// Lays out a patch given as control triples (diff length, extra length, seek) with their diff
/// and extra bytes, the way [`apply`] reads it.
pub(crate) fn encode(controls: &[(u64, u64, i64)], diff: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(controls.len() * 4 + diff.len() / 8 + extra.len() + 10);
    put_varint(&mut out, controls.len() as u64);
    for &(mix, copy, seek) in controls {
        put_varint(&mut out, mix);
        put_varint(&mut out, copy);
        put_varint(&mut out, zigzag(seek));
    }
    put_runs(&mut out, diff);
    out.extend_from_slice(extra);
    out
}

/// Shortest run of zeros that ends a run of literal diff bytes. Shorter runs stay inside the
/// literal run: LZMA codes them as a match or two, cheaper than two varints amid the sparse
/// changes of a recompiled binary (measured: at 4, the app-update bundle grows 49.5 -> 52.5 KB;
/// at 1024 it is unchanged while the demo's whole-layer patch still shrinks 6.4 -> 5.2 KB).
const MIN_ZERO_RUN: usize = 1024;

/// Run-length codes `diff` as (zeros, n, n bytes) runs.
fn put_runs(out: &mut Vec<u8>, diff: &[u8]) {
    let mut at = 0;
    while at < diff.len() {
        let zeros = diff[at..].iter().take_while(|&&b| b == 0).count();
        let start = at + zeros;
        // The literal run goes on until MIN_ZERO_RUN zeros in a row (or the end).
        let mut end = start;
        while end < diff.len() {
            let run = diff[end..]
                .iter()
                .take(MIN_ZERO_RUN)
                .take_while(|&&b| b == 0)
                .count();
            if run == MIN_ZERO_RUN || end + run == diff.len() {
                break;
            }
            end += run.max(1);
        }
        put_varint(out, zeros as u64);
        put_varint(out, (end - start) as u64);
        out.extend_from_slice(&diff[start..end]);
        at = end;
    }
}

/// Reads the run-length coded diff stream lazily: the next `n` diff bytes on demand.
struct Runs<'a> {
    patch: &'a [u8],
    at: usize,
    zeros: usize,
    literal: usize,
}

/// A part of the diff stream: zero bytes, or literal diff bytes.
enum Diff<'a> {
    Zeros(usize),
    Bytes(&'a [u8]),
}

impl<'a> Runs<'a> {
    /// The diff runs starting at `at` in `patch`.
    fn new(patch: &'a [u8], at: usize) -> Self {
        Runs {
            patch,
            at,
            zeros: 0,
            literal: 0,
        }
    }

    /// Hands the next `len` diff bytes to `part`, run by run.
    fn walk(&mut self, mut len: usize, mut part: impl FnMut(Diff<'a>)) -> Result<(), String> {
        while len > 0 {
            if self.zeros == 0 && self.literal == 0 {
                self.zeros = to_usize(get_varint(self.patch, &mut self.at)?)?;
                self.literal = to_usize(get_varint(self.patch, &mut self.at)?)?;
                if self.zeros == 0 && self.literal == 0 {
                    return Err("bsdiff patch has an empty diff run".into());
                }
            }
            if self.zeros > 0 {
                let n = self.zeros.min(len);
                self.zeros -= n;
                len -= n;
                part(Diff::Zeros(n));
            } else {
                let n = self.literal.min(len);
                let bytes = self
                    .at
                    .checked_add(n)
                    .and_then(|end| self.patch.get(self.at..end))
                    .ok_or("bsdiff patch ends inside its diff stream")?;
                self.at += n;
                self.literal -= n;
                len -= n;
                part(Diff::Bytes(bytes));
            }
        }
        Ok(())
    }

    /// Adds the next `old.len()` diff bytes to `old` and appends the sums to `out`.
    fn mix(&mut self, old: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut done = 0;
        self.walk(old.len(), |diff| match diff {
            Diff::Zeros(n) => {
                out.extend_from_slice(&old[done..done + n]);
                done += n;
            }
            Diff::Bytes(bytes) => {
                out.extend(
                    bytes
                        .iter()
                        .zip(&old[done..])
                        .map(|(d, o)| d.wrapping_add(*o)),
                );
                done += bytes.len();
            }
        })
    }

    /// Skips `len` diff bytes without applying them (to find where the extra stream starts).
    fn skip(&mut self, len: usize) -> Result<(), String> {
        self.walk(len, |_| {})
    }
}

/// Applies a split patch to `old`. The output may be at most `max_out` bytes; every length is
/// checked against what remains of the patch, the old data and the output bound before use.
/// Controls are parsed twice (once to find where the streams start, once to apply) rather than
/// stored, so a patch cannot make the decoder allocate more than its output.
pub fn apply(old: &[u8], patch: &[u8], max_out: usize) -> Result<Vec<u8>, String> {
    apply_with(old, patch, max_out, false)
}

/// Applies a split patch whose diff stream holds x86 address fields as 32-bit differences
/// (see [`to_x86`]).
pub fn apply_x86(old: &[u8], patch: &[u8], max_out: usize) -> Result<Vec<u8>, String> {
    apply_with(old, patch, max_out, true)
}

fn apply_with(old: &[u8], patch: &[u8], max_out: usize, x86: bool) -> Result<Vec<u8>, String> {
    let mut cursor = 0usize;
    let count = get_varint(patch, &mut cursor)?;
    // Each control takes at least 3 bytes.
    if count > (patch.len().saturating_sub(cursor) / 3) as u64 {
        return Err("bsdiff patch declares more controls than it holds".into());
    }
    let controls_start = cursor;
    let (mut diff_total, mut extra_total) = (0usize, 0usize);
    for _ in 0..count {
        let mix = to_usize(get_varint(patch, &mut cursor)?)?;
        let copy = to_usize(get_varint(patch, &mut cursor)?)?;
        get_varint(patch, &mut cursor)?;
        diff_total = diff_total.checked_add(mix).ok_or("diff length overflows")?;
        extra_total = extra_total
            .checked_add(copy)
            .ok_or("extra length overflows")?;
        let out = diff_total
            .checked_add(extra_total)
            .ok_or("length overflows")?;
        // (Run-length coded zeros let the output exceed the patch; `max_out` bounds it.)
        if out > max_out {
            return Err("bsdiff patch output larger than declared".into());
        }
    }
    // Where the extra stream starts: after the diff runs that make diff_total bytes, which
    // must end exactly there (no run may straddle the end).
    let mut runs = Runs::new(patch, cursor);
    runs.skip(diff_total)?;
    if runs.zeros != 0 || runs.literal != 0 {
        return Err("bsdiff diff runs go on past the diff stream".into());
    }
    let extra_start = runs.at;
    if extra_start.checked_add(extra_total) != Some(patch.len()) {
        return Err("bsdiff patch streams do not add up to its length".into());
    }
    let mut runs = Runs::new(patch, cursor);
    let mut extra_at = extra_start;
    let mut old_at: i64 = 0;
    let mut out = Vec::with_capacity(diff_total + extra_total);
    cursor = controls_start;
    for _ in 0..count {
        let mix = to_usize(get_varint(patch, &mut cursor)?)?;
        let copy = to_usize(get_varint(patch, &mut cursor)?)?;
        let seek = unzigzag(get_varint(patch, &mut cursor)?);
        let from = usize::try_from(old_at).map_err(|_| "bsdiff seeks before the old data")?;
        let old_slice = old
            .get(from..from.checked_add(mix).ok_or("overflow")?)
            .ok_or("bsdiff reads past the old data")?;
        let start = out.len();
        runs.mix(old_slice, &mut out)?;
        if x86 {
            for at in x86_fields(old_slice) {
                let field = &mut out[start + at..start + at + 4];
                let old_value = u32::from_le_bytes(old_slice[at..at + 4].try_into().expect("4"));
                let diff: [u8; 4] =
                    std::array::from_fn(|k| field[k].wrapping_sub(old_slice[at + k]));
                let value = old_value.wrapping_add(u32::from_le_bytes(diff));
                field.copy_from_slice(&value.to_le_bytes());
            }
        }
        out.extend_from_slice(&patch[extra_at..extra_at + copy]);
        extra_at += copy;
        old_at = i64::try_from(mix)
            .ok()
            .and_then(|m| old_at.checked_add(m))
            .and_then(|p| p.checked_add(seek))
            .ok_or("bsdiff seek overflows")?;
    }
    Ok(out)
}

/// Where x86 address fields start in `old` (one cover's old bytes): the rel32 of a call or
/// jump (E8, E9, 0F 80-8F) and the disp32 of the common opcodes' ModRM with mod 00, r/m 101
/// (RIP-relative on x86-64, an absolute address on i386). A moved function changes each such field by one amount; as a
/// 32-bit difference that amount is the same bytes every time, where a byte-wise difference
/// varies with the carries. Decided from the old bytes alone, which the device holds, so it
/// needs no list in the patch; a byte that only looks like an opcode costs compression, never
/// correctness (the transform is inverted the same way). Fields do not overlap and lie inside
/// `old`.
fn x86_fields(old: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < old.len() {
            let op = old[at];
            let field = match op {
                0xe8 | 0xe9 => at + 1,
                0x0f if old.get(at + 1).is_some_and(|b| (0x80..=0x8f).contains(b)) => at + 2,
                0x03 | 0x2b | 0x33 | 0x39 | 0x3b | 0x63 | 0x85 | 0x88..=0x8b | 0x8d
                    if old.get(at + 1).is_some_and(|m| m & 0xc7 == 0x05) =>
                {
                    at + 2
                }
                _ => {
                    at += 1;
                    continue;
                }
            };
            if field + 4 > old.len() {
                at = old.len();
                return None;
            }
            at = field + 4;
            return Some(field);
        }
        None
    })
}

/// Rewrites a split patch so that x86 address fields of each cover's old bytes carry 32-bit
/// differences, for [`apply_x86`]. `None` if the patch is malformed or does not apply to
/// `old`. The encoder keeps it only where it compresses smaller (executables, shared
/// libraries).
pub fn to_x86(old: &[u8], patch: &[u8]) -> Option<Vec<u8>> {
    let mut cursor = 0usize;
    let count = get_varint(patch, &mut cursor).ok()?;
    let mut controls = Vec::new();
    for _ in 0..count {
        let mix = get_varint(patch, &mut cursor).ok()?;
        let copy = get_varint(patch, &mut cursor).ok()?;
        let seek = unzigzag(get_varint(patch, &mut cursor).ok()?);
        controls.push((mix, copy, seek));
    }
    let diff_total = controls
        .iter()
        .try_fold(0usize, |t, c| t.checked_add(c.0 as usize))?;
    let mut runs = Runs::new(patch, cursor);
    let mut diff = Vec::with_capacity(diff_total);
    runs.walk(diff_total, |part| match part {
        Diff::Zeros(n) => diff.resize(diff.len() + n, 0),
        Diff::Bytes(bytes) => diff.extend_from_slice(bytes),
    })
    .ok()?;
    let extra = patch.get(runs.at..)?;
    let extra_total = controls
        .iter()
        .try_fold(0usize, |t, c| t.checked_add(c.1 as usize))?;
    if runs.zeros != 0 || runs.literal != 0 || extra.len() != extra_total {
        return None;
    }
    let (mut old_at, mut done) = (0i64, 0usize);
    for &(mix, _, seek) in &controls {
        let from = usize::try_from(old_at).ok()?;
        let slice = old.get(from..from.checked_add(mix as usize)?)?;
        let cover = &mut diff[done..done + mix as usize];
        for at in x86_fields(slice) {
            let old_value = u32::from_le_bytes(slice[at..at + 4].try_into().ok()?);
            let new: [u8; 4] = std::array::from_fn(|k| slice[at + k].wrapping_add(cover[at + k]));
            let d = u32::from_le_bytes(new).wrapping_sub(old_value);
            cover[at..at + 4].copy_from_slice(&d.to_le_bytes());
        }
        done += mix as usize;
        old_at = old_at.checked_add(mix as i64)?.checked_add(seek)?;
    }
    Some(encode(&controls, &diff, extra))
}

fn to_usize(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| "length does not fit in memory".to_owned())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *bytes.get(*at).ok_or("bsdiff patch ends inside a control")?;
        *at += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let old: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[100..120].copy_from_slice(&[9; 20]);
        new.splice(5000..5000, b"inserted text".iter().copied());
        new.drain(15_000..15_500);
        new.extend_from_slice(b"tail");
        (old, new)
    }

    #[test]
    fn split_patches_apply_exactly() {
        let (old, new) = sample();
        let mut raw = Vec::new();
        bsdiff::diff(&old, &new, &mut raw).unwrap();
        let split = split(&raw).unwrap();
        assert_eq!(apply(&old, &split, new.len()).unwrap(), new);
        // And it compresses better than the interleaved form.
        let a = zstd::bulk::compress(&raw, 19).unwrap().len();
        let b = zstd::bulk::compress(&split, 19).unwrap().len();
        assert!(b <= a, "split {b} vs interleaved {a}");
    }

    #[test]
    fn hostile_patches_are_refused() {
        let (old, new) = sample();
        let mut raw = Vec::new();
        bsdiff::diff(&old, &new, &mut raw).unwrap();
        let good = split(&raw).unwrap();
        // Output bound.
        assert!(apply(&old, &good, new.len() - 1).is_err());
        // Every truncation and many single-byte changes: an error or some output, never a
        // panic or an output past the bound.
        for cut in 0..good.len().min(400) {
            let _ = apply(&old, &good[..cut], new.len());
        }
        for at in 0..good.len().min(400) {
            let mut bad = good.clone();
            bad[at] ^= 0xa5;
            if let Ok(out) = apply(&old, &bad, new.len()) {
                assert!(out.len() <= new.len());
            }
        }
        // Many empty controls cost nothing to store.
        let mut empty = Vec::new();
        put_varint(&mut empty, 44_739_241);
        empty.resize(1 << 20, 0);
        assert!(apply(&old, &empty, 0).is_err());
        // An overflowing first control.
        let mut overflow = Vec::new();
        put_varint(&mut overflow, 1);
        put_varint(&mut overflow, u64::MAX);
        put_varint(&mut overflow, 1);
        put_varint(&mut overflow, 0);
        assert!(apply(&old, &overflow, usize::MAX).is_err());
        // A huge declared length.
        let mut huge = Vec::new();
        put_varint(&mut huge, 1);
        put_varint(&mut huge, u64::MAX >> 1);
        put_varint(&mut huge, 0);
        put_varint(&mut huge, 0);
        assert!(apply(&old, &huge, 1 << 20).is_err());
    }

    /// Code-like bytes: calls (E8 rel32), conditional jumps (0F 8x rel32) and RIP-relative
    /// loads (8B 05 disp32) between other instructions.
    fn code(len: usize, shift: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0u32;
        while out.len() < len {
            i += 1;
            let target = i.wrapping_mul(2_654_435_761) % 100_000;
            // Everything after 1/3 of the code moved by `shift`.
            let rel = target.wrapping_add(if out.len() > len / 3 { shift } else { 0 });
            match i % 4 {
                0 => out.push(0xe8),
                1 => out.extend_from_slice(&[0x0f, 0x85]),
                2 => out.extend_from_slice(&[0x8b, 0x05]),
                _ => out.extend_from_slice(&[0x48, 0x89, 0xc7, 0x31, 0xc0]),
            }
            if i % 4 != 3 {
                out.extend_from_slice(&rel.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn x86_fields_as_32_bit_differences_apply_exactly_and_compress_better() {
        let old = code(60_000, 0);
        let new = code(60_000, 0x1f3);
        let mut raw = Vec::new();
        bsdiff::diff(&old, &new, &mut raw).unwrap();
        let plain = split(&raw).unwrap();
        let x86 = to_x86(&old, &plain).unwrap();
        assert_eq!(apply_x86(&old, &x86, new.len()).unwrap(), new);
        assert_eq!(apply(&old, &plain, new.len()).unwrap(), new);
        let (a, b) = (
            zstd::bulk::compress(&plain, 19).unwrap().len(),
            zstd::bulk::compress(&x86, 19).unwrap().len(),
        );
        assert!(b < a, "x86 {b} B against byte-wise {a} B");
        // Fields cut by the end of the old data, or of a cover, are left byte-wise.
        for cut in [1, 2, 3, 4, 5, 6] {
            let old = &old[..old.len() - cut];
            let mut raw = Vec::new();
            bsdiff::diff(old, &new, &mut raw).unwrap();
            let x86 = to_x86(old, &split(&raw).unwrap()).unwrap();
            assert_eq!(apply_x86(old, &x86, new.len()).unwrap(), new, "cut {cut}");
        }
        // Hostile x86 patches: an error or bounded output, never a panic.
        for cut in 0..x86.len().min(300) {
            let _ = apply_x86(&old, &x86[..cut], new.len());
        }
        for at in 0..x86.len().min(300) {
            let mut bad = x86.clone();
            bad[at] ^= 0x5a;
            if let Ok(out) = apply_x86(&old, &bad, new.len()) {
                assert!(out.len() <= new.len());
            }
        }
        assert!(to_x86(&old, &x86[..x86.len() / 2]).is_none());
    }
}
