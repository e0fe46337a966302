//! The daemon's client of the local distribution registry (the "upstream" it fronts): read
//! manifests, configs and blobs as streams; write blobs from files, then manifests, then tags.
//!
//! Hand-written over `reqwest` rather than through `oci-client`: the daemon must stream
//! multi-GiB blobs from files into the registry (oci-client's push takes the blob as one
//! `Vec<u8>`), mount blobs across repositories, and read blobs as a byte stream for the
//! decoder. The distribution API calls involved are few and fixed by the spec.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{header, Method, StatusCode};
use sideload_bundle::image::spec::{self, media_types, Parsed};
use sideload_signing::Digest;

/// Largest manifest or config the daemon reads into memory.
const MAX_JSON: usize = 16 << 20;

/// How long a connection to the registry may sit idle in a pool before it is closed. The
/// registry (Go's `net/http` as distribution configures it) never closes an idle connection
/// itself, and a new one over loopback costs well under a millisecond, so idle ones are not
/// kept for long. Also used by the `/v2/` pass-through ([`crate::server`]).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Most idle connections to the registry a pool keeps; more are closed as soon as they are
/// returned. A burst of pulls (an engine fetching many layers at once through `/v2/`) then
/// leaves at most this many sockets open, not one per request of the burst. Go's own HTTP
/// client keeps 2 per host; the apply queue and an engine's parallel pulls need a few more.
pub const POOL_MAX_IDLE: usize = 8;

/// Talks to the registry at `base` (e.g. `http://127.0.0.1:5001`).
#[derive(Clone)]
pub struct Upstream {
    base: String,
    http: reqwest::Client,
}

/// A failed registry call: what was asked and what came back.
#[derive(Debug, thiserror::Error)]
#[error("local registry {url}: {what}: {detail}")]
pub struct UpstreamError {
    /// The URL called.
    pub url: String,
    /// What the daemon tried to do.
    pub what: String,
    /// What went wrong (status and body, or the transport error).
    pub detail: String,
}

/// A manifest or index as the registry stores it.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest (from the bytes, checked against the registry's header when given).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// One image the registry holds, as the inventory reports it.
pub use sideload_device_api::HeldImage as StoredImage;

impl Upstream {
    /// A client for `base`. Redirects are not followed (the daemon talks to loopback only).
    pub fn new(base: &str) -> Upstream {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build()
            .expect("a plain HTTP client builds");
        Upstream {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn err(&self, url: &str, what: impl Into<String>, detail: impl ToString) -> UpstreamError {
        UpstreamError {
            url: url.to_owned(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        what: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        req.send().await.map_err(|e| self.err(url, what, e))
    }

    async fn fail(&self, resp: reqwest::Response, url: &str, what: &str) -> UpstreamError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(500).collect();
        self.err(url, what, format!("HTTP {status}: {}", body.trim()))
    }

    /// True when the registry answers `GET /v2/`.
    pub async fn ping(&self) -> Result<(), UpstreamError> {
        let url = self.url("/v2/");
        let resp = self
            .send(
                self.http.get(&url).timeout(Duration::from_secs(10)),
                &url,
                "ping",
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.fail(resp, &url, "ping").await)
        }
    }

    /// Every repository (follows `Link` pagination).
    pub async fn catalog(&self) -> Result<Vec<String>, UpstreamError> {
        let mut out = Vec::new();
        let mut next = Some("/v2/_catalog?n=1000".to_owned());
        while let Some(path) = next.take() {
            let url = self.url(&path);
            let resp = self
                .send(self.http.get(&url), &url, "list repositories")
                .await?;
            if !resp.status().is_success() {
                return Err(self.fail(resp, &url, "list repositories").await);
            }
            next = next_link(resp.headers());
            #[derive(serde::Deserialize)]
            struct Catalog {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let page: Catalog = self.json(resp, &url, "list repositories").await?;
            out.extend(page.repositories);
        }
        Ok(out)
    }

    /// Every tag of `repository` (empty if the repository is unknown).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, UpstreamError> {
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{repository}/tags/list?n=1000"));
        while let Some(path) = next.take() {
            let url = self.url(&path);
            let resp = self.send(self.http.get(&url), &url, "list tags").await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(out);
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp, &url, "list tags").await);
            }
            next = next_link(resp.headers());
            #[derive(serde::Deserialize)]
            struct Tags {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Tags = self.json(resp, &url, "list tags").await?;
            out.extend(page.tags.unwrap_or_default());
        }
        Ok(out)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        url: &str,
        what: &str,
    ) -> Result<T, UpstreamError> {
        let bytes = self.bounded_body(resp, url, what).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.err(url, what, e))
    }

    async fn bounded_body(
        &self,
        resp: reqwest::Response,
        url: &str,
        what: &str,
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(url, what, e))?;
            if out.len() + chunk.len() > MAX_JSON {
                return Err(self.err(url, what, format!("answer larger than {MAX_JSON} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// A manifest or index by tag or digest; `None` if the registry does not have it.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<StoredManifest>, UpstreamError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let what = format!("read manifest {repository}:{reference}");
        let resp = self
            .send(
                self.http
                    .get(&url)
                    .header(header::ACCEPT, media_types::ACCEPTED_MANIFESTS.join(", ")),
                &url,
                &what,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp, &url, &what).await);
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = self.bounded_body(resp, &url, &what).await?;
        let digest = Digest::of_bytes(&bytes);
        if reference.starts_with("sha256:") && reference != digest.as_str() {
            return Err(self.err(&url, &what, format!("content hashes to {digest}")));
        }
        Ok(Some(StoredManifest {
            digest,
            media_type,
            bytes,
        }))
    }

    /// A small blob (a config) read whole and checked against its digest.
    pub async fn small_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Vec<u8>, UpstreamError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let what = format!("read blob {digest} of {repository}");
        let resp = self.send(self.http.get(&url), &url, &what).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp, &url, &what).await);
        }
        let bytes = self.bounded_body(resp, &url, &what).await?;
        if &Digest::of_bytes(&bytes) != digest {
            return Err(self.err(&url, &what, "content does not match its digest"));
        }
        Ok(bytes)
    }

    /// Opens a blob as a byte stream (checked by the caller as it reads).
    pub async fn open_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let what = format!("read blob {digest} of {repository}");
        let resp = self.send(self.http.get(&url), &url, &what).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp, &url, &what).await);
        }
        Ok(resp)
    }

    /// True if `repository` can serve the blob.
    pub async fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool, UpstreamError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let what = format!("check blob {digest} in {repository}");
        let resp = self.send(self.http.head(&url), &url, &what).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(resp, &url, &what).await),
        }
    }

    /// Makes the blob, held under `from`, available in `repository` without copying it
    /// (cross-repository mount). False if the registry started an upload instead.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, UpstreamError> {
        let url = self.url(&format!(
            "/v2/{repository}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let what = format!("mount blob {digest} from {from} into {repository}");
        let resp = self.send(self.http.post(&url), &url, &what).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // An upload was opened instead; cancel it so it does not linger.
                if let Some(loc) = self.location(&resp) {
                    let _ = self.http.delete(loc).send().await;
                }
                Ok(false)
            }
            _ => Err(self.fail(resp, &url, &what).await),
        }
    }

    fn location(&self, resp: &reqwest::Response) -> Option<String> {
        let loc = resp.headers().get(header::LOCATION)?.to_str().ok()?;
        Some(
            if loc.starts_with("http://") || loc.starts_with("https://") {
                loc.to_owned()
            } else {
                self.url(loc)
            },
        )
    }

    /// Uploads a blob from a file, streaming (monolithic upload: POST, then one PUT with the
    /// whole body and the digest). The registry checks the digest.
    pub async fn push_blob_file(
        &self,
        repository: &str,
        digest: &Digest,
        path: &Path,
    ) -> Result<(), UpstreamError> {
        let start = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        let what = format!("upload blob {digest} to {repository}");
        let resp = self.send(self.http.post(&start), &start, &what).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.fail(resp, &start, &what).await);
        }
        let location = self
            .location(&resp)
            .ok_or_else(|| self.err(&start, &what, "no Location header"))?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| self.err(&url, &what, format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| self.err(&url, &what, e))?
            .len();
        let body = reqwest::Body::wrap_stream(tokio_file_stream(file));
        let resp = self
            .send(
                self.http
                    .put(&url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, len)
                    .body(body),
                &url,
                &what,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.fail(resp, &url, &what).await);
        }
        Ok(())
    }

    /// Stores a manifest under `reference` (a digest or a tag); returns the digest the
    /// registry computed.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, UpstreamError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let what = format!("store manifest {repository}:{reference}");
        let resp = self
            .send(
                self.http
                    .request(Method::PUT, &url)
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.to_vec()),
                &url,
                &what,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.fail(resp, &url, &what).await);
        }
        Ok(Digest::of_bytes(bytes))
    }

    /// Every image the registry holds (one entry per repository and manifest; an index
    /// contributes its child manifests), with their configs' diff_ids. Configs are cached
    /// by digest in `configs` across calls.
    pub async fn images(
        &self,
        configs: &mut HashMap<Digest, (Vec<String>, String)>,
    ) -> Result<Vec<StoredImage>, UpstreamError> {
        let mut images: Vec<StoredImage> = Vec::new();
        for repository in self.catalog().await? {
            let mut by_digest: HashMap<String, usize> = HashMap::new();
            for tag in self.tags(&repository).await? {
                let Some(top) = self.manifest(&repository, &tag).await? else {
                    continue;
                };
                let mut manifests = vec![(top.clone(), Some(tag.clone()))];
                let label = format!("{repository}:{tag}");
                if let Ok(Parsed::Index(index)) =
                    spec::parse_manifest(&top.bytes, Some(&top.media_type), &label, "manifest")
                {
                    for child in index.manifests.iter().take(64) {
                        if let Some(m) = self.manifest(&repository, child.digest.as_str()).await? {
                            manifests.push((m, None));
                        }
                    }
                }
                for (m, tag) in manifests {
                    let Ok(Parsed::Manifest(manifest)) =
                        spec::parse_manifest(&m.bytes, Some(&m.media_type), &label, "manifest")
                    else {
                        continue;
                    };
                    if let Some(&i) = by_digest.get(m.digest.as_str()) {
                        images[i].tags.extend(tag);
                        continue;
                    }
                    let config_digest = manifest.config.digest.clone();
                    if !configs.contains_key(&config_digest) {
                        let bytes = self.small_blob(&repository, &config_digest).await?;
                        let config = spec::parse_config(&bytes, &label)
                            .map_err(|e| self.err(&self.base, "read image config", e))?;
                        let diff_ids = config
                            .rootfs
                            .diff_ids
                            .iter()
                            .map(|d| d.to_string())
                            .collect();
                        configs.insert(
                            config_digest.clone(),
                            (diff_ids, spec::platform_string(&config.platform())),
                        );
                    }
                    let (diff_ids, platform) = configs[&config_digest].clone();
                    by_digest.insert(m.digest.to_string(), images.len());
                    images.push(StoredImage {
                        repository: repository.clone(),
                        tags: tag.into_iter().collect(),
                        manifest_digest: m.digest.to_string(),
                        media_type: m.media_type.clone(),
                        config_digest: config_digest.to_string(),
                        diff_ids,
                        layer_blobs: manifest
                            .layers
                            .iter()
                            .map(|l| l.digest.to_string())
                            .collect(),
                        layer_sizes: manifest.layers.iter().map(|l| l.size).collect(),
                        layer_media_types: manifest
                            .layers
                            .iter()
                            .map(|l| l.media_type.clone())
                            .collect(),
                        platform,
                    });
                }
            }
        }
        Ok(images)
    }
}

/// The next page from a `Link: <...>; rel="next"` header.
fn next_link(headers: &header::HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    let start = link.find('<')? + 1;
    let end = link[start..].find('>')? + start;
    link.contains("rel=\"next\"")
        .then(|| link[start..end].to_owned())
}

/// A file as a stream of chunks, for streaming request bodies.
fn tokio_file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pagination() {
        let mut h = header::HeaderMap::new();
        h.insert(
            header::LINK,
            "</v2/_catalog?last=b&n=2>; rel=\"next\"".parse().unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
        assert_eq!(next_link(&header::HeaderMap::new()), None);
    }
}
