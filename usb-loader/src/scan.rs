//! Finding bundles in the stick's folder without trusting anything on the stick, and without
//! letting junk hide a good bundle.
//!
//! [`scan`] looks in exactly one folder (the caller passes the documented folder on the mounted
//! stick) and nowhere below it. It opens the folder without following a symlink and reads up to
//! [`ScanLimits::max_entries`] entries (more than a FAT32 folder can hold). Every entry named
//! like a bundle, `NAME.bundle` in any letter case (see [`check_bundle_name`]), gets cheap
//! checks in this order, and the first that fails makes it a [`Skipped`] entry with its reason:
//! its name; `lstat` (a regular file, not a symlink, FIFO, socket, device node or directory; no
//! larger than [`ScanLimits::max_bundle_bytes`]); then its first 32 bytes, read without
//! following a symlink or blocking on a FIFO: the bundle header (magic, a container version
//! this build reads, head lengths within [`Limits`], a file long enough for the head it
//! declares). Only entries that pass become [`Candidate`]s, so no number of junk files, empty
//! files or look-alikes can fill the places of real bundles: limits apply to work (entries
//! read, time spent, and in the loader, head bytes verified and bundles taken), never to names.
//! Names that look like a bundle but are not quite one (`a.bundle `, `a.bundle.part`) are
//! skipped with a reason too; other names are only counted. At most
//! [`ScanLimits::max_listed`] skipped entries are kept by name, the rest are counted.
//!
//! The [`Scan`] keeps the folder open: [`Scan::open`] opens a candidate relative to that same
//! folder (never by a path that could be swapped), again without following a symlink, without
//! blocking on a FIFO swapped in after the scan, and checks that it is still the regular file
//! of the length the scan saw.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use sideload_bundle::Limits;

/// The file name suffix of a bundle on a stick (compared without regard to case: FAT short
/// names and some tools write `.BUNDLE`).
pub const BUNDLE_SUFFIX: &str = ".bundle";

/// How much work the scan may do on one stick.
#[derive(Debug, Clone)]
pub struct ScanLimits {
    /// Directory entries read from the folder (whatever their names); the rest are not looked
    /// at and [`Scan::truncated`] is set. Default 100 000 (a FAT32 folder holds at most 65 536).
    pub max_entries: usize,
    /// Largest bundle file accepted, in bytes; larger ones are skipped. Default 32 GiB.
    pub max_bundle_bytes: u64,
    /// Time the scan may spend; bundle-named entries not checked by then are skipped with that
    /// reason (they stay on the stick). Default 5 minutes.
    pub max_time: Duration,
    /// Skipped entries kept by name (for the log and the receipt); the rest are only counted
    /// in [`Scan::skipped_unlisted`]. Default 10 000.
    pub max_listed: usize,
    /// The bundle engine's limits: heads declaring a larger statement or signature slot are
    /// skipped.
    pub engine: Limits,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_entries: 100_000,
            max_bundle_bytes: 32 << 30,
            max_time: Duration::from_secs(300),
            max_listed: 10_000,
            engine: Limits::default(),
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
    /// Length of its head (header, statement, signature slot) as its header declares it.
    pub head_len: u64,
    /// Stored statement length from its header (the signature slot follows it).
    pub statement_len: u32,
    /// Signature slot length from its header.
    pub slot_len: u32,
}

/// An entry named like a bundle that the scan did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The name as found, with control characters and bytes that are not UTF-8 escaped.
    pub name: String,
    /// Why it was skipped, for the log and the receipt.
    pub reason: String,
}

/// Why an entry named like a bundle (or nearly) is skipped: the reason its [`Skipped`] entry
/// and the receipt carry.
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    /// Nearly a bundle name, or a bundle name the device does not take.
    #[error("{0}")]
    Name(&'static str),
    /// The name's bytes are not UTF-8.
    #[error("name is not valid UTF-8")]
    NameNotUtf8,
    /// The scan ran out of time before this entry.
    #[error("not checked: the scan's time limit ({secs} s) ran out; it stays on the stick for another visit")]
    TimeUp {
        /// The limit, in seconds.
        secs: u64,
    },
    /// Gone between the listing and its `lstat`.
    #[error("vanished during the scan")]
    Vanished,
    /// Not a regular file (`what` it is instead).
    #[error("is {0}")]
    NotAFile(&'static str),
    /// Larger than `max_bundle_bytes`.
    #[error("is {len} bytes, over the limit max_bundle_bytes = {max}")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Its first bytes could not be read.
    #[error("cannot read its header: {0}")]
    Unreadable(io::Error),
    /// Shorter than a bundle header.
    #[error("too short to be a bundle ({len} bytes; a bundle starts with a {HEADER_LEN}-byte header)", HEADER_LEN = sideload_bundle::container::HEADER_LEN)]
    TooShort {
        /// Its length.
        len: u64,
    },
    /// No bundle magic.
    #[error("not a bundle: it does not start with the bundle header (SIDELOAD)")]
    NotABundle,
    /// A container version this build does not read.
    #[error("bundle container version {0}, this device reads versions {lo} to {hi}: update the device's sideload, or build the bundle with this device's version", lo = sideload_bundle::container::CONTAINER_VERSION_PLAIN_STATEMENT, hi = sideload_bundle::container::CONTAINER_VERSION)]
    Version(u16),
    /// Flags or reserved bytes set.
    #[error("damaged bundle header (flags or reserved bytes set): copy it again")]
    DamagedHeader,
    /// Head lengths over the limits.
    #[error("its header declares a {statement_len}-byte statement and a {slot_len}-byte signature slot, over the limits ({max_statement} and {max_slot})")]
    HeadOverLimits {
        /// Declared statement length.
        statement_len: u32,
        /// Declared signature slot length.
        slot_len: u32,
        /// `max_statement`.
        max_statement: u32,
        /// `max_signature_slot`.
        max_slot: u32,
    },
    /// Shorter than the head its header declares.
    #[error("truncated: its header declares a {head_len}-byte head, the file has {len} bytes; copy it again")]
    Truncated {
        /// The declared head length.
        head_len: u64,
        /// Its length.
        len: u64,
    },
}

/// The result of scanning a folder; keeps the folder open for [`Scan::open`]. Drop it (and the
/// files it opened) before unmounting, or the unmount ends in a lazy detach.
pub struct Scan {
    /// Files whose name and header look like a bundle, sorted by name.
    pub candidates: Vec<Candidate>,
    /// Entries named like bundles (or nearly) that were not accepted, sorted by name; at most
    /// [`ScanLimits::max_listed`].
    pub skipped: Vec<Skipped>,
    /// Skipped entries beyond [`ScanLimits::max_listed`], counted only.
    pub skipped_unlisted: usize,
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
            .field("skipped_unlisted", &self.skipped_unlisted)
            .field("ignored", &self.ignored)
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// Why a folder could not be scanned.
#[derive(Debug, thiserror::Error)]
// Each variant's #[error] message, which names every field, is its documentation.
#[allow(missing_docs)]
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
/// files), no control characters, and ending in [`BUNDLE_SUFFIX`], in any letter case, after
/// a non-empty stem.
pub fn check_bundle_name(name: &str) -> Result<(), &'static str> {
    if name.starts_with('.') {
        Err("hidden name (starts with a dot)")
    } else if name.contains('/') {
        Err("name contains '/'")
    } else if name.chars().any(char::is_control) {
        Err("name contains control characters")
    } else if !has_bundle_suffix(name.as_bytes()) || name.len() == BUNDLE_SUFFIX.len() {
        Err("name does not end in .bundle")
    } else {
        Ok(())
    }
}

/// Whether a name ends in `.bundle`, in any letter case.
fn has_bundle_suffix(name: &[u8]) -> bool {
    name.len() >= BUNDLE_SUFFIX.len()
        && name[name.len() - BUNDLE_SUFFIX.len()..].eq_ignore_ascii_case(BUNDLE_SUFFIX.as_bytes())
}

/// What a directory entry's name says about it.
#[derive(Debug, PartialEq, Eq)]
enum NameClass {
    /// Ends in `.bundle` (any case): looked at further.
    Bundle,
    /// Nearly a bundle name: skipped and listed with this reason.
    LookAlike(&'static str),
    /// Anything else: counted only.
    Other,
}

/// Classifies a raw name from the folder. Pure.
fn classify_name(name: &[u8]) -> NameClass {
    if has_bundle_suffix(name) {
        return NameClass::Bundle;
    }
    let trimmed = name
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'.' | b'\t'))
        .map_or(&name[..0], |i| &name[..=i]);
    if has_bundle_suffix(trimmed) {
        return NameClass::LookAlike(
            "name ends in spaces or dots after .bundle (Windows and macOS hide them): rename \
             it to end in .bundle",
        );
    }
    let lower = name.to_ascii_lowercase();
    if lower
        .windows(BUNDLE_SUFFIX.len())
        .any(|w| w == BUNDLE_SUFFIX.as_bytes())
    {
        return NameClass::LookAlike(
            "name does not end in .bundle (a partial or renamed copy?): copy the bundle again \
             under a name ending in .bundle",
        );
    }
    NameClass::Other
}

/// Checks the first bytes of a file of length `len` against the bundle header: magic, a
/// container version this build reads, zero flags and reserved bytes, head lengths within
/// `limits`, and a file long enough for the head it declares. Returns the candidate facts.
/// Pure: the full check (statement, signatures) comes later.
fn check_header(name: &str, header: &[u8], len: u64, limits: &Limits) -> Result<Candidate, Skip> {
    use sideload_bundle::container::{
        CONTAINER_VERSION, CONTAINER_VERSION_PLAIN_STATEMENT, HEADER_LEN, MAGIC,
    };
    if len < HEADER_LEN {
        return Err(Skip::TooShort { len });
    }
    if header.len() < HEADER_LEN as usize || header[..8] != MAGIC {
        return Err(Skip::NotABundle);
    }
    let version = u16::from_be_bytes([header[8], header[9]]);
    if version != CONTAINER_VERSION && version != CONTAINER_VERSION_PLAIN_STATEMENT {
        return Err(Skip::Version(version));
    }
    if header[10..12] != [0, 0] || header[20..32].iter().any(|&b| b != 0) {
        return Err(Skip::DamagedHeader);
    }
    let statement_len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    let slot_len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    if statement_len > limits.max_statement || slot_len > limits.max_signature_slot {
        return Err(Skip::HeadOverLimits {
            statement_len,
            slot_len,
            max_statement: limits.max_statement,
            max_slot: limits.max_signature_slot,
        });
    }
    let head_len = HEADER_LEN + u64::from(statement_len) + u64::from(slot_len);
    if len < head_len {
        return Err(Skip::Truncated { head_len, len });
    }
    Ok(Candidate {
        name: name.to_owned(),
        len,
        head_len,
        statement_len,
        slot_len,
    })
}

/// Scans the folder `dir` for bundles. A missing folder is an empty scan, not an error.
pub fn scan(dir: &Path, limits: &ScanLimits) -> Result<Scan, ScanError> {
    let mut result = Scan {
        candidates: Vec::new(),
        skipped: Vec::new(),
        skipped_unlisted: 0,
        ignored: 0,
        truncated: false,
        path: dir.to_owned(),
        dir: None,
        max_bundle_bytes: limits.max_bundle_bytes,
    };
    let Some(folder) = open_folder(dir)? else {
        return Ok(result);
    };
    let read_error = |e: Errno| ScanError::Read {
        path: dir.to_owned(),
        source: e.into(),
    };
    let started = Instant::now();
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
        let checked: Result<Candidate, Skip> = match classify_name(bytes) {
            NameClass::Other => {
                result.ignored += 1;
                continue;
            }
            NameClass::LookAlike(reason) => Err(Skip::Name(reason)),
            NameClass::Bundle if started.elapsed() > limits.max_time => Err(Skip::TimeUp {
                secs: limits.max_time.as_secs(),
            }),
            NameClass::Bundle => match check_entry(&folder, raw, limits) {
                Ok(candidate) => Ok(candidate),
                Err(EntryError::Skip(reason)) => Err(reason),
                Err(EntryError::Stat(source)) => {
                    return Err(ScanError::Stat {
                        path: dir.to_owned(),
                        name: display_name(bytes),
                        source,
                    })
                }
            },
        };
        match checked {
            Ok(candidate) => result.candidates.push(candidate),
            Err(reason) => result.skip(bytes, reason.to_string(), limits),
        }
    }
    drop(entries);

    result.candidates.sort_by(|a, b| a.name.cmp(&b.name));
    result.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    result.dir = Some(folder);
    Ok(result)
}

/// Opens the folder without following a symlink; `None` if it does not exist.
fn open_folder(dir: &Path) -> Result<Option<OwnedFd>, ScanError> {
    let opened = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    match opened {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP) => Err(ScanError::NotAFolder {
            path: dir.to_owned(),
            reason: "it is a symbolic link (not followed)",
        }),
        Err(Errno::NOTDIR) => Err(ScanError::NotAFolder {
            path: dir.to_owned(),
            reason: "it is not a directory",
        }),
        Err(e) => Err(ScanError::Open {
            path: dir.to_owned(),
            source: e.into(),
        }),
    }
}

/// Why one bundle-named entry is not a candidate.
enum EntryError {
    /// Skipped, with the reason for the receipt.
    Skip(Skip),
    /// `lstat` failed for another reason than the entry vanishing: the stick is failing.
    Stat(io::Error),
}

/// The cheap checks of one bundle-named entry, in order: name, `lstat` (type and size), header.
fn check_entry(
    folder: &OwnedFd,
    raw: &std::ffi::CStr,
    limits: &ScanLimits,
) -> Result<Candidate, EntryError> {
    let name =
        std::str::from_utf8(raw.to_bytes()).map_err(|_| EntryError::Skip(Skip::NameNotUtf8))?;
    check_bundle_name(name).map_err(|reason| EntryError::Skip(Skip::Name(reason)))?;
    let stat = match rustix::fs::statat(folder, raw, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Err(EntryError::Skip(Skip::Vanished)),
        Err(e) => return Err(EntryError::Stat(e.into())),
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
        return Err(EntryError::Skip(Skip::NotAFile(what)));
    }
    let len = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if len > limits.max_bundle_bytes {
        return Err(EntryError::Skip(Skip::TooLarge {
            len,
            max: limits.max_bundle_bytes,
        }));
    }
    let mut header = Vec::with_capacity(32);
    if len >= sideload_bundle::container::HEADER_LEN {
        let read = open_candidate(folder, name).and_then(|(file, _)| {
            file.take(sideload_bundle::container::HEADER_LEN)
                .read_to_end(&mut header)
        });
        if let Err(e) = read {
            return Err(EntryError::Skip(Skip::Unreadable(e)));
        }
    }
    check_header(name, &header, len, &limits.engine).map_err(EntryError::Skip)
}

impl Scan {
    /// Records a skipped entry: by name up to `max_listed`, counted beyond.
    fn skip(&mut self, name: &[u8], reason: String, limits: &ScanLimits) {
        if self.skipped.len() < limits.max_listed {
            self.skipped.push(Skipped {
                name: display_name(name),
                reason,
            });
        } else {
            self.skipped_unlisted += 1;
        }
    }

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

    /// A file that passes the header check: a version 2 header declaring a `statement`-byte
    /// statement and a `slot`-byte slot, then that many bytes.
    pub(crate) fn bundle_like(statement: u32, slot: u32) -> Vec<u8> {
        let mut bytes = b"SIDELOAD\0\x02\0\0".to_vec();
        bytes.extend_from_slice(&statement.to_be_bytes());
        bytes.extend_from_slice(&slot.to_be_bytes());
        bytes.resize(32, 0);
        bytes.resize(32 + statement as usize + slot as usize, b' ');
        bytes
    }

    #[test]
    fn bundle_names() {
        for good in [
            "a.bundle",
            "app-1.2.3.bundle",
            "ü ber.bundle",
            "x.y.bundle",
            "a.Bundle",
            "UPPER.BUNDLE",
        ] {
            assert_eq!(check_bundle_name(good), Ok(()), "{good}");
        }
        for bad in [
            ".bundle",
            ".BUNDLE",
            "._a.bundle",
            ".a.bundle",
            "a/b.bundle",
            "a\nb.bundle",
            "a.bundle.tmp",
            "",
        ] {
            assert!(check_bundle_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn look_alike_names_are_told_apart_from_other_files() {
        assert_eq!(classify_name(b"a.bundle"), NameClass::Bundle);
        assert_eq!(classify_name(b"UPPER.BUNDLE"), NameClass::Bundle);
        for odd in [
            &b"a.bundle "[..],
            b"a.bundle.",
            b"a.BUNDLE \t",
            b"a.bundle.part",
        ] {
            assert!(
                matches!(classify_name(odd), NameClass::LookAlike(_)),
                "{odd:?}"
            );
        }
        assert!(
            matches!(classify_name(b"a.bundle ") , NameClass::LookAlike(r) if r.contains("spaces"))
        );
        for other in [&b"README.txt"[..], b"a.bundl", b"bundle", b""] {
            assert_eq!(classify_name(other), NameClass::Other, "{other:?}");
        }
    }

    #[test]
    fn headers_are_checked_before_a_bundle_is_a_candidate() {
        let limits = Limits::default();
        let good = bundle_like(10, 20);
        let c = check_header("a.bundle", &good[..32], 62, &limits).unwrap();
        assert_eq!((c.head_len, c.statement_len, c.slot_len), (62, 10, 20));
        let reason = |header: &[u8], len: u64| {
            check_header("a.bundle", header, len, &limits)
                .unwrap_err()
                .to_string()
        };
        assert!(reason(&[], 0).contains("too short"));
        assert!(reason(&[0; 32], 100).contains("not a bundle"));
        let mut v9 = good.clone();
        v9[9] = 9;
        assert!(reason(&v9[..32], 62).contains("version 9"));
        let mut flags = good.clone();
        flags[11] = 1;
        assert!(reason(&flags[..32], 62).contains("damaged"));
        assert!(reason(&good[..32], 61).contains("truncated"));
        let huge = bundle_like(0, 0);
        let mut huge = huge[..32].to_vec();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(reason(&huge, u64::MAX).contains("over the limits"));
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
        std::fs::write(dir.path().join("a.bundle"), bundle_like(1, 2)).unwrap();
        std::fs::write(dir.path().join("C.BUNDLE"), bundle_like(3, 4)).unwrap();
        std::fs::write(dir.path().join("c.bundle "), bundle_like(3, 4)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("._a.bundle"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil.bundle")).unwrap();
        std::fs::create_dir(dir.path().join("d.bundle")).unwrap();
        let scan = scan(dir.path(), &ScanLimits::default()).unwrap();
        let names: Vec<_> = scan
            .candidates
            .iter()
            .map(|c| (c.name.as_str(), c.len))
            .collect();
        assert_eq!(names, [("C.BUNDLE", 39), ("a.bundle", 35)]);
        let skipped: Vec<_> = scan.skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "._a.bundle",
                "b.bundle",
                "c.bundle ",
                "d.bundle",
                "evil.bundle"
            ]
        );
        assert_eq!(scan.ignored, 1);
        assert!(!scan.truncated);
        let (_, len) = scan.open(&scan.candidates[1]).unwrap();
        assert_eq!(len, 35);
        let err = open_candidate(File::open(dir.path()).unwrap(), "evil.bundle").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::LOOP.raw_os_error()));
    }

    #[test]
    fn skipped_entries_past_the_listing_limit_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..30 {
            std::fs::write(dir.path().join(format!("junk{i}.bundle")), b"junk").unwrap();
        }
        let limits = ScanLimits {
            max_listed: 10,
            ..ScanLimits::default()
        };
        let scan = scan(dir.path(), &limits).unwrap();
        assert_eq!((scan.skipped.len(), scan.skipped_unlisted), (10, 20));
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
