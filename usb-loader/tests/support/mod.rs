//! Test support: real USB stick images on loop devices, and checks that nothing stays mounted.
//!
//! - [`Image`] builds a filesystem image from a directory without mounting anything
//!   (`mkfs.ext4 -q -d DIR IMAGE SIZE`), or an empty vfat image, or raw bytes.
//! - [`Image::attach`] / [`Image::attach_read_only`] put it on a loop device
//!   (`losetup -f --show`); the [`Stick`] detaches it when dropped.
//! - [`MountRoot`] is a fresh mount root; when dropped it fails the test if anything is still
//!   mounted below it (and lazily unmounts it, so one failing test does not leak into others).
//! - [`mounts_under`] lists mounts below a path from `/proc/self/mountinfo`.
//!
//! Needs root, `/dev/loop-control`, `mkfs.ext4` and `losetup`; without them a test fails and
//! says so, it never skips. Declare in this order so drops run in reverse: `MountRoot`, then the
//! `Stick`, then the mount.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Runs a command, failing the test with its output if it does not succeed.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Fails the test unless it runs as root with loop devices available.
pub fn require_root_and_loop() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "these tests mount real filesystems: run them as root"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "these tests need loop devices (/dev/loop-control is missing; modprobe loop)"
    );
}

/// How to build an ext4 image.
#[derive(Debug, Clone)]
pub struct Ext4 {
    /// Image size in MiB.
    pub size_mib: u64,
    /// Number of inodes (`mkfs.ext4 -N`), for directories with many entries.
    pub inodes: Option<u64>,
    /// Volume label (`mkfs.ext4 -L`).
    pub label: Option<String>,
}

impl Default for Ext4 {
    fn default() -> Self {
        Ext4 {
            size_mib: 32,
            inodes: None,
            label: None,
        }
    }
}

/// A filesystem image file in its own temporary directory.
#[derive(Debug)]
pub struct Image {
    dir: TempDir,
    path: PathBuf,
}

impl Image {
    fn empty_dir() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir for the image");
        let path = dir.path().join("stick.img");
        (dir, path)
    }

    /// An ext4 image (32 MiB) holding a copy of `src` (which becomes the stick's root).
    pub fn ext4(src: &Path) -> Image {
        Image::ext4_with(src, &Ext4::default())
    }

    /// An ext4 image holding a copy of `src`, built with `options`. `mkfs.ext4 -d` copies
    /// regular files, directories, symlinks, FIFOs, sockets and device nodes as they are.
    pub fn ext4_with(src: &Path, options: &Ext4) -> Image {
        let (dir, path) = Image::empty_dir();
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-d"]).arg(src);
        if let Some(inodes) = options.inodes {
            cmd.arg("-N").arg(inodes.to_string());
        }
        if let Some(label) = &options.label {
            cmd.arg("-L").arg(label);
        }
        cmd.arg(&path).arg(format!("{}M", options.size_mib));
        run(&mut cmd);
        Image { dir, path }
    }

    /// An empty vfat image (`mkfs.vfat`).
    pub fn vfat(size_mib: u64) -> Image {
        let (dir, path) = Image::empty_dir();
        run(Command::new("mkfs.vfat")
            .arg("-C")
            .arg(&path)
            .arg((size_mib * 1024).to_string()));
        Image { dir, path }
    }

    /// An image made of exactly these bytes (a stick with no or a corrupt filesystem).
    pub fn raw(bytes: &[u8]) -> Image {
        let (dir, path) = Image::empty_dir();
        std::fs::write(&path, bytes).expect("write raw image");
        Image { dir, path }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Overwrites `bytes.len()` bytes at `offset` (e.g. zero the ext4 superblock at 1024).
    pub fn overwrite(&self, offset: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open image");
        file.seek(SeekFrom::Start(offset)).expect("seek image");
        file.write_all(bytes).expect("write image");
        file.sync_all().expect("sync image");
    }

    /// Attaches the image to a free loop device, read-write.
    pub fn attach(self) -> Stick {
        self.attach_as(false)
    }

    /// Attaches the image to a free loop device, read-only (a write-protected stick).
    pub fn attach_read_only(self) -> Stick {
        self.attach_as(true)
    }

    fn attach_as(self, read_only: bool) -> Stick {
        let dev = LoopDevice::attach(&self.path, read_only);
        Stick { dev, image: self }
    }
}

/// A loop device; detached (`losetup -d`) when dropped. If it is still mounted the kernel
/// detaches it when the last mount goes.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// `losetup -f --show [-r] IMAGE`.
    pub fn attach(image: &Path, read_only: bool) -> LoopDevice {
        require_root_and_loop();
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if read_only {
            cmd.arg("-r");
        }
        let output = run(cmd.arg(image));
        let path = String::from_utf8(output.stdout).expect("losetup prints a path");
        LoopDevice {
            path: PathBuf::from(path.trim()),
        }
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let result = Command::new("losetup").arg("-d").arg(&self.path).output();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "losetup -d {} failed: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cannot run losetup -d {}: {e}", self.path.display()),
        }
    }
}

/// A stick: an image on a loop device.
#[derive(Debug)]
pub struct Stick {
    dev: LoopDevice,
    image: Image,
}

impl Stick {
    /// The block device to mount.
    pub fn device(&self) -> &Path {
        self.dev.path()
    }

    /// The image file behind it.
    pub fn image(&self) -> &Path {
        self.image.path()
    }

    /// The loop device's name (`loop3`), as udev and `/sys/block` call it.
    pub fn name(&self) -> String {
        self.device()
            .file_name()
            .expect("device name")
            .to_string_lossy()
            .into_owned()
    }

    /// Mounts the stick read-write at a temporary directory (with `mount(8)`: this is test
    /// setup, not the loader), runs `fill` on its root, and unmounts it again, even if `fill`
    /// panics. For contents `mkfs.ext4 -d` is too slow for: it inserts directory entries one by
    /// one without an index, so a 100 000-entry folder takes about 15 minutes (10 000: 9 s,
    /// 20 000: 35 s with e2fsprogs 1.47.0), while the kernel creates them in about a second.
    pub fn fill(&self, fill: impl FnOnce(&Path)) {
        struct Unmount(TempDir);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(self.0.path()).output();
            }
        }
        let at = Unmount(tempfile::tempdir().expect("tempdir to fill the stick"));
        run(Command::new("mount").arg(self.device()).arg(at.0.path()));
        fill(at.0.path());
        drop(at);
    }

    /// Simulates pulling the stick out: truncates the image to nothing and tells the loop
    /// device (`losetup -c`), so its capacity drops to 0 and every read the kernel has not
    /// cached fails with EIO, as for a vanished USB device.
    pub fn pull(&self) {
        OpenOptions::new()
            .write(true)
            .open(self.image())
            .and_then(|f| f.set_len(0))
            .expect("truncate image");
        run(Command::new("losetup").arg("-c").arg(self.device()));
        let size = std::fs::read_to_string(format!("/sys/block/{}/size", self.name()))
            .expect("read /sys/block/loopN/size");
        assert_eq!(size.trim(), "0", "the loop device still has a capacity");
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Per-mount options: `ro`, `nosuid`, `nodev`, `noexec`, `noatime`, `nosymfollow`, ...
    pub mount_options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Filesystem options (`errors=remount-ro`, `uid=0`, ...).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether a per-mount option is set.
    pub fn has(&self, option: &str) -> bool {
        self.mount_options.iter().any(|o| o == option)
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount at or below `path`, from `/proc/self/mountinfo`.
pub fn mounts_under(path: &Path) -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mut found = Vec::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < dash + 4 {
            continue;
        }
        let mount_point = PathBuf::from(unescape(fields[4]));
        if !mount_point.starts_with(path) {
            continue;
        }
        found.push(MountEntry {
            mount_point,
            mount_options: fields[5].split(',').map(str::to_owned).collect(),
            fs_type: fields[dash + 1].to_owned(),
            source: unescape(fields[dash + 2]),
            super_options: fields[dash + 3].split(',').map(str::to_owned).collect(),
        });
    }
    found
}

/// The mount under `path` exactly, if there is one.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts_under(path)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Fails the test if anything is mounted at or below `path`.
pub fn assert_nothing_mounted_under(path: &Path) {
    let left = mounts_under(path);
    assert!(
        left.is_empty(),
        "still mounted under {}: {left:#?}",
        path.display()
    );
}

/// A fresh, empty mount root (a temporary directory). Dropping it fails the test if anything
/// is still mounted below it, after lazily unmounting whatever is, so the machine stays clean.
#[derive(Debug)]
pub struct MountRoot {
    dir: TempDir,
}

impl MountRoot {
    pub fn new() -> MountRoot {
        require_root_and_loop();
        MountRoot {
            dir: tempfile::tempdir().expect("tempdir for the mount root"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The entries left in the mount root (mount points that were not removed).
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .expect("read mount root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Default for MountRoot {
    fn default() -> Self {
        MountRoot::new()
    }
}

impl Drop for MountRoot {
    fn drop(&mut self) {
        let left = mounts_under(self.path());
        for mount in left.iter().rev() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&mount.mount_point)
                .output();
        }
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "still mounted under {} at the end of the test: {left:#?}",
                self.path().display()
            );
        }
    }
}
