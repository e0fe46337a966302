//! The encoder's decisions, as pure functions over the scans and the base index: which target
//! layers the device already holds, what each file of a layer to send becomes
//! ([`plan_region`] per region), which frame dictionary a layer gets, whether it is also tried
//! as one whole-layer patch, which base ranges the scratch store gathers and where each lands,
//! how a large patched file is cut into pieces, and how large a window the payload's codec
//! needs. Nothing here reads a file: [`super::encoder`] carries a [`BuildPlan`] out.

use std::collections::HashMap;

use sideload_signing::Digest;

use crate::codec::CodecSettings;
use crate::delta::{plan_region, BaseIndex, BaseRef, LayerScan, Region, RegionPlan};
use crate::payload::Extent;

/// Largest layer (and base layer) ever tried as one whole-layer patch (the default of
/// [`super::BuildOptions::whole_layer_patch_limit`]); both are held in memory on the device
/// while that patch is applied, within [`crate::Limits`]' patch caps.
pub const MAX_WHOLE_LAYER: u64 = 32 << 20;

/// Largest piece of a file patched as one operation (new side). A larger file is patched piece
/// by piece, each against the part of the old file around the same relative position, so the
/// device never holds more than [`PATCH_WINDOW`] + this in memory for one patch, whatever the
/// file's size (JDK `modules` images are 130 MB).
pub const PATCH_PIECE: u64 = 16 << 20;

/// Largest base range one piece is patched against (within the decoder's patch-base limit).
pub const PATCH_WINDOW: u64 = 48 << 20;

/// Below this many bytes of literal tar metadata, a layer's frame gets no dictionary (listing
/// the dictionary's ranges would cost more than it saves).
const MIN_LITERAL_METADATA_FOR_DICTIONARY: u64 = 64 << 10;

/// Every layer the device holds, by diff_id, with the name of what holds it: the layers of
/// `bases` (as (image reference, diff_id), the first holder wins), then those its inventory
/// lists (`device_layers`).
pub(crate) fn layers_on_device<'a>(
    bases: impl IntoIterator<Item = (&'a str, &'a Digest)>,
    device_layers: &'a [Digest],
) -> HashMap<&'a Digest, &'a str> {
    let mut on_device: HashMap<&Digest, &str> = HashMap::new();
    for (reference, diff_id) in bases {
        on_device.entry(diff_id).or_insert(reference);
    }
    for diff_id in device_layers {
        on_device.entry(diff_id).or_insert("the device's inventory");
    }
    on_device
}

/// The target layers whose diff_id the device holds, each once, in layer order: the start of
/// the statement's `requires` (the base layers the scratch store reads follow).
pub(crate) fn present_layers(target: &[Digest], on_device: &HashMap<&Digest, &str>) -> Vec<Digest> {
    let mut requires: Vec<Digest> = Vec::new();
    for diff_id in target {
        if on_device.contains_key(diff_id) && !requires.contains(diff_id) {
            requires.push(diff_id.clone());
        }
    }
    requires
}

/// The target layers (by index, of `target`'s diff_ids) that go as operations: those the
/// device does not hold and whose source blob is not sent whole.
pub(crate) fn layers_to_send(
    target: &[Digest],
    on_device: &HashMap<&Digest, &str>,
    sends_blob: impl Fn(usize) -> bool,
) -> Vec<usize> {
    (0..target.len())
        .filter(|&i| !on_device.contains_key(&target[i]) && !sends_blob(i))
        .collect()
}

/// What one target layer that is sent becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerPlan {
    /// Per region of the layer's scan, what it becomes.
    pub regions: Vec<RegionPlan>,
    /// The base ranges of the layer's frame dictionary (empty: no FRAME record).
    pub dictionary: Vec<BaseRef>,
    /// The whole base layer the layer is also tried as one patch against.
    pub whole_layer: Option<BaseRef>,
}

impl LayerPlan {
    /// Every base range the layer's operations may read, for the scratch store.
    fn wanted(&self, scan: &LayerScan, base_scans: &[LayerScan]) -> Vec<BaseRef> {
        let mut wanted = Vec::new();
        for (region, p) in scan.regions.iter().zip(&self.regions) {
            if let RegionPlan::CopyWithHeaders(at) | RegionPlan::Copy(at) | RegionPlan::Patch(at) =
                p
            {
                wanted.push(*at);
            }
            wanted.extend(mix_base(p, region, base_scans));
        }
        wanted.extend(self.whole_layer);
        wanted.extend(&self.dictionary);
        wanted
    }
}

/// What a whole bundle becomes: the statement's `requires`, every sent layer's plan, and the
/// scratch store's layout.
#[derive(Debug)]
pub(crate) struct BuildPlan {
    /// Base layers the device must hold: present target layers, then the base layers read.
    pub requires: Vec<Digest>,
    /// Per target layer that is sent (by index), its plan.
    pub layers: HashMap<usize, LayerPlan>,
    /// Where every base range the plans read lands in scratch.
    pub layout: ScratchLayout,
}

impl BuildPlan {
    /// Bytes of the largest frame dictionary (the payload's window must reach past it).
    pub(crate) fn largest_dictionary(&self) -> u64 {
        self.layers
            .values()
            .map(|l| l.dictionary.iter().map(|at| at.len).sum::<u64>())
            .max()
            .unwrap_or(0)
    }
}

/// Limits a build plan keeps to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanLimits {
    /// Largest layer (target and base) tried as one whole-layer patch.
    pub whole_layer: u64,
    /// Largest frame dictionary (the decoder's [`crate::Limits::max_dictionary`]).
    pub max_dictionary: u64,
}

/// Plans every sent layer (`scans`, by target layer index) against the base layers
/// (`base_scans` and their `index`; `base_diff_ids` names them), after the present layers
/// (`requires`).
pub(crate) fn plan_build(
    mut requires: Vec<Digest>,
    scans: &[(usize, &LayerScan)],
    index: &BaseIndex,
    base_scans: &[LayerScan],
    base_diff_ids: &[Digest],
    limits: PlanLimits,
) -> BuildPlan {
    let mut layers = HashMap::new();
    let mut wanted = Vec::new();
    for &(i, scan) in scans {
        let plan = plan_layer(scan, index, base_scans, limits);
        wanted.extend(plan.wanted(scan, base_scans));
        layers.insert(i, plan);
    }
    let layout = ScratchLayout::new(&wanted, base_diff_ids, &mut requires);
    BuildPlan {
        requires,
        layers,
        layout,
    }
}

/// Plans one target layer: each region, its frame dictionary, its whole-layer candidate.
pub(crate) fn plan_layer(
    scan: &LayerScan,
    index: &BaseIndex,
    base_scans: &[LayerScan],
    limits: PlanLimits,
) -> LayerPlan {
    let regions: Vec<RegionPlan> = scan.regions.iter().map(|r| plan_region(index, r)).collect();
    let dictionary =
        if literal_metadata(scan, &regions, base_scans) >= MIN_LITERAL_METADATA_FOR_DICTIONARY {
            frame_dictionary(&regions, base_scans, limits.max_dictionary)
        } else {
            Vec::new()
        };
    let whole_layer = whole_layer_candidate(scan.len, &regions, base_scans, limits.whole_layer);
    LayerPlan {
        regions,
        dictionary,
        whole_layer,
    }
}

/// What a layer sends as literals: metadata that is neither copied with its file nor sent as a
/// difference to the base's headers (MIX), and files with nothing similar on the device. The
/// dictionary (the base layer's metadata) pays off only if there is enough of that to compress
/// against it: listing its ranges costs a few KB (app-update, whose headers all go as MIX:
/// 49.5 -> 45.7 KB without it).
fn literal_metadata(scan: &LayerScan, plan: &[RegionPlan], base_scans: &[LayerScan]) -> u64 {
    scan.regions
        .iter()
        .zip(plan)
        .map(|(r, p)| {
            let metadata = if matches!(p, RegionPlan::CopyWithHeaders(_))
                || mix_base(p, r, base_scans).is_some()
            {
                0
            } else {
                r.offset - r.gap_offset
            };
            let data = if matches!(p, RegionPlan::Literal) {
                r.len
            } else {
                0
            };
            metadata + data
        })
        .sum()
}

/// A small layer (`len`) may also go as one patch against its closest base layer, whole, when
/// both are at most `limit` bytes.
fn whole_layer_candidate(
    len: u64,
    plan: &[RegionPlan],
    base_scans: &[LayerScan],
    limit: u64,
) -> Option<BaseRef> {
    let closest = closest_base_layer(plan)?;
    let base_len = base_scans[closest].len;
    (len <= limit && base_len <= limit).then_some(BaseRef {
        layer: closest,
        offset: 0,
        len: base_len,
    })
}

/// The dictionary for a target layer's frame: the metadata (everything but file contents:
/// headers, PAX records, padding) of the base layer the layer draws most from, in archive
/// order, up to `cap` bytes. Empty when the layer draws from no base.
pub(crate) fn frame_dictionary(
    plan: &[RegionPlan],
    base_scans: &[LayerScan],
    cap: u64,
) -> Vec<BaseRef> {
    let Some(layer) = closest_base_layer(plan) else {
        return Vec::new();
    };
    let scan = &base_scans[layer];
    let mut gaps = Vec::new();
    let mut pos = 0u64;
    let mut total = 0u64;
    let ends = scan
        .regions
        .iter()
        .map(|r| (r.offset, r.offset + r.len))
        .chain(std::iter::once((scan.len, scan.len)));
    for (start, end) in ends {
        let len = (start - pos).min(cap - total);
        if len > 0 {
            gaps.push(BaseRef {
                layer,
                offset: pos,
                len,
            });
            total += len;
        }
        pos = end;
        if total == cap {
            break;
        }
    }
    gaps
}

/// The base metadata a target region's metadata gap is mixed against: the gap before the base
/// file the region is copied or patched from, when it has the same length. (Headers identical
/// to the base's are copied together with the content instead.)
pub(crate) fn mix_base(
    plan: &RegionPlan,
    region: &Region,
    base_scans: &[LayerScan],
) -> Option<BaseRef> {
    let (RegionPlan::Copy(at) | RegionPlan::Patch(at)) = plan else {
        return None;
    };
    let scan = &base_scans[at.layer];
    let i = scan
        .regions
        .binary_search_by_key(&at.offset, |r| r.offset)
        .ok()?;
    let base = &scan.regions[i];
    let len = base.offset - base.gap_offset;
    (len > 0 && len == region.offset - region.gap_offset).then_some(BaseRef {
        layer: at.layer,
        offset: base.gap_offset,
        len,
    })
}

/// The base layer a target layer's plan draws from most (ties: the lowest index).
pub(crate) fn closest_base_layer(plan: &[RegionPlan]) -> Option<usize> {
    let mut uses: HashMap<usize, usize> = HashMap::new();
    for p in plan {
        if let RegionPlan::CopyWithHeaders(at) | RegionPlan::Copy(at) | RegionPlan::Patch(at) = p {
            *uses.entry(at.layer).or_default() += 1;
        }
    }
    uses.into_iter()
        .max_by_key(|&(layer, n)| (n, std::cmp::Reverse(layer)))
        .map(|(layer, _)| layer)
}

/// How a file of `new_len` bytes planned as a patch against `base` is cut into pieces: per
/// piece, its range in the new file and the base range it is patched against. A base that fits
/// the window is used whole for every piece; a larger one contributes the window centred on
/// the piece's relative position (updated packages mostly change files in place, so content
/// stays near its proportional offset).
pub(crate) fn patch_pieces(base: &BaseRef, new_len: u64) -> Vec<(u64, u64, BaseRef)> {
    let count = new_len.div_ceil(PATCH_PIECE).max(1);
    (0..count)
        .map(|k| {
            let start = k * PATCH_PIECE;
            let len = PATCH_PIECE.min(new_len - start);
            let window = if base.len <= PATCH_WINDOW {
                *base
            } else {
                let centre =
                    ((start + len / 2) as u128 * base.len as u128 / new_len.max(1) as u128) as u64;
                let from = centre
                    .saturating_sub(PATCH_WINDOW / 2)
                    .min(base.len - PATCH_WINDOW);
                BaseRef {
                    offset: base.offset + from,
                    len: PATCH_WINDOW,
                    ..*base
                }
            };
            (start, len, window)
        })
        .collect()
}

/// The payload's codec settings, with the window capped to the smallest power of two that
/// holds everything the payload could carry (the config, `sent` bytes of layers and the largest
/// frame dictionary before them): a small bundle then needs little memory on the device, and
/// the encoder does not allocate for a window it cannot fill.
pub(crate) fn payload_codec(
    codec: CodecSettings,
    config_len: u64,
    sent: u64,
    largest_dictionary: u64,
) -> CodecSettings {
    let most = sent + config_len + largest_dictionary;
    let needed = (u64::BITS - most.max(1).leading_zeros()).max(16);
    CodecSettings {
        window_log: codec.window_log.min(needed),
        ..codec
    }
}

/// Where each needed base range lands in the scratch store: the merged, sorted extents and a
/// lookup from (base layer, offset) to scratch offset.
#[derive(Debug)]
pub(crate) struct ScratchLayout {
    /// The payload's extents, sorted by (requires_index, offset).
    pub extents: Vec<Extent>,
    /// Per base layer (index in the base layer list): its extents as (offset, len, scratch
    /// offset), sorted by offset.
    by_layer: HashMap<usize, Vec<(u64, u64, u64)>>,
    /// Scratch bytes in all.
    pub total: u64,
}

impl ScratchLayout {
    /// Merges the wanted ranges per base layer (named by `base_diff_ids`); adds the base
    /// layers to `requires`.
    pub(crate) fn new(
        wanted: &[BaseRef],
        base_diff_ids: &[Digest],
        requires: &mut Vec<Digest>,
    ) -> Self {
        let merged = merge_ranges(wanted);
        // requires_index must grow with the extents' order: number base layers as they come.
        let mut extents = Vec::with_capacity(merged.len());
        let mut starts = Vec::with_capacity(merged.len());
        let mut total = 0u64;
        for (layer, start, end) in merged {
            let diff_id = &base_diff_ids[layer];
            let requires_index = match requires.iter().position(|d| d == diff_id) {
                Some(i) => i,
                None => {
                    requires.push(diff_id.clone());
                    requires.len() - 1
                }
            };
            extents.push(Extent {
                requires_index: requires_index as u32,
                offset: start,
                len: end - start,
            });
            starts.push((layer, total));
            total += end - start;
        }
        // The format wants extents sorted by (requires_index, offset).
        let mut order: Vec<usize> = (0..extents.len()).collect();
        order.sort_by_key(|&i| (extents[i].requires_index, extents[i].offset));
        let mut sorted_extents = Vec::with_capacity(extents.len());
        let mut by_layer: HashMap<usize, Vec<(u64, u64, u64)>> = HashMap::new();
        let mut offset = 0u64;
        for i in order {
            let e = extents[i];
            sorted_extents.push(e);
            by_layer
                .entry(starts[i].0)
                .or_default()
                .push((e.offset, e.len, offset));
            offset += e.len;
        }
        // Within one base layer, extents are already in offset order.
        ScratchLayout {
            extents: sorted_extents,
            by_layer,
            total,
        }
    }

    /// Scratch offset of a wanted base range.
    pub(crate) fn scratch_offset(&self, at: &BaseRef) -> u64 {
        let list = &self.by_layer[&at.layer];
        let i = list.partition_point(|&(offset, _, _)| offset <= at.offset) - 1;
        let (offset, len, start) = list[i];
        debug_assert!(
            at.offset + at.len <= offset + len,
            "wanted range inside its extent"
        );
        start + (at.offset - offset)
    }
}

/// The wanted ranges as (base layer, start, end), sorted, overlapping and touching ones merged.
fn merge_ranges(wanted: &[BaseRef]) -> Vec<(usize, u64, u64)> {
    let mut by_layer: Vec<(usize, u64, u64)> = wanted
        .iter()
        .map(|w| (w.layer, w.offset, w.offset + w.len))
        .collect();
    by_layer.sort_unstable();
    let mut merged: Vec<(usize, u64, u64)> = Vec::new();
    for (layer, start, end) in by_layer {
        match merged.last_mut() {
            Some(last) if last.0 == layer && start <= last.2 => last.2 = last.2.max(end),
            _ => merged.push((layer, start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PayloadCodec;
    use crate::delta::scan_layer;

    fn digest(s: &str) -> Digest {
        Digest::of_bytes(s.as_bytes())
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn scan(files: &[(&str, &[u8])]) -> LayerScan {
        scan_layer(&tar_of(files)[..]).unwrap()
    }

    const LIMITS: PlanLimits = PlanLimits {
        whole_layer: MAX_WHOLE_LAYER,
        max_dictionary: 1 << 20,
    };

    /// One base layer with three files, indexed.
    fn base() -> (BaseIndex, Vec<LayerScan>) {
        let base = scan(&[
            ("etc/app.conf", b"port = 80\n"),
            ("usr/lib/libfoo-1.2.so", &[7u8; 3000]),
            ("usr/share/doc/readme", b"read me"),
        ]);
        let mut index = BaseIndex::default();
        index.add_layer(0, &base);
        (index, vec![base])
    }

    #[test]
    fn the_first_holder_of_a_layer_names_it_and_the_inventory_comes_last() {
        let (a, b, c) = (digest("a"), digest("b"), digest("c"));
        let inventory = [b.clone(), c.clone()];
        let on_device = layers_on_device([("img1", &a), ("img2", &a), ("img2", &b)], &inventory);
        assert_eq!(on_device[&a], "img1");
        assert_eq!(on_device[&b], "img2");
        assert_eq!(on_device[&c], "the device's inventory");
        // Present target layers, each once, in layer order.
        let target = [
            c.clone(),
            digest("new"),
            a.clone(),
            c.clone(),
            digest("blob"),
        ];
        assert_eq!(
            present_layers(&target, &on_device),
            vec![c.clone(), a.clone()]
        );
        // Sent as operations: neither held nor sent as the source's blob.
        assert_eq!(layers_to_send(&target, &on_device, |i| i == 4), vec![1]);
        assert_eq!(layers_to_send(&target, &on_device, |_| false), vec![1, 4]);
    }

    #[test]
    fn identical_files_copy_renamed_ones_patch_new_ones_go_literally() {
        let (index, base_scans) = base();
        let target = scan(&[
            ("etc/app.conf", b"port = 80\n"),
            ("usr/lib/libfoo-1.3.so", &[8u8; 3000]),
            ("new/file", b"nothing like it"),
        ]);
        let plan = plan_layer(&target, &index, &base_scans, LIMITS);
        let base = &base_scans[0].regions;
        assert!(matches!(plan.regions[0], RegionPlan::CopyWithHeaders(at)
            if at.offset == base[0].gap_offset));
        assert_eq!(
            plan.regions[1],
            RegionPlan::Patch(BaseRef {
                layer: 0,
                offset: base[1].offset,
                len: 3000
            })
        );
        assert_eq!(plan.regions[2], RegionPlan::Literal);
        // Little literal metadata: no dictionary; the layer is small: a whole-layer candidate.
        assert!(plan.dictionary.is_empty());
        assert_eq!(
            plan.whole_layer,
            Some(BaseRef {
                layer: 0,
                offset: 0,
                len: base_scans[0].len
            })
        );
    }

    #[test]
    fn a_layer_with_much_literal_metadata_gets_the_base_metadata_as_its_dictionary() {
        let (index, base_scans) = base();
        // 200 new files with long headers: over 64 KiB of metadata sent literally, beside one
        // file patched against the base.
        let names: Vec<String> = (0..200).map(|i| format!("srv/data/file-{i:04}")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        files.push(("usr/lib/libfoo-1.3.so", &[8u8; 3000]));
        let target = scan(&files);
        let plan = plan_layer(&target, &index, &base_scans, LIMITS);
        let b = &base_scans[0];
        // The base's metadata: every gap before a file and the end blocks, in order.
        let expected: Vec<BaseRef> = b
            .regions
            .iter()
            .scan(0, |pos, r| {
                let gap = (*pos, r.offset - *pos);
                *pos = r.offset + r.len;
                Some(gap)
            })
            .chain(std::iter::once((
                b.regions.last().map_or(0, |r| r.offset + r.len),
                0,
            )))
            .map(|(offset, len)| BaseRef {
                layer: 0,
                offset,
                len: if len == 0 { b.len - offset } else { len },
            })
            .collect();
        assert_eq!(plan.dictionary, expected);
        // Capped: the dictionary stops at the cap.
        let capped = frame_dictionary(&plan.regions, &base_scans, 700);
        assert_eq!(capped.iter().map(|r| r.len).sum::<u64>(), 700);
    }

    #[test]
    fn a_layer_or_base_over_the_limit_gets_no_whole_layer_candidate() {
        let (index, base_scans) = base();
        let target = scan(&[("etc/app.conf", b"port = 81\n")]);
        let limits = PlanLimits {
            whole_layer: target.len - 1,
            ..LIMITS
        };
        assert_eq!(
            plan_layer(&target, &index, &base_scans, limits).whole_layer,
            None
        );
        // Nothing drawn from a base: no candidate, no dictionary.
        let fresh = scan(&[("x", b"y")]);
        let plan = plan_layer(&fresh, &index, &base_scans, LIMITS);
        assert_eq!((plan.whole_layer, plan.dictionary.len()), (None, 0));
    }

    #[test]
    fn metadata_is_mixed_only_against_a_base_gap_of_the_same_length() {
        let (_, base_scans) = base();
        let target = scan(&[("etc/app.conf", b"port = 81\n")]);
        let b = &base_scans[0].regions[0];
        let at = BaseRef {
            layer: 0,
            offset: b.offset,
            len: b.len,
        };
        let region = &target.regions[0];
        assert_eq!(
            mix_base(&RegionPlan::Patch(at), region, &base_scans),
            Some(BaseRef {
                layer: 0,
                offset: b.gap_offset,
                len: b.offset - b.gap_offset
            })
        );
        let longer = Region {
            gap_offset: region.gap_offset,
            offset: region.offset + 512,
            ..region.clone()
        };
        assert_eq!(mix_base(&RegionPlan::Patch(at), &longer, &base_scans), None);
        assert_eq!(mix_base(&RegionPlan::Literal, region, &base_scans), None);
        // A copy with headers is never mixed: its headers come with it.
        assert_eq!(
            mix_base(&RegionPlan::CopyWithHeaders(at), region, &base_scans),
            None
        );
    }

    #[test]
    fn the_closest_base_layer_is_the_most_used_and_ties_go_to_the_lowest() {
        let at = |layer| BaseRef {
            layer,
            offset: 0,
            len: 1,
        };
        let plan = [
            RegionPlan::Copy(at(2)),
            RegionPlan::Patch(at(1)),
            RegionPlan::CopyWithHeaders(at(2)),
            RegionPlan::Patch(at(1)),
            RegionPlan::Literal,
        ];
        assert_eq!(closest_base_layer(&plan), Some(1));
        assert_eq!(closest_base_layer(&plan[..3]), Some(2));
        assert_eq!(closest_base_layer(&[RegionPlan::Literal]), None);
    }

    #[test]
    fn scratch_merges_overlapping_ranges_and_numbers_base_layers_in_order() {
        let r = |layer, offset, len| BaseRef { layer, offset, len };
        let ids = [digest("base0"), digest("base1")];
        let mut requires = vec![digest("present"), ids[1].clone()];
        let wanted = [
            r(1, 100, 50),
            r(0, 10, 5),
            r(1, 120, 50),
            r(1, 170, 10),
            r(1, 500, 1),
        ];
        let layout = ScratchLayout::new(&wanted, &ids, &mut requires);
        assert_eq!(
            requires,
            vec![digest("present"), ids[1].clone(), ids[0].clone()]
        );
        let e = |requires_index, offset, len| Extent {
            requires_index,
            offset,
            len,
        };
        // base1 is requires[1], base0 requires[2]: sorted by (requires_index, offset).
        assert_eq!(
            layout.extents,
            vec![e(1, 100, 80), e(1, 500, 1), e(2, 10, 5)]
        );
        assert_eq!(layout.total, 86);
        assert_eq!(layout.scratch_offset(&r(1, 130, 20)), 30);
        assert_eq!(layout.scratch_offset(&r(1, 500, 1)), 80);
        assert_eq!(layout.scratch_offset(&r(0, 12, 3)), 83);
    }

    #[test]
    fn a_large_file_is_patched_in_pieces_against_windows_near_the_same_place() {
        let small = BaseRef {
            layer: 3,
            offset: 1000,
            len: 5000,
        };
        assert_eq!(patch_pieces(&small, 4000), vec![(0, 4000, small)]);
        assert_eq!(patch_pieces(&small, 0), vec![(0, 0, small)]);
        let big = BaseRef {
            layer: 3,
            offset: 1000,
            len: 4 * PATCH_WINDOW,
        };
        let pieces = patch_pieces(&big, 2 * PATCH_PIECE + 5);
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            vec![
                (0, PATCH_PIECE),
                (PATCH_PIECE, PATCH_PIECE),
                (2 * PATCH_PIECE, 5)
            ]
        );
        for (_, _, window) in &pieces {
            assert_eq!(window.len, PATCH_WINDOW);
            assert!(window.offset >= big.offset);
            assert!(window.offset + window.len <= big.offset + big.len);
        }
        // Windows follow the pieces' relative position; the last ends at the base's end.
        assert!(pieces[0].2.offset < pieces[1].2.offset);
        assert!(pieces[1].2.offset < pieces[2].2.offset);
        assert_eq!(pieces[2].2.offset + PATCH_WINDOW, big.offset + big.len);
    }

    #[test]
    fn the_payload_window_is_capped_to_what_the_payload_can_hold() {
        let codec = CodecSettings {
            codec: PayloadCodec::Lzma2,
            level: 9,
            window_log: 26,
            threads: 2,
        };
        assert_eq!(payload_codec(codec, 1000, 0, 0).window_log, 16);
        assert_eq!(payload_codec(codec, 1000, 1 << 20, 0).window_log, 21);
        assert_eq!(payload_codec(codec, 0, 1 << 20, 1 << 22).window_log, 23);
        assert_eq!(payload_codec(codec, 0, 1 << 40, 0).window_log, 26);
    }
}
