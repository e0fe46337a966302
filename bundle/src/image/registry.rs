//! Images in a registry, read through `oci-client`.
//!
//! A pull resolves the reference to a manifest (choosing the requested platform from a
//! multi-platform index), then streams the config and every layer blob into a local OCI layout
//! (the caller's cache directory, or a temporary directory the [`RegistrySource`] owns),
//! hashing each blob as it is written and moving it into place only when it matches its
//! digest and size. No blob is held in memory; manifests are (the client reads them whole) but
//! they are refused past [`MAX_JSON_LEN`](super::MAX_JSON_LEN). The image is then served from
//! that layout by the OCI layout reader, so layer streams are verified again as they are read.
//!
//! Blobs already in the cache are not fetched again.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sideload_signing::Digest;
use tempfile::TempDir;

use super::location::OpenOptions;
use super::oci_layout::{self, DirStore, OciLayoutSource};
use super::spec::{self, media_types, Descriptor, Parsed};
use super::write::OciLayoutWriter;
use super::{Image, ImageError, ImageSource, MAX_JSON_LEN};

/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// An image pulled from a registry into a local OCI layout, and served from there.
pub struct RegistrySource {
    inner: OciLayoutSource<DirStore>,
    source_digest: Digest,
    layout: PathBuf,
    _tmp: Option<TempDir>,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySource")
            .field("image", &self.inner.image().reference)
            .field("source_digest", &self.source_digest)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl RegistrySource {
    /// Pulls `reference` (`HOST/REPO:TAG` or `HOST/REPO@sha256:…`, no `docker://`). Blocks: it
    /// runs its own single-threaded tokio runtime (on a separate thread when called from
    /// inside a runtime). Use [`pull_async`](Self::pull_async) from async code.
    pub fn pull(reference: &str, options: &OpenOptions) -> Result<RegistrySource, ImageError> {
        let run = || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ImageError::Io {
                    image: format!("docker://{reference}"),
                    action: "start an async runtime for",
                    path: PathBuf::from(reference),
                    source,
                })?;
            runtime.block_on(RegistrySource::pull_async(reference, options))
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(run)
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            run()
        }
    }

    /// Pulls `reference`; see [`pull`](Self::pull).
    pub async fn pull_async(
        reference: &str,
        options: &OpenOptions,
    ) -> Result<RegistrySource, ImageError> {
        let label = format!("docker://{reference}");
        let parsed: Reference = reference.parse().map_err(|e| ImageError::InvalidLocation {
            input: label.clone(),
            reason: format!("not a registry reference: {e}"),
        })?;
        let (tmp, layout) = match &options.cache_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("sideload-pull-")
                    .tempdir()
                    .map_err(|source| ImageError::Io {
                        image: label.clone(),
                        action: "create a temporary directory for",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                let path = tmp.path().to_owned();
                (Some(tmp), path)
            }
        };
        let puller = Puller::new(&parsed, &label, options);
        let mut writer = OciLayoutWriter::create(&layout)?;
        let pulled = puller.pull(&mut writer, options).await?;
        writer.add_descriptor(pulled.descriptor.clone());
        writer.finish()?;

        let store = DirStore::new(&layout, label.clone());
        let mut image = oci_layout::resolve_image(
            &store,
            &label,
            &pulled.descriptor,
            &options.platform,
            vec![reference.to_owned()],
        )?;
        image.index_digest = pulled.index_digest;
        Ok(RegistrySource {
            inner: OciLayoutSource::from_parts(store, image),
            source_digest: pulled.source_digest,
            layout,
            _tmp: tmp,
        })
    }

    /// The digest the reference resolved to at the registry: the index's for a
    /// multi-platform image, else the manifest's.
    pub fn source_digest(&self) -> &Digest {
        &self.source_digest
    }

    /// The local OCI layout the image was pulled into.
    pub fn layout_dir(&self) -> &Path {
        &self.layout
    }
}

impl ImageSource for RegistrySource {
    fn image(&self) -> &Image {
        self.inner.image()
    }

    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        self.inner.open_layer(index)
    }

    fn open_layer_blob(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        self.inner.open_layer_blob(index)
    }
}

struct Pulled {
    /// The platform manifest, as recorded in the local `index.json`.
    descriptor: Descriptor,
    index_digest: Option<Digest>,
    source_digest: Digest,
}

struct Puller<'a> {
    client: Client,
    reference: &'a Reference,
    label: &'a str,
    auth: RegistryAuth,
}

impl<'a> Puller<'a> {
    fn new(reference: &'a Reference, label: &'a str, options: &OpenOptions) -> Puller<'a> {
        let protocol = if options.insecure_registries.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(options.insecure_registries.clone())
        };
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            ..ClientConfig::default()
        });
        let auth = match &options.auth {
            Some(a) => RegistryAuth::Basic(a.username.clone(), a.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Puller {
            client,
            reference,
            label,
            auth,
        }
    }

    fn registry_error(
        &self,
        what: String,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> ImageError + '_ {
        move |source| ImageError::Registry {
            image: self.label.to_owned(),
            what,
            source,
        }
    }

    /// Fetches a manifest or index by `reference`, checking it against `expected` when given.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        expected: Option<&Descriptor>,
    ) -> Result<(Vec<u8>, Digest), ImageError> {
        let what = match expected {
            Some(d) => format!("manifest {}", d.digest),
            None => format!("manifest of {}", self.label),
        };
        if let Some(size) = expected.map(|d| d.size).filter(|s| *s > MAX_JSON_LEN) {
            return Err(ImageError::TooLarge {
                image: self.label.to_owned(),
                what,
                size,
                limit: MAX_JSON_LEN,
            });
        }
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, media_types::ACCEPTED_MANIFESTS)
            .await
            .map_err(self.registry_error(what.clone()))?;
        if bytes.len() as u64 > MAX_JSON_LEN {
            return Err(ImageError::TooLarge {
                image: self.label.to_owned(),
                what,
                size: bytes.len() as u64,
                limit: MAX_JSON_LEN,
            });
        }
        let digest = Digest::of_bytes(&bytes);
        if let Some(d) = expected {
            spec::verify_bytes(&bytes, &d.digest, Some(d.size), self.label, &what)?;
        } else if let Some(pinned) = reference.digest() {
            let pinned: Digest = pinned.parse().map_err(|source| ImageError::InvalidDigest {
                image: self.label.to_owned(),
                what: "the reference".to_owned(),
                source,
            })?;
            spec::verify_bytes(&bytes, &pinned, None, self.label, &what)?;
        }
        Ok((bytes.to_vec(), digest))
    }

    async fn pull(
        &self,
        writer: &mut OciLayoutWriter,
        options: &OpenOptions,
    ) -> Result<Pulled, ImageError> {
        let (mut bytes, source_digest) = self.fetch_manifest(self.reference, None).await?;
        let mut media_type = None;
        let mut digest = source_digest.clone();
        let mut index_digest = None;
        for depth in 0.. {
            let what = format!("manifest {digest}");
            match spec::parse_manifest(&bytes, media_type.as_deref(), self.label, &what)? {
                Parsed::Index(index) => {
                    if depth >= MAX_INDEX_DEPTH {
                        return Err(ImageError::Inconsistent {
                            image: self.label.to_owned(),
                            reason: format!(
                                "image indexes nest deeper than {MAX_INDEX_DEPTH} levels"
                            ),
                        });
                    }
                    writer.put_blob_bytes(&bytes)?;
                    index_digest.get_or_insert_with(|| digest.clone());
                    let entry =
                        spec::select_platform(&index, &options.platform, self.label)?.clone();
                    let by_digest = Reference::with_digest(
                        self.reference.registry().to_owned(),
                        self.reference.repository().to_owned(),
                        entry.digest.to_string(),
                    );
                    let (b, d) = self.fetch_manifest(&by_digest, Some(&entry)).await?;
                    bytes = b;
                    digest = d;
                    media_type = Some(entry.media_type.clone());
                }
                Parsed::Manifest(manifest) => {
                    let config_what = format!("config {}", manifest.config.digest);
                    if manifest.config.size > MAX_JSON_LEN {
                        return Err(ImageError::TooLarge {
                            image: self.label.to_owned(),
                            what: config_what,
                            size: manifest.config.size,
                            limit: MAX_JSON_LEN,
                        });
                    }
                    self.fetch_blob(writer, &manifest.config, config_what)
                        .await?;
                    for (i, layer) in manifest.layers.iter().enumerate() {
                        self.fetch_blob(writer, layer, format!("layer {i} ({})", layer.digest))
                            .await?;
                    }
                    let (stored, size) = writer.put_blob_bytes(&bytes)?;
                    debug_assert_eq!(stored, digest);
                    let media_type = manifest
                        .media_type
                        .clone()
                        .or(media_type)
                        .unwrap_or_else(|| media_types::OCI_MANIFEST.to_owned());
                    let mut descriptor = Descriptor::new(media_type, digest, size);
                    descriptor.annotations = Some(
                        [(spec::ANNOTATION_REF_NAME.to_owned(), self.reference.whole())]
                            .into_iter()
                            .collect(),
                    );
                    return Ok(Pulled {
                        descriptor,
                        index_digest,
                        source_digest,
                    });
                }
            }
        }
        unreachable!("the loop returns or fails within MAX_INDEX_DEPTH")
    }

    /// Streams blob `descriptor` into the layout, unless it is there already.
    async fn fetch_blob(
        &self,
        writer: &OciLayoutWriter,
        descriptor: &Descriptor,
        what: String,
    ) -> Result<(), ImageError> {
        if writer.has_blob(&descriptor.digest) {
            tracing::debug!(image = self.label, blob = %descriptor.digest, "already cached: {what}");
            return Ok(());
        }
        tracing::debug!(image = self.label, blob = %descriptor.digest, size = descriptor.size, "fetching {what}");
        let oci = OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.to_string(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            urls: descriptor.urls.clone(),
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(self.reference, &oci)
            .await
            .map_err(self.registry_error(what.clone()))?;
        let mut out = writer.blob_writer()?;
        let read_err = |source| ImageError::Read {
            image: self.label.to_owned(),
            what: what.clone(),
            source,
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(read_err)?;
            if out.count() + chunk.len() as u64 > descriptor.size {
                return Err(read_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the registry sent more than the {} bytes the manifest declares",
                        descriptor.size
                    ),
                )));
            }
            out.write_all(&chunk).map_err(|source| ImageError::Io {
                image: self.label.to_owned(),
                action: "write",
                path: writer.dir().to_owned(),
                source,
            })?;
        }
        out.commit(Some((&descriptor.digest, Some(descriptor.size))))?;
        Ok(())
    }
}
