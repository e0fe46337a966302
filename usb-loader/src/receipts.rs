//! Receipts: what the device did with each bundle of a stick, and what it holds now, written
//! back onto the stick so it carries the device's state to the cloud.
//!
//! Writes go only to `FOLDER/receipts/DEVICE_ID/` on the stick, through directory handles
//! opened without following symlinks (a hostile stick cannot redirect them), each file written
//! under a temporary name, synced and renamed; they are small (a few KiB per bundle).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

/// What happened to one bundle, as the receipt reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The bundle's file name on the stick.
    pub bundle: String,
    /// Its statement digest (the id the plugin knows it by), when its head could be read.
    pub id: Option<String>,
    /// Target repository.
    pub repository: Option<String>,
    /// Target tags.
    pub tags: Vec<String>,
    /// Anti-rollback sequence.
    pub sequence: Option<u64>,
    /// `refused`, `skipped`, `received` (handed over, not applied yet), `applying`, `applied`,
    /// `failed`, `already-applied`.
    pub state: String,
    /// Why (refusals and failures).
    pub reason: Option<String>,
    /// What to do about it.
    pub advice: Option<String>,
    /// The stick visit this receipt was written on (Unix seconds).
    pub at: u64,
}

/// Writes `receipts`, the device's `inventory` and a `visit.json` summary into
/// `root/folder/receipts/device_id/`. `root` is the stick's mount point.
pub fn write(
    root: &Path,
    folder: &str,
    device_id: &str,
    receipts: &[Receipt],
    inventory: &serde_json::Value,
    summary: &serde_json::Value,
) -> std::io::Result<()> {
    let root = open_dir(rustix::fs::CWD, root, false)?;
    let folder = open_dir(&root, Path::new(folder), true)?;
    let receipts_dir = open_dir(&folder, Path::new("receipts"), true)?;
    let device = open_dir(&receipts_dir, Path::new(&safe_name(device_id)), true)?;
    for r in receipts {
        write_file(
            &device,
            &format!("{}.json", safe_name(&r.bundle)),
            &serde_json::to_vec_pretty(r).expect("serializes"),
        )?;
    }
    write_file(
        &device,
        "inventory.json",
        &serde_json::to_vec_pretty(inventory).expect("serializes"),
    )?;
    write_file(
        &device,
        "visit.json",
        &serde_json::to_vec_pretty(summary).expect("serializes"),
    )?;
    rustix::fs::fsync(&device)?;
    Ok(())
}

/// Opens (creating if asked) one directory below `parent`, refusing symlinks.
fn open_dir(parent: impl AsFd, name: &Path, create: bool) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOENT) if create => {
            rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755))?;
            rustix::fs::fsync(&parent)?;
            Ok(rustix::fs::openat(&parent, name, flags, Mode::empty())?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `name` in `dir` under a temporary name, syncs it and renames it into place.
fn write_file(dir: &OwnedFd, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = format!(".{name}.tmp");
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.sync_all()?;
    rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
    Ok(())
}

/// A name safe as one file name on any stick filesystem.
pub fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let s = s.trim_start_matches('.').to_owned();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_land_in_the_device_folder_and_symlinks_are_not_followed() {
        let stick = tempfile::tempdir().unwrap();
        std::fs::create_dir(stick.path().join("sideload")).unwrap();
        let receipt = Receipt {
            bundle: "app v2.bundle".into(),
            id: Some("sha256:ab".into()),
            repository: Some("edge/app".into()),
            tags: vec!["v2".into()],
            sequence: Some(3),
            state: "applied".into(),
            reason: None,
            advice: None,
            at: 1,
        };
        let inv = serde_json::json!({"device": "d1"});
        write(
            stick.path(),
            "sideload",
            "d1",
            std::slice::from_ref(&receipt),
            &inv,
            &inv,
        )
        .unwrap();
        let back: Receipt = serde_json::from_slice(
            &std::fs::read(stick.path().join("sideload/receipts/d1/app_v2.bundle.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, receipt);
        // A hostile stick with receipts -> /etc: refused, nothing written there.
        let evil = tempfile::tempdir().unwrap();
        std::fs::create_dir(evil.path().join("sideload")).unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), evil.path().join("sideload/receipts")).unwrap();
        assert!(write(evil.path(), "sideload", "d1", &[], &inv, &inv).is_err());
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
        assert_eq!(safe_name("../x/ y"), "_x__y");
    }
}
