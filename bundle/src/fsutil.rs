//! Filesystem helpers for atomic state changes: write aside, fsync, rename, fsync the directory.
//!
//! Every file sideload replaces in place (bundles, OCI `index.json`, the device's upload
//! records, events and state, the CLI's sequence state, TLS keys) goes through
//! [`replace_file`], so each gets the same guarantees: after a crash or a power cut the path
//! holds the old content or the whole new one, and a failed write leaves no temporary file.

use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::Error;

/// How the temporary files of [`replace_file`] begin (they end in `.tmp`): what a sweep after
/// a crash removes.
pub const TEMPORARY_PREFIX: &str = ".tmp-";

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsyncs directory `dir`, so a rename or removal in it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs the directory holding `path`, so a rename into it survives a power cut.
pub fn sync_parent(path: &Path) -> Result<(), Error> {
    let parent = parent_dir(path);
    sync_dir(parent).map_err(Error::io("syncing directory", parent))
}

/// Replaces the file at `path` atomically with what `write` writes: into a new hidden file
/// in the same directory with permissions `mode` (exactly, whatever the umask), fsynced,
/// renamed over `path`, then the directory fsynced. A failure at any step removes the
/// temporary file and leaves `path` as it was. Errors are the I/O error of the step that
/// failed; the caller names the file.
pub fn replace_file(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMPORARY_PREFIX}{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// [`replace_file`] with `bytes` as the new content.
pub fn replace_file_with(path: &Path, mode: u32, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, mode, |file| io::Write::write_all(file, bytes))
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn available_space(path: &Path) -> Result<u64, Error> {
    fs4::available_space(path).map_err(Error::io("reading free space of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_writes_whole_files_with_the_mode_asked_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_file_with(&path, 0o640, b"one").unwrap();
        replace_file_with(&path, 0o600, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let failed = replace_file(&path, 0o600, |file| {
            io::Write::write_all(file, b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "disk full");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"two",
            "the old content stays"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file is left");
        // A bare file name writes in the current directory's terms (its parent is ".").
        assert_eq!(parent_dir(Path::new("x.json")), Path::new("."));
    }
}
