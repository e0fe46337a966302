//! Exact upstream digests: deciding, per target layer, how the device gets the source's own
//! compressed blob, so that it can serve the source's manifest unchanged.
//!
//! A manifest digest covers every layer's blob digest, so the image is exact only if every
//! layer is: a gzip layer is recreated from its tar and a recipe ([`crate::gzip_recipe`]) or
//! taken from a base image that holds the very same blob, and an uncompressed layer is exact
//! as it is. Anything else (zstd layers, several gzip members, a compressor preflate cannot
//! model cheaply, a source without a manifest such as a classic `docker save` archive) makes
//! the image inexact; [`Exactness`] says whether that fails the build or falls back to storing
//! every layer uncompressed under a manifest of sideload's own (the behaviour before exact
//! digests, and the smallest bundle).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sideload_signing::{BlobFrom, Digest, LayerStorage};

use crate::error::Error;
use crate::gzip_recipe::{analyse, RecipeError};
use crate::image::compression::sniff;
use crate::image::spec::media_types::OCI_LAYER_TAR;
use crate::image::{Compression, ImageSource};
use crate::progress::Progress;

/// What the encoder does about the source's manifest digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exactness {
    /// Every layer exact or the build fails, naming the layer and why.
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
    /// Largest recipe accepted for a layer, in percent of its compressed blob; a layer whose
    /// compressor preflate models badly costs more than this and is not recreated.
    pub max_recipe_percent: u32,
}

impl Default for ExactOptions {
    fn default() -> Self {
        ExactOptions {
            mode: Exactness::WherePossible,
            max_recipe_percent: 5,
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

/// What one layer needs, before any recipe is made.
enum Need {
    /// Exact as it is (an uncompressed blob, or a blob a base image holds).
    Ready(LayerStorage),
    /// A gzip blob to analyse.
    Analyse,
}

/// Decides how each target layer is stored. `held_blobs` are the compressed blobs the device
/// holds (those of the base images). Recipes are made on two threads: preflate runs at about
/// 20 MB/s of plain text per core.
pub fn plan(
    target: &dyn ImageSource,
    held_blobs: &HashSet<Digest>,
    options: ExactOptions,
    progress: &dyn Progress,
) -> Result<ExactPlan, Error> {
    let image = target.image();
    let count = image.layers.len();
    let fallback = |why: String| -> Result<ExactPlan, Error> {
        match options.mode {
            Exactness::Required => Err(Error::InvalidBuild(format!(
                "{}: cannot keep the source's manifest digest: {why} \
                 (--exact where-possible stores the layers uncompressed instead)",
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

    let mut needs = Vec::with_capacity(count);
    for (index, layer) in image.layers.iter().enumerate() {
        if layer.blob_digest == layer.diff_id {
            needs.push(Need::Ready(LayerStorage::Uncompressed {
                media_type: layer.media_type.clone(),
            }));
            continue;
        }
        let (compression, _) = sniff(target.open_layer_blob(index)?)
            .map_err(|e| Error::io("reading a layer of", &image.reference)(e))?;
        match compression {
            Compression::Gzip => {}
            other => {
                return fallback(format!(
                    "layer {index} is {other:?}-compressed; only gzip layers are recreated"
                ))
            }
        }
        if held_blobs.contains(&layer.blob_digest) {
            needs.push(Need::Ready(LayerStorage::Gzip {
                media_type: layer.media_type.clone(),
                digest: layer.blob_digest.clone(),
                size: layer.blob_size,
                from: BlobFrom::Device,
            }));
        } else {
            needs.push(Need::Analyse);
        }
    }

    // Make the recipes, two layers at a time.
    let todo: Vec<usize> = (0..count)
        .filter(|&i| matches!(needs[i], Need::Analyse))
        .collect();
    let total: u64 = todo.iter().map(|&i| image.layers[i].blob_size).sum();
    progress.start("exact gzip recipes", total);
    let next = AtomicUsize::new(0);
    let results: Mutex<HashMap<usize, Result<Vec<u8>, String>>> = Mutex::new(HashMap::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..2.min(todo.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = todo.get(k) else { break };
                if failure.lock().expect("not poisoned").is_some() {
                    break;
                }
                let layer = &image.layers[index];
                let outcome = target.open_layer_blob(index).map_err(Error::from).and_then(
                    |blob| match analyse(blob) {
                        Ok(a) if a.plain_digest != layer.diff_id => Err(Error::InvalidBuild(
                            format!(
                                "{}: layer {index} decompresses to {}, its diff_id is {}",
                                image.reference, a.plain_digest, layer.diff_id
                            ),
                        )),
                        Ok(a) => {
                            let bytes = a.recipe.to_bytes();
                            let limit =
                                layer.blob_size * u64::from(options.max_recipe_percent) / 100;
                            tracing::debug!(
                                layer = index,
                                blob = layer.blob_size,
                                recipe = bytes.len(),
                                chunks = a.recipe.chunks.len(),
                                "gzip recipe"
                            );
                            let limit = limit.min(crate::Limits::default().max_recipe);
                            if bytes.len() as u64 > limit {
                                Ok(Err(format!(
                                    "layer {index}'s recipe would be {} bytes, over {}% of its {}-byte blob",
                                    bytes.len(),
                                    options.max_recipe_percent,
                                    layer.blob_size
                                )))
                            } else {
                                Ok(Ok(bytes))
                            }
                        }
                        Err(RecipeError::NotRecreatable(why)) => {
                            Ok(Err(format!("layer {index} {why}")))
                        }
                        Err(RecipeError::Io(e)) => {
                            Err(Error::io("reading a layer of", &image.reference)(e))
                        }
                        Err(e @ RecipeError::Invalid(_)) => {
                            Ok(Err(format!("layer {index}: {e}")))
                        }
                    },
                );
                progress.advance(layer.blob_size);
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
    if let Some(e) = failure.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let mut results = results.into_inner().expect("not poisoned");
    let mut storages = Vec::with_capacity(count);
    let mut recipes = HashMap::new();
    for (index, need) in needs.into_iter().enumerate() {
        match need {
            Need::Ready(storage) => storages.push(storage),
            Need::Analyse => match results.remove(&index).expect("every layer analysed") {
                Ok(recipe) => {
                    let layer = &image.layers[index];
                    recipes.insert(index, recipe);
                    storages.push(LayerStorage::Gzip {
                        media_type: layer.media_type.clone(),
                        digest: layer.blob_digest.clone(),
                        size: layer.blob_size,
                        from: BlobFrom::Recipe,
                    });
                }
                Err(why) => return fallback(why),
            },
        }
    }
    Ok(ExactPlan {
        storages,
        recipes,
        manifest: Some((manifest.media_type.clone(), manifest.bytes.clone())),
        not_exact: None,
    })
}
