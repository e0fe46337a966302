//! Two small, real images for the demo and the end-to-end tests: `app-v1` and `app-v2`.
//!
//! Both share a base layer made of real system files (a shell, core utilities, the C library,
//! licence texts); their app layer holds Perl's core modules and the Perl interpreter under a
//! versioned directory, plus a small app. v2 is what a package upgrade looks like: the version
//! directory is renamed (`app-1.0/` → `app-1.1/`), a few modules change, a file is added, the
//! config changes. Nothing is random; the files come from the machine, so the images are as
//! compressible and as delta-friendly as real ones.
//!
//! The images run: their entrypoint (`/opt/app/run.sh`, a `/bin/sh` script that starts the
//! app's own Perl) prints `edge app 1.0: telemetry collector` (or `1.1`), so the demo and the
//! engine tests can start the released module and see which version runs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sideload_signing::Digest;

use crate::image::from_files::{build_image, ConfigExtras};
use crate::image::ImageError;

/// Files for the base layer; the ones missing on this machine are skipped.
const BASE_FILES: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/dash",
    "/usr/bin/ls",
    "/usr/bin/cat",
    "/usr/bin/env",
    "/usr/bin/sha256sum",
    "/usr/bin/tar",
    "/usr/bin/gzip",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libtinfo.so.6",
    "/lib/x86_64-linux-gnu/libselinux.so.1",
    "/lib/x86_64-linux-gnu/libpcre2-8.so.0",
    "/lib/x86_64-linux-gnu/libacl.so.1",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libcrypt.so.1",
    "/lib64/ld-linux-x86-64.so.2",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
];

/// Directories whose files go into the base layer (text: licences).
const BASE_DIRS: &[&str] = &["/usr/share/common-licenses"];

/// Perl's core modules: the app layer's bulk.
const APP_DIR: &str = "/usr/lib/x86_64-linux-gnu/perl-base";
const APP_BIN: &str = "/usr/bin/perl";

/// Where the two images were written.
#[derive(Debug, Clone)]
pub struct DemoImages {
    /// OCI layout of `edge/app:v1` (ref name `v1`).
    pub v1: PathBuf,
    /// OCI layout of `edge/app:v2` (ref name `v2`).
    pub v2: PathBuf,
    /// Manifest digest of v1.
    pub v1_manifest: Digest,
    /// Manifest digest of v2.
    pub v2_manifest: Digest,
}

/// Builds `app-v1` and `app-v2` as OCI layouts under `out` (`out/app-v1`, `out/app-v2`).
pub fn make_demo_images(out: &Path) -> Result<DemoImages, ImageError> {
    let io_err = |path: &Path, e: io::Error| ImageError::Io {
        image: "demo images".into(),
        action: "prepare",
        path: path.to_owned(),
        source: e,
    };
    let work = out.join(".demo-src");
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| io_err(&work, e))?;
    }
    let base = work.join("base");
    let app1 = work.join("app1");
    let app2 = work.join("app2");
    make_base(&base).map_err(|e| io_err(&base, e))?;
    make_app(&app1, "1.0").map_err(|e| io_err(&app1, e))?;
    make_app(&app2, "1.1").map_err(|e| io_err(&app2, e))?;
    upgrade(&app2).map_err(|e| io_err(&app2, e))?;

    let extras = |version: &str| ConfigExtras {
        cmd: vec!["/opt/app/run.sh".into()],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("APP_VERSION={version}"),
        ],
        labels: [(
            "org.opencontainers.image.version".to_owned(),
            version.to_owned(),
        )]
        .into(),
        ..ConfigExtras::default()
    };
    let v1 = out.join("app-v1");
    let v2 = out.join("app-v2");
    let v1_manifest = build_image(&v1, "v1", &[&base, &app1], &extras("1.0"))?;
    let v2_manifest = build_image(&v2, "v2", &[&base, &app2], &extras("1.1"))?;
    fs::remove_dir_all(&work).map_err(|e| io_err(&work, e))?;
    Ok(DemoImages {
        v1,
        v2,
        v1_manifest,
        v2_manifest,
    })
}

fn make_base(root: &Path) -> io::Result<()> {
    for file in BASE_FILES {
        let src = Path::new(file);
        if src.is_file() {
            copy_into(src, &root.join(file.trim_start_matches('/')))?;
        }
    }
    for dir in BASE_DIRS {
        copy_tree(Path::new(dir), &root.join(dir.trim_start_matches('/')))?;
    }
    // As on a merged-/usr Debian: `/bin` is `usr/bin`, and `/bin/sh` is dash, so the app's
    // `#!/bin/sh` entrypoint runs in the container as it does on the host.
    std::os::unix::fs::symlink("usr/bin", root.join("bin"))?;
    std::os::unix::fs::symlink("dash", root.join("usr/bin/sh"))?;
    fs::create_dir_all(root.join("tmp"))?;
    Ok(())
}

fn make_app(root: &Path, version: &str) -> io::Result<()> {
    let home = root.join("opt/app").join(format!("app-{version}"));
    copy_tree(Path::new(APP_DIR), &home.join("lib"))?;
    if Path::new(APP_BIN).is_file() {
        copy_into(Path::new(APP_BIN), &home.join("bin/perl"))?;
    }
    let run = root.join("opt/app/run.sh");
    fs::write(
        &run,
        format!("#!/bin/sh\nexec /opt/app/app-{version}/bin/perl -I/opt/app/app-{version}/lib /opt/app/app.pl \"$@\"\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755))?;
    fs::write(
        root.join("opt/app/app.pl"),
        "use strict; use warnings;\nprint \"edge app $ENV{APP_VERSION}: telemetry collector\\n\";\n",
    )?;
    fs::write(
        root.join("opt/app/app.conf"),
        format!("version = {version}\ninterval_seconds = 60\nendpoint = local\n"),
    )?;
    Ok(())
}

/// What a package upgrade does on top of renaming the version directory.
fn upgrade(root: &Path) -> io::Result<()> {
    let lib = root.join("opt/app/app-1.1/lib");
    let mut changed = 0;
    for module in [
        "Carp.pm",
        "Exporter.pm",
        "Config.pm",
        "strict.pm",
        "warnings.pm",
    ] {
        let path = lib.join(module);
        if path.is_file() {
            let mut text = fs::read(&path)?;
            text.extend_from_slice(b"\n# patched in app 1.1: bounds checks tightened\n");
            fs::write(&path, text)?;
            changed += 1;
        }
    }
    if changed == 0 {
        return Err(io::Error::other(format!(
            "{APP_DIR} has no modules to change"
        )));
    }
    fs::write(
        root.join("opt/app/app.conf"),
        "version = 1.1\ninterval_seconds = 30\nendpoint = local\nretry = exponential\n",
    )?;
    fs::write(
        root.join("opt/app/CHANGELOG"),
        "1.1: shorter telemetry interval, retries with exponential backoff\n1.0: first release\n",
    )
}

fn copy_into(src: &Path, dst: &Path) -> io::Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, dst).map(|_| ())
}

fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if from.is_file() {
            // Regular files, and symlinks to them (copied as files).
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}
