//! What the encoder and the decoder share about base data: where the device's layers come
//! from ([`BaseStore`]), and the scratch store that gathers the ranges of them a bundle copies
//! or patches from ([`gather_extents`], [`Scratch`]). The encoder gathers the same scratch to
//! trial-encode against exactly what the device will hold, so this sits below both: neither
//! `build` nor `apply` imports the other.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::Path;

use sideload_signing::Digest;

use crate::error::Error;
use crate::image::ImageError;
use crate::payload::Extent;

/// Where the device's existing layers come from.
pub trait BaseStore {
    /// True if the device holds the layer.
    fn contains(&self, diff_id: &Digest) -> bool;
    /// Opens a held layer as its uncompressed stream (which fails at its end on a digest
    /// mismatch). `None` if the layer is not held.
    fn open_layer(&self, diff_id: &Digest)
        -> Result<Option<Box<dyn Read + Send + '_>>, ImageError>;
    /// Opens a held compressed layer blob, byte for byte (failing at its end on a digest
    /// mismatch), for exact-blob bundles that reuse it. `None` if no image holds that blob.
    fn open_blob(&self, _digest: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
        Ok(None)
    }
    /// True if [`BaseStore::open_blob`] would find the blob (checked before decoding starts).
    fn contains_blob(&self, _digest: &Digest) -> bool {
        false
    }
    /// Every compressed blob held of layer `diff_id` (digest, size), sorted by digest, for
    /// statements that leave a held blob's digest to the device. Not the uncompressed tar.
    fn blobs_of(&self, _diff_id: &Digest) -> Vec<(Digest, u64)> {
        Vec::new()
    }
}

/// The scratch store: gathered base ranges, addressed by offset.
pub(crate) struct Scratch {
    file: Option<File>,
    len: u64,
}

/// Gathers every extent into one scratch file, with one sequential pass over each base layer
/// that extents reference. Extents must be sorted by (requires_index, offset), must not
/// overlap, and must add up to the statement's `scratch_bytes`.
pub(crate) fn gather_extents(
    name: &str,
    requires: &[Digest],
    scratch_bytes: u64,
    extents: &[Extent],
    bases: &dyn BaseStore,
    staging: &Path,
) -> Result<Scratch, Error> {
    let corrupt = |reason: String| Error::CorruptPayload {
        bundle: name.to_owned(),
        reason,
    };
    let total = extents
        .iter()
        .try_fold(0u64, |acc, e| acc.checked_add(e.len))
        .ok_or_else(|| corrupt("extent lengths overflow".into()))?;
    if total != scratch_bytes {
        return Err(corrupt(format!(
            "extents add up to {total} bytes, the statement declares {scratch_bytes}"
        )));
    }
    for pair in extents.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let ordered =
            (a.requires_index, a.offset.saturating_add(a.len)) <= (b.requires_index, b.offset);
        if !ordered {
            return Err(corrupt("extents are not sorted and disjoint".into()));
        }
    }
    if extents.is_empty() {
        return Ok(Scratch { file: None, len: 0 });
    }
    let path = staging.join("scratch");
    let mut out = BufWriter::new(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io("creating", &path))?,
    );
    let mut start = 0;
    while start < extents.len() {
        let which = extents[start].requires_index;
        let end = start
            + extents[start..]
                .iter()
                .take_while(|e| e.requires_index == which)
                .count();
        let diff_id = requires.get(which as usize).ok_or_else(|| {
            corrupt(format!(
                "extent names base {which}, which the statement does not require"
            ))
        })?;
        let mut stream = bases
            .open_layer(diff_id)?
            .ok_or_else(|| Error::MissingBase {
                bundle: name.to_owned(),
                diff_id: diff_id.clone(),
            })?;
        let mut pos = 0u64;
        for extent in &extents[start..end] {
            let skip = extent.offset - pos;
            let skipped = io::copy(&mut (&mut stream).take(skip), &mut io::sink())
                .map_err(Error::io("reading base layer", diff_id.as_str()))?;
            let copied = io::copy(&mut (&mut stream).take(extent.len), &mut out)
                .map_err(Error::io("gathering base layer", diff_id.as_str()))?;
            if skipped != skip || copied != extent.len {
                return Err(corrupt(format!(
                    "extent at {}+{} is past the end of base layer {diff_id}",
                    extent.offset, extent.len
                )));
            }
            pos = extent.offset.saturating_add(extent.len);
        }
        // Read to the end so the base layer's digest is checked: scratch data must come from
        // the layer the statement names, not from a damaged copy.
        io::copy(&mut stream, &mut io::sink())
            .map_err(Error::io("reading base layer", diff_id.as_str()))?;
        start = end;
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io("writing", &path)(e.into_error()))?;
    Ok(Scratch {
        file: Some(file),
        len: total,
    })
}

impl Scratch {
    /// Reads a range with a positional read (safe from several threads at once).
    pub(crate) fn read_at(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        use std::os::unix::fs::FileExt;
        let file = self.holding(name, offset, len)?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, offset)
            .map_err(Error::io("reading scratch", "scratch"))?;
        Ok(bytes)
    }

    /// A range as a reader (streams: for copies of any length).
    pub(crate) fn range(&self, name: &str, offset: u64, len: u64) -> Result<io::Take<File>, Error> {
        let mut file = self
            .holding(name, offset, len)?
            .try_clone()
            .map_err(Error::io("reading scratch", "scratch"))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::io("reading scratch", "scratch"))?;
        Ok(file.take(len))
    }

    /// The scratch file, if it holds `offset..offset + len`.
    fn holding(&self, name: &str, offset: u64, len: u64) -> Result<&File, Error> {
        match (&self.file, offset.checked_add(len)) {
            (Some(file), Some(end)) if end <= self.len => Ok(file),
            _ => Err(Error::CorruptPayload {
                bundle: name.to_owned(),
                reason: format!(
                    "operation reads scratch {offset}+{len}, the store holds {} bytes",
                    self.len
                ),
            }),
        }
    }
}

/// First bytes of a formatted zstd dictionary. Dictionaries in bundles are raw content; zstd
/// would parse one starting with these bytes as formatted, so such a dictionary or patch base is
/// refused (the encoder shifts its ranges to avoid it).
pub(crate) const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];
