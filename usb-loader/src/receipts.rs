//! Receipts: what the device did with each bundle of a stick, and what it holds now, written
//! back onto the stick so it carries the device's state to the cloud.
//!
//! Writes go only to `FOLDER/receipts/DEVICE_ID/` on the stick, through directory handles
//! opened without following symlinks (a hostile stick cannot redirect them), each file written
//! under a temporary name, synced and renamed; they are small (a few KiB per bundle).
//!
//! # Receipt file names
//!
//! Each bundle's receipt is `NAME.json`, where NAME is the bundle's file name under an escaping
//! ([`receipt_file_name`]) that is injective, reversible ([`bundle_name_from_receipt_file`]) and
//! gives a valid, distinct name on FAT32, exFAT and ext4 alike, also where names compare without
//! case (FAT, exFAT, and any machine the receipts are copied to):
//!
//! | in the bundle name | in the receipt name |
//! |---|---|
//! | `a`-`z`, `0`-`9`, `-`, `_`, `.` (not first), space | itself |
//! | `A`-`Z` | `!` and the lower-case letter (`App.bundle` -> `!app.bundle.json`) |
//! | anything else (`!`, `%`, `~`, `:`, `"`, non-ASCII, ...) | `%XX` per UTF-8 byte, upper-case hex (`ü` -> `%C3%BC`) |
//!
//! The result is ASCII, so its length in bytes is its length in UTF-16 units too; a name whose
//! receipt name would pass 255 bytes keeps a readable prefix and ends in `~` and 16 hex digits
//! of the sha256 of the whole name (`~` is never literal otherwise). The receipt itself always
//! carries the exact name in its `bundle` field. Two receipts of one visit that still share a
//! name (the same file name now and from an earlier visit, for different bundles) are told
//! apart by [`receipt_file_names`], which checks every name of a visit for collisions, without
//! regard to case, before anything is written.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use serde::Serialize;

pub use sideload_device_api::{Receipt, ReceiptState};

/// Writes `receipts`, the device's `inventory` and a `visit.json` summary into
/// `root/folder/receipts/device_id/`. `root` is the stick's mount point.
pub fn write(
    root: &Path,
    folder: &str,
    device_id: &str,
    receipts: &[Receipt],
    inventory: Option<&sideload_device_api::Inventory>,
    summary: &impl Serialize,
) -> std::io::Result<()> {
    let root = open_dir(rustix::fs::CWD, root, false)?;
    let folder = open_dir(&root, Path::new(folder), true)?;
    let receipts_dir = open_dir(&folder, Path::new("receipts"), true)?;
    let device = open_dir(&receipts_dir, Path::new(&safe_name(device_id)), true)?;
    for (r, name) in receipts.iter().zip(receipt_file_names(receipts)) {
        write_file(
            &device,
            &name,
            &serde_json::to_vec_pretty(r).expect("serializes"),
        )?;
    }
    write_file(&device, "inventory.json", &sorted_json(&inventory))?;
    write_file(&device, "visit.json", &sorted_json(summary))?;
    rustix::fs::fsync(&device)?;
    Ok(())
}

/// Pretty JSON with the keys of every object sorted (the layout these files have always had;
/// `null` for a missing inventory).
fn sorted_json(value: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("serializes");
    serde_json::to_vec_pretty(&value).expect("serializes")
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

/// Files of the device folder that are not receipts.
const RESERVED: [&str; 2] = ["inventory.json", "visit.json"];

/// Longest file name on FAT32 and exFAT (UTF-16 units) and ext4 (bytes); receipt names are
/// ASCII, where the two agree.
const MAX_FILE_NAME: usize = 255;

/// The receipt file name for the bundle file name `bundle` (see the module docs): `ESCAPED.json`.
pub fn receipt_file_name(bundle: &str) -> String {
    let mut escaped = String::with_capacity(bundle.len() + 8);
    for (i, c) in bundle.char_indices() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '_' | ' ' => escaped.push(c),
            '.' if i > 0 => escaped.push(c),
            'A'..='Z' => {
                escaped.push('!');
                escaped.push(c.to_ascii_lowercase());
            }
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    escaped.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    // Windows refuses a DOS device name before the first dot (`con.bundle.json`) on any
    // filesystem: its first letter is escaped.
    let base = escaped.split('.').next().unwrap_or("");
    if is_dos_device_name(base) {
        escaped = format!("%{:02X}{}", escaped.as_bytes()[0], &escaped[1..]);
    }
    if escaped.len() + ".json".len() <= MAX_FILE_NAME {
        return format!("{escaped}.json");
    }
    // Too long: a readable prefix and the hash of the whole name, with room left for a
    // collision suffix (see `receipt_file_names`).
    let hash = sideload_signing::Digest::of_bytes(bundle.as_bytes());
    with_suffix(&escaped, &format!("~{}", &hash.hex()[..16]), 16)
}

/// `con`, `prn`, `aux`, `nul`, `com1`-`com9`, `lpt1`-`lpt9` (already lower case here).
fn is_dos_device_name(base: &str) -> bool {
    let base = base.trim_end_matches(' ');
    matches!(base, "con" | "prn" | "aux" | "nul")
        || base.len() == 4
            && (base.starts_with("com") || base.starts_with("lpt"))
            && matches!(base.as_bytes()[3], b'1'..=b'9')
}

/// `STEM SUFFIX.json`, the stem cut (between escapes) so the whole stays within
/// [`MAX_FILE_NAME`] minus `spare` bytes.
fn with_suffix(stem: &str, suffix: &str, spare: usize) -> String {
    let room = MAX_FILE_NAME - spare - ".json".len() - suffix.len();
    let mut cut = stem.len().min(room);
    let splits_escape = |cut: usize| {
        let head = &stem.as_bytes()[..cut];
        head.ends_with(b"!")
            || head.ends_with(b"%")
            || head[..cut.saturating_sub(1)].ends_with(b"%")
    };
    while cut > 0 && splits_escape(cut) {
        cut -= 1;
    }
    format!("{}{suffix}.json", &stem[..cut])
}

/// The bundle file name a receipt file name stands for; `None` for names that are not receipt
/// names (`inventory.json`), and for the hashed form of very long names (their receipt holds
/// the name).
pub fn bundle_name_from_receipt_file(file: &str) -> Option<String> {
    let escaped = file.strip_suffix(".json")?;
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut chars = escaped.bytes();
    while let Some(b) = chars.next() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b' ' | b'.' => bytes.push(b),
            b'!' => match chars.next()? {
                l @ b'a'..=b'z' => bytes.push(l.to_ascii_uppercase()),
                _ => return None,
            },
            b'%' => {
                let hex = [chars.next()?, chars.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                if hex.bytes().any(|h| h.is_ascii_lowercase()) {
                    return None;
                }
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            }
            _ => return None,
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    let is_bundle = crate::scan::check_bundle_name(&name).is_ok();
    (is_bundle && receipt_file_name(&name) == file).then_some(name)
}

/// The file names of a visit's receipts, in order: [`receipt_file_name`] of each, and where two
/// would still be the same file (compared without case, as FAT and exFAT do), the later one
/// gets `~` and the start of its bundle's id (or a counter) before `.json`.
pub fn receipt_file_names(receipts: &[Receipt]) -> Vec<String> {
    let mut taken: std::collections::HashSet<String> =
        RESERVED.iter().map(|n| n.to_string()).collect();
    let mut names = Vec::with_capacity(receipts.len());
    for r in receipts {
        let plain = receipt_file_name(&r.bundle);
        let stem = plain.strip_suffix(".json").expect("ends in .json");
        let id =
            r.id.as_deref()
                .map(|id| id.rsplit(':').next().unwrap_or(id))
                .unwrap_or("")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect::<String>()
                .to_ascii_lowercase();
        let mut candidates = std::iter::once(plain.clone())
            .chain((!id.is_empty()).then(|| with_suffix(stem, &format!("~{id}"), 0)))
            .chain((2..).map(|n| with_suffix(stem, &format!("~{n}"), 0)));
        let name = candidates
            .find(|n| !taken.contains(&n.to_ascii_lowercase()))
            .expect("an endless list has a free name");
        taken.insert(name.to_ascii_lowercase());
        names.push(name);
    }
    names
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
            state: ReceiptState::Applied,
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
            None,
            &inv,
        )
        .unwrap();
        let back: Receipt = serde_json::from_slice(
            &std::fs::read(stick.path().join("sideload/receipts/d1/app v2.bundle.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, receipt);
        // A hostile stick with receipts -> /etc: refused, nothing written there.
        let evil = tempfile::tempdir().unwrap();
        std::fs::create_dir(evil.path().join("sideload")).unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), evil.path().join("sideload/receipts")).unwrap();
        assert!(write(evil.path(), "sideload", "d1", &[], None, &inv).is_err());
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
        assert_eq!(safe_name("../x/ y"), "_x__y");
    }

    /// Names that FAT32 and exFAT (and Windows, where receipts get read) accept: printable
    /// ASCII here, none of `"*/:<>?\|`, no trailing dot or space, at most 255 units.
    fn valid_on_fat_exfat_ext4(name: &str) -> bool {
        name.is_ascii()
            && !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| (0x20..0x7f).contains(&b))
            && !name.contains(['"', '*', '/', ':', '<', '>', '?', '\\', '|'])
            && !name.ends_with(['.', ' '])
            && !name.starts_with('.')
            && !is_dos_device_name(name.split('.').next().unwrap())
    }

    fn receipt(bundle: &str, id: Option<&str>) -> Receipt {
        Receipt {
            bundle: bundle.into(),
            id: id.map(str::to_owned),
            repository: None,
            tags: Vec::new(),
            sequence: None,
            state: ReceiptState::Applied,
            reason: None,
            advice: None,
            at: 1,
        }
    }

    #[test]
    fn receipt_names_are_distinct_reversible_and_valid_on_every_stick_filesystem() {
        let long_e = format!("{}.bundle", "é".repeat(124));
        let long_e2 = format!("{}x.bundle", "é".repeat(123));
        let long_ascii = format!("{}.bundle", "A".repeat(248));
        let names = [
            "ü.bundle",
            "é.bundle",
            "a b.bundle",
            "a_b.bundle",
            "a.bundle",
            "A.bundle",
            "UPPER.BUNDLE",
            "upper.bundle",
            "50%.bundle",
            "50%25.bundle",
            "x!y.bundle",
            "!x!y.bundle",
            "a~b.bundle",
            "日本語.bundle",
            "a:b.bundle",
            "a*b?.bundle",
            "a\"b\".bundle",
            "<a>|b.bundle",
            "con.bundle",
            "CON.bundle",
            "%63on.bundle",
            "com1.bundle",
            "a\\b.bundle",
            "e\u{301}.bundle",
            "tab\u{a0}.bundle",
            &long_e,
            &long_e2,
            &long_ascii,
        ];
        let mut seen = std::collections::HashMap::new();
        for name in names {
            let file = receipt_file_name(name);
            assert!(valid_on_fat_exfat_ext4(&file), "{name:?} -> {file:?}");
            if let Some(other) = seen.insert(file.to_ascii_lowercase(), name) {
                panic!("{name:?} and {other:?} both -> {file:?}");
            }
            if file.contains('~') {
                assert!(name.len() > 80, "{name:?} -> {file:?}");
                assert_eq!(bundle_name_from_receipt_file(&file), None);
            } else {
                assert_eq!(
                    bundle_name_from_receipt_file(&file).as_deref(),
                    Some(name),
                    "{file:?}"
                );
            }
        }
        assert_eq!(receipt_file_name("ü.bundle"), "%C3%BC.bundle.json");
        assert_eq!(receipt_file_name("App v2.bundle"), "!app v2.bundle.json");
        assert_eq!(receipt_file_name("con.bundle"), "%63on.bundle.json");
        for not_ours in [
            "inventory.json",
            "visit.json",
            "a.bundle",
            "%c3%bc.bundle.json",
        ] {
            assert_eq!(bundle_name_from_receipt_file(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn a_name_reported_twice_in_one_visit_gets_two_files() {
        let receipts = [
            receipt("app.bundle", Some("sha256:aaaaaaaaaaaaaaaa")),
            receipt("App.bundle", Some("sha256:bbbbbbbbbbbbbbbb")),
            receipt("app.bundle", Some("sha256:cccccccccccccccc")),
            receipt("app.bundle", Some("sha256:cccccccccccccccc")),
            receipt("app.bundle", None),
        ];
        let names = receipt_file_names(&receipts);
        assert_eq!(
            names,
            [
                "app.bundle.json",
                "!app.bundle.json",
                "app.bundle~cccccccccccc.json",
                "app.bundle~2.json",
                "app.bundle~3.json",
            ]
        );
        let long = format!("{}.bundle", "é".repeat(124));
        let names = receipt_file_names(&[
            receipt(&long, Some("sha256:ab")),
            receipt(&long, Some("sha256:cd")),
        ]);
        assert_ne!(names[0], names[1]);
        assert!(
            names.iter().all(|n| valid_on_fat_exfat_ext4(n)),
            "{names:?}"
        );
    }
}
