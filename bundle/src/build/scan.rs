//! The encoder's reading: the base images' distinct layers as a [`BaseStore`], each scanned
//! once into the [`BaseIndex`], and each target layer to send scanned once while it is spooled
//! to a temporary file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use sideload_signing::Digest;

use crate::delta::{scan_layer, BaseIndex, LayerScan};
use crate::error::Error;
use crate::image::{Image, ImageError, ImageSource};
use crate::progress::Progress;
use crate::scratch::BaseStore;

/// The distinct layers of the base images, in a fixed order (a base layer's index in every
/// [`crate::delta::BaseRef`]), as a [`BaseStore`] for gathering.
pub(super) struct BaseLayers<'a> {
    list: Vec<(Digest, &'a dyn ImageSource, usize)>,
}

impl<'a> BaseLayers<'a> {
    /// The layers of `bases`, each diff_id once (from the first image that has it).
    pub fn new(bases: &[&'a dyn ImageSource]) -> Self {
        let mut list: Vec<(Digest, &'a dyn ImageSource, usize)> = Vec::new();
        for base in bases {
            for (i, layer) in base.image().layers.iter().enumerate() {
                if !list.iter().any(|(d, _, _)| d == &layer.diff_id) {
                    list.push((layer.diff_id.clone(), *base, i));
                }
            }
        }
        BaseLayers { list }
    }

    /// The diff_ids, in order.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.list.iter().map(|(d, _, _)| d.clone()).collect()
    }

    /// The reference of the image base layer `layer` comes from.
    pub fn reference(&self, layer: usize) -> String {
        self.list[layer].1.image().reference.clone()
    }

    /// Scans every base layer once: their scans, in order, and the index of their files.
    pub fn scan(&self, progress: &dyn Progress) -> Result<(BaseIndex, Vec<LayerScan>), Error> {
        let mut index = BaseIndex::default();
        let mut scans = Vec::with_capacity(self.list.len());
        for (i, (diff_id, source, layer)) in self.list.iter().enumerate() {
            progress.start(&format!("scan base {}/{}", i + 1, self.list.len()), 0);
            let scan = scan_layer(source.open_layer(*layer)?).map_err(|e| {
                Error::InvalidBuild(format!(
                    "{}: reading base layer {diff_id}: {e}",
                    source.image().reference
                ))
            })?;
            index.add_layer(i, &scan);
            scans.push(scan);
            progress.finish();
        }
        Ok((index, scans))
    }
}

impl BaseStore for BaseLayers<'_> {
    fn contains(&self, diff_id: &Digest) -> bool {
        self.list.iter().any(|(d, _, _)| d == diff_id)
    }

    fn open_layer(
        &self,
        diff_id: &Digest,
    ) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
        match self.list.iter().find(|(d, _, _)| d == diff_id) {
            Some((_, source, i)) => source.open_layer(*i).map(Some),
            None => Ok(None),
        }
    }
}

/// A scanned target layer and its bytes, spooled to a temporary file.
pub(super) struct SpooledLayer {
    /// Its regions.
    pub scan: LayerScan,
    /// Its bytes.
    pub spool: File,
}

/// Scans the target layers `to_send`, each spooled to a temporary file in `dir`.
pub(super) fn scan_target_layers(
    target: &dyn ImageSource,
    to_send: &[usize],
    dir: &Path,
    progress: &dyn Progress,
) -> Result<HashMap<usize, SpooledLayer>, Error> {
    let mut scans = HashMap::new();
    for &i in to_send {
        scans.insert(i, scan_target_layer(target, i, dir, progress)?);
    }
    Ok(scans)
}

/// Scans target layer `i` of `target`, spooling it to a temporary file in `dir`.
fn scan_target_layer(
    target: &dyn ImageSource,
    i: usize,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<SpooledLayer, Error> {
    let image = target.image();
    progress.start(&format!("scan layer {}/{}", i + 1, image.layers.len()), 0);
    let mut spool = tempfile::tempfile_in(dir).map_err(Error::io("creating spool file in", dir))?;
    let scan = scan_layer(Tee {
        inner: target.open_layer(i)?,
        copy: BufWriter::new(&mut spool),
    })
    .map_err(|e| layer_read_error(image, i, e))?;
    progress.finish();
    Ok(SpooledLayer { scan, spool })
}

/// A target layer that could not be read (or whose digest did not match).
pub(super) fn layer_read_error(image: &Image, index: usize, e: std::io::Error) -> Error {
    Error::InvalidBuild(format!(
        "{}: reading layer {index} ({}): {e}",
        image.reference, image.layers[index].diff_id
    ))
}

/// Copies what is read into `copy` (the target layer's spool file).
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        if n == 0 {
            self.copy.flush()?;
        }
        Ok(n)
    }
}
