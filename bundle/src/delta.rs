//! File-level delta planning: which bytes of a target layer the device already has.
//!
//! A layer tar is, to the delta engine, a byte stream in which some ranges are the contents of
//! regular files ([`Region`]s) and everything else (headers, PAX records, padding, the end
//! blocks) is metadata. Regions are found with the `tar` crate and identified by the sha256 of
//! their exact archive bytes, so reproducing a region from a base layer whose bytes hash the same
//! is correct whatever the tar dialect; anything the scanner does not understand simply stays
//! metadata and travels as literal bytes. The plan never affects correctness, only size: the
//! decoder checks every rebuilt layer against its diff_id.
//!
//! [`BaseIndex`] knows every region of every base layer by content, by path, by path with
//! version numbers blanked out (`foo-1.2/` and `foo-1.3/` match) and by file name.
//! [`plan_region`] is the pure decision for one target region: copy identical content, patch
//! against the most similar base file, or send literally.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

use sideload_signing::Digest;

use crate::image::digest_reader::Sha256;

/// The content of one regular file inside a layer tar, by its position in the archive bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Path as stored in the tar (bytes: names need not be UTF-8).
    pub path: Vec<u8>,
    /// Offset of the file's first byte in the uncompressed layer.
    pub offset: u64,
    /// Length of the file's bytes.
    pub len: u64,
    /// sha256 of exactly those bytes.
    pub digest: Digest,
    /// Where the metadata before this file starts: the end of the previous region (0 for the
    /// first). The bytes from here to `offset` are padding, headers of entries without
    /// content, and this file's own headers.
    pub gap_offset: u64,
    /// sha256 of the bytes from `gap_offset` to `offset`. A file whose content *and* headers
    /// are those of a base file can be copied with its headers, and runs of such files become
    /// one copy.
    pub gap_digest: Digest,
}

/// Regions of one layer, in archive order, plus the layer's length.
#[derive(Debug, Clone, Default)]
pub struct LayerScan {
    /// Regular-file regions, in archive order, non-overlapping.
    pub regions: Vec<Region>,
    /// Length of the layer tar.
    pub len: u64,
}

/// Counts the bytes the tar reader consumes, so the layer length is known at the end, and
/// hashes those that are not file contents (the tar crate reads headers and skips padding
/// exactly, without reading ahead, so what passed outside file data is the metadata gap).
struct Counting<R> {
    inner: R,
    count: u64,
    gap: Rc<RefCell<GapHash>>,
}

struct GapHash {
    in_data: bool,
    hash: Sha256,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        let mut gap = self.gap.borrow_mut();
        if !gap.in_data {
            gap.hash.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Scans a layer tar stream for regular-file regions. Streams: only one entry's hash state is
/// held. Returns the regions found before the first entry the tar crate cannot parse (a
/// damaged or exotic tail is left to be sent as metadata); I/O errors of the stream itself
/// (including a diff_id mismatch at its end) are returned.
pub fn scan_layer(reader: impl Read) -> io::Result<LayerScan> {
    let gap = Rc::new(RefCell::new(GapHash {
        in_data: false,
        hash: Sha256::new(),
    }));
    let mut counting = Counting {
        inner: reader,
        count: 0,
        gap: Rc::clone(&gap),
    };
    let mut regions = Vec::new();
    let mut gap_offset = 0u64;
    {
        let mut archive = tar::Archive::new(&mut counting);
        archive.set_ignore_zeros(false);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(_) => return finish(counting, regions),
        };
        for entry in entries {
            let Ok(mut entry) = entry else { break };
            let header = entry.header();
            let kind = header.entry_type();
            let sparse = kind.is_gnu_sparse();
            if !(kind.is_file() || kind == tar::EntryType::Continuous) || sparse {
                continue;
            }
            let len = entry.size();
            if len == 0 {
                continue;
            }
            let offset = entry.raw_file_position();
            let path = entry.path_bytes().into_owned();
            let gap_hash = std::mem::take(&mut gap.borrow_mut().hash);
            if gap_hash.count() != offset - gap_offset {
                // The reader did not consume exactly the bytes before this file; do not trust
                // gap hashes from here on.
                break;
            }
            let gap_digest = gap_hash.finish();
            gap.borrow_mut().in_data = true;
            let mut hash = Sha256::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hash.update(&buf[..n]);
            }
            gap.borrow_mut().in_data = false;
            if hash.count() != len {
                break;
            }
            regions.push(Region {
                path,
                offset,
                len,
                digest: hash.finish(),
                gap_offset,
                gap_digest,
            });
            gap_offset = offset + len;
        }
    }
    finish(counting, regions)
}

/// Reads what the tar reader left (end blocks, padding) so the layer length, and the stream's
/// own digest check, cover every byte.
fn finish<R: Read>(mut counting: Counting<R>, regions: Vec<Region>) -> io::Result<LayerScan> {
    io::copy(&mut counting, &mut io::sink())?;
    Ok(LayerScan {
        regions,
        len: counting.count,
    })
}

/// A path with every run of version-like digits (`1.2.3`, `311`) replaced by `#`, so renamed
/// version directories and sonames still find their old files.
pub fn normalize_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i].is_ascii_digit() {
            while i < path.len()
                && (path[i].is_ascii_digit()
                    || (path[i] == b'.' && path.get(i + 1).is_some_and(u8::is_ascii_digit)))
            {
                i += 1;
            }
            out.push(b'#');
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

fn file_name(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Where a region of a base layer is: which base layer (index into the caller's list) and
/// which bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRef {
    /// Index of the base layer in the caller's list.
    pub layer: usize,
    /// Offset in that layer's uncompressed tar.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// Every region of every base layer, findable by content, path, normalised path and name.
#[derive(Debug, Default)]
pub struct BaseIndex {
    /// (gap digest, content digest) → the base's gap and content as one range.
    with_headers: HashMap<(Digest, Digest), BaseRef>,
    by_digest: HashMap<Digest, BaseRef>,
    by_path: HashMap<Vec<u8>, BaseRef>,
    by_normalized: HashMap<Vec<u8>, BaseRef>,
    by_name: HashMap<Vec<u8>, Vec<BaseRef>>,
}

impl BaseIndex {
    /// Adds the regions of base layer `layer`.
    pub fn add_layer(&mut self, layer: usize, scan: &LayerScan) {
        for r in &scan.regions {
            let at = BaseRef {
                layer,
                offset: r.offset,
                len: r.len,
            };
            self.by_digest.entry(r.digest.clone()).or_insert(at);
            self.with_headers
                .entry((r.gap_digest.clone(), r.digest.clone()))
                .or_insert(BaseRef {
                    layer,
                    offset: r.gap_offset,
                    len: r.offset + r.len - r.gap_offset,
                });
            self.by_path.insert(r.path.clone(), at);
            self.by_normalized.insert(normalize_path(&r.path), at);
            self.by_name
                .entry(file_name(&r.path).to_vec())
                .or_default()
                .push(at);
        }
    }
}

/// What to do with one target region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionPlan {
    /// The file's headers and content are identical to a base file's: copy both (`BaseRef`
    /// covers the base's gap and content).
    CopyWithHeaders(BaseRef),
    /// Identical bytes exist in a base layer.
    Copy(BaseRef),
    /// Try patching against this similar base file; send literally if that is not smaller.
    Patch(BaseRef),
    /// Nothing similar on the device.
    Literal,
}

/// Decides how to send one target region. Pure: the same index and region give the same plan.
pub fn plan_region(index: &BaseIndex, region: &Region) -> RegionPlan {
    let key = (region.gap_digest.clone(), region.digest.clone());
    if let Some(at) = index.with_headers.get(&key) {
        return RegionPlan::CopyWithHeaders(*at);
    }
    if let Some(at) = index.by_digest.get(&region.digest) {
        return RegionPlan::Copy(*at);
    }
    // Any size: the encoder patches large files piece by piece.
    let fits = |at: &BaseRef| at.len > 0;
    if let Some(at) = index.by_path.get(&region.path).filter(|a| fits(a)) {
        return RegionPlan::Patch(*at);
    }
    if let Some(at) = index
        .by_normalized
        .get(&normalize_path(&region.path))
        .filter(|a| fits(a))
    {
        return RegionPlan::Patch(*at);
    }
    // Same file name elsewhere, closest in size, within a factor of two.
    let best = index
        .by_name
        .get(file_name(&region.path))
        .into_iter()
        .flatten()
        .filter(|a| fits(a) && a.len <= region.len * 2 && region.len <= a.len * 2)
        .min_by_key(|a| a.len.abs_diff(region.len));
    match best {
        Some(at) => RegionPlan::Patch(*at),
        None => RegionPlan::Literal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn regions_are_exact_archive_bytes() {
        let long = format!("{}/file.txt", "d".repeat(150));
        let tar = tar_of(&[("a.txt", b"hello"), ("empty", b""), (&long, b"world!")]);
        let scan = scan_layer(&tar[..]).unwrap();
        assert_eq!(scan.len, tar.len() as u64);
        assert_eq!(scan.regions.len(), 2);
        let mut end = 0;
        for r in &scan.regions {
            let bytes = &tar[r.offset as usize..(r.offset + r.len) as usize];
            assert_eq!(Digest::of_bytes(bytes), r.digest);
            assert_eq!(r.gap_offset, end);
            let gap = &tar[r.gap_offset as usize..r.offset as usize];
            assert_eq!(Digest::of_bytes(gap), r.gap_digest);
            end = r.offset + r.len;
        }
        assert_eq!(scan.regions[1].path, long.as_bytes());
    }

    #[test]
    fn damaged_tail_keeps_what_was_found() {
        let mut tar = tar_of(&[("a.txt", b"hello"), ("b.txt", b"there")]);
        tar.truncate(1024 + 100);
        let scan = scan_layer(&tar[..]).unwrap();
        assert_eq!(scan.regions.len(), 1);
        assert_eq!(scan.len, 1124);
    }

    #[test]
    fn normalized_paths() {
        assert_eq!(
            normalize_path(b"opt/app-1.0/lib/x.pm"),
            b"opt/app-#/lib/x.pm"
        );
        assert_eq!(
            normalize_path(b"usr/lib/python3.11/os.py"),
            b"usr/lib/python#/os.py"
        );
        assert_eq!(normalize_path(b"libssl.so.3"), b"libssl.so.#");
        assert_eq!(normalize_path(b"v2."), b"v#.");
    }

    #[test]
    fn plans() {
        let base = tar_of(&[
            ("opt/app-1.0/lib/Carp.pm", b"package Carp; 1;"),
            ("opt/app-1.0/lib/Same.pm", b"unchanged"),
            ("etc/conf", b"x = 1"),
        ]);
        let mut index = BaseIndex::default();
        index.add_layer(0, &scan_layer(&base[..]).unwrap());
        let target = tar_of(&[
            ("opt/app-1.1/lib/Carp.pm", b"package Carp; 2;"),
            ("moved/Same.pm", b"unchanged"),
            ("etc/conf", b"x = 2"),
            ("new/file", b"brand new"),
            ("other/conf", b"x = 3"),
        ]);
        let scan = scan_layer(&target[..]).unwrap();
        let plans: Vec<_> = scan
            .regions
            .iter()
            .map(|r| plan_region(&index, r))
            .collect();
        assert!(matches!(
            plans[0],
            RegionPlan::Patch(BaseRef {
                layer: 0,
                len: 16,
                ..
            })
        ));
        assert!(matches!(plans[1], RegionPlan::Copy(BaseRef { len: 9, .. })));
        // Same content and same headers: copied with its headers.
        let same = scan_layer(&base[..]).unwrap();
        assert!(matches!(
            plan_region(&index, &same.regions[1]),
            RegionPlan::CopyWithHeaders(BaseRef { len, .. }) if len > 512
        ));
        assert!(matches!(plans[2], RegionPlan::Patch(_)), "same path");
        assert_eq!(plans[3], RegionPlan::Literal);
        assert!(
            matches!(plans[4], RegionPlan::Patch(_)),
            "same name, similar size"
        );
    }
}
