//! The container engine as the daemon's second sink: after an image is in the registry, make
//! every reference a deployment may use for it resolve in the engine the edge agent asks.
//!
//! [`SinkConfig`] is the config file's `[engine]` section; [`Sink`] holds the client for the
//! configured kind ([`Engine`] for the Docker Engine API, [`Cri`] for containerd). [`Sink::load`]
//! works out the
//! [`names::plan`] for an applied image, carries it out, and then checks every reference the
//! plan expects: each must resolve to the image whose ID is the statement's config digest,
//! or the load fails with [`SinkError::Wrong`] / [`SinkError::Unresolved`]. [`Sink::inventory`]
//! lists what the engine holds under which names, for the device's inventory: the fleet gate
//! releases a deployment only when every reference it names is there.
//!
//! What it does not do: remove images from the engine (the registry keeps the bases a delta
//! needs; the engine's own garbage collection is the operator's), or pull from anywhere but
//! the plugin.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sideload_signing::Digest;

use crate::cri::{Cri, CriConfig, CriError};
use crate::engine::{Engine, EngineConfig, EngineError, EngineImage};
use crate::names::{self, Applied, EngineKind};

fn default_timeout_secs() -> u64 {
    600
}

/// The `[engine]` section: which engine gets applied images and under which names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `"docker"` (default: the Docker Engine API of dockerd or podman) or `"containerd"`
    /// (containerd's CRI image service, namespace `k8s.io`).
    #[serde(default)]
    pub kind: EngineKind,
    /// The engine's API socket: `/run/docker.sock`, podman's `/run/podman/podman.sock`,
    /// containerd's `/run/containerd/containerd.sock` (k3s: `/run/k3s/containerd/containerd.sock`).
    pub socket: PathBuf,
    /// Registry `host:port` the engine reaches the plugin at, e.g. `"127.0.0.1:5000"`: the
    /// device-local registry name. Required for `docker`, which pulls from it; for
    /// `containerd` optional (its `hosts.toml` must then route that host to the plugin).
    #[serde(default)]
    pub pull_from: Option<String>,
    /// Upstream registry hosts the device's deployments name (`"registry.example"`,
    /// `"docker.io"`): the image is made to resolve as `HOST/REPOSITORY:TAG` (and, on
    /// containerd, `HOST/REPOSITORY@DIGEST`) for each. containerd needs a `hosts.toml` per host
    /// that names the plugin as mirror; see `systemd/engines/`.
    #[serde(default)]
    pub upstream_hosts: Vec<String>,
    /// Seconds for each pull of a load (default 600; the quick calls take at most 30).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Seconds before an applied image the engine did not take (it was down, or the daemon
    /// stopped before the load) is offered again, doubling per failure up to an hour
    /// ([`crate::reconcile`]); default 60.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: u64,
}

fn default_retry_secs() -> u64 {
    60
}

/// An `[engine]` setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkConfigError {
    /// An `upstream_hosts` entry that is not a host.
    #[error("upstream_hosts: {0:?} is not a registry host (name or IP, optional :port, lower case, no scheme or path)")]
    BadUpstreamHost(String),
    /// A `pull_from` that is not a host.
    #[error("pull_from: {0:?} is not a registry host:port (e.g. \"127.0.0.1:5000\")")]
    BadPullFrom(String),
    /// Docker without `pull_from`.
    #[error("pull_from is required for kind = \"docker\": the engine pulls from the plugin at that address (e.g. \"127.0.0.1:5000\")")]
    DockerNeedsPullFrom,
    /// containerd with neither `upstream_hosts` nor `pull_from`.
    #[error("kind = \"containerd\" needs upstream_hosts (the registries the deployments name, each routed to the plugin by containerd's hosts.toml) or pull_from")]
    ContainerdNeedsHosts,
}

impl SinkConfig {
    /// Refuses settings that cannot work, before the daemon binds a port.
    pub fn check(&self) -> Result<(), SinkConfigError> {
        if let Some(bad) = self.upstream_hosts.iter().find(|h| !names::valid_host(h)) {
            return Err(SinkConfigError::BadUpstreamHost(bad.clone()));
        }
        if let Some(local) = self.pull_from.as_ref().filter(|h| !names::valid_host(h)) {
            return Err(SinkConfigError::BadPullFrom(local.clone()));
        }
        match self.kind {
            EngineKind::Docker if self.pull_from.is_none() => {
                Err(SinkConfigError::DockerNeedsPullFrom)
            }
            EngineKind::Containerd
                if self.pull_from.is_none() && self.upstream_hosts.is_empty() =>
            {
                Err(SinkConfigError::ContainerdNeedsHosts)
            }
            _ => Ok(()),
        }
    }

    /// One line for `--check-config` and the log.
    pub fn summary(&self) -> String {
        format!(
            "{} at {}, names {}",
            self.kind.as_str(),
            self.socket.display(),
            self.pull_from
                .iter()
                .chain(&self.upstream_hosts)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The configured engine's client, and the last inventory asked of it.
#[derive(Debug, Clone)]
pub struct Sink {
    client: Client,
    /// The engine's image list, reused for [`INVENTORY_TTL`] and dropped after every load, so
    /// that status requests (anyone's, by default) cannot make the daemon list a large engine
    /// again and again; the lock makes concurrent requests share one listing.
    listed: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, EngineInventory)>>>,
}

/// How long an engine inventory is reused.
pub const INVENTORY_TTL: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Client {
    /// dockerd or podman, over the Docker Engine API.
    Docker(Engine),
    /// containerd, over the CRI image service (namespace `k8s.io`).
    Containerd(Cri),
}

/// What a load did, for the journal and the status API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loaded {
    /// The engine's image ID (`sha256:` + the config digest).
    pub id: String,
    /// Every reference checked to resolve to it.
    pub references: Vec<String>,
    /// References a deployment might use that this engine cannot hold (see [`names`]).
    pub unreachable: Vec<String>,
}

/// What the engine holds, as the inventory reports it (the device API's types).
pub use sideload_device_api::{EngineHeld, EngineInventory};

/// Why a load failed. Every variant names the reference concerned.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Docker Engine API failed.
    #[error(transparent)]
    Docker(#[from] EngineError),
    /// containerd's CRI failed.
    #[error(transparent)]
    Containerd(#[from] CriError),
    /// After the load, a reference resolves to another image than the statement's.
    #[error("after loading, the engine resolves {reference} to {found}, not to the applied image {expected}")]
    Wrong {
        /// The reference.
        reference: String,
        /// The statement's config digest.
        expected: String,
        /// What the engine answered.
        found: String,
    },
    /// After the load, a reference the plan expects does not resolve at all.
    #[error("after loading, the engine does not resolve {reference}")]
    Unresolved {
        /// The reference.
        reference: String,
    },
}

impl SinkError {
    /// One line telling the operator what to check.
    pub fn advice(&self) -> &'static str {
        match self {
            SinkError::Docker(e) => e.advice(),
            SinkError::Containerd(e) => e.advice(),
            SinkError::Wrong { .. } => {
                "another image holds that name in the engine, or a mirror served another manifest: check the engine's registry mirror config (hosts.toml) routes the host to this plugin, then apply again"
            }
            SinkError::Unresolved { .. } => {
                "the engine did not record the name: check its registry config for that host and its log"
            }
        }
    }
}

impl Sink {
    /// The client for `config`'s kind; nothing is connected until the first call.
    pub fn new(config: &SinkConfig) -> Sink {
        let client = match config.kind {
            EngineKind::Docker => Client::Docker(Engine::new(EngineConfig {
                socket: config.socket.clone(),
                pull_from: config.pull_from.clone().unwrap_or_default(),
                timeout_secs: config.timeout_secs,
            })),
            EngineKind::Containerd => Client::Containerd(Cri::new(CriConfig {
                socket: config.socket.clone(),
                timeout_secs: config.timeout_secs,
            })),
        };
        Sink {
            client,
            listed: Default::default(),
        }
    }

    /// Asks the engine whether it is up, for the start-up log.
    pub async fn ping(&self) -> Result<String, SinkError> {
        match &self.client {
            Client::Docker(engine) => {
                engine.ping().await?;
                Ok("docker engine API".to_owned())
            }
            Client::Containerd(cri) => Ok(cri.version().await?),
        }
    }

    /// Makes every reference of [`names::plan`] resolve to the applied image, and checks that
    /// each does (to `config_digest`).
    pub async fn load(
        &self,
        config: &SinkConfig,
        image: &Applied<'_>,
        config_digest: &Digest,
    ) -> Result<Loaded, SinkError> {
        let plan = names::plan(
            config.kind,
            config.pull_from.as_deref(),
            &config.upstream_hosts,
            image,
        );
        // The engine's names change: the next inventory asks again (also after the load, in
        // case a status request listed the engine halfway through it).
        *self.listed.lock().await = None;
        let loaded = self.carry_out(plan, config_digest).await;
        *self.listed.lock().await = None;
        loaded
    }

    /// Pulls, tags and checks what `plan` says, on this sink's engine.
    async fn carry_out(
        &self,
        plan: names::EnginePlan,
        config_digest: &Digest,
    ) -> Result<Loaded, SinkError> {
        match &self.client {
            Client::Docker(engine) => {
                let mut id = String::new();
                for reference in &plan.pulls {
                    id = engine.pull(reference).await?;
                }
                let source = plan.pulls.first().cloned().unwrap_or_default();
                for (repository, tag) in &plan.tags {
                    engine.tag(&source, repository, tag).await?;
                }
                for reference in &plan.expect {
                    let found = engine.inspect(reference).await?;
                    check_resolves(reference, found.map(|i| i.id), config_digest)?;
                }
                tracing::info!(%id, references = ?plan.expect, unreachable = ?plan.unreachable,
                    "image loaded into the engine");
                Ok(Loaded {
                    id,
                    references: plan.expect,
                    unreachable: plan.unreachable,
                })
            }
            Client::Containerd(cri) => {
                // containerd pulls each name through its own registry config, which routes
                // the upstream hosts to this plugin; a tag pull also records `repo@digest`.
                let mut id = String::new();
                for reference in &plan.pulls {
                    id = cri.pull(reference).await?;
                }
                for reference in &plan.expect {
                    let found = cri.status(reference).await?;
                    check_resolves(reference, found.map(|i| i.id), config_digest)?;
                }
                tracing::info!(%id, references = ?plan.expect, "image loaded into containerd");
                Ok(Loaded {
                    id,
                    references: plan.expect,
                    unreachable: plan.unreachable,
                })
            }
        }
    }

    /// Every image the engine holds, with its names; an engine that cannot be asked gives an
    /// inventory with `error` set and no images, so the cloud side knows nothing resolves.
    /// Reused for [`INVENTORY_TTL`] unless a load happened since.
    pub async fn inventory(&self, kind: EngineKind) -> EngineInventory {
        let mut listed = self.listed.lock().await;
        if let Some((at, inventory)) = listed.as_ref() {
            if at.elapsed() < INVENTORY_TTL {
                return inventory.clone();
            }
        }
        let answer = match &self.client {
            Client::Docker(engine) => engine.list().await.map_err(SinkError::from),
            Client::Containerd(cri) => cri.list().await.map_err(SinkError::from),
        };
        let inventory = match answer {
            Ok(images) => EngineInventory {
                kind: kind.as_str().to_owned(),
                images: images.into_iter().map(held).collect(),
                error: None,
            },
            Err(e) => EngineInventory {
                kind: kind.as_str().to_owned(),
                images: Vec::new(),
                error: Some(format!("{e}; {}", e.advice())),
            },
        };
        *listed = Some((std::time::Instant::now(), inventory.clone()));
        inventory
    }
}

fn held(image: EngineImage) -> EngineHeld {
    let mut references = image.repo_tags;
    references.extend(image.repo_digests);
    EngineHeld {
        id: image.id,
        references,
    }
}

/// `found` (an image ID, or none) must be the image whose config is `expected`.
fn check_resolves(
    reference: &str,
    found: Option<String>,
    expected: &Digest,
) -> Result<(), SinkError> {
    match found {
        None => Err(SinkError::Unresolved {
            reference: reference.to_owned(),
        }),
        Some(id) if id == expected.as_str() => Ok(()),
        Some(id) => Err(SinkError::Wrong {
            reference: reference.to_owned(),
            expected: expected.as_str().to_owned(),
            found: id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> SinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_config_check_names_what_is_wrong() {
        let ok = config("socket = \"/run/docker.sock\"\npull_from = \"127.0.0.1:5000\"\nupstream_hosts = [\"registry.example\"]\n");
        assert_eq!(ok.kind, EngineKind::Docker);
        assert!(ok.check().is_ok());
        let e = config("socket = \"/s\"\n").check().unwrap_err();
        assert_eq!(e, SinkConfigError::DockerNeedsPullFrom);
        assert!(e.to_string().contains("pull_from is required"), "{e}");
        let e = config("kind = \"containerd\"\nsocket = \"/s\"\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("needs upstream_hosts"), "{e}");
        let e = config("socket = \"/s\"\npull_from = \"h:1\"\nupstream_hosts = [\"https://x\"]\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("\"https://x\""), "{e}");
        let e = config("socket = \"/s\"\npull_from = \"http://h\"\n")
            .check()
            .unwrap_err();
        assert_eq!(e, SinkConfigError::BadPullFrom("http://h".into()));
        assert!(toml::from_str::<SinkConfig>("socket = \"/s\"\nkind = \"cri-o\"\n").is_err());
        assert!(toml::from_str::<SinkConfig>("socket = \"/s\"\nmirror = 1\n").is_err());
    }

    #[test]
    fn a_reference_must_resolve_to_the_applied_config() {
        let d: Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        assert!(check_resolves("r", Some(d.as_str().to_owned()), &d).is_ok());
        assert!(matches!(
            check_resolves("r", None, &d),
            Err(SinkError::Unresolved { .. })
        ));
        let e = check_resolves("a/b:v2", Some("sha256:other".into()), &d).unwrap_err();
        assert!(e.to_string().contains("a/b:v2") && e.to_string().contains("sha256:other"));
    }
}
