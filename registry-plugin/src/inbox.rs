//! The inbox folder: bundles delivered by a file transfer tool (maybe weeks late, maybe
//! slowly) go through the same intake as uploads.
//!
//! A file is taken when it is whole: its name is final (not hidden, not `*.tmp`, `*.part`,
//! `*.partial`, `*~`: tools write under such names and rename when done) and its length is
//! exactly what its own head declares, unchanged for `settle_secs`. A partial file is left
//! alone. A file that cannot become a bundle (not a bundle, refused head, longer than it
//! declares, bad payload) moves to the quarantine folder with `NAME.reason.json` beside it.
//! Only regular files directly in the folder are looked at; symlinks and subfolders are
//! skipped, and names are used only as names (never joined from bundle content).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::daemon::{Daemon, HeadCheck, Intake, Refused};

/// Most directory entries looked at per scan.
const MAX_ENTRIES: usize = 10_000;

/// What a scan decided for one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not (yet) something to act on.
    Wait,
    /// Whole: take it.
    Take,
    /// Can never become a valid bundle: quarantine with this reason.
    Quarantine(Refused),
}

/// Temporary names file transfer tools write under before renaming.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".part", ".partial", ".crdownload", ".filepart"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Watches the inbox until `shutdown` fires.
pub async fn run(daemon: Arc<Daemon>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let dir = daemon.config.inbox_dir();
    let quarantine = daemon.config.quarantine_dir();
    for d in [&dir, &quarantine] {
        if let Err(e) = std::fs::create_dir_all(d) {
            tracing::error!(dir = %d.display(), error = %e, "cannot create inbox folder; inbox off");
            return;
        }
    }
    let poll = Duration::from_secs(daemon.config.inbox.poll_secs.max(1));
    let settle = Duration::from_secs(daemon.config.inbox.settle_secs);
    // Size and mtime seen at the previous scan, per name: a file is stable once they repeat
    // and the settle time has passed since the mtime.
    let mut seen: HashMap<String, (u64, SystemTime)> = HashMap::new();
    loop {
        let d = daemon.clone();
        let (dir2, q2) = (dir.clone(), quarantine.clone());
        let prev = std::mem::take(&mut seen);
        seen = tokio::task::spawn_blocking(move || scan(&d, &dir2, &q2, prev, settle))
            .await
            .unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over the folder. Blocking.
fn scan(
    daemon: &Daemon,
    dir: &Path,
    quarantine: &Path,
    prev: HashMap<String, (u64, SystemTime)>,
    settle: Duration,
) -> HashMap<String, (u64, SystemTime)> {
    let mut seen = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read inbox");
            return seen;
        }
    };
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_temporary_name(&name) {
            continue;
        }
        // symlink_metadata: never follow a link out of the folder.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let now = (meta.len(), mtime);
        let stable = prev.get(&name) == Some(&now)
            && SystemTime::now()
                .duration_since(mtime)
                .map(|age| age >= settle)
                .unwrap_or(false);
        seen.insert(name.clone(), now);
        let path = entry.path();
        match judge(daemon, &path, &name, meta.len(), stable) {
            Verdict::Wait => {}
            Verdict::Quarantine(r) => {
                daemon.refusal(&r.bundle.clone(), &name, &r);
                move_to_quarantine(&path, quarantine, &name, &r);
                seen.remove(&name);
            }
            Verdict::Take => {
                seen.remove(&name);
                take(daemon, &path, quarantine, &name);
            }
        }
    }
    seen
}

/// Decides what to do with one inbox file, from its head and length.
pub fn judge(daemon: &Daemon, path: &Path, name: &str, len: u64, stable: bool) -> Verdict {
    let mut header = [0u8; 32];
    let Ok(mut f) = std::fs::File::open(path) else {
        return Verdict::Wait;
    };
    if len < header.len() as u64 || f.read_exact(&mut header).is_err() {
        // Too short to tell yet; if it stays this way it is not a bundle.
        return if stable {
            Verdict::Quarantine(not_a_bundle(name))
        } else {
            Verdict::Wait
        };
    }
    // The fixed header alone, as the upload API judges it: a head declaring more than the
    // limits is refused now, not after a megabyte of it was copied in.
    let head_len = match sideload_bundle::check_header(&header, name, &daemon.limits) {
        Ok(h) => h.head_len(),
        Err(sideload_bundle::Error::NotABundle { .. }) if !stable => return Verdict::Wait,
        Err(sideload_bundle::Error::NotABundle { .. }) => {
            return Verdict::Quarantine(not_a_bundle(name))
        }
        Err(e) => return Verdict::Quarantine(Refused::from_error(name, &e)),
    };
    if len < head_len {
        return Verdict::Wait;
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return Verdict::Wait;
    };
    match daemon.check_head(&mut f, name) {
        Err(e) if e.is_refusal() => Verdict::Quarantine(Refused::from_error(name, &e)),
        Err(e) => {
            tracing::warn!(bundle = %name, error = %e, "cannot check inbox file yet");
            Verdict::Wait
        }
        // Already queued or applied: once whole, intake drops it as a duplicate.
        Ok(HeadCheck::Known(_)) => {
            if stable {
                Verdict::Take
            } else {
                Verdict::Wait
            }
        }
        Ok(HeadCheck::Trusted(head, statement)) => {
            let total = head.payload_offset() + statement.payload.size;
            if len > total {
                Verdict::Quarantine(Refused::from_error(
                    name,
                    &sideload_bundle::Error::SizeMismatch {
                        bundle: name.to_owned(),
                        expected: total,
                        actual: len,
                    },
                ))
            } else if len == total && stable {
                Verdict::Take
            } else {
                Verdict::Wait
            }
        }
    }
}

fn not_a_bundle(name: &str) -> Refused {
    Refused::from_error(
        name,
        &sideload_bundle::Error::NotABundle {
            bundle: name.to_owned(),
        },
    )
}

/// Moves a whole inbox file into the daemon's bundle store and runs intake.
fn take(daemon: &Daemon, path: &Path, quarantine: &Path, name: &str) {
    let store = daemon.bundles_dir();
    let _ = std::fs::create_dir_all(&store);
    let incoming = store.join(
        crate::incoming::Incoming::Inbox {
            file: sanitize(name),
        }
        .file_name(),
    );
    // Rename when on the same filesystem; otherwise copy, then remove the original.
    let moved = std::fs::rename(path, &incoming).or_else(|_| {
        std::fs::copy(path, &incoming)?;
        std::fs::File::open(&incoming)?.sync_all()?;
        std::fs::remove_file(path)
    });
    if let Err(e) = moved {
        tracing::warn!(bundle = %name, error = %e, "cannot move inbox file into the store; retried next scan");
        let _ = std::fs::remove_file(&incoming);
        return;
    }
    // Keep a copy-back path for refusals: intake deletes refused files, so quarantine a
    // hard link made before intake runs.
    let keep = quarantine.join(format!(".{}.pending", sanitize(name)));
    let linked = std::fs::hard_link(&incoming, &keep).is_ok();
    crate::crash::reached(crate::crash::Step::InboxMoved);
    match daemon.intake(&incoming, name, "inbox", None) {
        Ok(Intake::Queued { bundle }) => {
            tracing::info!(bundle = %name, id = %bundle.id, "inbox bundle queued")
        }
        Ok(Intake::Duplicate { bundle }) => {
            tracing::info!(bundle = %name, id = %bundle.id, "inbox bundle already known")
        }
        // A device-side problem: back into the inbox, taken again at a later scan.
        Err(r) if !r.permanent => {
            if let Err(e) = std::fs::rename(&incoming, path) {
                tracing::error!(bundle = %name, error = %e, "cannot put the file back into the inbox");
            }
        }
        Err(r) => {
            if linked {
                move_to_quarantine(&keep, quarantine, name, &r);
            }
        }
    }
    let _ = std::fs::remove_file(&keep);
}

/// Moves `path` to `quarantine/NAME` (a free variant of it) with the reason beside it.
fn move_to_quarantine(path: &Path, quarantine: &Path, name: &str, r: &Refused) {
    let base = sanitize(name);
    let mut target: PathBuf = quarantine.join(&base);
    let mut n = 1;
    while target.exists() {
        target = quarantine.join(format!("{base}.{n}"));
        n += 1;
    }
    let moved = std::fs::rename(path, &target).or_else(|_| {
        std::fs::copy(path, &target)?;
        std::fs::remove_file(path)
    });
    if let Err(e) = moved {
        tracing::error!(bundle = %name, error = %e, "cannot quarantine; file deleted instead");
        let _ = std::fs::remove_file(path);
        return;
    }
    let reason = serde_json::json!({
        "file": name,
        "code": r.code,
        "reason": r.reason,
        "advice": r.advice,
        "at": crate::journal::now(),
    });
    let mut reason_path = target.clone().into_os_string();
    reason_path.push(".reason.json");
    let _ = std::fs::write(
        reason_path,
        serde_json::to_vec_pretty(&reason).expect("serializes"),
    );
    tracing::warn!(bundle = %name, to = %target.display(), reason = %r.reason, "quarantined");
}

/// A file name safe to reuse inside the daemon's folders.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_skipped() {
        for n in [
            ".x.bundle",
            "a.bundle.tmp",
            "a.part",
            "a.partial",
            "a~",
            "a.filepart",
        ] {
            assert!(is_temporary_name(n), "{n}");
        }
        assert!(!is_temporary_name("app-v2.bundle"));
        assert_eq!(sanitize("../a b.bundle"), "_a_b.bundle");
    }
}
