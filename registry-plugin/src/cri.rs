//! A small client for containerd's CRI image service (the Kubernetes Container Runtime
//! Interface, API `v1`), spoken over containerd's unix socket: containerd pulls an image itself,
//! through its own registry config, and records it as the kubelet would.
//!
//! On a Kubernetes edge node (k3s, kubeadm) a pod with `imagePullPolicy: Never` starts only if
//! containerd's CRI image service knows the image under the exact name the pod spec writes,
//! normalised (`edge/app:v2` is `docker.io/edge/app:v2`), in containerd's namespace `k8s.io`.
//! [`Cri::pull`] gets it there without us writing into containerd's stores: containerd's
//! registry config (`hosts.toml` under `[plugins."io.containerd.grpc.v1.cri".registry]
//! config_path`) names this plugin as the mirror of the upstream host the deployments use, and
//! a CRI `PullImage` of the upstream name makes containerd fetch from the plugin, unpack for its
//! snapshotter and record the tag, the `repository@digest` and the image ID, exactly as a pull
//! by the kubelet does.
//!
//! # What it deliberately does not do
//!
//! - No content-store, image-store, lease or snapshotter calls of our own (containerd's native
//!   API): CRI is the one interface the kubelet also uses, so what we record is what it finds,
//!   and containerd's garbage collection and unpacking stay containerd's.
//! - No namespaces: CRI always works in `k8s.io`.
//! - No registry credentials (`AuthConfig`): containerd pulls from the plugin on the same
//!   device, over loopback.
//! - No runtime (pod or container) calls besides `Version`, used as a ping.
//! - No connection pool: each call opens the socket, speaks HTTP/2 once and closes, so a
//!   containerd restart never leaves us a stale channel.
//!
//! # How the parts fit
//!
//! [`CriConfig`] is a config section; [`Cri::new`] keeps it and connects nothing. Each call
//! checks the reference it is given (`check_reference`), connects (`Cri::channel`: our own
//! `UnixStream`, handed to tonic, so a missing socket is a plain [`std::io::Error`]), and runs
//! the generated `k8s-cri` client under a time limit ([`QUICK_TIMEOUT`], or
//! [`CriConfig::timeout_secs`] for a pull) with its answer capped at [`MAX_MESSAGE_BYTES`].
//! Every failure is a [`CriError`] naming the socket, what was being done and what containerd
//! answered; [`CriError::advice`] says what to check.
//!
//! # Tests
//!
//! Unit tests below cover the reference checks, the config and the two ways a socket can fail
//! (nobody there, somebody there who never answers). `tests/cri_containerd.rs` runs [`Cri`]
//! against a real containerd (started in a temp dir with its own root, state and socket) that
//! mirrors a made-up upstream host to a real `docker-registry`:
//! `cargo test -p sideload-registry-plugin --test cri_containerd` (needs root, `containerd`,
//! `runc`, `skopeo` and `docker-registry` installed).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Image, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest,
    VersionRequest,
};
use serde::Deserialize;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::engine::EngineImage;

/// Largest answer decoded from containerd, as the kubelet caps it (16 MiB): a `ListImages` of a
/// node with thousands of images fits, a runaway answer does not.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Largest request we send; ours are an image reference and a few fields.
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Upper bound for the quick calls (`version`, `status`, `list`, `remove`): a status page must
/// not hang for a whole pull timeout when containerd is wedged.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest containerd message kept in an error, so a confused runtime cannot flood the journal.
const MAX_MESSAGE_CHARS: usize = 1000;

/// The CRI API version we ask for in `Version` (what kubelet ≥ 1.26 speaks).
const CRI_API_VERSION: &str = "v1";

fn default_timeout_secs() -> u64 {
    600
}

/// Where containerd's CRI service listens and how long a pull may take.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriConfig {
    /// containerd's gRPC socket, e.g. `/run/containerd/containerd.sock`, or k3s's
    /// `/run/k3s/containerd/containerd.sock`.
    pub socket: PathBuf,
    /// Seconds for one pull, download and unpack included (default 600): a big image on a slow
    /// disk takes minutes, a wedged containerd must not hold the apply queue forever. The quick
    /// calls take at most 30 s, or this when it is shorter.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// A CRI image-service client bound to one socket; cheap to clone, holds no connection.
#[derive(Debug, Clone)]
pub struct Cri {
    config: CriConfig,
}

impl Cri {
    /// Keeps the config; nothing is checked or connected until the first call, so the daemon
    /// can start before containerd does.
    pub fn new(config: CriConfig) -> Cri {
        Cri { config }
    }

    /// The config this client was built from.
    pub fn config(&self) -> &CriConfig {
        &self.config
    }

    /// `RuntimeService/Version`: the runtime's name and version (e.g. `containerd 1.6.20~ds1`),
    /// as a ping that also shows the CRI plugin answers API `v1`.
    pub async fn version(&self) -> Result<String, CriError> {
        let action = "asking the runtime's version".to_owned();
        let limit = self.quick_timeout();
        self.within(limit, &action, async {
            let channel = self.channel(&action).await?;
            let mut client = RuntimeServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_REQUEST_BYTES);
            let answer = client
                .version(VersionRequest {
                    version: CRI_API_VERSION.to_owned(),
                })
                .await
                .map_err(|status| self.rpc(&action, status))?
                .into_inner();
            Ok(format!(
                "{} {} (CRI {})",
                answer.runtime_name, answer.runtime_version, answer.runtime_api_version
            ))
        })
        .await
    }

    /// `ImageService/PullImage`: containerd resolves and fetches `reference` through its own
    /// registry config (the mirrors in `hosts.toml`), unpacks it for its snapshotter and records
    /// it under the normalised name, the `repository@digest` and the image ID. Returns the
    /// image reference containerd answers (the image ID, `sha256:` and the config digest).
    ///
    /// Bounded by [`CriConfig::timeout_secs`]; on timeout the connection is dropped, which
    /// cancels containerd's pull.
    pub async fn pull(&self, reference: &str) -> Result<String, CriError> {
        check_reference(reference)?;
        let action = format!("pulling {reference}");
        let limit = Duration::from_secs(self.config.timeout_secs);
        self.within(limit, &action, async {
            let mut client = self.images(&action).await?;
            let answer = client
                .pull_image(PullImageRequest {
                    image: Some(spec(reference)),
                    auth: None,
                    sandbox_config: None,
                })
                .await
                .map_err(|status| self.rpc(&action, status))?
                .into_inner();
            if answer.image_ref.is_empty() {
                return Err(CriError::BadAnswer {
                    socket: self.config.socket.clone(),
                    action: action.clone(),
                    problem: "PullImage answered without an image reference",
                });
            }
            tracing::info!(%reference, image = %answer.image_ref, "containerd pulled the image");
            Ok(answer.image_ref)
        })
        .await
    }

    /// `ImageService/ImageStatus`: what containerd knows about `reference` (a name with tag, a
    /// `repository@digest` or an image ID), or `None` when it does not know it.
    pub async fn status(&self, reference: &str) -> Result<Option<EngineImage>, CriError> {
        check_reference(reference)?;
        let action = format!("asking the status of {reference}");
        let limit = self.quick_timeout();
        self.within(limit, &action, async {
            let mut client = self.images(&action).await?;
            let answer = client
                .image_status(ImageStatusRequest {
                    image: Some(spec(reference)),
                    verbose: false,
                })
                .await
                .map_err(|status| self.rpc(&action, status))?
                .into_inner();
            Ok(answer.image.map(engine_image))
        })
        .await
    }

    /// `ImageService/ListImages`: every image containerd's CRI service knows (namespace
    /// `k8s.io`).
    pub async fn list(&self) -> Result<Vec<EngineImage>, CriError> {
        let action = "listing images".to_owned();
        let limit = self.quick_timeout();
        self.within(limit, &action, async {
            let mut client = self.images(&action).await?;
            let answer = client
                .list_images(ListImagesRequest { filter: None })
                .await
                .map_err(|status| self.rpc(&action, status))?
                .into_inner();
            Ok(answer.images.into_iter().map(engine_image).collect())
        })
        .await
    }

    /// `ImageService/RemoveImage`: removes the image `reference` resolves to, with all its
    /// names (CRI removes by image). Removing an image containerd does not know succeeds.
    /// For tests and cleanup.
    pub async fn remove(&self, reference: &str) -> Result<(), CriError> {
        check_reference(reference)?;
        let action = format!("removing {reference}");
        let limit = self.quick_timeout();
        self.within(limit, &action, async {
            let mut client = self.images(&action).await?;
            client
                .remove_image(RemoveImageRequest {
                    image: Some(spec(reference)),
                })
                .await
                .map_err(|status| self.rpc(&action, status))?;
            Ok(())
        })
        .await
    }

    fn quick_timeout(&self) -> Duration {
        QUICK_TIMEOUT.min(Duration::from_secs(self.config.timeout_secs))
    }

    /// Runs `work` under `limit`, turning the elapsed timer into [`CriError::Timeout`].
    async fn within<T>(
        &self,
        limit: Duration,
        action: &str,
        work: impl Future<Output = Result<T, CriError>>,
    ) -> Result<T, CriError> {
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(CriError::Timeout {
                socket: self.config.socket.clone(),
                action: action.to_owned(),
                secs: limit.as_secs(),
            }),
        }
    }

    async fn images(&self, action: &str) -> Result<ImageServiceClient<Channel>, CriError> {
        let channel = self.channel(action).await?;
        Ok(ImageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES))
    }

    /// One HTTP/2 connection over a fresh `UnixStream`. The socket is opened here rather than in
    /// tonic's connector so that "no containerd" is a plain [`io::Error`] with its kind.
    async fn channel(&self, action: &str) -> Result<Channel, CriError> {
        let socket = &self.config.socket;
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| CriError::Connect {
                socket: socket.clone(),
                action: action.to_owned(),
                source,
            })?;
        let mut stream = Some(stream);
        // The authority is not used (the connector ignores the URI) but HTTP/2 needs one;
        // containerd's gRPC server accepts any.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let taken = stream.take();
                async move {
                    taken.map(TokioIo::new).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotConnected,
                            "the connection to containerd closed (one connection per call)",
                        )
                    })
                }
            }))
            .await
            .map_err(|source| CriError::Transport {
                socket: socket.clone(),
                action: action.to_owned(),
                source,
            })
    }

    fn rpc(&self, action: &str, status: tonic::Status) -> CriError {
        CriError::Rpc {
            socket: self.config.socket.clone(),
            action: action.to_owned(),
            code: status.code(),
            message: status.message().chars().take(MAX_MESSAGE_CHARS).collect(),
        }
    }
}

fn spec(reference: &str) -> ImageSpec {
    ImageSpec {
        image: reference.to_owned(),
        ..ImageSpec::default()
    }
}

fn engine_image(image: Image) -> EngineImage {
    EngineImage {
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
    }
}

/// Why talking to containerd's CRI service failed. Each variant names the socket and what was
/// being done (with the reference); [`CriError::Rpc`] also carries what containerd answered.
/// [`CriError::advice`] adds what to check.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be opened: no containerd, wrong path, or no permission.
    #[error("{action}: cannot connect to containerd at {}: {source}", socket.display())]
    Connect {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// The connect error; its kind picks the advice.
        source: io::Error,
    },
    /// The socket opened but no HTTP/2 (gRPC) session could be set up on it.
    #[error("{action}: the socket {} does not speak gRPC: {source}", socket.display())]
    Transport {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// tonic's error.
        source: tonic::transport::Error,
    },
    /// containerd answered the call with a gRPC error status.
    #[error("{action}: containerd at {} answered {code:?}: {message}", socket.display())]
    Rpc {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing, with the reference.
        action: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// containerd's message, cut to 1000 characters.
        message: String,
    },
    /// containerd's answer lacked what the CRI API promises.
    #[error("{action}: containerd at {}: {problem}", socket.display())]
    BadAnswer {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// What was wrong with the answer.
        problem: &'static str,
    },
    /// containerd did not finish in time; the connection was dropped, which cancels a pull.
    #[error("{action}: containerd at {} did not finish within {secs} s", socket.display())]
    Timeout {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// The limit that passed.
        secs: u64,
    },
    /// A reference was refused before asking containerd.
    #[error("refusing image reference {reference:?}: {reason}")]
    BadReference {
        /// The reference, cut to 100 characters.
        reference: String,
        /// The rule it broke.
        reason: &'static str,
    },
}

impl CriError {
    /// One line telling the operator what to check, for logs and the status API.
    pub fn advice(&self) -> &'static str {
        match self {
            CriError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::PermissionDenied => {
                    "the daemon may not open containerd's socket: run it as root (containerd's socket is root's)"
                }
                io::ErrorKind::ConnectionRefused => {
                    "the socket exists but nothing listens on it: is containerd (or k3s) running?"
                }
                _ => "is containerd running, and is the socket path right? (containerd: /run/containerd/containerd.sock; k3s: /run/k3s/containerd/containerd.sock)",
            },
            CriError::Transport { .. } | CriError::BadAnswer { .. } => {
                "is the socket really containerd's gRPC socket (not its ttrpc one)? see containerd's log"
            }
            CriError::Rpc { code, message, .. } => rpc_advice(*code, message),
            CriError::Timeout { .. } => {
                "raise the CRI timeout_secs for large images or slow disks, or check that containerd can reach the mirror named in hosts.toml"
            }
            CriError::BadReference { .. } => {
                "only letters, digits and . _ - / : @ belong in an image reference"
            }
        }
    }
}

/// Picks the advice for an error status from its code and containerd's message, which quotes
/// the registry's answer or Go's network error.
fn rpc_advice(code: tonic::Code, message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if code == tonic::Code::Unimplemented {
        "is containerd running with its CRI plugin (not in disabled_plugins) and serving CRI v1 (containerd >= 1.6)?"
    } else if m.contains("not found") || m.contains("manifest unknown") {
        "the registry containerd pulled from does not hold that image: is `[plugins.\"io.containerd.grpc.v1.cri\".registry] config_path` set, does hosts.toml for the reference's host name this plugin as mirror, and is the image stored in the local registry?"
    } else if m.contains("http response to https client")
        || m.contains("tls")
        || m.contains("x509")
        || m.contains("connection refused")
        || m.contains("no such host")
        || m.contains("timeout")
    {
        // containerd tries the mirrors first and then the upstream (`server` in hosts.toml), and
        // reports only the last failure: on an offline device a tag the mirror lacks shows up
        // as the upstream host not resolving.
        "containerd got nothing from the mirror and could not reach the upstream host (which it tries last): is the image stored in the local registry, does hosts.toml for the reference's host name this plugin as `[host.\"http://127.0.0.1:PORT\"]` with capabilities pull and resolve, and is the plugin running?"
    } else {
        "see containerd's log (journalctl -u containerd, or k3s's); is `[plugins.\"io.containerd.grpc.v1.cri\".registry] config_path` set and does hosts.toml for the reference's host name this plugin as mirror?"
    }
}

/// Refuses references that no image name contains: empty or long ones, and any character
/// outside the reference grammar (control characters, spaces, quotes).
fn check_reference(reference: &str) -> Result<(), CriError> {
    let refuse = |reason| {
        Err(CriError::BadReference {
            reference: reference.chars().take(100).collect(),
            reason,
        })
    };
    match crate::names::reference_problem(reference) {
        Some(reason) => refuse(reason),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn cri(socket: PathBuf, timeout_secs: u64) -> Cri {
        Cri::new(CriConfig {
            socket,
            timeout_secs,
        })
    }

    #[test]
    fn references_are_checked() {
        for good in [
            "registry.example/edge/app:v1",
            "edge/app",
            "127.0.0.1:5000/edge/app@sha256:0123abcd",
            "registry.example/edge/app:v1@sha256:0123abcd",
            "sha256:0123abcd",
        ] {
            assert!(check_reference(good).is_ok(), "{good}");
        }
        let long = "a/".repeat(300) + "b";
        for bad in [
            "",
            "edge/app:v1\n",
            "edge/app:v1\0",
            "edge/app v1",
            "edge//app",
            "../app",
            "edge/app\u{7f}",
            "édge/app",
            long.as_str(),
        ] {
            let e = check_reference(bad).unwrap_err();
            assert!(matches!(e, CriError::BadReference { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn config_refuses_unknown_fields_and_defaults_the_timeout() {
        let config: CriConfig =
            toml::from_str("socket = \"/run/containerd/containerd.sock\"").expect("minimal config");
        assert_eq!(config.timeout_secs, 600);
        let e = toml::from_str::<CriConfig>("socket = \"/s\"\nnamespace = \"k8s.io\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("no-containerd.sock");
        let started = Instant::now();
        let e = cri(socket.clone(), 600)
            .pull("registry.example/edge/app:v1")
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, CriError::Connect { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("registry.example/edge/app:v1"), "{text}");
        assert!(e.advice().contains("containerd"), "{}", e.advice());
    }

    #[tokio::test]
    async fn a_bad_reference_is_refused_before_connecting() {
        let e = cri(PathBuf::from("/nonexistent/containerd.sock"), 600)
            .status("edge/app:v1\n")
            .await
            .unwrap_err();
        assert!(matches!(e, CriError::BadReference { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        // Accepts and holds connections, never says a byte: a wedged runtime.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let started = Instant::now();
        let e = cri(socket.clone(), 1).list().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, CriError::Timeout { secs: 1, .. }), "{e:?}");
        assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
        holder.abort();
    }

    #[test]
    fn advice_names_the_mirror_config_for_a_missing_image() {
        let e = CriError::Rpc {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            action: "pulling registry.example/edge/app:v9".into(),
            code: tonic::Code::NotFound,
            message: "failed to pull and unpack image \"registry.example/edge/app:v9\": failed to resolve reference \"registry.example/edge/app:v9\": registry.example/edge/app:v9: not found".into(),
        };
        assert!(e.advice().contains("hosts.toml"), "{}", e.advice());
        assert!(e.to_string().contains("NotFound"), "{e}");
        let unimplemented = CriError::Rpc {
            socket: PathBuf::from("/s"),
            action: "listing images".into(),
            code: tonic::Code::Unimplemented,
            message: "unknown service runtime.v1.ImageService".into(),
        };
        assert!(unimplemented.advice().contains("CRI plugin"));
    }
}
