//! The loader's client of the registry plugin on this device: the plugin is the single writer
//! of the registry, so the loader only hands bundles to it (resumable upload API,
//! `docs/upload-api.md`) and asks it how they fared.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

/// What the plugin said about a handed-over bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// Taken and queued for apply.
    Queued,
    /// Already queued, applying or applied there.
    Duplicate,
    /// Refused by the plugin (code, reason, advice).
    Refused {
        /// Stable code.
        code: String,
        /// Why.
        reason: String,
        /// What to do.
        advice: String,
    },
}

/// A bundle's state on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleState {
    /// queued, applying, applied, failed.
    pub state: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// What to do.
    pub advice: Option<String>,
}

/// Talks to the plugin at `base`.
pub struct Plugin {
    base: String,
    http: reqwest::Client,
}

impl Plugin {
    /// A client for the plugin at `base` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base: &str) -> Plugin {
        Plugin {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> Result<Option<Value>, String> {
        let url = self.url(path);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| format!("registry plugin at {}: {e}", self.base))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(format!(
                "registry plugin: GET {path}: HTTP {}",
                resp.status()
            ));
        }
        resp.json()
            .await
            .map(Some)
            .map_err(|e| format!("registry plugin: GET {path}: {e}"))
    }

    /// The device's inventory (what receipts carry back to the cloud).
    pub async fn inventory(&self) -> Result<Value, String> {
        self.get_json("/sideload/v1/inventory")
            .await?
            .ok_or_else(|| "registry plugin has no inventory endpoint".into())
    }

    /// Highest applied sequence per repository, from the inventory.
    pub fn sequences(inventory: &Value) -> BTreeMap<String, u64> {
        inventory["sequences"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A bundle's state, by statement digest; `None` if the device never took it.
    pub async fn state(&self, id: &str) -> Result<Option<BundleState>, String> {
        Ok(self
            .get_json(&format!("/sideload/v1/bundles/{id}"))
            .await?
            .map(|v| BundleState {
                state: v["bundle"]["state"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
                reason: v["bundle"]["reason"].as_str().map(str::to_owned),
                advice: v["bundle"]["advice"].as_str().map(str::to_owned),
            }))
    }

    /// Bytes the plugin holds of the upload at `location`; `None` if it is gone.
    pub async fn offset(&self, location: &str) -> Result<Option<u64>, String> {
        let resp = self
            .http
            .head(self.url(location))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| format!("registry plugin at {}: {e}", self.base))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(resp
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Starts an upload; returns its location.
    pub async fn create(&self, name: &str, len: u64) -> Result<String, String> {
        let resp = self
            .http
            .post(self.url("/sideload/v1/uploads"))
            .header(
                "Bundle-Name",
                sideload_bundle::text::bundle_name_header(name),
            )
            .header("Upload-Length", len)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| format!("registry plugin at {}: {e}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "registry plugin refused the upload of {name} (HTTP {status}): {}",
                body["error"]["reason"]
                    .as_str()
                    .unwrap_or("no reason given")
            ));
        }
        body["location"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("registry plugin gave no upload location for {name}"))
    }

    /// Sends `file` from `offset` to the upload at `location`, streaming from the stick.
    /// An error reading the stick (pulled out) ends the request; the plugin keeps what came,
    /// and a later call resumes from its offset.
    pub async fn send(
        &self,
        location: &str,
        mut file: std::fs::File,
        offset: u64,
    ) -> Result<Handed, String> {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("reading the stick: {e}"))?;
        let body = reqwest::Body::wrap_stream(file_stream(file));
        let resp = self
            .http
            .patch(self.url(location))
            .header("Upload-Offset", offset)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                format!("sending to the registry plugin (stick read or link failed): {e}")
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match status {
            StatusCode::ACCEPTED => Ok(Handed::Queued),
            StatusCode::OK => Ok(Handed::Duplicate),
            StatusCode::NO_CONTENT => Err("the stick ended before the bundle did".into()),
            _ if body["error"].is_object() && status.is_client_error() => Ok(Handed::Refused {
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or("refused")
                    .to_owned(),
                reason: body["error"]["reason"].as_str().unwrap_or("").to_owned(),
                advice: body["error"]["advice"].as_str().unwrap_or("").to_owned(),
            }),
            _ => Err(format!(
                "registry plugin answered HTTP {status}: {}",
                body["error"]["reason"].as_str().unwrap_or("")
            )),
        }
    }
}

/// A file read in chunks on a blocking thread, as a body stream (the stick may be slow, and
/// a read must not stall the runtime).
fn file_stream(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    // Fault injection for the tests (test builds only): after the first chunk is on its way,
    // time to pull the stick mid-transfer (so the device holds part of the bundle, whatever
    // the page cache).
    #[cfg(feature = "fault-injection")]
    #[allow(clippy::disallowed_methods)]
    let pause: Option<u64> = std::env::var("SIDELOAD_FAULT_PAUSE_BEFORE_SEND_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    #[cfg(not(feature = "fault-injection"))]
    let pause: Option<u64> = None;
    futures_util::stream::unfold(Some((file, 0u32)), move |state| async move {
        let (mut file, chunks) = state?;
        if let (Some(ms), 1) = (pause, chunks) {
            tracing::warn!(ms, "fault injection: pausing before the transfer goes on");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 256 << 10];
            let n = file.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((buf, file))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok((buf, _)) if buf.is_empty() => None,
            Ok((buf, file)) => Some((Ok(bytes::Bytes::from(buf)), Some((file, chunks + 1)))),
            Err(e) => Some((Err(e), None)),
        }
    })
}
