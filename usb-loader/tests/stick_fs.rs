//! Mounting and scanning real sticks: ext4 images built with `mkfs.ext4 -d`, attached to loop
//! devices and mounted with the loader's own mount code. Each test checks at its end (through
//! [`support::MountRoot`]) that nothing stays mounted.
//!
//! Needs root, loop devices, `mkfs.ext4` and `losetup`; a missing one fails the test, it never
//! skips. Run with `cargo test -p sideload-usb-loader --test stick_fs -- --nocapture` to see the
//! errors and timings the tests print.

mod support;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sideload_usb_loader::mount::{mount_readonly, MountError};
use sideload_usb_loader::scan::{open_candidate, scan, Candidate, ScanLimits};
use support::{mount_at, run, Ext4, Image, MountRoot};

const EROFS: i32 = 30;
const EIO: i32 = 5;

/// Deterministic bytes that do not compress (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `len` bytes (at least 32) that pass the scan's cheap header check: a bundle header that
/// declares an empty statement and signature slot, then noise. Not a bundle the loader would
/// trust; these tests are about the filesystem side.
fn fake_bundle(len: usize, seed: u64) -> Vec<u8> {
    assert!(len >= 32);
    let mut bytes = noise(len, seed);
    bytes[..32].fill(0);
    bytes[..8].copy_from_slice(b"SIDELOAD");
    bytes[9] = 2;
    bytes
}

/// A source tree for a stick: the returned directory is the stick's root, with `sideload/`.
fn stick_tree() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("sideload");
    std::fs::create_dir(&folder).unwrap();
    (root, folder)
}

/// Runs `f` on another thread and fails the test if it does not finish in `limit`: the things
/// tested here must fail, never hang.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

fn names(candidates: &[Candidate]) -> Vec<(&str, u64)> {
    candidates
        .iter()
        .map(|c| (c.name.as_str(), c.len))
        .collect()
}

#[test]
fn good_stick_is_mounted_read_only_and_its_bundles_listed_in_order() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("b-app.bundle"), fake_bundle(3000, 1)).unwrap();
    std::fs::write(folder.join("a-base.bundle"), fake_bundle(40, 2)).unwrap();
    std::fs::write(folder.join("C-UPPER.BUNDLE"), fake_bundle(32, 3)).unwrap();
    std::fs::write(folder.join("d-empty.bundle"), b"").unwrap();
    std::fs::write(folder.join("README.txt"), b"bundles go here").unwrap();
    std::fs::write(src.path().join("elsewhere.bundle"), b"not in the folder").unwrap();
    let exe = folder.join("run.sh.bundle");
    let mut script = fake_bundle(32, 4);
    script.extend_from_slice(b"\n#!/bin/sh\necho pwned\n");
    std::fs::write(&exe, &script).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "good").unwrap();
    assert_eq!(mounted.path(), root.path().join("good"));

    let info = mount_at(mounted.path()).expect("the mount is in mountinfo at the mount point");
    println!("mountinfo: {info:?}");
    for option in ["ro", "nosuid", "nodev", "noexec", "noatime", "nosymfollow"] {
        assert!(info.has(option), "{option} missing: {info:?}");
    }
    assert_eq!(info.fs_type, "ext4");
    assert_eq!(Path::new(&info.source), stick.device());
    assert!(
        info.super_options.iter().any(|o| o == "errors=remount-ro"),
        "{info:?}"
    );

    let scan = scan(&mounted.path().join("sideload"), &ScanLimits::default()).unwrap();
    assert_eq!(
        names(&scan.candidates),
        [
            ("C-UPPER.BUNDLE", 32),
            ("a-base.bundle", 40),
            ("b-app.bundle", 3000),
            ("run.sh.bundle", 54)
        ]
    );
    assert_eq!(scan.skipped.len(), 1, "{:?}", scan.skipped);
    assert_eq!(scan.skipped[0].name, "d-empty.bundle");
    assert!(
        scan.skipped[0].reason.contains("too short"),
        "{:?}",
        scan.skipped[0]
    );
    assert_eq!(scan.ignored, 1);
    assert!(!scan.truncated);
    for candidate in &scan.candidates {
        let (mut file, len) = scan.open(candidate).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, len);
        assert_eq!(bytes, std::fs::read(folder.join(&candidate.name)).unwrap());
    }

    // Read-only: no new file, no change to an existing one.
    for attempt in [
        File::create(mounted.path().join("sideload/new.bundle")),
        std::fs::OpenOptions::new()
            .append(true)
            .open(mounted.path().join("sideload/a-base.bundle")),
    ] {
        let err = attempt.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    }
    // noexec: the setuid script on the stick cannot be run.
    let err = Command::new(mounted.path().join("sideload/run.sh.bundle"))
        .output()
        .unwrap_err();
    println!("executing a file on the stick: {err}");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);

    drop(scan);
    mounted.unmount().unwrap();
    assert!(root.leftovers().is_empty(), "{:?}", root.leftovers());
}

#[test]
fn symlinks_fifos_sockets_devices_and_directories_are_skipped_not_opened() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("good.bundle"), fake_bundle(36, 5)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", folder.join("evil.bundle")).unwrap();
    std::os::unix::fs::symlink("good.bundle", folder.join("relative.bundle")).unwrap();
    run(Command::new("mkfifo").arg(folder.join("fifo.bundle")));
    run(Command::new("mknod")
        .arg(folder.join("zero.bundle"))
        .args(["c", "1", "5"]));
    let _socket = std::os::unix::net::UnixListener::bind(folder.join("sock.bundle")).unwrap();
    std::fs::create_dir(folder.join("dir.bundle")).unwrap();
    std::fs::write(folder.join("dir.bundle/inner.bundle"), b"not scanned").unwrap();
    std::fs::write(folder.join("._good.bundle"), b"macOS metadata").unwrap();
    std::fs::write(folder.join("bad\nname.bundle"), b"x").unwrap();

    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "hostile").unwrap();
    let dir = mounted.path().join("sideload");

    let scan = within(Duration::from_secs(30), "the scan", move || {
        scan(&dir, &ScanLimits::default())
    })
    .unwrap();
    assert_eq!(names(&scan.candidates), [("good.bundle", 36)]);
    let skipped: Vec<(&str, &str)> = scan
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.reason.as_str()))
        .collect();
    println!("skipped: {skipped:#?}");
    assert_eq!(
        skipped,
        [
            ("._good.bundle", "hidden name (starts with a dot)"),
            ("bad\\nname.bundle", "name contains control characters"),
            ("dir.bundle", "is a directory, not a file"),
            ("evil.bundle", "is a symbolic link (not followed)"),
            ("fifo.bundle", "is a FIFO (named pipe), not opened"),
            ("relative.bundle", "is a symbolic link (not followed)"),
            ("sock.bundle", "is a socket, not opened"),
            ("zero.bundle", "is a device node, not opened"),
        ]
    );

    // Even asked by name, the loader's open refuses them, and the FIFO does not block it.
    let folder_fd = File::open(mounted.path().join("sideload")).unwrap();
    for name in [
        "evil.bundle",
        "relative.bundle",
        "fifo.bundle",
        "sock.bundle",
        "zero.bundle",
        "dir.bundle",
    ] {
        let fd = folder_fd.try_clone().unwrap();
        let result = within(Duration::from_secs(10), name, move || {
            open_candidate(&fd, name).map(|(_, len)| len)
        });
        let err = result.unwrap_err();
        println!("open_candidate({name}): {err}");
    }
    let err = open_candidate(&folder_fd, "../sideload/good.bundle").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    drop((scan, folder_fd));
    mounted.unmount().unwrap();
}

#[test]
fn junk_never_hides_a_bundle_and_every_junk_entry_is_listed_or_counted() {
    let (src, _) = stick_tree();
    let image = Image::ext4_with(
        src.path(),
        &Ext4 {
            size_mib: 160,
            inodes: Some(110_000),
            label: None,
        },
    );
    let root = MountRoot::new();
    let stick = image.attach();
    let started = Instant::now();
    stick.fill(|stick_root| {
        let folder = stick_root.join("sideload");
        // Junk named like bundles, sorting before the real one: empty files, and files of
        // noise (their header is read and refused).
        for i in 0..80_000 {
            File::create(folder.join(format!("a{i:06}.bundle"))).unwrap();
        }
        for i in 0..10_000u64 {
            std::fs::write(folder.join(format!("b{i:06}.bundle")), noise(64, i)).unwrap();
        }
        std::fs::write(folder.join("zz-real.bundle"), fake_bundle(5000, 1)).unwrap();
        std::fs::write(folder.join("ZZ-UPPER.BUNDLE"), fake_bundle(5000, 2)).unwrap();
        std::fs::write(folder.join("zz-trailing.bundle "), fake_bundle(5000, 3)).unwrap();
        std::fs::write(folder.join("zz-partial.bundle.part"), fake_bundle(5000, 4)).unwrap();
        std::fs::write(folder.join("notes.txt"), b"not a bundle").unwrap();
    });
    println!(
        "filled the stick with 90 005 entries in {:?}",
        started.elapsed()
    );

    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "crowded").unwrap();
    let limits = ScanLimits::default();
    let started = Instant::now();
    let scan = scan(&mounted.path().join("sideload"), &limits).unwrap();
    let took = started.elapsed();
    println!(
        "scan of 90 005 entries: {took:?}; {} candidates, {} skipped listed + {} counted, \
         {} ignored, truncated {}",
        scan.candidates.len(),
        scan.skipped.len(),
        scan.skipped_unlisted,
        scan.ignored,
        scan.truncated
    );
    assert!(!scan.truncated);
    assert_eq!(
        names(&scan.candidates),
        [("ZZ-UPPER.BUNDLE", 5000), ("zz-real.bundle", 5000)]
    );
    assert_eq!(scan.ignored, 1);
    assert_eq!(scan.skipped.len(), limits.max_listed);
    assert_eq!(scan.skipped.len() + scan.skipped_unlisted, 90_002);
    for s in &scan.skipped {
        let expected: &[&str] = if s.name.starts_with('a') {
            &["too short"]
        } else if s.name.starts_with('b') {
            &["not a bundle"]
        } else {
            &["rename", "does not end in .bundle"]
        };
        assert!(expected.iter().any(|e| s.reason.contains(e)), "{s:?}");
    }
    drop(scan);

    // Listing everything that is skipped, the odd names are there with their reasons.
    let all = ScanLimits {
        max_listed: usize::MAX,
        ..ScanLimits::default()
    };
    let scan = sideload_usb_loader::scan::scan(&mounted.path().join("sideload"), &all).unwrap();
    let reason = |name: &str| {
        scan.skipped
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name:?} not listed"))
            .reason
            .clone()
    };
    println!("zz-trailing.bundle : {}", reason("zz-trailing.bundle "));
    assert!(reason("zz-trailing.bundle ").contains("spaces"));
    assert!(reason("zz-partial.bundle.part").contains("does not end in .bundle"));
    drop(scan);

    // A folder larger than max_entries: the scan stops there and says so.
    let few = ScanLimits {
        max_entries: 50_000,
        ..ScanLimits::default()
    };
    let scan = sideload_usb_loader::scan::scan(&mounted.path().join("sideload"), &few).unwrap();
    assert!(scan.truncated);
    assert_eq!(
        scan.candidates.len() + scan.skipped.len() + scan.skipped_unlisted + scan.ignored,
        50_000
    );
    drop(scan);
    mounted.unmount().unwrap();
}

#[test]
fn a_bundle_over_the_size_limit_is_skipped_with_the_limit_named() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("big.bundle"), fake_bundle(2 << 20, 3)).unwrap();
    std::fs::write(folder.join("small.bundle"), fake_bundle(1000, 4)).unwrap();
    std::fs::write(folder.join("exact.bundle"), fake_bundle(1 << 20, 5)).unwrap();

    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "big").unwrap();
    let limits = ScanLimits {
        max_bundle_bytes: 1 << 20,
        ..ScanLimits::default()
    };
    let scan = scan(&mounted.path().join("sideload"), &limits).unwrap();
    assert_eq!(
        names(&scan.candidates),
        [("exact.bundle", 1 << 20), ("small.bundle", 1000)]
    );
    assert_eq!(scan.skipped.len(), 1);
    assert_eq!(scan.skipped[0].name, "big.bundle");
    assert_eq!(
        scan.skipped[0].reason,
        "is 2097152 bytes, over the limit max_bundle_bytes = 1048576"
    );
    drop(scan);
    mounted.unmount().unwrap();
}

/// Mounting must fail with the device, mount point and errno named, and leave no mount point.
fn assert_mount_fails(image: Image, fs_type: &str, what: &str) -> MountError {
    let root = MountRoot::new();
    let stick = image.attach();
    let err = mount_readonly(stick.device(), fs_type, root.path(), "broken").unwrap_err();
    println!(
        "{what}: {err}\n  errno {:?}; advice: {}",
        err.errno(),
        err.advice()
    );
    let MountError::Mount { device, target, .. } = &err else {
        panic!("{what}: not a mount error: {err:?}");
    };
    assert_eq!(device, stick.device());
    assert_eq!(target, &root.path().join("broken"));
    let message = err.to_string();
    assert!(
        message.contains(&stick.device().display().to_string()),
        "{message}"
    );
    assert!(message.contains("os error"), "{message}");
    assert!(
        root.leftovers().is_empty(),
        "mount point left: {:?}",
        root.leftovers()
    );
    err
}

#[test]
fn a_corrupt_filesystem_does_not_mount_and_leaves_nothing_behind() {
    let err = assert_mount_fails(Image::raw(&noise(8 << 20, 6)), "ext4", "random bytes");
    assert!(err.advice().contains("damaged"), "{}", err.advice());

    let (src, folder) = stick_tree();
    std::fs::write(folder.join("a.bundle"), b"a").unwrap();
    let image = Image::ext4(src.path());
    image.overwrite(1024, &[0; 1024]);
    let err = assert_mount_fails(image, "ext4", "ext4 with its superblock zeroed");
    assert!(err.advice().contains("damaged"), "{}", err.advice());

    // udev says ext4 but the stick holds something else.
    let err = assert_mount_fails(Image::vfat(8), "ext4", "vfat mounted as ext4");
    assert!(err.advice().contains("damaged"), "{}", err.advice());
}

#[test]
fn vfat_mounts_with_safe_options_where_the_kernel_supports_it() {
    let supported = std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("vfat"));
    if !supported {
        let err = assert_mount_fails(Image::vfat(8), "vfat", "vfat on a kernel without vfat");
        assert_eq!(err.errno(), Some(19), "ENODEV expected: {err}");
        assert!(
            err.advice().contains("kernel cannot mount"),
            "{}",
            err.advice()
        );
        return;
    }
    let root = MountRoot::new();
    let stick = Image::vfat(8).attach();
    let mounted = mount_readonly(stick.device(), "vfat", root.path(), "fat").unwrap();
    let info = mount_at(mounted.path()).unwrap();
    println!("vfat mountinfo: {info:?}");
    for option in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(info.has(option), "{option} missing: {info:?}");
    }
    for option in ["fmask=0177", "dmask=0077"] {
        assert!(info.super_options.iter().any(|o| o == option), "{info:?}");
    }
    mounted.remount_writable().unwrap();
    std::fs::write(mounted.path().join("receipt.json"), b"{}").unwrap();
    mounted.remount_readonly().unwrap();
    mounted.unmount().unwrap();
}

#[test]
fn receipts_can_be_written_between_remounts_and_persist() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("a.bundle"), b"a").unwrap();
    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "rw").unwrap();

    let receipts = mounted.path().join("sideload-receipts");
    {
        let writable = mounted.writable().unwrap();
        let info = mount_at(mounted.path()).unwrap();
        assert!(info.has("rw"), "{info:?}");
        for option in ["nosuid", "nodev", "noexec", "nosymfollow"] {
            assert!(info.has(option), "{option} lost on remount: {info:?}");
        }
        std::fs::create_dir(&receipts).unwrap();
        let mut file = File::create(receipts.join("a.json")).unwrap();
        file.write_all(b"{\"applied\":true}").unwrap();
        file.sync_all().unwrap();
        drop(file);
        writable.finish().unwrap();
    }
    let info = mount_at(mounted.path()).unwrap();
    assert!(info.has("ro"), "{info:?}");
    let err = File::create(receipts.join("b.json")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EROFS));

    // The pair of calls, and a guard dropped without finish, also end read-only.
    mounted.remount_writable().unwrap();
    mounted.remount_readonly().unwrap();
    drop(mounted.writable().unwrap());
    assert!(mount_at(root.path().join("rw").as_path())
        .unwrap()
        .has("ro"));

    mounted.unmount().unwrap();
    // Mounted again, the receipt is there.
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "rw").unwrap();
    assert_eq!(
        std::fs::read(mounted.path().join("sideload-receipts/a.json")).unwrap(),
        b"{\"applied\":true}"
    );
    drop(mounted);
    assert!(root.leftovers().is_empty());
}

#[test]
fn a_write_protected_stick_mounts_but_refuses_to_become_writable() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("a.bundle"), fake_bundle(33, 6)).unwrap();
    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach_read_only();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "locked").unwrap();
    let scan = scan(&mounted.path().join("sideload"), &ScanLimits::default()).unwrap();
    assert_eq!(names(&scan.candidates), [("a.bundle", 33)]);
    let err = mounted.remount_writable().unwrap_err();
    println!(
        "remount_writable on a write-protected stick: {err}; {}",
        err.advice()
    );
    assert!(matches!(err, MountError::WriteProtected { .. }), "{err:?}");
    assert!(mount_at(mounted.path()).unwrap().has("ro"));
    drop(scan);
    mounted.unmount().unwrap();
}

#[test]
fn the_mount_point_is_reused_only_when_empty_and_never_through_a_symlink() {
    let (src, _folder) = stick_tree();
    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach();

    // An empty directory left by an earlier run is reused.
    std::fs::create_dir(root.path().join("empty")).unwrap();
    mount_readonly(stick.device(), "ext4", root.path(), "empty")
        .unwrap()
        .unmount()
        .unwrap();
    assert!(!root.path().join("empty").exists());

    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), root.path().join("link")).unwrap();
    std::fs::create_dir(root.path().join("full")).unwrap();
    std::fs::write(root.path().join("full/x"), b"x").unwrap();
    std::fs::write(root.path().join("file"), b"x").unwrap();
    for name in ["link", "full", "file"] {
        let err = mount_readonly(stick.device(), "ext4", root.path(), name).unwrap_err();
        println!("{name}: {err}");
        assert!(matches!(err, MountError::MountPointInUse { .. }), "{err:?}");
    }
    assert!(root.path().join("full/x").exists());
    assert!(root.path().join("file").exists());

    // A mount point that is already mounted on is refused.
    let first = mount_readonly(stick.device(), "ext4", root.path(), "busy").unwrap();
    let (src2, _) = stick_tree();
    let other = Image::ext4(src2.path()).attach();
    let err = mount_readonly(other.device(), "ext4", root.path(), "busy").unwrap_err();
    println!("busy: {err}");
    assert!(matches!(err, MountError::MountPointInUse { .. }), "{err:?}");
    first.unmount().unwrap();

    let err = mount_readonly(stick.device(), "ext4", root.path(), "../escape").unwrap_err();
    assert!(matches!(err, MountError::InvalidName { .. }), "{err:?}");
    assert_eq!(mounts_count(root.path()), 0);
    assert!(elsewhere.path().read_dir().unwrap().next().is_none());
}

fn mounts_count(path: &Path) -> usize {
    support::mounts_under(path).len()
}

#[test]
fn a_busy_mount_is_detached_lazily_and_reported() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("a.bundle"), fake_bundle(100_000, 7)).unwrap();
    let root = MountRoot::new();
    let stick = Image::ext4(src.path()).attach();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "busy").unwrap();
    let scan = scan(&mounted.path().join("sideload"), &ScanLimits::default()).unwrap();
    let (mut file, _) = scan.open(&scan.candidates[0]).unwrap();

    let started = Instant::now();
    let err = mounted.unmount().unwrap_err();
    println!(
        "unmount with a file open, after {:?}: {err}; {}",
        started.elapsed(),
        err.advice()
    );
    assert!(matches!(err, MountError::DetachedLazily { .. }), "{err:?}");
    assert!(support::mounts_under(root.path()).is_empty());
    assert!(root.leftovers().is_empty());

    // A lazily detached filesystem stays readable through what is already open.
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len(), 100_000);
    drop((file, scan));
}

#[test]
fn a_stick_pulled_mid_read_gives_an_io_error_not_a_hang() {
    let (src, folder) = stick_tree();
    std::fs::write(folder.join("a.bundle"), fake_bundle(16 << 20, 8)).unwrap();
    std::fs::write(folder.join("b.bundle"), fake_bundle(1000, 9)).unwrap();
    let root = MountRoot::new();
    let stick = Image::ext4_with(
        src.path(),
        &Ext4 {
            size_mib: 48,
            ..Ext4::default()
        },
    )
    .attach();
    let mounted = mount_readonly(stick.device(), "ext4", root.path(), "pulled").unwrap();
    let dir = mounted.path().join("sideload");
    let scan = scan(&dir, &ScanLimits::default()).unwrap();
    let (mut file, len) = scan.open(&scan.candidates[0]).unwrap();
    assert_eq!(len, 16 << 20);
    let mut head = vec![0; 1 << 20];
    file.read_exact(&mut head).unwrap();

    stick.pull();
    let result = within(
        Duration::from_secs(60),
        "reading a pulled stick",
        move || {
            let mut read = 1u64 << 20;
            let mut buf = vec![0; 1 << 16];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return Ok(read),
                    Ok(n) => read += n as u64,
                    Err(e) => return Err((read, e)),
                }
            }
        },
    );
    let (read, err) = result.expect_err("reading past what the kernel cached must fail");
    println!("pulled after 1 MiB: read fails after {read} bytes with {err}");
    assert_eq!(err.raw_os_error(), Some(EIO));
    assert!(read < 16 << 20);

    // What else the loader sees on a pulled stick.
    let again = within(
        Duration::from_secs(60),
        "scanning a pulled stick",
        move || {
            sideload_usb_loader::scan::scan(&dir, &ScanLimits::default())
                .map(|s| s.candidates.len())
        },
    );
    println!("scan after the pull: {again:?}");
    let reopened = scan.open(&scan.candidates[1]).map(|(mut f, _)| {
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map(|_| bytes.len())
    });
    println!("opening and reading another bundle after the pull: {reopened:?}");
    drop(scan);
    let unmounted = mounted.unmount();
    println!("unmount after the pull: {unmounted:?}");
    unmounted.unwrap();
    assert!(root.leftovers().is_empty());
}
