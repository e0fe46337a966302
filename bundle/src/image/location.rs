//! Where an image is, as users write it (skopeo's syntax), and [`open_image`].
//!
//! | written | means |
//! |---|---|
//! | `docker-archive:PATH[:REF]` | a `docker save` tar; `REF` is `repo:tag` or `@N` (n-th image) |
//! | `oci:PATH[:REF]` | an OCI layout directory; `REF` is the ref name (usually the tag) |
//! | `docker://HOST/REPO:TAG`, `docker://HOST/REPO@sha256:…` | an image in a registry |
//! | `PATH` | a file is a docker-archive, a directory an OCI layout |
//!
//! As in skopeo, `PATH` ends at the first `:` after the transport, so it cannot contain one.
//! Parsing is pure; only [`open_image`] looks at the filesystem or the network.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sideload_signing::Platform;

use super::docker_archive::DockerArchiveSource;
use super::oci_layout::OciLayoutSource;
use super::registry::RegistrySource;
use super::spec::linux_amd64;
use super::{ImageError, ImageSource};

/// Where to read an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLocation {
    /// A `docker save` archive.
    DockerArchive {
        /// The tar file.
        path: PathBuf,
        /// `repo:tag` or `@N` selecting one of several images.
        reference: Option<String>,
    },
    /// An OCI image layout directory.
    OciLayout {
        /// The directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` of the image.
        reference: Option<String>,
    },
    /// An image in a registry: `HOST/REPO:TAG` or `HOST/REPO@sha256:…`.
    Registry {
        /// The reference, without `docker://`.
        reference: String,
    },
    /// A bare path: a file is read as a docker-archive, a directory as an OCI layout.
    Path(PathBuf),
}

fn invalid(input: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidLocation {
        input: input.chars().take(200).collect(),
        reason: reason.into(),
    }
}

fn path_and_ref(input: &str, rest: &str) -> Result<(PathBuf, Option<String>), ImageError> {
    let (path, reference) = match rest.split_once(':') {
        Some((p, r)) => (p, (!r.is_empty()).then(|| r.to_owned())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(input, "the path is empty"));
    }
    Ok((PathBuf::from(path), reference))
}

impl FromStr for ImageLocation {
    type Err = ImageError;

    fn from_str(input: &str) -> Result<Self, ImageError> {
        if input.is_empty() {
            return Err(invalid(input, "empty"));
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            let (path, reference) = path_and_ref(input, rest)?;
            return Ok(ImageLocation::DockerArchive { path, reference });
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            let (path, reference) = path_and_ref(input, rest)?;
            return Ok(ImageLocation::OciLayout { path, reference });
        }
        if let Some(rest) = input.strip_prefix("docker://") {
            rest.parse::<oci_client::Reference>()
                .map_err(|e| invalid(input, format!("not a registry reference: {e}")))?;
            // No silent default registry: the host must be written out.
            let host = rest.split('/').next().unwrap_or_default();
            let looks_like_host = host.contains('.') || host.contains(':') || host == "localhost";
            if !rest.contains('/') || !looks_like_host {
                return Err(invalid(
                    input,
                    "name the registry host, e.g. docker://registry.example/repo:tag",
                ));
            }
            return Ok(ImageLocation::Registry {
                reference: rest.to_owned(),
            });
        }
        for unsupported in [
            "oci-archive:",
            "docker-daemon:",
            "containers-storage:",
            "dir:",
            "docker:",
        ] {
            if input.starts_with(unsupported) {
                return Err(invalid(
                    input,
                    format!(
                        "transport {unsupported} is not supported; use docker-archive:, oci:, docker:// or a path"
                    ),
                ));
            }
        }
        if input.contains("://") {
            return Err(invalid(
                input,
                "unknown transport; use docker-archive:, oci:, docker:// or a path",
            ));
        }
        Ok(ImageLocation::Path(PathBuf::from(input)))
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (transport, path, reference) = match self {
            ImageLocation::DockerArchive { path, reference } => {
                ("docker-archive:", path, reference)
            }
            ImageLocation::OciLayout { path, reference } => ("oci:", path, reference),
            ImageLocation::Registry { reference } => return write!(f, "docker://{reference}"),
            ImageLocation::Path(path) => return write!(f, "{}", path.display()),
        };
        write!(f, "{transport}{}", path.display())?;
        if let Some(r) = reference {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

/// Username and password for a registry (HTTP basic auth, or the token exchange it starts).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user.
    pub username: String,
    /// The password; never printed.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Platform chosen from multi-platform images (default `linux/amd64`).
    pub platform: Platform,
    /// Registry credentials; anonymous when `None`.
    pub auth: Option<BasicAuth>,
    /// Registries (`host[:port]`, as in the reference) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Where registry pulls keep their blobs (an OCI layout, reused across pulls, each pull
    /// named by its reference in `index.json`); a temporary directory owned by the returned
    /// source when `None`. Blobs may be shared by concurrent pulls, but `index.json` is
    /// rewritten by each pull, so give concurrent processes separate cache directories.
    pub cache_dir: Option<PathBuf>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            platform: linux_amd64(),
            auth: None,
            insecure_registries: Vec::new(),
            cache_dir: None,
        }
    }
}

/// Opens the image at `location`. Registry images are pulled first (see
/// [`RegistrySource`]); this blocks, and must not be called from inside an async runtime.
pub fn open_image(
    location: &ImageLocation,
    options: &OpenOptions,
) -> Result<Box<dyn ImageSource>, ImageError> {
    let label = location.to_string();
    Ok(match location {
        ImageLocation::DockerArchive { path, reference } => Box::new(DockerArchiveSource::open(
            path,
            reference.as_deref(),
            &options.platform,
            &label,
        )?),
        ImageLocation::OciLayout { path, reference } => Box::new(OciLayoutSource::open(
            path,
            reference.as_deref(),
            &options.platform,
            &label,
        )?),
        ImageLocation::Registry { reference } => Box::new(RegistrySource::pull(reference, options)?),
        ImageLocation::Path(path) => match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                Box::new(OciLayoutSource::open(path, None, &options.platform, &label)?)
            }
            Ok(_) => Box::new(DockerArchiveSource::open(path, None, &options.platform, &label)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotAnImage {
                    image: label,
                    expected: "a docker-archive file or an OCI layout directory",
                    reason: "no such file or directory (registry images are written docker://HOST/REPO:TAG)"
                        .to_owned(),
                })
            }
            Err(source) => {
                return Err(ImageError::Io {
                    image: label,
                    action: "stat",
                    path: path.clone(),
                    source,
                })
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageLocation {
        s.parse().unwrap()
    }

    #[test]
    fn parses_docker_archive() {
        assert_eq!(
            parse("docker-archive:/tmp/x.tar"),
            ImageLocation::DockerArchive {
                path: "/tmp/x.tar".into(),
                reference: None
            }
        );
        assert_eq!(
            parse("docker-archive:x.tar:repo/name:tag"),
            ImageLocation::DockerArchive {
                path: "x.tar".into(),
                reference: Some("repo/name:tag".into())
            }
        );
        assert_eq!(
            parse("docker-archive:x.tar:@1"),
            ImageLocation::DockerArchive {
                path: "x.tar".into(),
                reference: Some("@1".into())
            }
        );
        assert_eq!(
            parse("docker-archive:x.tar:"),
            ImageLocation::DockerArchive {
                path: "x.tar".into(),
                reference: None
            }
        );
    }

    #[test]
    fn parses_oci_layout() {
        assert_eq!(
            parse("oci:/srv/layout:v1.2"),
            ImageLocation::OciLayout {
                path: "/srv/layout".into(),
                reference: Some("v1.2".into())
            }
        );
        assert_eq!(
            parse("oci:layout"),
            ImageLocation::OciLayout {
                path: "layout".into(),
                reference: None
            }
        );
    }

    #[test]
    fn parses_registry() {
        assert_eq!(
            parse("docker://127.0.0.1:5000/repo/app:1.0"),
            ImageLocation::Registry {
                reference: "127.0.0.1:5000/repo/app:1.0".into()
            }
        );
        let pinned = format!(
            "docker://registry.example/app@{}",
            sideload_signing::Digest::of_bytes(b"x")
        );
        assert!(matches!(parse(&pinned), ImageLocation::Registry { .. }));
    }

    #[test]
    fn bare_paths_are_paths() {
        assert_eq!(
            parse("/tmp/image.tar"),
            ImageLocation::Path("/tmp/image.tar".into())
        );
        assert_eq!(parse("./layout"), ImageLocation::Path("./layout".into()));
    }

    #[test]
    fn refuses_bad_locations() {
        for bad in [
            "",
            "docker-archive:",
            "docker-archive::tag",
            "oci:",
            "docker://",
            "docker://UPPER/Case:tag",
            "docker://busybox",
            "docker://library/busybox:latest",
            "oci-archive:/x.tar",
            "docker-daemon:busybox:latest",
            "http://example/x",
        ] {
            let err = bad.parse::<ImageLocation>().unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidLocation { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "docker-archive:/tmp/x.tar",
            "docker-archive:/tmp/x.tar:repo/name:tag",
            "oci:/srv/layout:v1",
            "docker://127.0.0.1:5000/repo:tag",
            "/tmp/image.tar",
        ] {
            assert_eq!(parse(s).to_string(), s);
        }
    }

    #[test]
    fn auth_debug_hides_password() {
        let a = BasicAuth {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn missing_bare_path_says_how_to_name_registry_images() {
        let err = open_image(
            &parse("/nonexistent/sideload-test"),
            &OpenOptions::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("docker://"), "{err}");
    }
}
