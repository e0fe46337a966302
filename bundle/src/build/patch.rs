//! Patches: for each file (or piece of a file) a plan patches, the smallest of a zstd patch
//! with the old file as prefix and the bsdiff-layout patches of bsdiff and [`crate::covers`],
//! worked out on every core, and kept only if it beats sending the bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

use crate::delta::{BaseRef, LayerScan, RegionPlan};
use crate::error::Error;
use crate::payload::PatchKind;
use crate::scratch::{Scratch, ZSTD_DICT_MAGIC};

use super::plan::{patch_pieces, ScratchLayout, MAX_WHOLE_LAYER};

/// Largest patch base (old side; the new side is at most a [`super::PATCH_PIECE`]) also tried
/// with bsdiff's layout. Its suffix array needs 4 bytes per old byte (192 MiB per worker at
/// 48 MiB) and seconds of sorting, and its match search tens of seconds on the largest, but on
/// executables and shared libraries these patches are 2-3x smaller than zstd's (libjvm.so
/// update: 0.8 MB against 2.0 MB); the patch time budget bounds it.
const MAX_BSDIFF_FILE: usize = 48 << 20;

/// zstd level that ranks bsdiff-layout patches against each other (a fraction of level 19's
/// time; the ranking is what matters, not the size).
const RANK_LEVEL: i32 = 6;

/// A patch candidate: its kind, its bytes, and what it costs in the payload.
pub(super) type CandidatePatch = (PatchKind, Vec<u8>, usize);

/// A patch decided for a piece: its kind, its bytes, the base range it applies to.
pub(super) type DecidedPatch = (PatchKind, Vec<u8>, BaseRef);

/// One piece of a file planned as a patch: its length and its patch, or `None` when sending the
/// piece literally is smaller.
#[derive(Default)]
pub(super) struct Piece {
    pub len: u64,
    pub patch: Option<DecidedPatch>,
}

/// Per region planned as a patch: its pieces, in file order.
pub(super) type PatchDecisions = HashMap<usize, Vec<Piece>>;

/// What patching reads and how hard it tries.
#[derive(Clone, Copy)]
pub(super) struct PatchContext<'a> {
    /// The gathered base ranges.
    pub scratch: &'a Scratch,
    /// Where each base range sits in `scratch`.
    pub layout: &'a ScratchLayout,
    /// zstd level of patches and of the literal estimate they must beat.
    pub level: i32,
    /// After this instant, patches are made with zstd only (bsdiff is the slow one).
    pub deadline: Instant,
    /// The bundle, for errors.
    pub name: &'a str,
}

/// One piece to patch: (region, piece number, offset in the file, length, base range).
type PieceWork = (usize, usize, u64, u64, BaseRef);

/// The pieces of every region `plan` patches, largest first so the cores finish together.
fn patch_work(scan: &LayerScan, plan: &[RegionPlan]) -> Vec<PieceWork> {
    let mut work: Vec<PieceWork> = plan
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            RegionPlan::Patch(at) => Some((i, at)),
            _ => None,
        })
        .flat_map(|(i, at)| {
            patch_pieces(at, scan.regions[i].len)
                .into_iter()
                .enumerate()
                .map(move |(k, (start, len, base))| (i, k, start, len, base))
        })
        .collect();
    work.sort_by_key(|w| std::cmp::Reverse(w.3));
    work
}

/// Works out, on every core, the best patch of each piece of each region planned as a patch
/// (see [`patch_pieces`]): `None` for a piece whose patch is not smaller than sending it.
pub(super) fn compute_patches(
    ctx: &PatchContext<'_>,
    spool: &File,
    scan: &LayerScan,
    plan: &[RegionPlan],
) -> Result<PatchDecisions, Error> {
    let work = patch_work(scan, plan);
    let results = on_every_core(&work, |&(i, _, start, len, at)| {
        patch_piece(ctx, spool, scan, i, start, len, at)
    })?;
    let mut pieces: Vec<((usize, usize), Piece)> = results
        .into_iter()
        .map(|((i, k, _, len, _), patch)| ((i, k), Piece { len, patch }))
        .collect();
    pieces.sort_by_key(|(key, _)| *key);
    let mut decisions: PatchDecisions = HashMap::new();
    for ((i, _), piece) in pieces {
        decisions.entry(i).or_default().push(piece);
    }
    Ok(decisions)
}

/// Runs `one` on every item of `work`, on as many threads as there are cores, each taking the
/// next item when it is done; stops at the first error. Returns each item with its result, in
/// no particular order.
fn on_every_core<T: Copy + Send + Sync, R: Send>(
    work: &[T],
    one: impl Fn(&T) -> Result<R, Error> + Sync,
) -> Result<Vec<(T, R)>, Error> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(work.len()));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(work.len()).max(1))
            .map(|_| {
                s.spawn(|| -> Result<(), Error> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = work.get(n) else {
                            return Ok(());
                        };
                        let result = one(item)?;
                        results
                            .lock()
                            .expect("no worker panicked")
                            .push((*item, result));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("patch worker panicked"))
    })?;
    Ok(results.into_inner().expect("no worker panicked"))
}

/// The best patch of one piece (`len` bytes at `start` in region `i`) against `at`, if it is
/// smaller than the piece compressed on its own.
fn patch_piece(
    ctx: &PatchContext<'_>,
    spool: &File,
    scan: &LayerScan,
    i: usize,
    start: u64,
    len: u64,
    at: BaseRef,
) -> Result<Option<DecidedPatch>, Error> {
    use std::os::unix::fs::FileExt;
    let region = &scan.regions[i];
    let mut new = vec![0u8; len as usize];
    spool
        .read_exact_at(&mut new, region.offset + start)
        .map_err(Error::io("reading spool of", ctx.name))?;
    let (at, old) = patch_base(ctx.scratch, ctx.layout, &at, ctx.name)?;
    if new.is_empty() || old.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    let literal_cost = zstd::bulk::compress(&new, ctx.level)
        .map_err(|e| Error::InvalidBuild(format!("compressing: {e}")))?
        .len();
    // Past the time budget, only the fast zstd patch is tried.
    let max_bsdiff = if started < ctx.deadline {
        MAX_BSDIFF_FILE
    } else {
        0
    };
    let (kind, patch, cost) = best_patch(&old, &new, ctx.level, max_bsdiff)?;
    // Where a build's time and bytes go (SIDELOAD_LOG=sideload_bundle=debug).
    tracing::debug!(
        path = %String::from_utf8_lossy(&region.path),
        piece_at = start,
        new = len,
        old = old.len(),
        ?kind,
        cost,
        literal_cost,
        past_budget = max_bsdiff == 0,
        ms = started.elapsed().as_millis() as u64,
        "patch piece"
    );
    Ok((cost < literal_cost).then_some((kind, patch, at)))
}

/// The smallest of a zstd patch (old as prefix) and, when both sides are at most `max_bsdiff`
/// bytes, the bsdiff-layout patches of bsdiff and of [`crate::covers`]: (kind, patch bytes,
/// what it costs in the payload).
pub(super) fn best_patch(
    old: &[u8],
    new: &[u8],
    level: i32,
    max_bsdiff: usize,
) -> Result<CandidatePatch, Error> {
    let zstd_patch = zstd_patch(old, new, level)?;
    let mut best = (PatchKind::Zstd, zstd_patch.len(), zstd_patch);
    // bsdiff's match search degrades towards quadratic time on long runs of repeated bytes
    // (zero-filled images, sparse files written out): skip it for data that compresses more
    // than 16:1, where the zstd patch is small anyway.
    let repetitive =
        |data: &[u8]| zstd::bulk::compress(data, 1).map_or(true, |c| c.len() * 16 < data.len());
    if old.len() <= max_bsdiff && new.len() <= max_bsdiff && !repetitive(old) && !repetitive(new) {
        let (kind, cost, patch) = best_bsdiff_layout(old, new, level)?;
        tracing::trace!(?kind, cost, "best bsdiff-layout patch");
        if cost < best.1 {
            best = (kind, cost, patch);
        }
    }
    Ok((best.0, best.2, best.1))
}

/// The smallest bsdiff-layout patch: (kind, cost in the payload, patch bytes).
///
/// All lay out their covers the same way and the device applies any with one decoder. Neither
/// encoder wins everywhere: on the corpus's recompiled binary the cost-chosen covers are 38 %
/// smaller (19.4 KB against 31.3 KB after LZMA), on most shared libraries of a Debian security
/// update bsdiff's are 1-10 % smaller. They are tried on x86 executables only (where moved code
/// is the change), and an executable's patches again with its address fields as 32-bit
/// differences (the recompiled binary: 19.4 -> 18.2 KB; libapt-pkg's update: 52.8 -> 47.4 KB).
/// Candidates are ranked with a fast zstd level and only the winner is compressed at `level`:
/// the time budget goes to more files patched, which matters more (the 1.24 GB image's update:
/// 29.3 against 26.1 MB when every candidate was compressed at level 19).
fn best_bsdiff_layout(
    old: &[u8],
    new: &[u8],
    level: i32,
) -> Result<(PatchKind, usize, Vec<u8>), Error> {
    let compress_err = |e: std::io::Error| Error::InvalidBuild(format!("compressing a patch: {e}"));
    let x86 = crate::payload::is_x86_elf(old) || crate::payload::is_x86_elf(new);
    let mut layouts: Vec<_> = crate::covers::diffs(old, new, x86)
        .into_iter()
        .map(|p| (PatchKind::Bsdiff, p))
        .collect();
    if x86 {
        let with_fields: Vec<_> = layouts
            .iter()
            .map(|(_, p)| crate::bspatch::to_x86(old, p).map(|x| (PatchKind::BsdiffX86, x)))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::InvalidBuild("a bsdiff-layout patch is malformed".into()))?;
        layouts.extend(with_fields);
    }
    let rank = |patch: &[u8]| zstd::bulk::compress(patch, RANK_LEVEL).map(|c| c.len());
    let mut ranked = Vec::with_capacity(layouts.len());
    for (kind, patch) in layouts {
        ranked.push((rank(&patch).map_err(compress_err)?, kind, patch));
    }
    let (_, kind, patch) = ranked
        .into_iter()
        .min_by_key(|(size, ..)| *size)
        .expect("bsdiff's patch at least");
    // The patch is mostly zeros; the payload's stream compresses it.
    let cost = zstd::bulk::compress(&patch, level)
        .map_err(compress_err)?
        .len();
    Ok((kind, cost, patch))
}

/// A zstd patch as `zstd --patch-from` makes it: the old bytes are the frame's prefix (decoded
/// as a raw-content dictionary: the same bytes before the frame's window), with long-distance
/// matching and a window spanning old and new, so matches anywhere in a 48 MiB base are found
/// (a dictionary loaded into the regular match finder's hash tables loses most of them).
fn zstd_patch(old: &[u8], new: &[u8], level: i32) -> Result<Vec<u8>, Error> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let fail = |code: usize| {
        Error::InvalidBuild(format!(
            "compressing a patch: {}",
            zstd::zstd_safe::get_error_name(code)
        ))
    };
    let window = (usize::BITS - (old.len() + new.len()).leading_zeros()).clamp(10, 27);
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(fail)?;
    cctx.set_parameter(CParameter::WindowLog(window))
        .map_err(fail)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(fail)?;
    cctx.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(fail)?;
    cctx.ref_prefix(old).map_err(fail)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(new.len()));
    cctx.compress2(&mut out, new).map_err(fail)?;
    Ok(out)
}

/// One patch of a whole target layer (from its spool) against a whole base layer.
pub(super) fn whole_layer_patch(
    spool: &mut File,
    at: &BaseRef,
    scratch: &Scratch,
    layout: &ScratchLayout,
    level: i32,
    name: &str,
) -> Result<(BaseRef, CandidatePatch), Error> {
    let (at, old) = patch_base(scratch, layout, at, name)?;
    let mut new = Vec::new();
    spool
        .seek(SeekFrom::Start(0))
        .and_then(|_| spool.read_to_end(&mut new))
        .map_err(Error::io("reading spool of", name))?;
    Ok((at, best_patch(&old, &new, level, MAX_WHOLE_LAYER as usize)?))
}

/// The bytes of a patch base, and the range they come from. zstd would take a dictionary that
/// starts with its dictionary magic as a formatted one (decoders refuse such bases), so such a
/// base starts one byte later.
fn patch_base(
    scratch: &Scratch,
    layout: &ScratchLayout,
    at: &BaseRef,
    name: &str,
) -> Result<(BaseRef, Vec<u8>), Error> {
    let mut old = scratch.read_at(name, layout.scratch_offset(at), at.len)?;
    let mut at = *at;
    if old.starts_with(&ZSTD_DICT_MAGIC) {
        old.remove(0);
        at.offset += 1;
        at.len -= 1;
    }
    Ok((at, old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_to_patch_come_largest_first() {
        let tar = {
            let mut b = tar::Builder::new(Vec::new());
            for (name, len) in [("a", 10usize), ("b", 30), ("c", 20)] {
                let mut h = tar::Header::new_gnu();
                h.set_size(len as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, name, &vec![1u8; len][..]).unwrap();
            }
            b.into_inner().unwrap()
        };
        let scan = crate::delta::scan_layer(&tar[..]).unwrap();
        let at = BaseRef {
            layer: 0,
            offset: 0,
            len: 100,
        };
        let plan = [
            RegionPlan::Patch(at),
            RegionPlan::Patch(at),
            RegionPlan::Literal,
        ];
        let work = patch_work(&scan, &plan);
        assert_eq!(
            work.iter().map(|w| (w.0, w.1, w.3)).collect::<Vec<_>>(),
            vec![(1, 0, 30), (0, 0, 10)]
        );
    }

    #[test]
    fn a_similar_file_patches_smaller_than_itself_and_the_patch_applies() {
        let old: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        let (kind, patch, cost) = best_patch(&old, &new, 19, 0).unwrap();
        assert_eq!(kind, PatchKind::Zstd);
        assert_eq!(cost, patch.len());
        assert!(cost < 200, "{cost}");
        let mut out = Vec::new();
        let mut dec =
            zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(&patch[..]), &old)
                .unwrap();
        dec.read_to_end(&mut out).unwrap();
        assert_eq!(out, new);
    }

    #[test]
    fn every_worker_result_comes_back_once() {
        let work: Vec<u32> = (0..50).collect();
        let mut results = on_every_core(&work, |&n| Ok(n * 2)).unwrap();
        results.sort();
        assert_eq!(
            results,
            work.iter().map(|&n| (n, n * 2)).collect::<Vec<_>>()
        );
        let failed = on_every_core(&work, |&n| {
            if n == 7 {
                Err(Error::InvalidBuild("seven".into()))
            } else {
                Ok(n)
            }
        });
        assert!(matches!(failed, Err(Error::InvalidBuild(s)) if s == "seven"));
    }
}
