//! A tiny deterministic image builder, for tests and demos: real images from real files,
//! without a container engine.
//!
//! [`layer_tar_from_dir`] turns a directory into a layer tar whose bytes depend only on the
//! files (names, contents, modes, symlink targets): entries sorted, mtime 0, owner 0:0, no user
//! or group names. [`build_image`] stacks such layers, gzip-compressed, into an OCI layout.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::GzBuilder;
use serde_json::json;
use sideload_signing::Digest;

use super::digest_reader::HashingWriter;
use super::spec::{linux_amd64, media_types, Descriptor, ManifestSpec};
use super::write::{entry_header, OciLayoutWriter};
use super::ImageError;

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        out.push(rel.clone());
        if is_dir {
            collect(root, &rel, out)?;
        }
    }
    Ok(())
}

/// Writes the contents of `dir` (not `dir` itself) as a deterministic layer tar: every
/// directory, regular file and symlink below it, sorted by path, with file modes kept, mtime 0
/// and owner 0:0. Other file types (devices, fifos, sockets) are refused.
pub fn layer_tar_from_dir(dir: &Path, out: impl Write) -> io::Result<()> {
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    paths.sort();
    let mut tar = tar::Builder::new(out);
    for rel in paths {
        let full = dir.join(&rel);
        let meta = fs::symlink_metadata(&full)?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut h = entry_header(tar::EntryType::Directory, mode, 0);
            tar.append_data(&mut h, &rel, io::empty())?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&full)?;
            let mut h = entry_header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &rel, &target)?;
        } else if kind.is_file() {
            let mut h = entry_header(tar::EntryType::Regular, mode, meta.len());
            tar.append_data(&mut h, &rel, File::open(&full)?)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: only directories, files and symlinks go into a layer",
                    full.display()
                ),
            ));
        }
    }
    tar.into_inner()?.flush()
}

/// What goes into the image config besides the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigExtras {
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Entrypoint`, when set.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.WorkingDir`, when set.
    pub working_dir: Option<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `created` of the image and its history (RFC 3339); fixed so builds are reproducible.
    pub created: String,
}

impl Default for ConfigExtras {
    fn default() -> Self {
        ConfigExtras {
            cmd: vec!["/bin/sh".to_owned()],
            entrypoint: None,
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ],
            working_dir: None,
            labels: BTreeMap::new(),
            created: "1970-01-01T00:00:00Z".to_owned(),
        }
    }
}

/// Builds a linux/amd64 image from `layer_dirs` (bottom first) into the OCI layout at
/// `layout_dir` (created, or added to), naming it `ref_name` in `index.json`. Layers are
/// gzip-compressed deterministically, so the same files give the same digests. Returns the
/// manifest digest.
pub fn build_image(
    layout_dir: &Path,
    ref_name: &str,
    layer_dirs: &[&Path],
    extras: &ConfigExtras,
) -> Result<Digest, ImageError> {
    let mut writer = OciLayoutWriter::create(layout_dir)?;
    let mut diff_ids = Vec::with_capacity(layer_dirs.len());
    let mut layers = Vec::with_capacity(layer_dirs.len());
    let mut history = Vec::with_capacity(layer_dirs.len());
    for dir in layer_dirs {
        let io_err = |action, source| ImageError::Io {
            image: layout_dir.display().to_string(),
            action,
            path: dir.to_path_buf(),
            source,
        };
        let blob = writer.blob_writer()?;
        let gz = GzBuilder::new()
            .mtime(0)
            .write(blob, flate2::Compression::default());
        let mut tar = HashingWriter::new(gz);
        layer_tar_from_dir(dir, &mut tar).map_err(|e| io_err("make a layer of", e))?;
        let (gz, diff_id, _) = tar.finish();
        let blob = gz.finish().map_err(|e| io_err("compress a layer of", e))?;
        let (digest, size) = blob.commit(None)?;
        history.push(json!({
            "created": extras.created,
            "created_by": format!("sideload build: layer of {} files", dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        }));
        diff_ids.push(diff_id);
        layers.push(Descriptor::new(media_types::OCI_LAYER_GZIP, digest, size));
    }
    let platform = linux_amd64();
    let mut container = json!({
        "Cmd": extras.cmd,
        "Env": extras.env,
    });
    if let Some(e) = &extras.entrypoint {
        container["Entrypoint"] = json!(e);
    }
    if let Some(w) = &extras.working_dir {
        container["WorkingDir"] = json!(w);
    }
    if !extras.labels.is_empty() {
        container["Labels"] = json!(extras.labels);
    }
    let config = json!({
        "created": extras.created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": container,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let (config_digest, config_size) = writer.put_blob_bytes(&config)?;
    let manifest = ManifestSpec {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_owned()),
        config: Descriptor::new(media_types::OCI_CONFIG, config_digest, config_size),
        layers,
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let digest = writer.add_manifest(
        &manifest,
        media_types::OCI_MANIFEST,
        Some(ref_name),
        Some(&platform),
    )?;
    writer.finish()?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::symlink;

    use super::*;

    fn sample(dir: &Path) {
        fs::create_dir_all(dir.join("usr/share/doc")).unwrap();
        fs::write(dir.join("usr/share/doc/readme"), b"hello").unwrap();
        fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("usr/share/doc/readme", dir.join("link")).unwrap();
    }

    #[test]
    fn layer_tar_is_deterministic_and_complete() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        sample(a.path());
        sample(b.path());
        let mut ta = Vec::new();
        let mut tb = Vec::new();
        layer_tar_from_dir(a.path(), &mut ta).unwrap();
        layer_tar_from_dir(b.path(), &mut tb).unwrap();
        assert_eq!(ta, tb);

        let mut ar = tar::Archive::new(&ta[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let h = e.header().clone();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.uid().unwrap(), 0);
            match path.as_str() {
                "run.sh" => assert_eq!(h.mode().unwrap(), 0o755),
                "link" => {
                    assert!(h.entry_type().is_symlink());
                    assert_eq!(
                        e.link_name().unwrap().unwrap().to_str(),
                        Some("usr/share/doc/readme")
                    );
                }
                "usr/share/doc/readme" => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    assert_eq!(s, "hello");
                }
                _ => {}
            }
            seen.push(path);
        }
        let mut sorted = seen.clone();
        sorted.sort_by(|x, y| Path::new(x).cmp(Path::new(y)));
        assert_eq!(seen, sorted);
        assert!(seen.iter().any(|p| p.trim_end_matches('/') == "usr/share"));
    }

    #[test]
    fn build_image_is_reproducible() {
        let files = tempfile::tempdir().unwrap();
        sample(files.path());
        let l1 = tempfile::tempdir().unwrap();
        let l2 = tempfile::tempdir().unwrap();
        let d1 = build_image(l1.path(), "v1", &[files.path()], &ConfigExtras::default()).unwrap();
        let d2 = build_image(l2.path(), "v1", &[files.path()], &ConfigExtras::default()).unwrap();
        assert_eq!(d1, d2);
    }
}
