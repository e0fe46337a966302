//! One module per subcommand; helpers they share.

pub mod apply;
pub mod attach;
pub mod build;
pub mod fleet;
pub mod inspect;
pub mod push;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sideload_bundle::image::{open_image, BasicAuth, ImageLocation, ImageSource, OpenOptions};
use sideload_signing::Platform;

use crate::RegistryArgs;

/// Current time, Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Prints a JSON value on stdout, pretty.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON serializes")
    );
}

/// `os/arch[/variant]` as a platform.
fn parse_platform(text: &str) -> Result<Platform> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: (*os).to_owned(),
            architecture: (*arch).to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()).unwrap_or_default(),
        }),
        _ => {
            anyhow::bail!("--platform must be os/arch[/variant], e.g. linux/arm64/v8, not {text:?}")
        }
    }
}

/// Opens every image reference, in order. `arg` says where the references came from (`--base`,
/// `IMAGE`, ...): errors name it, so a user knows which argument to fix.
pub fn open_images(
    arg: &str,
    references: &[String],
    registry: &RegistryArgs,
) -> Result<Vec<Box<dyn ImageSource>>> {
    let auth = match &registry.registry_user {
        Some(user) => Some(BasicAuth {
            username: user.clone(),
            // The config names the variable that holds the password, kept out of the file.
            #[allow(clippy::disallowed_methods)]
            password: std::env::var(&registry.registry_password_env).with_context(|| {
                format!(
                    "--registry-user is set but the password variable {} is not",
                    registry.registry_password_env
                )
            })?,
        }),
        None => None,
    };
    check_local_images(arg, references)?;
    let options = OpenOptions {
        platform: parse_platform(&registry.platform)?,
        auth,
        insecure_registries: registry.insecure_registries.clone(),
        cache_dir: registry.cache_dir.clone(),
    };
    references
        .iter()
        .map(|r| {
            let location: ImageLocation = r.parse().with_context(|| format!("{arg} {r}"))?;
            open_image(&location, &options).with_context(|| format!("cannot open {arg} {r}"))
        })
        .collect()
}

/// Checks that every local image among `references` (archive or layout) exists, before any
/// image is opened: a wrong path is reported at once, naming `arg`, the argument it came from.
pub fn check_local_images(arg: &str, references: &[String]) -> Result<()> {
    for r in references {
        let location: ImageLocation = r.parse().with_context(|| format!("{arg} {r}"))?;
        check_exists(arg, r, &location)?;
    }
    Ok(())
}

/// A local image (archive or layout) that is not there, said as such: opening it would only
/// report the first file it lacks (`oci-layout`, `manifest.json`).
fn check_exists(arg: &str, reference: &str, location: &ImageLocation) -> Result<()> {
    let (path, expected) = match location {
        ImageLocation::DockerArchive { path, .. } => (path, "a `docker save` archive"),
        ImageLocation::OciLayout { path, .. } => (
            path,
            "an OCI image layout directory (`skopeo copy SOURCE oci:DIR:TAG` writes one)",
        ),
        ImageLocation::Path(path) => (path, "a `docker save` archive or an OCI layout directory"),
        ImageLocation::Registry { .. } => return Ok(()),
    };
    if path.exists() {
        return Ok(());
    }
    anyhow::bail!("{arg} {reference}: no such file or directory; give the path of {expected}")
}
