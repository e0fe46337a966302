//! Exact upstream digests: deciding, per target layer, how the device gets the source's own
//! compressed blob, so that it can serve the source's manifest unchanged.
//!
//! A manifest digest covers every layer's blob digest, so the image is exact only if every
//! layer is: a gzip layer is recreated from its tar and a recipe ([`crate::gzip_recipe`]: a
//! zlib level, a Go `compress/gzip` level, or preflate's corrections) or
//! taken from a base image that holds the very same blob, and an uncompressed layer is exact
//! as it is. What no recipe recreates cheaply (zstd layers, several gzip members, compressors
//! preflate cannot model, such as the parallel gzip umoci writes) is either sent as the blob
//! itself (`--exact required`: exact at any cost) or makes the image inexact
//! (`where-possible`: every layer stored uncompressed under a manifest of sideload's own, the
//! behaviour before exact digests and the smallest bundle). Only a source without a manifest
//! (a classic `docker save` archive) cannot be exact at all.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sideload_signing::{BlobFrom, Digest, LayerStorage};

use crate::error::Error;
use crate::gzip_recipe::{
    analyse, analyse_go, analyse_pgzip, analyse_zlib, max_chunks, Analysis, GzipRecipe, RecipeError,
};
use crate::image::compression::sniff;
use crate::image::spec::media_types::OCI_LAYER_TAR;
use crate::image::{Compression, ImageSource, Layer};
use crate::progress::Progress;

/// A recipe up to this size is always accepted, whatever its share of a small blob.
const MIN_RECIPE_LIMIT: u64 = 4096;

/// What the encoder does about the source's manifest digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exactness {
    /// Every layer exact: what no recipe recreates goes as the compressed blob itself. Fails
    /// only for a source without a manifest.
    Required,
    /// Exact when every layer can be; otherwise every layer uncompressed (and a manifest of
    /// sideload's own), with the reason in the build report.
    #[default]
    WherePossible,
    /// Layers stored uncompressed, as before exact digests: the smallest bundle.
    Never,
}

impl std::str::FromStr for Exactness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "required" => Ok(Exactness::Required),
            "where-possible" => Ok(Exactness::WherePossible),
            "never" => Ok(Exactness::Never),
            other => Err(format!(
                "unknown exactness {other:?}: required, where-possible or never"
            )),
        }
    }
}

/// Settings for [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct ExactOptions {
    /// The mode.
    pub mode: Exactness,
    /// Largest recipe accepted for a layer, in percent of its compressed blob (4 KiB is always
    /// accepted); a layer whose compressor preflate models badly costs more than this and is
    /// not recreated.
    pub max_recipe_percent: u32,
    /// Trust that the device holds the exact compressed blobs of the base images (true when
    /// it got them through exact bundles or pulled them); when false, a recipe is sent even
    /// for layers a base holds, for devices whose copies were compressed again.
    pub trust_base_blobs: bool,
}

impl Default for ExactOptions {
    fn default() -> Self {
        ExactOptions {
            mode: Exactness::WherePossible,
            max_recipe_percent: 5,
            trust_base_blobs: true,
        }
    }
}

/// How the target's layers are stored, and the recipes the payload carries.
#[derive(Debug, Clone)]
pub struct ExactPlan {
    /// Per target layer.
    pub storages: Vec<LayerStorage>,
    /// Encoded recipes, by layer index (layers stored as `Gzip { from: Recipe }`).
    pub recipes: HashMap<usize, Vec<u8>>,
    /// The source's manifest (media type, bytes) when the image is exact.
    pub manifest: Option<(String, Vec<u8>)>,
    /// Why the image is not exact, when it is not.
    pub not_exact: Option<String>,
}

impl ExactPlan {
    /// True when layer `index` goes as the source's compressed blob itself.
    pub fn sends_blob(&self, index: usize) -> bool {
        matches!(
            self.storages[index],
            LayerStorage::SourceBlob {
                from: BlobFrom::Payload,
                ..
            }
        )
    }

    fn uncompressed(layers: usize, why: String) -> ExactPlan {
        ExactPlan {
            storages: vec![
                LayerStorage::Uncompressed {
                    media_type: OCI_LAYER_TAR.to_owned(),
                };
                layers
            ],
            recipes: HashMap::new(),
            manifest: None,
            not_exact: Some(why),
        }
    }
}

fn source_blob(layer: &Layer, from: BlobFrom) -> LayerStorage {
    LayerStorage::SourceBlob {
        media_type: layer.media_type.clone(),
        digest: Some(layer.blob_digest.clone()),
        size: Some(layer.blob_size),
        from,
    }
}

/// Recipes already made for a target, by layer index (`Err`: why the layer cannot be
/// recreated). A recipe depends only on the target's blob, so trial builds against different
/// bases (`rank_bases`) share one cache instead of analysing every layer again.
#[derive(Debug, Default)]
pub struct RecipeCache(Mutex<HashMap<usize, Result<Vec<u8>, String>>>);

/// What one layer needs, before any recipe is made.
enum Need {
    /// Exact as it is (an uncompressed blob, or a blob a base image holds).
    Ready(LayerStorage),
    /// A gzip blob to analyse.
    Analyse,
}

/// Layer `index`'s recipe: a zlib level when one wrote the blob (a few bytes), else a Go
/// `compress/gzip` level when Go wrote it (a few bytes too), else preflate's corrections. A
/// blob is read again for each (the zlib and Go passes usually stop at their first block; a
/// stream that differs only at its end is read whole), so zlib and Go blobs never pay
/// preflate's time.
fn recipe_for(
    target: &dyn ImageSource,
    index: usize,
) -> Result<Result<Analysis, RecipeError>, Error> {
    // An image error while opening is kept as it is, not turned into an I/O error.
    let mut open_error = None;
    let zlib = analyse_zlib(|| {
        target.open_layer_blob(index).map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            open_error = Some(e);
            io
        })
    });
    if let Some(e) = open_error {
        return Err(e.into());
    }
    match zlib {
        Ok(Some(analysis)) => return Ok(Ok(analysis)),
        Err(RecipeError::Io(e)) => return Ok(Err(RecipeError::Io(e))),
        // Not zlib's, or not a blob preflate reads either: preflate says which.
        Ok(None) | Err(_) => {}
    }
    match analyse_go(target.open_layer_blob(index)?) {
        Ok(Some(go)) => return Ok(Ok(go.into_analysis())),
        Err(RecipeError::Io(e)) => return Ok(Err(RecipeError::Io(e))),
        Ok(None) | Err(_) => {}
    }
    match analyse_pgzip(target.open_layer_blob(index)?) {
        Ok(Some(pgzip)) => return Ok(Ok(pgzip.into_analysis())),
        Err(RecipeError::Io(e)) => return Ok(Err(RecipeError::Io(e))),
        Ok(None) | Err(_) => {}
    }
    Ok(analyse(target.open_layer_blob(index)?))
}

/// Decides how each target layer is stored. `held_blobs` are the compressed blobs the device
/// holds (those of the base images, when trusted, and those its inventory lists). Recipes are
/// made on two threads: zlib's level search and preflate each run at about 20 MB/s of plain
/// text per core.
pub fn plan(
    target: &dyn ImageSource,
    held_blobs: &HashSet<Digest>,
    options: ExactOptions,
    cache: &RecipeCache,
    progress: &dyn Progress,
) -> Result<ExactPlan, Error> {
    let image = target.image();
    let count = image.layers.len();
    let fallback = |why: String| -> Result<ExactPlan, Error> {
        match options.mode {
            Exactness::Required => Err(Error::InvalidBuild(format!(
                "{}: cannot keep the source's manifest digest: {why} \
                 (read the image from a registry or an OCI layout, or use --exact where-possible)",
                image.reference
            ))),
            _ => Ok(ExactPlan::uncompressed(count, why)),
        }
    };
    if options.mode == Exactness::Never {
        return Ok(ExactPlan::uncompressed(count, "--exact never".into()));
    }
    let Some(manifest) = &image.manifest else {
        return fallback("the source has no manifest (a classic docker save archive)".into());
    };
    let needs = match layer_needs(target, held_blobs, options.mode)? {
        Ok(needs) => needs,
        Err(why) => return fallback(why),
    };
    make_recipes(target, &needs, options, cache, progress)?;
    let results = cache.0.lock().expect("not poisoned");
    match assemble(image, needs, &results, options.mode) {
        Ok((storages, recipes)) => Ok(ExactPlan {
            storages,
            recipes,
            manifest: Some((manifest.media_type.clone(), manifest.bytes.clone())),
            not_exact: None,
        }),
        Err(why) => fallback(format!("{why} (--exact required sends such blobs whole)")),
    }
}

/// What each layer needs: ready as it is (uncompressed, or a blob the device holds), its gzip
/// blob analysed, or (`--exact required`) a blob no recipe models sent whole. `Err`: why the
/// image cannot be exact (a layer compressed otherwise than with gzip).
fn layer_needs(
    target: &dyn ImageSource,
    held_blobs: &HashSet<Digest>,
    mode: Exactness,
) -> Result<Result<Vec<Need>, String>, Error> {
    let image = target.image();
    let mut needs = Vec::with_capacity(image.layers.len());
    for (index, layer) in image.layers.iter().enumerate() {
        if layer.blob_digest == layer.diff_id {
            needs.push(Need::Ready(LayerStorage::Uncompressed {
                media_type: layer.media_type.clone(),
            }));
            continue;
        }
        if held_blobs.contains(&layer.blob_digest) {
            needs.push(Need::Ready(source_blob(layer, BlobFrom::Device)));
            continue;
        }
        let (compression, _) = sniff(target.open_layer_blob(index)?)
            .map_err(|e| Error::io("reading a layer of", &image.reference)(e))?;
        match (compression, mode) {
            (Compression::Gzip, _) => needs.push(Need::Analyse),
            (_, Exactness::Required) => {
                needs.push(Need::Ready(source_blob(layer, BlobFrom::Payload)))
            }
            (other, _) => {
                return Ok(Err(format!(
                    "layer {index} is {other:?}-compressed; only gzip layers are recreated \
                     (--exact required sends such blobs whole)"
                )))
            }
        }
    }
    Ok(Ok(needs))
}

/// Makes the recipe of every layer that needs one and `cache` does not hold yet, two layers at
/// a time, into `cache`.
fn make_recipes(
    target: &dyn ImageSource,
    needs: &[Need],
    options: ExactOptions,
    cache: &RecipeCache,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let image = target.image();
    let results = &cache.0;
    let todo: Vec<usize> = {
        let done = results.lock().expect("not poisoned");
        (0..needs.len())
            .filter(|&i| matches!(needs[i], Need::Analyse) && !done.contains_key(&i))
            .collect()
    };
    let total: u64 = todo.iter().map(|&i| image.layers[i].blob_size).sum();
    progress.start("exact gzip recipes", total);
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..2.min(todo.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = todo.get(k) else { break };
                if failure.lock().expect("not poisoned").is_some() {
                    break;
                }
                let outcome = layer_recipe(target, index, options);
                progress.advance(image.layers[index].blob_size);
                match outcome {
                    Ok(r) => {
                        results.lock().expect("not poisoned").insert(index, r);
                    }
                    Err(e) => {
                        failure.lock().expect("not poisoned").get_or_insert(e);
                    }
                }
            });
        }
    });
    progress.finish();
    match failure.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Layer `index`'s encoded recipe, or why it gets none (no writer or model recreates it, a
/// device would refuse it, it is over the size cap). `Err`: the layer could not be read.
fn layer_recipe(
    target: &dyn ImageSource,
    index: usize,
    options: ExactOptions,
) -> Result<Result<Vec<u8>, String>, Error> {
    let image = target.image();
    let layer = &image.layers[index];
    let analysis = match recipe_for(target, index)? {
        Ok(a) => a,
        Err(RecipeError::NotRecreatable(why)) => return Ok(Err(format!("layer {index} {why}"))),
        Err(RecipeError::Io(e)) => {
            return Err(Error::io("reading a layer of", &image.reference)(e))
        }
        Err(e) => return Ok(Err(format!("layer {index}: {e}"))),
    };
    if analysis.plain_digest != layer.diff_id {
        return Err(Error::InvalidBuild(format!(
            "{}: layer {index} decompresses to {}, its diff_id is {}",
            image.reference, analysis.plain_digest, layer.diff_id
        )));
    }
    let bytes = analysis.recipe.to_bytes_in_layer(analysis.plain_len);
    // What a device would refuse is no recipe (the build report then says why; it also keeps
    // the report's own parse of it safe).
    if let Err(e) =
        GzipRecipe::from_bytes_in_layer(&bytes, analysis.plain_len, max_chunks(analysis.plain_len))
    {
        return Ok(Err(format!(
            "layer {index}'s recipe would be refused by a device: {e}"
        )));
    }
    tracing::debug!(
        layer = index,
        blob = layer.blob_size,
        recipe = bytes.len(),
        kind = analysis.recipe.describe(),
        "gzip recipe"
    );
    let limit = recipe_limit(layer.blob_size, options.max_recipe_percent);
    if bytes.len() as u64 > limit {
        return Ok(Err(format!(
            "layer {index}'s recipe would be {} bytes, over {}% of its {}-byte blob",
            bytes.len(),
            options.max_recipe_percent,
            layer.blob_size
        )));
    }
    Ok(Ok(bytes))
}

/// The largest recipe accepted for a blob of `blob_size` bytes: `percent` of it, at least
/// [`MIN_RECIPE_LIMIT`] (a tiny layer's recipe is tiny too, but a large share of it), at most
/// what a device accepts.
fn recipe_limit(blob_size: u64, percent: u32) -> u64 {
    (blob_size.saturating_mul(u64::from(percent)) / 100)
        .max(MIN_RECIPE_LIMIT)
        .min(crate::Limits::default().max_recipe)
}

/// Each layer's storage, and the encoded recipes the payload carries by layer index.
type Stored = (Vec<LayerStorage>, HashMap<usize, Vec<u8>>);

/// Each layer's storage and the recipes the payload carries, from the needs and the recipes
/// made. `Err`: why a layer has no recipe, when exactness is not required (then the image is
/// not exact).
fn assemble(
    image: &crate::image::Image,
    needs: Vec<Need>,
    results: &HashMap<usize, Result<Vec<u8>, String>>,
    mode: Exactness,
) -> Result<Stored, String> {
    let mut storages = Vec::with_capacity(needs.len());
    let mut recipes = HashMap::new();
    for (index, need) in needs.into_iter().enumerate() {
        match need {
            Need::Ready(storage) => storages.push(storage),
            Need::Analyse => match results.get(&index).expect("every layer analysed") {
                Ok(recipe) => {
                    recipes.insert(index, recipe.clone());
                    storages.push(source_blob(&image.layers[index], BlobFrom::Recipe));
                }
                Err(_) if mode == Exactness::Required => {
                    storages.push(source_blob(&image.layers[index], BlobFrom::Payload));
                }
                Err(why) => return Err(why.clone()),
            },
        }
    }
    Ok((storages, recipes))
}
