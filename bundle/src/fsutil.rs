//! Filesystem helpers for atomic state changes: write aside, fsync, rename, fsync the directory.

use std::fs::File;
use std::path::Path;

use crate::error::Error;

/// fsyncs the directory holding `path`, so a rename into it survives a power cut.
pub fn sync_parent(path: &Path) -> Result<(), Error> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing directory", parent))
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn available_space(path: &Path) -> Result<u64, Error> {
    fs4::available_space(path).map_err(Error::io("reading free space of", path))
}
