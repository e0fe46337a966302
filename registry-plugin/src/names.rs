//! Which references an applied image must answer to in the container engine, and how each
//! engine is made to answer to them. Pure: no sockets; [`crate::sink`] does the talking.
//!
//! An edge agent that may not pull looks the image up by the exact reference its deployment
//! manifest writes: IoT Edge's edgeAgent asks moby for `settings.image`, the kubelet asks
//! containerd's CRI for the pod's `image` (normalised: `edge/app:v2` is
//! `docker.io/edge/app:v2`). Those references name the *upstream* registry
//! (`registry.example/edge/app:v2`, `…@sha256:<manifest digest>`), or the device's own
//! registry when the release pipeline pinned them there (`sideload fleet rewrite --pin
//! --device-registry`). So after an apply the image must resolve under:
//!
//! - `PULL_FROM/REPO@DIGEST` and `PULL_FROM/REPO:TAG`: the device-local registry's names
//!   (`pull_from` is the plugin's own listen address as the engine reaches it);
//! - `REPO:TAG`: the Docker Hub short form (what `docker run edge/app:v2` means), on moby;
//! - `HOST/REPO:TAG` and `HOST/REPO@DIGEST` for every upstream registry `HOST` the device's
//!   deployments name (`[engine] upstream_hosts`). The repository path is the same upstream
//!   and on the device (the statement's repository), as the fleet gate assumes.
//!
//! # What each engine can hold
//!
//! containerd keeps one image record per name, so every one of these names can exist. The
//! plugin has containerd *pull* them through its CRI image service, with containerd's registry
//! config (`hosts.toml`) naming the plugin as the mirror of each upstream host: a tag pull
//! records the tag, `repo@digest` and the image ID, unpacked, exactly as the kubelet's own pull
//! would have. Nothing leaves the device as long as every upstream host has a `hosts.toml` whose
//! `server` is the plugin too (`systemd/engines/`).
//!
//! moby (dockerd) records a digest reference only for the name it pulled under, and it pulls
//! from an upstream host's own address (its `registry-mirrors` serve Docker Hub only). So on
//! moby the plugin pulls under the local name (which gives `PULL_FROM/REPO@DIGEST`) and adds
//! every *tag* name with `POST /images/{id}/tag`; `HOST/REPO@DIGEST` cannot be made without a
//! pull from `HOST`, and is listed in [`EnginePlan::unreachable`] so that the journal says so.
//! A digest-pinned IoT Edge manifest therefore names the device-local registry
//! (`fleet rewrite --pin --device-registry`), and `fleet gate` checks what each device's engine
//! really resolves (its inventory lists it), not what we hope it resolves.

use serde::{Deserialize, Serialize};
use sideload_signing::{Digest, RepositoryName, Tag};

/// The container engine the daemon feeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The Docker Engine API: dockerd (moby, what IoT Edge runs) or podman's service.
    #[default]
    Docker,
    /// containerd's CRI image service (k3s and other Kubernetes edge nodes), namespace `k8s.io`.
    Containerd,
}

impl EngineKind {
    /// `"docker"` or `"containerd"`, as in the config and the inventory.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Containerd => "containerd",
        }
    }
}

/// One image to put into the engine: what the verified statement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<'a> {
    /// The repository, the same path upstream and in the device's registry.
    pub repository: &'a RepositoryName,
    /// The tags the statement moved.
    pub tags: &'a [Tag],
    /// The manifest digest the device produced and checked.
    pub manifest_digest: &'a Digest,
}

/// What to ask the engine for, and which references must resolve afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnginePlan {
    /// References the engine pulls (from the plugin: directly on moby, through its mirror
    /// config on containerd), in order.
    pub pulls: Vec<String>,
    /// `(repository, tag)` pairs to set with the Docker Engine API's tag call, on moby.
    pub tags: Vec<(String, String)>,
    /// Every reference that must resolve to the image afterwards; the sink checks each.
    pub expect: Vec<String>,
    /// References a deployment might write that this engine cannot be made to resolve (moby:
    /// an upstream host's digest reference), for the journal.
    pub unreachable: Vec<String>,
}

/// Works out the plan for `image` on an engine of `kind` that pulls from `pull_from` (the
/// plugin's address as the engine reaches it; `None` when the engine has no direct route to
/// it, which only containerd may lack) and knows the upstream `hosts`.
pub fn plan(
    kind: EngineKind,
    pull_from: Option<&str>,
    hosts: &[String],
    image: &Applied<'_>,
) -> EnginePlan {
    let repo = image.repository.as_str();
    let digest = image.manifest_digest.as_str();
    let tags: Vec<&str> = image.tags.iter().map(Tag::as_str).collect();
    let mut plan = EnginePlan::default();
    // Hosts whose names the engine gets: the local registry first (the name the engine's own
    // records will show as its origin), then the upstream hosts in config order.
    let mut named_hosts: Vec<&str> = pull_from.into_iter().collect();
    for host in hosts {
        if !named_hosts.contains(&host.as_str()) {
            named_hosts.push(host);
        }
    }
    match kind {
        EngineKind::Docker => {
            let Some(local) = pull_from else {
                return plan;
            };
            plan.pulls.push(format!("{local}/{repo}@{digest}"));
            plan.expect.push(format!("{local}/{repo}@{digest}"));
            let mut tag_repos: Vec<String> = vec![repo.to_owned()];
            tag_repos.extend(named_hosts.iter().map(|h| format!("{h}/{repo}")));
            for tag_repo in &tag_repos {
                for tag in &tags {
                    push_new(&mut plan.tags, (tag_repo.clone(), (*tag).to_owned()));
                    push_new(&mut plan.expect, format!("{tag_repo}:{tag}"));
                }
            }
            for host in hosts.iter().filter(|h| Some(h.as_str()) != pull_from) {
                push_new(&mut plan.unreachable, format!("{host}/{repo}@{digest}"));
            }
        }
        EngineKind::Containerd => {
            for host in &named_hosts {
                if tags.is_empty() {
                    push_new(&mut plan.pulls, format!("{host}/{repo}@{digest}"));
                }
                for tag in &tags {
                    push_new(&mut plan.pulls, format!("{host}/{repo}:{tag}"));
                    push_new(&mut plan.expect, format!("{host}/{repo}:{tag}"));
                }
                push_new(&mut plan.expect, format!("{host}/{repo}@{digest}"));
            }
        }
    }
    plan
}

/// Longest image reference handed to an engine (`host:port/repository@sha256:…` fits easily).
pub const MAX_REFERENCE_LEN: usize = 512;

/// Why `reference` may not be handed to an engine (it goes into URL paths of the Docker Engine
/// API and into CRI requests), or `None`: 1 to [`MAX_REFERENCE_LEN`] characters, only letters,
/// digits and `. _ - / : @`, no empty, `.` or `..` path segment. Both engine clients check
/// every reference with it before a request is made.
pub fn reference_problem(reference: &str) -> Option<&'static str> {
    if reference.is_empty() || reference.len() > MAX_REFERENCE_LEN {
        return Some("must be 1 to 512 characters");
    }
    if !reference
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@'))
    {
        return Some("only letters, digits and . _ - / : @ may appear");
    }
    if reference
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Some("empty, '.' and '..' path segments are not allowed");
    }
    None
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Whether `host` is a registry host an engine can be told about: `name[:port]` with DNS
/// characters (or an IPv4 address), no scheme, path, user or space. For the config check.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && name.bytes().all(|b| !b.is_ascii_uppercase());
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (RepositoryName, Vec<Tag>, Digest) {
        (
            "edge/app".parse().unwrap(),
            vec!["v2".parse().unwrap()],
            format!("sha256:{}", "d".repeat(64)).parse().unwrap(),
        )
    }

    #[test]
    fn moby_pulls_the_local_name_and_tags_every_name_it_can_hold() {
        let (repo, tags, digest) = image();
        let d = digest.as_str();
        let applied = Applied {
            repository: &repo,
            tags: &tags,
            manifest_digest: &digest,
        };
        let hosts = vec!["registry.example".to_owned()];
        let p = plan(EngineKind::Docker, Some("127.0.0.1:5000"), &hosts, &applied);
        assert_eq!(p.pulls, vec![format!("127.0.0.1:5000/edge/app@{d}")]);
        assert_eq!(
            p.tags,
            vec![
                ("edge/app".to_owned(), "v2".to_owned()),
                ("127.0.0.1:5000/edge/app".to_owned(), "v2".to_owned()),
                ("registry.example/edge/app".to_owned(), "v2".to_owned()),
            ]
        );
        assert_eq!(
            p.expect,
            vec![
                format!("127.0.0.1:5000/edge/app@{d}"),
                "edge/app:v2".to_owned(),
                "127.0.0.1:5000/edge/app:v2".to_owned(),
                "registry.example/edge/app:v2".to_owned(),
            ]
        );
        assert_eq!(
            p.unreachable,
            vec![format!("registry.example/edge/app@{d}")]
        );
    }

    #[test]
    fn containerd_pulls_every_tag_name_through_its_mirrors() {
        let (repo, tags, digest) = image();
        let d = digest.as_str();
        let applied = Applied {
            repository: &repo,
            tags: &tags,
            manifest_digest: &digest,
        };
        let hosts = vec!["registry.example".to_owned(), "docker.io".to_owned()];
        let p = plan(EngineKind::Containerd, None, &hosts, &applied);
        assert_eq!(
            p.pulls,
            vec!["registry.example/edge/app:v2", "docker.io/edge/app:v2"]
        );
        assert_eq!(
            p.expect,
            vec![
                "registry.example/edge/app:v2".to_owned(),
                format!("registry.example/edge/app@{d}"),
                "docker.io/edge/app:v2".to_owned(),
                format!("docker.io/edge/app@{d}"),
            ]
        );
        assert!(p.tags.is_empty() && p.unreachable.is_empty());
        // Without tags the digest itself is pulled.
        let untagged = Applied {
            tags: &[],
            ..applied
        };
        let p = plan(
            EngineKind::Containerd,
            Some("127.0.0.1:5000"),
            &[],
            &untagged,
        );
        assert_eq!(p.pulls, vec![format!("127.0.0.1:5000/edge/app@{d}")]);
        assert_eq!(p.expect, vec![format!("127.0.0.1:5000/edge/app@{d}")]);
    }

    #[test]
    fn a_host_listed_twice_or_equal_to_pull_from_is_named_once() {
        let (repo, tags, digest) = image();
        let applied = Applied {
            repository: &repo,
            tags: &tags,
            manifest_digest: &digest,
        };
        let hosts = vec!["127.0.0.1:5000".to_owned(), "127.0.0.1:5000".to_owned()];
        let p = plan(EngineKind::Docker, Some("127.0.0.1:5000"), &hosts, &applied);
        assert_eq!(p.tags.len(), 2);
        assert!(p.unreachable.is_empty(), "{p:?}");
    }

    #[test]
    fn hosts_are_registry_hosts_only() {
        for good in [
            "registry.example",
            "127.0.0.1:5000",
            "localhost",
            "docker.io",
            "a-b.c:443",
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            "https://registry.example",
            "registry.example/path",
            "Registry.Example",
            "host:0",
            "host:99999",
            "host:",
            "-bad.example",
            "user@host",
            "a b",
            "a..b",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
