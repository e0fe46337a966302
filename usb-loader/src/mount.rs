//! Mounting a stick safely, and always unmounting it.
//!
//! [`mount_readonly`] creates a private mount point `MOUNT_ROOT/NAME` (mode 0700), and mounts
//! the device there with mount(2) (never a shell, never `mount(8)`), with
//! `ro,nosuid,nodev,noexec,noatime,nosymfollow` and, per filesystem type, data options that keep
//! a FAT/exFAT stick's files owned by root and not executable (see [`data_options`]). The
//! returned [`Mounted`] unmounts the filesystem and removes the mount point when dropped; call
//! [`Mounted::unmount`] to see what went wrong instead of a log line.
//!
//! Receipts are written with [`Mounted::writable`] (or the pair [`Mounted::remount_writable`],
//! [`Mounted::remount_readonly`]): the mount becomes read-write for as short a time as possible,
//! and keeps `nosuid,nodev,noexec,nosymfollow` while it is.
//!
//! What this module does not do: decide which devices or filesystem types are acceptable (the
//! caller checks udev's properties first), or look at files on the stick (see
//! [`crate::scan`]). Mount propagation is the unit's business: run the loader with
//! `PrivateMounts=yes` so the mount is invisible outside the service and disappears with it even
//! if the process is killed before [`Mounted`] is dropped.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// How often [`Mounted::unmount`] tries a plain unmount while the filesystem is busy, before it
/// detaches it lazily.
pub const UNMOUNT_ATTEMPTS: u32 = 5;

/// The pause between two busy unmount attempts.
pub const UNMOUNT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// The per-mount flags every stick is mounted with, besides `MS_RDONLY`.
const SAFE_FLAGS: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC)
    .union(MountFlags::NOATIME)
    .union(MountFlags::NOSYMFOLLOW);

/// The filesystem-specific mount data the loader passes for `fs_type`, or `None` for a type it
/// has no special options for (the kernel's defaults then apply).
///
/// - `vfat`: every file owned by root, mode 0600 (directories 0700), names as UTF-8, long names
///   kept as written, remount read-only on a filesystem error.
/// - `exfat`: the same ownership and modes, names as UTF-8.
/// - `ext2`, `ext3`, `ext4`: remount read-only on a filesystem error. Ownership and modes come
///   from the stick; `nosuid,nodev,noexec` make them harmless.
pub fn data_options(fs_type: &str) -> Option<&'static CStr> {
    match fs_type {
        "vfat" => Some(c"uid=0,gid=0,fmask=0177,dmask=0077,utf8,shortname=mixed,errors=remount-ro"),
        "exfat" => Some(c"uid=0,gid=0,fmask=0177,dmask=0077,iocharset=utf8,errors=remount-ro"),
        "ext2" | "ext3" | "ext4" => Some(c"errors=remount-ro"),
        _ => None,
    }
}

/// Why a stick could not be mounted, remounted or unmounted.
#[derive(Debug, thiserror::Error)]
// Each variant's #[error] message, which names every field, is its documentation.
#[allow(missing_docs)]
pub enum MountError {
    /// The mount point name is not a plain, short file name.
    #[error("refusing mount point name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The filesystem type is not a plain lower-case word.
    #[error("refusing filesystem type {fs_type:?} for {}: not a filesystem type name", device.display())]
    InvalidFsType { device: PathBuf, fs_type: String },
    /// The mount point (or its parent) could not be created or inspected.
    #[error("cannot prepare mount point {}: {source}", path.display())]
    MountPoint { path: PathBuf, source: io::Error },
    /// Something is already at the mount point and it cannot be reused.
    #[error("mount point {} is in the way: {reason}", path.display())]
    MountPointInUse { path: PathBuf, reason: &'static str },
    /// mount(2) refused the device.
    #[error("cannot mount {} ({fs_type}) on {}: {source}", device.display(), target.display())]
    Mount {
        device: PathBuf,
        fs_type: String,
        target: PathBuf,
        source: io::Error,
    },
    /// The stick refuses writes (write-protect switch, read-only device).
    #[error("{} on {} cannot be made writable: {source}", device.display(), target.display())]
    WriteProtected {
        device: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
    /// A remount failed for another reason.
    #[error("cannot remount {} on {} {}: {source}", device.display(), target.display(), if *writable { "read-write" } else { "read-only" })]
    Remount {
        device: PathBuf,
        target: PathBuf,
        writable: bool,
        source: io::Error,
    },
    /// umount(2) failed.
    #[error("cannot unmount {} from {}: {source}", device.display(), target.display())]
    Unmount {
        device: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
    /// The filesystem stayed busy; it was detached lazily and the kernel releases the device
    /// only when the last open file on it is closed.
    #[error("{} on {} stayed busy after {attempts} unmount attempts; detached lazily", device.display(), target.display())]
    DetachedLazily {
        device: PathBuf,
        target: PathBuf,
        attempts: u32,
    },
    /// The filesystem is unmounted but its (empty) mount point could not be removed.
    #[error("unmounted, but cannot remove mount point {}: {source}", path.display())]
    RemoveMountPoint { path: PathBuf, source: io::Error },
}

impl MountError {
    /// The OS error behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            MountError::MountPoint { source, .. }
            | MountError::Mount { source, .. }
            | MountError::WriteProtected { source, .. }
            | MountError::Remount { source, .. }
            | MountError::Unmount { source, .. }
            | MountError::RemoveMountPoint { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// What a person should do about it.
    pub fn advice(&self) -> &'static str {
        let errno = self.errno().map(Errno::from_raw_os_error);
        match self {
            MountError::InvalidName { .. } | MountError::InvalidFsType { .. } => {
                "this is a bug in the caller or the udev rule; report it"
            }
            MountError::MountPoint { .. } => {
                "check that the mount root exists, is a directory and is writable by the loader"
            }
            MountError::MountPointInUse { .. } => {
                "a previous run may have left a mount there; unmount it (umount PATH) or reboot"
            }
            MountError::Mount { .. } => match errno {
                Some(Errno::NODEV) => {
                    "this kernel cannot mount that filesystem type; format the stick as ext4 or \
                     load the filesystem's kernel module"
                }
                Some(Errno::NXIO | Errno::NOENT | Errno::NOMEDIUM | Errno::NOTBLK) => {
                    "the device went away; insert the stick again"
                }
                Some(Errno::BUSY) => "the device is already mounted or in use elsewhere",
                Some(Errno::PERM | Errno::ACCESS) => {
                    "mounting needs CAP_SYS_ADMIN; run the loader from its systemd unit as root"
                }
                _ => {
                    "the filesystem is damaged or not what udev says; check the stick on another \
                     machine"
                }
            },
            MountError::WriteProtected { .. } => {
                "the stick is write-protected; no receipts are written to it (bundles still apply)"
            }
            MountError::Remount { .. } => {
                "the filesystem may be damaged or still busy; check the stick on another machine"
            }
            MountError::Unmount { .. } | MountError::RemoveMountPoint { .. } => {
                "the loader could not clean up; unmount the path by hand before the next stick"
            }
            MountError::DetachedLazily { .. } => {
                "something still had a file open on the stick; wait for it to finish before \
                 pulling the stick"
            }
        }
    }
}

/// A mounted stick. Dropping it unmounts the filesystem and removes the mount point.
pub struct Mounted {
    device: PathBuf,
    fs_type: String,
    target: PathBuf,
    name: String,
    /// The mount root, kept open so the mount point is removed from the same directory.
    root: OwnedFd,
    data: Option<&'static CStr>,
    mounted: bool,
    dir_present: bool,
}

impl fmt::Debug for Mounted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mounted")
            .field("device", &self.device)
            .field("fs_type", &self.fs_type)
            .field("target", &self.target)
            .field("mounted", &self.mounted)
            .finish()
    }
}

/// Mounts `devnode` (a `fs_type` filesystem) read-only at `mount_root/name`.
///
/// `mount_root` is created (mode 0700) if it does not exist; it belongs to the loader's
/// configuration and is trusted. `name` must be a plain file name (letters, digits, `-_.@:+`, not
/// starting with a dot). The mount point is created with mode 0700; an existing one is reused
/// only if it is a real directory (not a symlink), owned like the mount root, empty and not a
/// mount point. On any failure the mount point is removed again.
pub fn mount_readonly(
    devnode: &Path,
    fs_type: &str,
    mount_root: &Path,
    name: &str,
) -> Result<Mounted, MountError> {
    check_name(name)?;
    if fs_type.is_empty()
        || fs_type.len() > 32
        || !fs_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(MountError::InvalidFsType {
            device: devnode.to_owned(),
            fs_type: fs_type.to_owned(),
        });
    }
    let target = mount_root.join(name);
    let mount_point_error = |path: &Path, source: io::Error| MountError::MountPoint {
        path: path.to_owned(),
        source,
    };

    if !Path::new("/proc/self/fd").is_dir() {
        return Err(mount_point_error(
            &target,
            io::Error::new(
                io::ErrorKind::NotFound,
                "/proc is not mounted; the loader needs /proc/self/fd",
            ),
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(mount_root)
        .map_err(|e| mount_point_error(mount_root, e))?;
    let root = rustix::fs::open(
        mount_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| mount_point_error(mount_root, e.into()))?;
    let dir = prepare_mount_point(&root, name, &target)?;

    // From here on the mount point exists; `Mounted` removes it on every path out.
    let mut mounted = Mounted {
        device: devnode.to_owned(),
        fs_type: fs_type.to_owned(),
        target,
        name: name.to_owned(),
        root,
        data: data_options(fs_type),
        mounted: false,
        dir_present: true,
    };
    // Mount onto the directory we checked, through its descriptor: a symlink swapped in at the
    // path after the check is never followed.
    let pinned = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    rustix::mount::mount(
        devnode,
        &pinned,
        fs_type,
        MountFlags::RDONLY | SAFE_FLAGS,
        mounted.data,
    )
    .map_err(|e| MountError::Mount {
        device: mounted.device.clone(),
        fs_type: mounted.fs_type.clone(),
        target: mounted.target.clone(),
        source: e.into(),
    })?;
    drop(dir);
    mounted.mounted = true;
    tracing::debug!(
        device = %mounted.device.display(),
        fs_type,
        target = %mounted.target.display(),
        "mounted read-only"
    );
    Ok(mounted)
}

fn check_name(name: &str) -> Result<(), MountError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 64 {
        Some("longer than 64 bytes")
    } else if name.starts_with('.') {
        Some("starts with a dot")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@:+".contains(&b))
    {
        Some("only letters, digits and -_.@:+ are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MountError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates `root/name` (0700), or checks that an existing one can be reused, and opens it
/// without following a symlink.
fn prepare_mount_point(root: &OwnedFd, name: &str, target: &Path) -> Result<OwnedFd, MountError> {
    let in_use = |reason| MountError::MountPointInUse {
        path: target.to_owned(),
        reason,
    };
    let io_error = |e: Errno| MountError::MountPoint {
        path: target.to_owned(),
        source: e.into(),
    };
    let created = match rustix::fs::mkdirat(root, name, Mode::RWXU) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(io_error(e)),
    };
    let opened = rustix::fs::openat(
        root,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let dir = match opened {
        Ok(dir) => dir,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return Err(in_use("it is not a directory (or is a symlink)"))
        }
        Err(e) => return Err(io_error(e)),
    };
    if created {
        return Ok(dir);
    }
    let root_stat = rustix::fs::fstat(root).map_err(io_error)?;
    let stat = rustix::fs::fstat(&dir).map_err(io_error)?;
    if stat.st_dev != root_stat.st_dev {
        return Err(in_use("something is already mounted there"));
    }
    if stat.st_uid != root_stat.st_uid {
        return Err(in_use("it is owned by another user than the mount root"));
    }
    let mut entries = rustix::fs::Dir::read_from(&dir).map_err(io_error)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(io_error)?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            return Err(in_use("it is not empty"));
        }
    }
    rustix::fs::fchmod(&dir, Mode::RWXU).map_err(io_error)?;
    Ok(dir)
}

impl Mounted {
    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The device node that was mounted.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The filesystem type it was mounted as.
    pub fn fs_type(&self) -> &str {
        &self.fs_type
    }

    /// Makes the mount read-write (still `nosuid,nodev,noexec,noatime,nosymfollow`).
    ///
    /// A write-protected stick gives [`MountError::WriteProtected`]: write no receipts, carry on.
    pub fn remount_writable(&self) -> Result<(), MountError> {
        self.remount(false)
    }

    /// Makes the mount read-only again. The kernel writes out what is pending first.
    pub fn remount_readonly(&self) -> Result<(), MountError> {
        self.remount(true)
    }

    /// Makes the mount read-write until the returned guard is finished or dropped.
    pub fn writable(&self) -> Result<Writable<'_>, MountError> {
        self.remount_writable()?;
        Ok(Writable {
            mounted: self,
            done: false,
        })
    }

    fn remount(&self, read_only: bool) -> Result<(), MountError> {
        let flags = if read_only {
            MountFlags::RDONLY | SAFE_FLAGS
        } else {
            SAFE_FLAGS
        };
        let data = self.data.unwrap_or(c"");
        rustix::mount::mount_remount(&self.target, flags, data).map_err(|e| {
            match (read_only, e) {
                (false, Errno::ROFS | Errno::ACCESS | Errno::PERM) => MountError::WriteProtected {
                    device: self.device.clone(),
                    target: self.target.clone(),
                    source: e.into(),
                },
                _ => MountError::Remount {
                    device: self.device.clone(),
                    target: self.target.clone(),
                    writable: !read_only,
                    source: e.into(),
                },
            }
        })?;
        tracing::debug!(
            target = %self.target.display(),
            read_only,
            "remounted"
        );
        Ok(())
    }

    /// Unmounts the filesystem and removes the mount point.
    ///
    /// While the filesystem is busy the unmount is retried [`UNMOUNT_ATTEMPTS`] times,
    /// [`UNMOUNT_RETRY_DELAY`] apart; then it is detached lazily and
    /// [`MountError::DetachedLazily`] says so (the mount point is gone either way).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), MountError> {
        let mut result = Ok(());
        if self.mounted {
            result = self.unmount_retrying();
        }
        if !self.mounted && self.dir_present {
            match rustix::fs::unlinkat(&self.root, self.name.as_str(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => self.dir_present = false,
                Err(e) => {
                    let error = MountError::RemoveMountPoint {
                        path: self.target.clone(),
                        source: e.into(),
                    };
                    if result.is_ok() {
                        result = Err(error);
                    } else {
                        tracing::warn!("{error}");
                    }
                }
            }
        }
        result
    }

    fn unmount_retrying(&mut self) -> Result<(), MountError> {
        for attempt in 1..=UNMOUNT_ATTEMPTS {
            match rustix::mount::unmount(&self.target, UnmountFlags::NOFOLLOW) {
                Ok(()) => {
                    self.mounted = false;
                    tracing::debug!(target = %self.target.display(), "unmounted");
                    return Ok(());
                }
                // Not a mount point any more: someone else unmounted it.
                Err(Errno::INVAL) if !self.is_mount_point() => {
                    tracing::warn!(
                        target = %self.target.display(),
                        "was already unmounted by someone else"
                    );
                    self.mounted = false;
                    return Ok(());
                }
                Err(Errno::BUSY) => {
                    tracing::debug!(target = %self.target.display(), attempt, "busy; retrying");
                    if attempt < UNMOUNT_ATTEMPTS {
                        std::thread::sleep(UNMOUNT_RETRY_DELAY);
                    }
                }
                Err(e) => {
                    return Err(MountError::Unmount {
                        device: self.device.clone(),
                        target: self.target.clone(),
                        source: e.into(),
                    })
                }
            }
        }
        rustix::mount::unmount(&self.target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            .map_err(|e| MountError::Unmount {
                device: self.device.clone(),
                target: self.target.clone(),
                source: e.into(),
            })?;
        self.mounted = false;
        Err(MountError::DetachedLazily {
            device: self.device.clone(),
            target: self.target.clone(),
            attempts: UNMOUNT_ATTEMPTS,
        })
    }

    /// Whether something is mounted on our mount point (its device differs from the root's).
    fn is_mount_point(&self) -> bool {
        let here = rustix::fs::statat(&self.root, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW);
        match (here, rustix::fs::fstat(&self.root)) {
            (Ok(here), Ok(root)) => {
                FileType::from_raw_mode(here.st_mode) == FileType::Directory
                    && here.st_dev != root.st_dev
            }
            _ => false,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(error) = self.unmount_inner() {
            tracing::error!(advice = error.advice(), "{error}");
        }
    }
}

/// The mount is read-write while this lives; [`Writable::finish`] (or dropping it) makes it
/// read-only again.
#[derive(Debug)]
pub struct Writable<'a> {
    mounted: &'a Mounted,
    done: bool,
}

impl Writable<'_> {
    /// Where the (now writable) filesystem is mounted.
    pub fn path(&self) -> &Path {
        self.mounted.path()
    }

    /// Makes the mount read-only again and says whether that worked.
    pub fn finish(mut self) -> Result<(), MountError> {
        self.done = true;
        self.mounted.remount_readonly()
    }
}

impl Drop for Writable<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(error) = self.mounted.remount_readonly() {
                tracing::error!(advice = error.advice(), "{error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for good in ["sdb1", "loop0", "mmcblk0p1", "dev-sdb1", "usb@1:2+x_y.z"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_fs_type_is_refused_before_touching_anything() {
        let root = tempfile::tempdir().unwrap();
        let err = mount_readonly(Path::new("/dev/null"), "ext4,ro", root.path(), "x").unwrap_err();
        assert!(matches!(err, MountError::InvalidFsType { .. }), "{err}");
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn data_options_per_type() {
        assert_eq!(data_options("ext4"), Some(c"errors=remount-ro"));
        assert!(data_options("vfat")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("fmask=0177"));
        assert_eq!(data_options("btrfs"), None);
    }
}
