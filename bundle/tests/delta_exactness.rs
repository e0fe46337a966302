//! The delta encoder reproduces layer tars byte for byte whatever wrote them: GNU tar in gnu and
//! pax formats (long names, non-UTF-8 names, sparse files, hard links, symlinks, device nodes,
//! whiteouts, empty files) and the `tar` crate. Each target is built against a base that
//! differs from it, so copies, patches and literals all occur; and a corrupted base layer is
//! caught before any output is accepted.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::image_from_tar;

use sideload_bundle::image::oci_layout::OciLayoutSource;
use sideload_bundle::image::spec::linux_amd64;
use sideload_bundle::image::ImageSource;
use sideload_bundle::{
    apply_bundle, build_bundle, BuildOptions, Error, ImageSet, LayerEncoding, Limits, NoProgress,
    Output,
};
use sideload_signing::{key_entry_toml, SigningKey, TrustPolicy, VerifyContext};

const NOW: u64 = 1_790_000_000;

fn open(layout: &Path) -> Box<dyn ImageSource> {
    Box::new(
        OciLayoutSource::open(layout, None, &linux_amd64(), &layout.display().to_string()).unwrap(),
    )
}

fn text(n: usize, salt: &str) -> Vec<u8> {
    let licence = fs::read("/usr/share/common-licenses/GPL-3")
        .unwrap_or_else(|_| b"some licence text\n".repeat(2000));
    let mut out = format!("{salt}\n").into_bytes();
    while out.len() < n {
        out.extend_from_slice(&licence[..licence.len().min(n - out.len())]);
    }
    out
}

/// A tree with every kind of entry. `v2` renames the version directory, changes one file,
/// adds one and deletes one (as a whiteout).
fn make_tree(root: &Path, v2: bool) -> bool {
    let version = if v2 { "pkg-1.3" } else { "pkg-1.2" };
    let lib = root.join("usr/lib").join(version);
    fs::create_dir_all(&lib).unwrap();
    fs::write(lib.join("core.so"), text(200_000, "core")).unwrap();
    fs::write(
        lib.join("util.py"),
        text(30_000, if v2 { "util v2: fixed" } else { "util v1" }),
    )
    .unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let long_dir = root.join("x".repeat(90)).join("y".repeat(90));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("z".repeat(120)), text(5_000, "long")).unwrap();
    let weird = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1.txt"));
    fs::write(weird, text(3_000, "latin1")).unwrap();
    std::os::unix::fs::symlink(format!("{version}/core.so"), root.join("usr/lib/core-link"))
        .unwrap();
    fs::hard_link(lib.join("core.so"), root.join("usr/lib/core-hardlink.so")).unwrap();
    if v2 {
        fs::write(root.join("usr/lib/.wh.removed.conf"), b"").unwrap();
        fs::write(root.join("new-in-v2.txt"), text(8_000, "new")).unwrap();
    } else {
        fs::write(root.join("usr/lib/removed.conf"), b"gone in v2").unwrap();
    }
    // A sparse file: 8 MiB with data in two places.
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse
        .write_at(
            &text(4096, if v2 { "sparse v2" } else { "sparse v1" }),
            1 << 20,
        )
        .unwrap();
    sparse.write_at(b"tail", (8 << 20) - 4).unwrap();
    // Device nodes need root; the CI runs as root. Report whether they are in.
    let dev = root.join("dev");
    fs::create_dir_all(&dev).unwrap();
    Command::new("mknod")
        .args([
            dev.join("null").as_os_str(),
            "c".as_ref(),
            "1".as_ref(),
            "3".as_ref(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn gnu_tar(root: &Path, format: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg(format!("--format={format}"))
        .args(["--sparse", "--sort=name", "--numeric-owner", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .expect("GNU tar runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn crate_tar(root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", root).unwrap();
    b.into_inner().unwrap()
}

struct Keys {
    key: SigningKey,
    policy: TrustPolicy,
}

fn keys() -> Keys {
    let key = SigningKey::generate().unwrap().0;
    let policy = TrustPolicy::from_toml(
        &format!(
            "threshold = 1\n{}",
            key_entry_toml(&key.public_key(), &["*".parse().unwrap()], None)
        ),
        Path::new("policy.toml"),
    )
    .unwrap();
    Keys { key, policy }
}

fn bundle(
    dir: &Path,
    name: &str,
    target: &Path,
    base: &Path,
    keys: &Keys,
    whole_layer: bool,
) -> (PathBuf, sideload_bundle::BuildReport) {
    let mut o = BuildOptions::new(
        "edge/app".parse().unwrap(),
        vec!["latest".parse().unwrap()],
        NOW,
    );
    o.patch_level = 3;
    if !whole_layer {
        o.whole_layer_patch_limit = 0;
    }
    let path = dir.join(name);
    let (t, b) = (open(target), open(base));
    let report = build_bundle(t.as_ref(), &[b.as_ref()], &o, &path, &NoProgress).unwrap();
    sign(&path, keys);
    (path, report)
}

/// Applies `bundle` with `base` as the device's only image, into a new OCI layout at `out`.
fn apply_to(
    bundle: &Path,
    keys: &Keys,
    base: Box<dyn ImageSource>,
    out: &Path,
) -> Result<sideload_bundle::ApplyReport, Error> {
    apply_bundle(
        bundle,
        &keys.policy,
        &VerifyContext {
            now: NOW,
            recorded_sequence: None,
        },
        &ImageSet::new(vec![base]),
        &Output::OciLayout(out.to_owned()),
        &Limits::default(),
        &NoProgress,
    )
}

fn layer_bytes(layout: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    open(layout)
        .open_layer(0)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Signs a built bundle in place with the test key.
fn sign(path: &Path, keys: &Keys) {
    let (head, _) = sideload_bundle::open_bundle(path, &Limits::default()).unwrap();
    sideload_bundle::attach_signatures(
        path,
        &[keys.key.sign_statement(&head.statement_bytes)],
        &Limits::default(),
    )
    .unwrap();
}

/// A tar of one regular file (mode 0644).
fn one_file_tar(name: &str, content: &[u8], mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

/// 300 small text files `{prefix}/pkgN/fileI{suffix}` (ten directories), all with `mtime`;
/// file 150 holds `changed`, the others slices of `licence`.
fn licence_files_tar(
    licence: &[u8],
    (prefix, suffix): (&str, &str),
    mtime: u64,
    changed: &[u8],
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..300 {
        let body: &[u8] = if i == 150 {
            changed
        } else {
            &licence[i * 997..i * 997 + 700 + i]
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(
            &mut h,
            format!("{prefix}/pkg{}/file{i}{suffix}", i / 30),
            body,
        )
        .unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn every_tar_dialect_round_trips_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let devices = make_tree(&a, false) & make_tree(&b, true);
    if !devices {
        eprintln!("note: mknod not permitted here; device nodes are not in these tars");
    }
    let keys = keys();
    for (dialect, make) in [
        (
            "gnu",
            Box::new(|r: &Path| gnu_tar(r, "gnu")) as Box<dyn Fn(&Path) -> Vec<u8>>,
        ),
        ("pax", Box::new(|r: &Path| gnu_tar(r, "pax"))),
        ("tar-crate", Box::new(crate_tar)),
    ] {
        let base = dir.path().join(format!("{dialect}-base"));
        let target = dir.path().join(format!("{dialect}-target"));
        let target_tar = make(&b);
        image_from_tar(&base, &make(&a));
        image_from_tar(&target, &target_tar);
        // File by file, and (this layer is small) as one patch of the whole layer.
        for whole_layer in [false, true] {
            let label = format!("{dialect}, whole layer {whole_layer}");
            let name = format!("{dialect}-{whole_layer}.bundle");
            let (path, report) = bundle(dir.path(), &name, &target, &base, &keys, whole_layer);
            let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
                panic!("{label}: layer not delta-encoded");
            };
            if whole_layer {
                assert!(stats.whole_layer_patch.is_some(), "{label}: {stats:?}");
            } else {
                assert!(stats.copied_files >= 3, "{label}: {stats:?}");
                assert!(
                    stats.zstd_patched_files + stats.bsdiff_patched_files >= 1,
                    "{label}: the changed file is patched: {stats:?}"
                );
            }
            assert!(
                report.statement.payload.size < target_tar.len() as u64 / 20,
                "{label}: payload {} for a {}-byte layer",
                report.statement.payload.size,
                target_tar.len()
            );
            let out = dir.path().join(format!("{dialect}-{whole_layer}-out"));
            apply_to(&path, &keys, open(&base), &out).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                layer_bytes(&out),
                target_tar,
                "{label}: rebuilt layer differs"
            );
        }
    }
}

/// A device whose base layer is not what its digest says: the gather pass reads the base
/// layer to its end, so the mismatch stops the apply before any output exists.
#[test]
fn a_corrupted_base_is_detected_before_output() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_tree(&a, false);
    make_tree(&b, true);
    let keys = keys();
    let base = dir.path().join("base");
    let target = dir.path().join("target");
    let base_tar = gnu_tar(&a, "gnu");
    image_from_tar(&base, &base_tar);
    image_from_tar(&target, &gnu_tar(&b, "gnu"));
    let (path, report) = bundle(dir.path(), "app.bundle", &target, &base, &keys, false);
    assert!(report.statement.payload.scratch_bytes > 0);

    // Damage one byte of the base layer blob in place (uncompressed, so the digest breaks).
    let diff_id = open(&base).image().layers[0].diff_id.clone();
    let blob = base.join("blobs/sha256").join(diff_id.hex());
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    fs::write(&blob, bytes).unwrap();

    let out = dir.path().join("out");
    let err = apply_to(&path, &keys, open(&base), &out).unwrap_err();
    assert!(
        !err.is_refusal(),
        "the device's base is at fault, not the bundle: {err:?}"
    );
    assert!(
        err.to_string().contains(diff_id.as_str()),
        "names the base layer: {err}"
    );
    assert!(!out.exists());
    assert!(matches!(err, Error::Io { .. } | Error::Image(_)), "{err:?}");
}

/// Unchanged files whose headers are unchanged too (a base update where most packages stay)
/// cost next to nothing: their headers and contents are copied, and consecutive ones merge
/// into one copy.
#[test]
fn unchanged_runs_of_files_cost_next_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let licence = text(300_000, "files");
    let tar_of =
        |changed: &[u8]| licence_files_tar(&licence, ("usr/share", ".txt"), 1_700_000_000, changed);
    let (base_tar, target_tar) = (tar_of(b"old contents"), tar_of(b"new contents, longer"));
    let (base, target) = (dir.path().join("base"), dir.path().join("target"));
    image_from_tar(&base, &base_tar);
    image_from_tar(&target, &target_tar);
    let keys = keys();
    let (path, report) = bundle(dir.path(), "runs.bundle", &target, &base, &keys, false);
    let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
        panic!("not delta-encoded");
    };
    assert_eq!(stats.copied_files, 299, "{stats:?}");
    assert!(
        report.statement.payload.size < 400,
        "payload {} bytes for one changed file among 300",
        report.statement.payload.size
    );
    let out = dir.path().join("out");
    apply_to(&path, &keys, open(&base), &out).unwrap();
    assert_eq!(layer_bytes(&out), target_tar);
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} must be installed (Debian package {cmd}; test.sh installs it): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_ref(layout: &Path, name: &str) -> Box<dyn ImageSource> {
    Box::new(
        OciLayoutSource::open(
            layout,
            Some(name),
            &linux_amd64(),
            &format!("oci:{}:{name}", layout.display()),
        )
        .unwrap(),
    )
}

/// Layers written by Go's archive/tar, as Docker and buildkit write them: umoci (Debian's
/// package) builds a base image and an update; the update's layer is delta-encoded against
/// the base and rebuilt byte for byte; and a GNU-tar layer of the same files is rebuilt from
/// the Go-written one (copies across tar writers).
#[test]
fn layers_written_by_go_archive_tar_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("umoci");
    let bundle_dir = dir.path().join("rootfs-bundle");
    let os = |p: &Path| p.as_os_str().to_owned();
    let s = |t: &str| std::ffi::OsString::from(t);
    run("umoci", &[&s("init"), &s("--layout"), &os(&layout)]);
    let image = |tag: &str| s(&format!("{}:{tag}", layout.display()));
    run("umoci", &[&s("new"), &s("--image"), &image("v1")]);
    run(
        "umoci",
        &[&s("unpack"), &s("--image"), &image("v1"), &os(&bundle_dir)],
    );
    let rootfs = bundle_dir.join("rootfs");
    make_tree(&rootfs, false);
    run(
        "umoci",
        &[&s("repack"), &s("--image"), &image("v1"), &os(&bundle_dir)],
    );
    // The update: what make_tree(v2) changes, on top of v1.
    let v2 = dir.path().join("v2-tree");
    make_tree(&v2, true);
    fs::remove_dir_all(rootfs.join("usr/lib/pkg-1.2")).unwrap();
    fs::remove_file(rootfs.join("usr/lib/removed.conf")).unwrap();
    fs::remove_file(rootfs.join("usr/lib/core-link")).unwrap();
    fs::remove_file(rootfs.join("usr/lib/core-hardlink.so")).unwrap();
    let gnu_v2 = gnu_tar(&v2, "gnu");
    fs::write(dir.path().join("v2.tar"), &gnu_v2).unwrap();
    run(
        "tar",
        &[
            &s("-C"),
            &os(&rootfs),
            &s("-xf"),
            &os(&dir.path().join("v2.tar")),
        ],
    );
    fs::remove_file(rootfs.join("usr/lib/.wh.removed.conf")).unwrap();
    run(
        "umoci",
        &[&s("repack"), &s("--image"), &image("v2"), &os(&bundle_dir)],
    );

    let keys = keys();
    let (base, target) = (open_ref(&layout, "v1"), open_ref(&layout, "v2"));
    // umoci repacks against what was unpacked (the empty image): v2 is one layer, the whole
    // v2 tree, written by Go's archive/tar like v1's.
    assert_eq!(base.image().layers.len(), 1);
    assert_eq!(target.image().layers.len(), 1);
    let mut o = BuildOptions::new(
        "edge/app".parse().unwrap(),
        vec!["v2".parse().unwrap()],
        NOW,
    );
    o.patch_level = 3;
    o.whole_layer_patch_limit = 0;
    let path = dir.path().join("go.bundle");
    let report = build_bundle(target.as_ref(), &[base.as_ref()], &o, &path, &NoProgress).unwrap();
    let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
        panic!("not delta-encoded");
    };
    assert!(stats.copied_files >= 3, "{stats:?}");
    sign(&path, &keys);
    let out = dir.path().join("go-out");
    apply_to(&path, &keys, open_ref(&layout, "v1"), &out).unwrap();
    let rebuilt = open(&out);
    assert_eq!(rebuilt.image().diff_ids(), target.image().diff_ids());
    assert_eq!(rebuilt.image().config.digest, target.image().config.digest);

    // Across writers: the Go-written v1 layer as the device's base, a GNU tar of the v1 tree
    // as the target: the file contents are copied, whatever wrote the headers.
    let gnu_target = dir.path().join("gnu-target");
    let gnu_v1 = gnu_tar(&rootfs_v1(dir.path()), "gnu");
    image_from_tar(&gnu_target, &gnu_v1);
    let t = open(&gnu_target);
    let report = build_bundle(
        t.as_ref(),
        &[base.as_ref()],
        &o,
        &dir.path().join("cross.bundle"),
        &NoProgress,
    )
    .unwrap();
    let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
        panic!("not delta-encoded");
    };
    assert!(stats.copied_files >= 4, "{stats:?}");
}

/// A fresh v1 tree (the same files umoci packed first).
fn rootfs_v1(dir: &Path) -> PathBuf {
    let tree = dir.join("v1-tree");
    make_tree(&tree, false);
    tree
}

/// With no time left for bsdiff, files are patched with zstd only and whole layers are not
/// tried; the bundle still rebuilds the layer exactly.
#[test]
fn a_spent_time_budget_falls_back_to_zstd_patches() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_tree(&a, false);
    make_tree(&b, true);
    let (base, target) = (dir.path().join("base"), dir.path().join("target"));
    let target_tar = gnu_tar(&b, "gnu");
    image_from_tar(&base, &gnu_tar(&a, "gnu"));
    image_from_tar(&target, &target_tar);
    let keys = keys();
    let mut o = BuildOptions::new("edge/app".parse().unwrap(), vec!["v".parse().unwrap()], NOW);
    o.patch_level = 3;
    o.patch_time_budget = std::time::Duration::ZERO;
    let path = dir.path().join("budget.bundle");
    let (t, bs) = (open(&target), open(&base));
    let report = build_bundle(t.as_ref(), &[bs.as_ref()], &o, &path, &NoProgress).unwrap();
    let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
        panic!("not delta-encoded");
    };
    assert_eq!(stats.whole_layer_patch, None, "{stats:?}");
    assert_eq!(stats.bsdiff_patched_files, 0, "{stats:?}");
    assert!(stats.zstd_patched_files >= 1, "{stats:?}");
    sign(&path, &keys);
    let out = dir.path().join("out");
    apply_to(&path, &keys, open(&base), &out).unwrap();
    assert_eq!(layer_bytes(&out), target_tar);
}

/// A base file that starts with zstd's dictionary magic is still a raw-content patch base, on
/// both sides: the encoder starts the base one byte later, the decoder refuses magic bases.
#[test]
fn a_base_file_starting_with_the_zstd_dictionary_magic() {
    let dir = tempfile::tempdir().unwrap();
    let body = |salt: &str| {
        let mut b = vec![0x37, 0xa4, 0x30, 0xec];
        b.extend_from_slice(&text(40_000, salt));
        b
    };
    let tar_of = |content: &[u8]| one_file_tar("usr/share/dict.zdict", content, 0);
    let (base_tar, target_tar) = (tar_of(&body("v1")), tar_of(&body("v2 changed")));
    let (base, target) = (dir.path().join("base"), dir.path().join("target"));
    image_from_tar(&base, &base_tar);
    image_from_tar(&target, &target_tar);
    let keys = keys();
    for whole_layer in [false, true] {
        let (path, report) = bundle(
            dir.path(),
            &format!("magic-{whole_layer}.bundle"),
            &target,
            &base,
            &keys,
            whole_layer,
        );
        assert!(
            report.statement.payload.size < 2_000,
            "{}",
            report.statement.payload.size
        );
        let out = dir.path().join(format!("out-{whole_layer}"));
        apply_to(&path, &keys, open(&base), &out).unwrap();
        assert_eq!(layer_bytes(&out), target_tar);
    }
}

/// Incompressible bytes from a fixed seed (xorshift64*): a stand-in for a large binary that
/// only a patch, not compression, can send cheaply.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file larger than a patch may be (the JDK's `modules` image is 130 MB) is patched piece by
/// piece against windows of the old file; the device rebuilds it exactly.
#[test]
fn a_large_file_is_patched_piece_by_piece() {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(56 << 20, 7);
    let mut new = old.clone();
    // Edits spread over the file, and 4 KiB inserted in the middle (later content shifts).
    for at in [1 << 20, 20 << 20, 50 << 20] {
        new[at..at + 100].copy_from_slice(&noise(100, at as u64));
    }
    new.splice(30 << 20..30 << 20, noise(4096, 99));
    let tar_of = |content: &[u8]| one_file_tar("usr/lib/jvm/lib/modules", content, 1_700_000_000);
    let (base_tar, target_tar) = (tar_of(&old), tar_of(&new));
    drop((old, new));
    let (base, target) = (dir.path().join("base"), dir.path().join("target"));
    image_from_tar(&base, &base_tar);
    image_from_tar(&target, &target_tar);
    drop(base_tar);
    let keys = keys();
    // zstd pieces only: bsdiff on 48 MiB windows takes minutes in a debug build.
    let mut o = BuildOptions::new("edge/app".parse().unwrap(), vec!["v".parse().unwrap()], NOW);
    o.patch_level = 3;
    o.patch_time_budget = std::time::Duration::ZERO;
    o.whole_layer_patch_limit = 0;
    let path = dir.path().join("large.bundle");
    let (t, bs) = (open(&target), open(&base));
    let report = build_bundle(t.as_ref(), &[bs.as_ref()], &o, &path, &NoProgress).unwrap();
    sign(&path, &keys);
    let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
        panic!("not delta-encoded");
    };
    assert_eq!(stats.zstd_patched_files, 1, "{stats:?}");
    assert_eq!(
        stats.patched_bytes,
        target_tar.len() as u64 - 1024 - 512,
        "{stats:?}"
    );
    assert!(
        report.statement.payload.size < 64 << 10,
        "payload {} bytes for a 56 MiB file with four small edits",
        report.statement.payload.size
    );
    let out = dir.path().join("out");
    apply_to(&path, &keys, open(&base), &out).unwrap();
    assert!(layer_bytes(&out) == target_tar, "rebuilt layer differs");
}

/// A rebuilt layer gives every header a new mtime: headers go as differences to the base
/// file's headers, and the copies between them with them, as one run-coded MIX_RUNS record:
/// under 3 bytes a file (458 bytes for these 300 when written), not a COPY and a MIX each.
#[test]
fn new_mtimes_on_every_file_cost_a_few_bytes_each() {
    let dir = tempfile::tempdir().unwrap();
    let licence = text(300_000, "files");
    let base_tar = licence_files_tar(&licence, ("app", ".py"), 1_700_000_000, b"old contents");
    let target_tar = licence_files_tar(
        &licence,
        ("app", ".py"),
        1_771_113_600,
        b"new contents, longer",
    );
    let (base, target) = (dir.path().join("base"), dir.path().join("target"));
    image_from_tar(&base, &base_tar);
    image_from_tar(&target, &target_tar);
    let keys = keys();
    let (path, report) = bundle(dir.path(), "mtimes.bundle", &target, &base, &keys, false);
    let LayerEncoding::Delta(stats) = &report.layers[0].encoding else {
        panic!("not delta-encoded");
    };
    assert_eq!(stats.copied_files, 299, "{stats:?}");
    assert!(stats.mixed_bytes >= 299 * 512, "{stats:?}");
    // MIX_RUNS is a version-3 record: devices that predate it refuse the head.
    assert_eq!(report.statement.format_version, 3);
    assert!(
        report.statement.payload.size < 300 * 3,
        "payload {} bytes for 300 new headers and one changed file",
        report.statement.payload.size
    );
    let out = dir.path().join("out");
    apply_to(&path, &keys, open(&base), &out).unwrap();
    assert_eq!(layer_bytes(&out), target_tar);
}

/// New x86 executables travel through the x86 BCJ filter (LITERAL_X86) and come back exact,
/// beside files that only look like ELF headers or are cut short.
#[test]
fn new_x86_executables_round_trip_through_the_branch_filter() {
    let dir = tempfile::tempdir().unwrap();
    let elf = fs::read("/bin/ls").expect("/bin/ls (coreutils) is on every Debian machine");
    assert!(
        sideload_bundle::payload::is_x86_elf(&elf),
        "/bin/ls is x86 ELF"
    );
    let tar_of = |files: &[(&str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    };
    let base_tar = tar_of(&[("etc/motd", b"hello")]);
    let target_tar = tar_of(&[
        ("usr/bin/ls", &elf),
        ("usr/bin/ls-head", &elf[..64]),
        ("usr/bin/ls-short", &elf[..19]),
        ("etc/motd", b"hello"),
    ]);
    let (base, target) = (dir.path().join("base"), dir.path().join("target"));
    image_from_tar(&base, &base_tar);
    image_from_tar(&target, &target_tar);
    let keys = keys();
    let (path, _) = bundle(dir.path(), "elf.bundle", &target, &base, &keys, false);
    let out = dir.path().join("out");
    apply_to(&path, &keys, open(&base), &out).unwrap();
    assert!(layer_bytes(&out) == target_tar, "rebuilt layer differs");
}
