//! The loader's client of the registry plugin on this device: the plugin is the single writer
//! of the registry, so the loader only hands bundles to it (resumable upload API,
//! `docs/upload-api.md`) and asks it how they fared. It speaks through the device API's one
//! client and reads the plugin's answers only through its types (`sideload-device-api`).

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use hyper::Method;
use sideload_device_api::client::{self, Client, ClientError, Reply};
use sideload_device_api::{BundleRecord, ErrorBody, Inventory, Refusal, Taken};

/// What the plugin said about a handed-over bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// Taken and queued for apply.
    Queued,
    /// Already queued, applying or applied there.
    Duplicate,
    /// Refused by the plugin.
    Refused(Refusal),
}

/// Why the plugin could not be asked or given a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin did not answer (down, or the link to it broke).
    #[error("registry plugin at {base}: {source}")]
    Unreachable {
        /// The plugin's URL.
        base: String,
        /// What failed.
        source: ClientError,
    },
    /// A request timed out.
    #[error("registry plugin at {base}: {what}: no answer in {secs} s")]
    Timeout {
        /// The plugin's URL.
        base: String,
        /// The request.
        what: &'static str,
        /// The time allowed.
        secs: u64,
    },
    /// The plugin refused to start an upload.
    #[error("registry plugin refused the upload of {name} (HTTP {status}): {reason}")]
    Create {
        /// The bundle's name.
        name: String,
        /// The HTTP status.
        status: u16,
        /// The plugin's reason.
        reason: String,
    },
    /// The plugin took the upload request but named no location to send to.
    #[error("registry plugin gave no upload location for {0}")]
    NoLocation(String),
    /// The plugin answered a request with an error this client cannot act on.
    #[error("registry plugin answered HTTP {status}: {reason}")]
    Answer {
        /// The HTTP status.
        status: u16,
        /// The plugin's reason.
        reason: String,
    },
    /// The body ended before the bundle did: the stick was pulled or could not be read.
    #[error("the stick ended before the bundle did")]
    StickEnded,
    /// Sending failed: reading the stick or the link to the plugin.
    #[error("sending to the registry plugin (stick read or link failed): {0}")]
    Send(ClientError),
    /// The stick could not be read.
    #[error("reading the stick: {0}")]
    Stick(std::io::Error),
}

/// Talks to the plugin at `base`.
pub struct Plugin {
    client: Client,
}

impl Plugin {
    /// A client for the plugin at `base` (e.g. `http://127.0.0.1:5000`). Needs a tokio
    /// runtime.
    pub fn new(base: &str) -> Result<Plugin, PluginError> {
        let client = Client::new(
            base,
            None,
            concat!("sideload-usb-loader/", env!("CARGO_PKG_VERSION")),
            &client::local_options(),
        )
        .map_err(|source| PluginError::Unreachable {
            base: base.to_owned(),
            source,
        })?;
        Ok(Plugin { client })
    }

    fn unreachable(&self, source: ClientError) -> PluginError {
        PluginError::Unreachable {
            base: self.client.base().to_owned(),
            source,
        }
    }

    /// Runs a request with a time limit.
    async fn timed<T>(
        &self,
        what: &'static str,
        secs: u64,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, PluginError> {
        match tokio::time::timeout(Duration::from_secs(secs), fut).await {
            Ok(r) => r.map_err(|e| self.unreachable(e)),
            Err(_) => Err(PluginError::Timeout {
                base: self.client.base().to_owned(),
                what,
                secs,
            }),
        }
    }

    /// The device's inventory (what receipts carry back to the cloud).
    pub async fn inventory(&self) -> Result<Inventory, PluginError> {
        self.timed("inventory", 60, self.client.inventory()).await
    }

    /// A bundle's record, by statement digest; `None` if the device never took it.
    pub async fn state(&self, id: &str) -> Result<Option<BundleRecord>, PluginError> {
        let status = self
            .timed("bundle status", 60, self.client.bundle(id))
            .await?;
        Ok(status.map(|s| s.bundle))
    }

    /// Bytes the plugin holds of the upload at `location`; `None` if it is gone.
    pub async fn offset(&self, location: &str) -> Result<Option<u64>, PluginError> {
        self.timed("upload offset", 30, self.client.offset(location))
            .await
    }

    /// Starts an upload; returns its location.
    pub async fn create(&self, name: &str, len: u64) -> Result<String, PluginError> {
        let req = self
            .client
            .request(
                Method::POST,
                &format!("{}/uploads", sideload_device_api::API),
            )
            .header(
                "Bundle-Name",
                sideload_bundle::text::bundle_name_header(name),
            )
            .header("Upload-Length", len)
            .body(client::transport::empty());
        let reply = self
            .timed("create", 30, self.client.send(req, client::MAX_ANSWER))
            .await?;
        created(name, &reply)
    }

    /// Sends `file` from `offset` to the upload at `location`, streaming from the stick.
    /// An error reading the stick (pulled out) ends the request; the plugin keeps what came,
    /// and a later call resumes from its offset.
    pub async fn send(
        &self,
        location: &str,
        mut file: std::fs::File,
        offset: u64,
    ) -> Result<Handed, PluginError> {
        file.seek(SeekFrom::Start(offset))
            .map_err(PluginError::Stick)?;
        let req = self
            .client
            .request(Method::PATCH, location)
            .header("Upload-Offset", offset)
            .body(client::transport::streaming(file_stream(file)));
        let reply = self
            .client
            .send(req, client::MAX_ANSWER)
            .await
            .map_err(PluginError::Send)?;
        handed(&reply)
    }
}

/// The location in the answer to `POST /sideload/v1/uploads`. Pure.
fn created(name: &str, reply: &Reply) -> Result<String, PluginError> {
    if !(200..300).contains(&reply.status) {
        let reason = serde_json::from_slice::<ErrorBody>(&reply.body)
            .map(|b| b.error.reason)
            .unwrap_or_else(|_| "no reason given".into());
        return Err(PluginError::Create {
            name: name.to_owned(),
            status: reply.status,
            reason,
        });
    }
    match sideload_device_api::classify(reply.status, reply.upload_offset, &reply.body) {
        sideload_device_api::Answer::Upload { location, .. } => Ok(location),
        _ => Err(PluginError::NoLocation(name.to_owned())),
    }
}

/// What the answer to the transfer's `PATCH` says about the bundle. Pure.
fn handed(reply: &Reply) -> Result<Handed, PluginError> {
    let error = serde_json::from_slice::<ErrorBody>(&reply.body).map(|b| b.error);
    match reply.status {
        202 => Ok(Handed::Queued),
        200 => match serde_json::from_slice::<Taken>(&reply.body) {
            Ok(_) => Ok(Handed::Duplicate),
            Err(e) => Err(PluginError::Answer {
                status: 200,
                reason: format!("not an upload outcome: {e}"),
            }),
        },
        204 => Err(PluginError::StickEnded),
        400..=499 if error.is_ok() => {
            let refusal = error.expect("checked").with_status(reply.status);
            Ok(Handed::Refused(Refusal {
                code: if refusal.code.is_empty() {
                    "refused".into()
                } else {
                    refusal.code.clone()
                },
                ..refusal
            }))
        }
        status => Err(PluginError::Answer {
            status,
            reason: error.map(|e| e.reason).unwrap_or_default(),
        }),
    }
}

/// A file read in chunks on a blocking thread, as a body stream (the stick may be slow, and
/// a read must not stall the runtime).
fn file_stream(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            upload_offset: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn transfer_answers_map_to_what_the_receipt_says() {
        let taken = r#"{"bundle":"sha256:1","outcome":"duplicate","status":"/x"}"#;
        assert_eq!(handed(&reply(202, taken)).unwrap(), Handed::Queued);
        assert_eq!(handed(&reply(200, taken)).unwrap(), Handed::Duplicate);
        assert!(matches!(
            handed(&reply(204, "")),
            Err(PluginError::StickEnded)
        ));
        let refused =
            r#"{"error":{"advice":"fix","bundle":"b","code":"unknown_key","reason":"why"}}"#;
        match handed(&reply(403, refused)).unwrap() {
            Handed::Refused(r) => {
                assert_eq!((r.code.as_str(), r.reason.as_str()), ("unknown_key", "why"));
                assert!(!r.retry);
            }
            other => panic!("{other:?}"),
        }
        let offset = r#"{"error":{"advice":"a","code":"offset_mismatch","reason":"r"}}"#;
        assert!(matches!(
            handed(&reply(409, offset)).unwrap(),
            Handed::Refused(r) if r.code == "offset_mismatch"
        ));
        assert!(matches!(
            handed(&reply(503, refused)),
            Err(PluginError::Answer { status: 503, .. })
        ));
        assert!(matches!(
            handed(&reply(400, "<html>")),
            Err(PluginError::Answer { status: 400, .. })
        ));
    }

    #[test]
    fn a_new_upload_names_its_location() {
        let made = r#"{"location":"/sideload/v1/uploads/ab","offset":0,"upload":"ab"}"#;
        assert_eq!(
            created("a.bundle", &reply(201, made)).unwrap(),
            "/sideload/v1/uploads/ab"
        );
        let full = r#"{"error":{"advice":"a","code":"insufficient_storage","reason":"full"}}"#;
        assert_eq!(
            created("a.bundle", &reply(507, full))
                .unwrap_err()
                .to_string(),
            "registry plugin refused the upload of a.bundle (HTTP 507): full"
        );
        assert!(created("a.bundle", &reply(201, "{}")).is_err());
    }
}
