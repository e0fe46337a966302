//! Finding bundles in the stick's folder without trusting anything on the stick.
//!
//! [`scan`] looks in exactly one folder (the caller passes the documented folder on the mounted
//! stick) and nowhere below it. It opens the folder without following a symlink, reads at most
//! [`ScanLimits::max_entries`] entries, and `lstat`s only the entries named like a bundle. A
//! [`Candidate`] is a regular file named `NAME.bundle` (see [`check_bundle_name`]) no larger
//! than [`ScanLimits::max_bundle_bytes`]; everything else named like a bundle (symlinks, FIFOs,
//! sockets, device nodes, directories, files over the limit, hidden or unprintable names) is a
//! [`Skipped`] entry with its reason, and is never opened. Other names are only counted.
//!
//! The [`Scan`] keeps the folder open: [`Scan::open`] opens a candidate relative to that same
//! folder (never by a path that could be swapped), again without following a symlink, without
//! blocking on a FIFO swapped in after the scan, and checks that it is still the regular file
//! of the length the scan saw.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// The file name suffix of a bundle on a stick.
pub const BUNDLE_SUFFIX: &str = ".bundle";

/// How much of a stick the loader is willing to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanLimits {
    /// Directory entries read from the folder (whatever their names); the rest are not looked
    /// at and [`Scan::truncated`] is set. Default 10 000.
    pub max_entries: usize,
    /// Bundles taken from one stick, in name order; later ones are skipped and stay on the stick
    /// for another visit. Default 100.
    pub max_bundles: usize,
    /// Largest bundle file accepted, in bytes; larger ones are skipped. Default 32 GiB.
    pub max_bundle_bytes: u64,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_entries: 10_000,
            max_bundles: 100,
            max_bundle_bytes: 32 << 30,
        }
    }
}

/// A bundle file found by the scan: a regular file with a checked name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The file name, checked by [`check_bundle_name`]: a single component, never a path.
    pub name: String,
    /// Its length in bytes when scanned.
    pub len: u64,
}

/// An entry named like a bundle that the scan did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The name as found, with control characters and bytes that are not UTF-8 escaped.
    pub name: String,
    /// Why it was skipped, for the log and the receipt.
    pub reason: String,
}

/// The result of scanning a folder; keeps the folder open for [`Scan::open`]. Drop it (and the
/// files it opened) before unmounting, or the unmount ends in a lazy detach.
pub struct Scan {
    /// Accepted bundle files, sorted by name, at most [`ScanLimits::max_bundles`].
    pub candidates: Vec<Candidate>,
    /// Entries named like bundles that were not accepted, sorted by name.
    pub skipped: Vec<Skipped>,
    /// Entries not named like a bundle (not looked at further).
    pub ignored: usize,
    /// The folder had more than [`ScanLimits::max_entries`] entries; the rest were not read.
    pub truncated: bool,
    path: PathBuf,
    dir: Option<OwnedFd>,
    max_bundle_bytes: u64,
}

impl fmt::Debug for Scan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scan")
            .field("path", &self.path)
            .field("folder_missing", &self.dir.is_none())
            .field("candidates", &self.candidates)
            .field("skipped", &self.skipped)
            .field("ignored", &self.ignored)
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// Why a folder could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The folder is a symlink or not a directory.
    #[error("{} is not a folder: {reason}", path.display())]
    NotAFolder { path: PathBuf, reason: &'static str },
    /// The folder could not be opened.
    #[error("cannot open folder {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    /// Reading the folder's entries failed.
    #[error("cannot read folder {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// Looking at one entry failed (not because it vanished).
    #[error("cannot inspect {name:?} in {}: {source}", path.display())]
    Stat {
        path: PathBuf,
        name: String,
        source: io::Error,
    },
}

impl ScanError {
    /// What a person should do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            ScanError::NotAFolder { .. } => {
                "the bundle folder on the stick must be a real folder with the bundles directly \
                 in it; recreate it"
            }
            ScanError::Open { .. } | ScanError::Read { .. } | ScanError::Stat { .. } => {
                "the stick could not be read (pulled out, failing or damaged); insert it again or \
                 check it on another machine"
            }
        }
    }
}

/// Checks a bundle file name from a stick: valid UTF-8 (a `&str` already is), a single path
/// component, not hidden (`.name`, which also rules out `.` and `..` and macOS `._name`
/// files), no control characters, and ending in [`BUNDLE_SUFFIX`] after a non-empty stem.
pub fn check_bundle_name(name: &str) -> Result<(), &'static str> {
    if name.starts_with('.') {
        Err("hidden name (starts with a dot)")
    } else if name.contains('/') {
        Err("name contains '/'")
    } else if name.chars().any(char::is_control) {
        Err("name contains control characters")
    } else if name.len() <= BUNDLE_SUFFIX.len() || !name.ends_with(BUNDLE_SUFFIX) {
        Err("name does not end in .bundle")
    } else {
        Ok(())
    }
}

/// Scans the folder `dir` for bundles. A missing folder is an empty scan, not an error.
pub fn scan(dir: &Path, limits: &ScanLimits) -> Result<Scan, ScanError> {
    let mut result = Scan {
        candidates: Vec::new(),
        skipped: Vec::new(),
        ignored: 0,
        truncated: false,
        path: dir.to_owned(),
        dir: None,
        max_bundle_bytes: limits.max_bundle_bytes,
    };
    let opened = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let folder = match opened {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(result),
        Err(Errno::LOOP) => {
            return Err(ScanError::NotAFolder {
                path: dir.to_owned(),
                reason: "it is a symbolic link (not followed)",
            })
        }
        Err(Errno::NOTDIR) => {
            return Err(ScanError::NotAFolder {
                path: dir.to_owned(),
                reason: "it is not a directory",
            })
        }
        Err(e) => {
            return Err(ScanError::Open {
                path: dir.to_owned(),
                source: e.into(),
            })
        }
    };
    let read_error = |e: Errno| ScanError::Read {
        path: dir.to_owned(),
        source: e.into(),
    };
    let mut entries = Dir::read_from(&folder).map_err(read_error)?;
    let mut seen = 0usize;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(read_error)?;
        let raw = entry.file_name();
        let bytes = raw.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if seen == limits.max_entries {
            result.truncated = true;
            break;
        }
        seen += 1;
        if !bytes.ends_with(BUNDLE_SUFFIX.as_bytes()) {
            result.ignored += 1;
            continue;
        }
        let skip = |reason: String| Skipped {
            name: display_name(bytes),
            reason,
        };
        let name = match std::str::from_utf8(bytes) {
            Ok(name) => name,
            Err(_) => {
                result
                    .skipped
                    .push(skip("name is not valid UTF-8".to_owned()));
                continue;
            }
        };
        if let Err(reason) = check_bundle_name(name) {
            result.skipped.push(skip(reason.to_owned()));
            continue;
        }
        let stat = match rustix::fs::statat(&folder, raw, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => {
                result
                    .skipped
                    .push(skip("vanished during the scan".to_owned()));
                continue;
            }
            Err(e) => {
                return Err(ScanError::Stat {
                    path: dir.to_owned(),
                    name: display_name(bytes),
                    source: e.into(),
                })
            }
        };
        let what = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => None,
            FileType::Symlink => Some("a symbolic link (not followed)"),
            FileType::Directory => Some("a directory, not a file"),
            FileType::Fifo => Some("a FIFO (named pipe), not opened"),
            FileType::Socket => Some("a socket, not opened"),
            FileType::CharacterDevice | FileType::BlockDevice => Some("a device node, not opened"),
            FileType::Unknown => Some("not a regular file"),
        };
        if let Some(what) = what {
            result.skipped.push(skip(format!("is {what}")));
            continue;
        }
        let len = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
        if len > limits.max_bundle_bytes {
            result.skipped.push(skip(format!(
                "is {len} bytes, over the limit max_bundle_bytes = {}",
                limits.max_bundle_bytes
            )));
            continue;
        }
        result.candidates.push(Candidate {
            name: name.to_owned(),
            len,
        });
    }
    drop(entries);

    result.candidates.sort_by(|a, b| a.name.cmp(&b.name));
    if result.candidates.len() > limits.max_bundles {
        let reason = format!(
            "more than max_bundles = {} bundles in the folder; left on the stick for another visit",
            limits.max_bundles
        );
        for left in result.candidates.split_off(limits.max_bundles) {
            result.skipped.push(Skipped {
                name: left.name,
                reason: reason.clone(),
            });
        }
    }
    result.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    result.dir = Some(folder);
    Ok(result)
}

impl Scan {
    /// The folder that was scanned.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder did not exist (the scan is empty).
    pub fn folder_missing(&self) -> bool {
        self.dir.is_none()
    }

    /// Opens a candidate of this scan relative to the scanned folder (see [`open_candidate`]),
    /// and checks that it still has the length the scan saw.
    pub fn open(&self, candidate: &Candidate) -> io::Result<(File, u64)> {
        let Some(dir) = &self.dir else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: the folder does not exist", self.path.display()),
            ));
        };
        let (file, len) = open_candidate(dir, &candidate.name)?;
        if len != candidate.len || len > self.max_bundle_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: is {len} bytes now, {} when scanned; the stick changed under the loader",
                    candidate.name, candidate.len
                ),
            ));
        }
        Ok((file, len))
    }
}

/// Opens the bundle file `name` in the folder `dir` for reading, and returns it with its length.
///
/// Never follows a symlink (`O_NOFOLLOW`), never blocks on a FIFO (`O_NONBLOCK`, cleared again
/// once the file is known to be regular), and refuses anything that is not a regular file. The
/// name must pass [`check_bundle_name`].
pub fn open_candidate(dir: impl AsFd, name: &str) -> io::Result<(File, u64)> {
    if let Err(reason) = check_bundle_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: {reason}"),
        ));
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}: not a regular file"),
        ));
    }
    let len = u64::try_from(stat.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: bad size")))?;
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok((File::from(fd), len))
}

/// A name from the stick made safe to print: control characters and bytes that are not UTF-8
/// are escaped.
fn display_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names() {
        for good in ["a.bundle", "app-1.2.3.bundle", "ü ber.bundle", "x.y.bundle"] {
            assert_eq!(check_bundle_name(good), Ok(()), "{good}");
        }
        for bad in [
            ".bundle",
            "._a.bundle",
            ".a.bundle",
            "a/b.bundle",
            "a\nb.bundle",
            "a.bundle.tmp",
            "a.Bundle",
            "",
        ] {
            assert!(check_bundle_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_escaped_for_display() {
        assert_eq!(display_name(b"a\nb.bundle"), "a\\nb.bundle");
        assert_eq!(display_name(b"\xffx.bundle"), "\\xffx.bundle");
        assert_eq!(display_name("ü.bundle".as_bytes()), "ü.bundle");
    }

    #[test]
    fn scan_on_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.bundle"), b"bb").unwrap();
        std::fs::write(dir.path().join("a.bundle"), b"a").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("._a.bundle"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil.bundle")).unwrap();
        std::fs::create_dir(dir.path().join("d.bundle")).unwrap();
        let limits = ScanLimits {
            max_bundles: 1,
            ..ScanLimits::default()
        };
        let scan = scan(dir.path(), &limits).unwrap();
        assert_eq!(
            scan.candidates,
            vec![Candidate {
                name: "a.bundle".into(),
                len: 1
            }]
        );
        let skipped: Vec<_> = scan.skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            skipped,
            ["._a.bundle", "b.bundle", "d.bundle", "evil.bundle"]
        );
        assert_eq!(scan.ignored, 1);
        assert!(!scan.truncated);
        let (_, len) = scan.open(&scan.candidates[0]).unwrap();
        assert_eq!(len, 1);
        let err = open_candidate(File::open(dir.path()).unwrap(), "evil.bundle").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::LOOP.raw_os_error()));
    }

    #[test]
    fn missing_folder_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let scan = scan(&dir.path().join("sideload"), &ScanLimits::default()).unwrap();
        assert!(scan.folder_missing());
        assert!(scan.candidates.is_empty() && scan.skipped.is_empty());
    }

    #[test]
    fn folder_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("sideload")).unwrap();
        let err = scan(&dir.path().join("sideload"), &ScanLimits::default()).unwrap_err();
        assert!(matches!(err, ScanError::NotAFolder { .. }), "{err}");
    }
}
