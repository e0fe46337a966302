//! A binary diff that chooses its covers by what they cost after compression, for recompiled
//! executables and shared libraries.
//!
//! A recompiled program is its old self shifted: functions move, and every call, jump and
//! address that crosses a move changes by the same few bytes. bsdiff finds the right alignment
//! but then extends each cover until half its bytes differ and jumps to 9-byte coincidences
//! elsewhere, so much of new code ends up as diff bytes of random value, which compress worse
//! than the new code itself (on the corpus's recompiled 890 KB binary: 39,791 non-zero diff
//! bytes, whose stream alone is 29.8 KB of bsdiff's 31.3 KB patch after LZMA). Here the previous
//! cover's diagonal is carried on over the next match, a match starts a cover of its own, and a
//! cover is extended, only where the bytes are estimated to cost less that way than the other;
//! the rest is new data, which the payload's LZMA compresses with the rest of the new file. The output is the split bsdiff layout of [`crate::bspatch`], so the device
//! applies it with the same decoder.
//!
//! Written by hand: the one library with this kind of cover selection (HDiffPatch) is C++, has
//! its own patch format and no Rust crate; the suffix array comes from the `divsufsort` crate.

/// Estimated costs, in bytes after compression, of each kind of byte. They only steer the
/// choice of covers; the encoder keeps the smallest patch by its real size.
#[derive(Debug, Clone, Copy)]
struct Costs {
    /// A covered byte equal to the old byte.
    same: f64,
    /// A covered byte that differs, with a diff value not seen a moment ago: its value and its
    /// position.
    different: f64,
    /// A covered byte that differs by a value seen a moment ago.
    repeated: f64,
    /// A byte sent as new data (the payload's LZMA compresses it with the rest of the file).
    new: f64,
    /// One control triple (three varints, mostly short) and the break in the diff stream.
    control: f64,
}

/// The settings [`diffs`] makes a patch with, tuned on the corpus's recompiled static binary
/// and the shared libraries of its Debian security update (`bench/`). The first is the best
/// single setting over both (xz of the patches: 1,243 KB against bsdiff's 1,172 KB on the
/// libraries and binaries together, but 20.5 against 31.3 KB on the recompiled binary); the
/// second makes differing bytes dearer, which the recompiled binary rewards (19.4 KB).
const SETTINGS: [Costs; 2] = [
    Costs {
        same: 0.02,
        different: 1.1,
        repeated: 0.4,
        new: 0.45,
        control: 6.0,
    },
    Costs {
        same: 0.02,
        different: 1.5,
        repeated: 0.4,
        new: 0.45,
        control: 6.0,
    },
];

/// Shortest exact match that starts a cover on a new diagonal.
const MIN_SEED: usize = 10;
/// A match on a new diagonal must beat the current diagonal by this many bytes to switch.
const SWITCH_MARGIN: usize = 8;

/// A diagonal segment: `len` new bytes from `new_at` against old bytes from `old_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cover {
    new_at: usize,
    old_at: usize,
    len: usize,
}

impl Cover {
    fn new_end(&self) -> usize {
        self.new_at + self.len
    }

    /// Old offset minus new offset: covers with the same delta lie on one diagonal.
    fn delta(&self) -> i64 {
        self.old_at as i64 - self.new_at as i64
    }
}

/// Patches from `old` to `new` in the split bsdiff layout ([`crate::bspatch::apply`] applies
/// them): first bsdiff's own cover selection, then, with `cost_chosen`, one per cost setting;
/// the caller keeps the smallest. All share one suffix sort. `old` must be shorter than 2 GiB
/// (the suffix array is 32-bit; the encoder patches at most 48 MiB). Memory: the suffix array,
/// 4 bytes per old byte, plus the patches.
pub fn diffs(old: &[u8], new: &[u8], cost_chosen: bool) -> Vec<Vec<u8>> {
    assert!(
        old.len() < i32::MAX as usize,
        "old data too large for a 32-bit suffix array"
    );
    let mut sa = vec![0i32; old.len()];
    divsufsort::sort_in_place(old, &mut sa);
    let mut patches = vec![emit(old, new, &bsdiff_covers(old, new, &sa))];
    if !cost_chosen {
        return patches;
    }
    let seeds = seeds(old, new, &sa);
    drop(sa);
    patches.extend(SETTINGS.iter().map(|costs| {
        let covers = link(old, new, seeds.clone(), costs);
        let covers = extend(old, new, covers, costs);
        emit(old, new, &covers)
    }));
    patches
}

/// bsdiff's cover selection (Colin Percival's bsdiff 4 scan): the next match is taken where it
/// is more than 8 bytes longer than what the current diagonal agrees on over the same span;
/// each cover is then extended forwards and backwards while more than half its bytes agree.
/// Written again here over `divsufsort`'s suffix array, because the `bsdiff` crate sorts with
/// qsufsort into two 8-byte-per-byte arrays: on a 16 MiB piece against a 48 MiB base that was
/// 50 s and 800 MiB per worker where this takes 14 s and 4 bytes per byte, and a large image's
/// build ran out of its time budget on its few largest files.
fn bsdiff_covers(old: &[u8], new: &[u8], sa: &[i32]) -> Vec<Cover> {
    let (old_len, new_len) = (old.len() as i64, new.len() as i64);
    // Whether new[n] agrees with old at the diagonal `offset` (old position minus new).
    let agrees = |n: i64, offset: i64| {
        let o = n + offset;
        o >= 0 && o < old_len && old[o as usize] == new[n as usize]
    };
    let mut covers = Vec::new();
    let (mut scan, mut len, mut pos) = (0i64, 0i64, 0i64);
    let (mut last_scan, mut last_pos, mut last_offset) = (0i64, 0i64, 0i64);
    while scan < new_len {
        let mut old_score = 0i64;
        scan += len;
        let mut scored = scan;
        while scan < new_len {
            let (found, found_len) = longest_match(old, sa, &new[scan as usize..]);
            (pos, len) = (found as i64, found_len as i64);
            while scored < scan + len {
                old_score += i64::from(agrees(scored, last_offset));
                scored += 1;
            }
            if (len == old_score && len != 0) || len > old_score + 8 {
                break;
            }
            old_score -= i64::from(agrees(scan, last_offset));
            scan += 1;
        }
        if len == old_score && scan != new_len {
            continue;
        }
        // Forwards from the last cover: the longest extension where agreeing bytes are more
        // than half.
        let (mut agreed, mut best, mut len_f) = (0i64, 0i64, 0i64);
        let mut i = 0;
        while last_scan + i < scan && last_pos + i < old_len {
            agreed += i64::from(old[(last_pos + i) as usize] == new[(last_scan + i) as usize]);
            i += 1;
            if agreed * 2 - i > best * 2 - len_f {
                (best, len_f) = (agreed, i);
            }
        }
        // Backwards from the new match, likewise.
        let mut len_b = 0i64;
        if scan < new_len {
            let (mut agreed, mut best) = (0i64, 0i64);
            let mut i = 1;
            while scan >= last_scan + i && pos >= i {
                agreed += i64::from(old[(pos - i) as usize] == new[(scan - i) as usize]);
                if agreed * 2 - i > best * 2 - len_b {
                    (best, len_b) = (agreed, i);
                }
                i += 1;
            }
        }
        // Where the two extensions overlap, split them where the forward one agrees most.
        if last_scan + len_f > scan - len_b {
            let overlap = (last_scan + len_f) - (scan - len_b);
            let (mut score, mut best, mut len_s) = (0i64, 0i64, 0i64);
            for i in 0..overlap {
                let f = last_scan + len_f - overlap + i;
                score +=
                    i64::from(new[f as usize] == old[(last_pos + len_f - overlap + i) as usize]);
                let b = scan - len_b + i;
                score -= i64::from(new[b as usize] == old[(pos - len_b + i) as usize]);
                if score > best {
                    (best, len_s) = (score, i + 1);
                }
            }
            len_f += len_s - overlap;
            len_b -= len_s;
        }
        if len_f > 0 {
            covers.push(Cover {
                new_at: last_scan as usize,
                old_at: last_pos as usize,
                len: len_f as usize,
            });
        }
        last_scan = scan - len_b;
        last_pos = pos - len_b;
        last_offset = pos - scan;
    }
    covers
}

/// Length of the common prefix of `new[at..]` and `old` from `old_at` (which may lie outside
/// `old`: then 0).
fn run_on(old: &[u8], new: &[u8], at: usize, old_at: i64) -> usize {
    if old_at < 0 || old_at as usize >= old.len() {
        return 0;
    }
    common_prefix(&old[old_at as usize..], &new[at..])
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The longest prefix of `needle` that occurs in `old`: (where, how long), by binary search
/// over the suffix array.
fn longest_match(old: &[u8], sa: &[i32], needle: &[u8]) -> (usize, usize) {
    if sa.is_empty() {
        return (0, 0);
    }
    let (mut lo, mut hi) = (0usize, sa.len() - 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let suffix = &old[sa[mid] as usize..];
        let n = common_prefix(suffix, needle);
        if n == needle.len() || suffix.get(n).is_some_and(|&b| b < needle[n]) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let a = sa[lo] as usize;
    let b = sa[hi] as usize;
    let la = common_prefix(&old[a..], needle);
    let lb = common_prefix(&old[b..], needle);
    if la >= lb {
        (a, la)
    } else {
        (b, lb)
    }
}

/// Exact matches that start covers, in new order: the current diagonal is followed while it
/// matches; a new diagonal is taken only for a match clearly longer than the current one.
fn seeds(old: &[u8], new: &[u8], sa: &[i32]) -> Vec<Cover> {
    let mut seeds: Vec<Cover> = Vec::new();
    let mut delta: i64 = 0;
    let mut at = 0;
    while at < new.len() {
        let here = run_on(old, new, at, at as i64 + delta);
        if here >= MIN_SEED + SWITCH_MARGIN {
            seeds.push(Cover {
                new_at: at,
                old_at: (at as i64 + delta) as usize,
                len: here,
            });
            at += here;
            continue;
        }
        let (found, len) = longest_match(old, sa, &new[at..]);
        if len >= MIN_SEED && len >= here + SWITCH_MARGIN {
            seeds.push(Cover {
                new_at: at,
                old_at: found,
                len,
            });
            delta = found as i64 - at as i64;
            at += len;
        } else if here > 0 {
            seeds.push(Cover {
                new_at: at,
                old_at: (at as i64 + delta) as usize,
                len: here,
            });
            at += here;
        } else {
            at += 1;
        }
    }
    seeds
}

/// Estimates what covered bytes cost as diff bytes. A moved function changes every call and
/// address that crosses the move by the same amount, so a diff value seen a moment ago is
/// cheap (the compressor has it in context); a fresh one costs its value and its position.
struct DiffModel<'a> {
    costs: &'a Costs,
    recent: [u8; RECENT],
    next: usize,
}

/// How many recent distinct diff values count as "seen a moment ago".
const RECENT: usize = 4;

impl<'a> DiffModel<'a> {
    fn new(costs: &'a Costs) -> Self {
        DiffModel {
            costs,
            recent: [0; RECENT],
            next: 0,
        }
    }

    fn cost(&mut self, old: u8, new: u8) -> f64 {
        let d = new.wrapping_sub(old);
        if d == 0 {
            return self.costs.same;
        }
        if self.recent.contains(&d) {
            return self.costs.repeated;
        }
        self.recent[self.next] = d;
        self.next = (self.next + 1) % RECENT;
        self.costs.different
    }
}

/// What `new[from..to]` costs as diff bytes against the old bytes on diagonal `delta`, or
/// `None` if that stretch of the diagonal leaves `old`.
fn diagonal_cost(
    old: &[u8],
    new: &[u8],
    (from, to): (usize, usize),
    delta: i64,
    costs: &Costs,
) -> Option<f64> {
    let start = from as i64 + delta;
    let end = to as i64 + delta;
    if start < 0 || end > old.len() as i64 {
        return None;
    }
    let mut model = DiffModel::new(costs);
    let old = &old[start as usize..end as usize];
    Some(
        old.iter()
            .zip(&new[from..to])
            .map(|(o, n)| model.cost(*o, *n))
            .sum(),
    )
}

/// Joins seeds into covers: a seed continues the previous cover when the previous cover's
/// diagonal, carried over the gap and the seed, costs less than a new control, the gap as new
/// data and the seed on its own diagonal.
fn link(old: &[u8], new: &[u8], seeds: Vec<Cover>, costs: &Costs) -> Vec<Cover> {
    let mut covers: Vec<Cover> = Vec::with_capacity(seeds.len());
    for seed in seeds {
        let Some(last) = covers.last_mut() else {
            covers.push(seed);
            continue;
        };
        let gap = seed.new_at - last.new_end();
        let apart = costs.control + gap as f64 * costs.new + seed.len as f64 * costs.same;
        let stretch = (last.new_end(), seed.new_end());
        let carried = diagonal_cost(old, new, stretch, last.delta(), costs);
        match carried {
            Some(cost) if cost <= apart => last.len = seed.new_end() - last.new_at,
            _ => covers.push(seed),
        }
    }
    covers
}

/// Extends covers into the gaps between them while that is cheaper than new data: first the
/// cover before a gap forwards, then the one after it backwards into what remains.
fn extend(old: &[u8], new: &[u8], mut covers: Vec<Cover>, costs: &Costs) -> Vec<Cover> {
    for i in 0..covers.len() {
        let limit = covers.get(i + 1).map_or(new.len(), |c| c.new_at);
        let cover = covers[i];
        let grow = best_prefix(limit - cover.new_end(), costs, |k| {
            let old_at = cover.old_at + cover.len + k;
            Some((*old.get(old_at)?, new[cover.new_end() + k]))
        });
        covers[i].len += grow;
        let start = if i == 0 { 0 } else { covers[i - 1].new_end() };
        let cover = covers[i];
        let back = best_prefix(cover.new_at - start, costs, |k| {
            let new_at = cover.new_at - 1 - k;
            let old_at = cover.old_at.checked_sub(1 + k)?;
            Some((old[old_at], new[new_at]))
        });
        covers[i].new_at -= back;
        covers[i].old_at -= back;
        covers[i].len += back;
    }
    covers.retain(|c| c.len > 0);
    covers
}

/// How many of the next `room` bytes to cover, given each (old, new) byte pair (`None`: the
/// old data ends there): the prefix whose bytes save the most against sending them as new data.
fn best_prefix(
    room: usize,
    costs: &Costs,
    mut pair: impl FnMut(usize) -> Option<(u8, u8)>,
) -> usize {
    let mut model = DiffModel::new(costs);
    let (mut best, mut best_gain, mut gain) = (0, 0.0, 0.0);
    for k in 0..room {
        let Some((old, new)) = pair(k) else {
            break;
        };
        gain += costs.new - model.cost(old, new);
        if gain > best_gain {
            best_gain = gain;
            best = k + 1;
        }
        // Far below the best: the stretch ahead is unrelated.
        if gain < best_gain - 64.0 {
            break;
        }
    }
    best
}

/// The controls, diff and extra streams for `covers` (in new order, not overlapping).
fn emit(old: &[u8], new: &[u8], covers: &[Cover]) -> Vec<u8> {
    let mut controls = Vec::with_capacity(covers.len() + 1);
    let mut diff = Vec::new();
    let mut extra = Vec::new();
    let mut old_at = 0usize;
    let mut new_at = 0usize;
    let first = covers.first().map_or(new.len(), |c| c.new_at);
    let seek = covers.first().map_or(0, |c| c.old_at as i64);
    // New data before the first cover, or a first cover that does not start at old offset 0,
    // needs a control of its own (controls start with their diff part, at old offset 0).
    if first > 0 || seek != 0 || covers.is_empty() {
        controls.push((0, first as u64, seek));
        extra.extend_from_slice(&new[..first]);
        old_at = seek as usize;
        new_at = first;
    }
    for (i, cover) in covers.iter().enumerate() {
        debug_assert_eq!(cover.new_at, new_at);
        debug_assert_eq!(cover.old_at, old_at);
        diff.extend(
            new[cover.new_at..cover.new_end()]
                .iter()
                .zip(&old[cover.old_at..cover.old_at + cover.len])
                .map(|(n, o)| n.wrapping_sub(*o)),
        );
        let next = covers.get(i + 1);
        let copy_to = next.map_or(new.len(), |c| c.new_at);
        extra.extend_from_slice(&new[cover.new_end()..copy_to]);
        let old_end = cover.old_at + cover.len;
        let seek = next.map_or(0, |c| c.old_at as i64 - old_end as i64);
        controls.push((cover.len as u64, (copy_to - cover.new_end()) as u64, seek));
        old_at = (old_end as i64 + seek) as usize;
        new_at = copy_to;
    }
    crate::bspatch::encode(&controls, &diff, &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every patch (bsdiff's selection and each setting's) rebuilds `new`; the smallest
    /// after zstd is returned.
    fn round_trip(old: &[u8], new: &[u8]) -> Vec<u8> {
        assert_eq!(diffs(old, new, false).len(), 1);
        let patches = diffs(old, new, true);
        assert_eq!(patches.len(), 1 + SETTINGS.len());
        for patch in &patches {
            let out = crate::bspatch::apply(old, patch, new.len()).expect("patch applies");
            assert!(out == new, "patch rebuilds the new data");
        }
        patches
            .into_iter()
            .min_by_key(|p| zstd::bulk::compress(p, 19).unwrap().len())
            .unwrap()
    }

    /// Text that looks like code: repetition and novelty, no random bytes.
    fn program(seed: u32, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x = seed;
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let target = (x >> 8) & 0xffff;
            out.extend_from_slice(&[0xe8, target as u8, (target >> 8) as u8, 0, 0, 0x48, 0x89]);
            out.extend(std::iter::repeat_n(0x90, ((x >> 16) % 4) as usize));
        }
        out.truncate(len);
        out
    }

    #[test]
    fn edge_cases_round_trip() {
        round_trip(b"", b"");
        round_trip(b"", b"all new");
        round_trip(b"all old", b"");
        round_trip(b"same", b"same");
        round_trip(b"a", b"b");
        round_trip(&[0; 5000], &[0; 7000]);
        round_trip(&[7; 100], &[8; 100]);
        // A first cover that starts at new offset 0 but not at old offset 0.
        round_trip(
            b"0123456789abcdefghijklmnopqrstuvwxyz",
            b"abcdefghijklmnopqrstuvwxyz",
        );
    }

    #[test]
    fn moved_blocks_shifted_code_and_unrelated_data_round_trip() {
        let a = program(3, 50_000);
        let b = program(4, 50_000);
        let c = program(5, 50_000);
        let old = [a.as_slice(), &b, &c].concat();
        let new = [
            c.as_slice(),
            b"unrelated",
            &a,
            &program(6, 10_000),
            &b[..20_000],
        ]
        .concat();
        round_trip(&old, &new);
        let mut shifted = old.clone();
        shifted.splice(1_000..1_000, program(2, 3_000));
        for at in (5_000..shifted.len()).step_by(7) {
            shifted[at] = shifted[at].wrapping_add(0x30);
        }
        round_trip(&old, &shifted);
    }

    /// The case the encoder exists for, with the benchmark's own program: the sensor agent
    /// compiled statically at version 1.0 and 1.1 (so glibc moves behind the changed code).
    #[test]
    fn a_recompiled_static_binary_patches_smaller_than_bsdiff() {
        let dir = tempfile::tempdir().unwrap();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/corpus_src/agent");
        let compile = |version: &str| {
            let out = dir.path().join(version);
            let status = std::process::Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(&out)
                .arg(format!("{src}/agent-{version}.c"))
                .arg("-lm")
                .status()
                .expect("gcc runs (the machine's C compiler)");
            assert!(status.success(), "gcc failed on agent-{version}.c");
            std::fs::read(out).unwrap()
        };
        let (old, new) = (compile("v1"), compile("v2"));
        let ours = zstd::bulk::compress(&round_trip(&old, &new), 19)
            .unwrap()
            .len();
        let mut raw = Vec::new();
        bsdiff::diff(&old, &new, &mut raw).unwrap();
        let split = crate::bspatch::split(&raw).unwrap();
        let theirs = zstd::bulk::compress(&split, 19).unwrap().len();
        // bsdiff's own selection, redone here over divsufsort, is never worse than the bsdiff
        // crate's (they differ in which of equally long matches they take: here 28.8 KB
        // against 36.3 KB; on the Debian update's libcrypto 194.1 against 194.2 KB).
        let classic = zstd::bulk::compress(&diffs(&old, &new, false)[0], 19)
            .unwrap()
            .len();
        assert!(
            classic * 100 <= theirs * 102,
            "bsdiff's selection {classic} B against the bsdiff crate's {theirs} B"
        );
        // Measured here (gcc 12, glibc 2.36): 21.9 KB against 36.3 KB. Asserted with room.
        assert!(
            ours * 10 < theirs * 9,
            "covers {ours} B against bsdiff {theirs} B ({} B binary)",
            new.len()
        );
    }
}
