//! The end of an apply: the manifest (exactly the signed bytes, whose digest the statement
//! names) added to the staged layout, and the rebuilt image moved into place: a layout by
//! rename, a docker archive written inside staging and hard-linked beside it, so the output
//! appears whole or not at all and never replaces anything.

use std::fs;
use std::io;
use std::path::Path;

use sideload_signing::{Statement, Target};

use crate::error::Error;
use crate::image::oci_layout::OciLayoutSource;
use crate::image::write::{write_docker_archive, OciLayoutWriter};

use super::Output;

/// Adds the statement's manifest to the staged layout, refusing it if its digest is not the
/// one the statement signs.
pub(super) fn add_manifest(
    name: &str,
    statement: &Statement,
    writer: &mut OciLayoutWriter,
) -> Result<(), Error> {
    let target = &statement.target;
    let manifest_digest = writer.add_manifest(
        target.manifest.as_bytes(),
        &target.manifest_media_type,
        target.tags.first().map(|t| t.as_str()),
        Some(&target.platform),
    )?;
    if manifest_digest != target.manifest_digest {
        return Err(Error::CorruptPayload {
            bundle: name.to_owned(),
            reason: format!(
                "produced manifest {manifest_digest}, the statement says {}",
                target.manifest_digest
            ),
        });
    }
    Ok(())
}

/// Moves the staged layout (`layout`, inside `staging`) into place as `output`.
pub(super) fn place(
    output: &Output,
    layout: &Path,
    staging: &Path,
    target: &Target,
) -> Result<(), Error> {
    match output {
        Output::OciLayout(dir) => {
            fs::rename(layout, dir).map_err(Error::io("moving rebuilt image to", dir))?;
        }
        Output::DockerArchive(archive) => {
            let reference = format!("oci:{}", layout.display());
            let source = OciLayoutSource::open(layout, None, &target.platform, &reference)?;
            let tags: Vec<String> = target
                .tags
                .iter()
                .map(|t| format!("{}:{t}", target.repository))
                .collect();
            // Written inside staging, then linked into place: a link never replaces an
            // existing file, and a crash leaves nothing half-written beside the output.
            let staged = staging.join("image.tar");
            write_docker_archive(&source, &staged, &tags)?;
            fs::hard_link(&staged, archive).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::OutputExists(archive.clone())
                } else {
                    Error::io("moving rebuilt image to", archive)(e)
                }
            })?;
        }
    }
    Ok(())
}
