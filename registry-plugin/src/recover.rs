//! Start-up recovery: brings every on-disk state that a crash at any step of intake or apply
//! can leave ([`crate::crash::Step`]) to the end that step was heading for.
//!
//! The journal is the record of truth; files are made durable (written, fsynced, renamed,
//! directory fsynced) before the journal row that refers to them, and removed only after the
//! row that stops referring to them. So at start:
//!
//! | on disk                                      | journal row            | recovery                          |
//! |----------------------------------------------|------------------------|-----------------------------------|
//! | `staging/*`                                  | any                    | removed (decoded again on apply)  |
//! | `bundles/ID.incoming`, `bundles/inbox-N.incoming` | none               | back to its upload / the inbox    |
//! | `bundles/HEX.bundle`                         | none, failed, refused  | taken in again (checked in full)  |
//! | `bundles/HEX.bundle`                         | applied                | `applied` announced, file removed |
//! | `bundles/HEX.bundle`                         | queued, applying, waiting | kept; `applying` → `queued`    |
//! | no stored file                               | queued, applying, waiting | `failed`: deliver again        |
//! | `quarantine/.N.pending`                      | any                    | removed                           |
//!
//! Uploads are settled afterwards by [`crate::uploads::Uploads::settle`]: an upload whose
//! bundle the journal holds gets that result, one whose bytes are gone starts again at 0.

use crate::incoming::{upload_part, upload_record, Incoming};
use std::path::{Path, PathBuf};

use crate::daemon::Daemon;
use crate::journal::State;

/// What to do with a stored bundle file, from its journal row's state. Pure.
#[derive(Debug, PartialEq, Eq)]
pub enum StoredFile {
    /// Still to be applied: keep.
    Keep,
    /// Applied: the crash came after the journal and before the announcement or cleanup.
    FinishApplied,
    /// No live row: the crash came between the rename into the store and the journal insert
    /// (or a failed apply's cleanup); take it in again.
    Intake,
}

/// Decides a stored file's fate from its row's state (`None`: no row). Pure.
pub fn stored_file(state: Option<State>) -> StoredFile {
    match state {
        Some(s) if s.keeps_file() => StoredFile::Keep,
        Some(State::Applied) => StoredFile::FinishApplied,
        _ => StoredFile::Intake,
    }
}

/// What stopped start-up recovery. A runtime failure (the daemon exits 1 and is restarted); the
/// next start takes recovery up again where it stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A file or folder could not be removed, read or moved back.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The journal could not be read or updated.
    #[error(transparent)]
    Journal(#[from] rusqlite::Error),
}

impl Daemon {
    /// On start: recovers what a crash at any step left (see the module doc).
    pub fn recover(&self) -> Result<(), RecoverError> {
        let staging = self.config.data_dir.join("staging");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        self.recover_incoming()?;
        let taken_again = self.recover_stored()?;
        for b in self.journal.in_state(State::Applying)? {
            tracing::warn!(bundle = %b.name, id = %b.id, "apply was interrupted; queued again");
            self.journal.set_state(
                &b.id,
                State::Queued,
                Some("apply interrupted by a restart; retried"),
                None,
            )?;
        }
        for state in [State::Queued, State::Waiting] {
            for b in self.journal.in_state(state)? {
                if !self.stored_bundle(&b.id).exists() {
                    let reason = format!("{}: the stored bundle file is missing", b.name);
                    let advice = "deliver the bundle again";
                    self.journal
                        .set_state(&b.id, State::Failed, Some(&reason), Some(advice))?;
                    self.announce(&b, "failed", Some(&reason), Some(advice));
                }
            }
        }
        self.remove_pending_links(&taken_again);
        Ok(())
    }

    /// Stored bundles (`bundles/HEX.bundle`) against their journal rows. Returns the ids
    /// taken in again (and announced so).
    fn recover_stored(&self) -> Result<Vec<String>, RecoverError> {
        let mut taken_again = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.bundles_dir()) else {
            return Ok(taken_again);
        };
        let mut stored: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "bundle"))
            .collect();
        stored.sort();
        for path in stored {
            let Some(hex) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let id = format!("sha256:{hex}");
            let row = self.journal.get(&id)?;
            match stored_file(row.as_ref().map(|b| b.state)) {
                StoredFile::Keep => {}
                StoredFile::FinishApplied => {
                    let b = row.expect("an applied row");
                    tracing::warn!(bundle = %b.name, id = %b.id, "applied before a restart; its cleanup is finished now");
                    // At least once: the crash may have come after the event was spooled.
                    self.announce(&b, "applied", None, None);
                    self.remove_stored(&path);
                }
                StoredFile::Intake => {
                    self.intake_again(&path, &id);
                    taken_again.push(id);
                }
            }
        }
        Ok(taken_again)
    }

    /// Takes a stored file without a live journal row in again, under the name its delivery
    /// gave it if one is still recorded (an upload's record, an inbox take's pending link).
    fn intake_again(&self, path: &Path, id: &str) {
        let (name, source) = match (self.upload_name(id), self.pending_name(path)) {
            (Some(n), _) => (n, "upload"),
            (None, Some(n)) => (n, "inbox"),
            (None, None) => {
                let hex = id.strip_prefix("sha256:").unwrap_or(id);
                (
                    format!("recovered-{}.bundle", &hex[..hex.len().min(12)]),
                    "recovery",
                )
            }
        };
        tracing::warn!(bundle = %name, %id, "a stored bundle has no journal entry (a crash during intake); taken in again");
        if let Err(r) = self.intake(path, &name, source, None) {
            tracing::warn!(bundle = %name, reason = %r.reason, "the recovered bundle was not taken");
        }
    }

    /// The `Bundle-Name` of an unfinished upload of bundle `id`, from its record.
    fn upload_name(&self, id: &str) -> Option<String> {
        let dir = self.config.uploads_dir();
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                return None;
            }
            let meta: crate::uploads::UploadMeta =
                serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            (meta.bundle_id.as_deref() == Some(id)).then_some(meta.name)
        })
    }

    /// The inbox name of the file at `path`, from the quarantine's `.NAME.pending` link to it.
    fn pending_name(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(path).ok()?.ino();
        std::fs::read_dir(self.config.quarantine_dir())
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let bare = name.strip_prefix('.')?.strip_suffix(".pending")?.to_owned();
                (e.metadata().ok()?.ino() == inode).then_some(bare)
            })
    }

    /// Removes a stored bundle file and makes the removal durable.
    pub(crate) fn remove_stored(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the stored bundle");
            }
        }
        let _ = sideload_bundle::fsutil::sync_dir(&self.bundles_dir());
    }

    /// Files caught between their delivery and the queue (`bundles/*.incoming`) go back where
    /// they came from: an upload's bytes to its upload (whose client finishes it with a PUT),
    /// an inbox file to the inbox (taken again at the next scan).
    fn recover_incoming(&self) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.bundles_dir()) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(incoming) = Incoming::parse(&name) else {
                continue;
            };
            let uploads = self.config.uploads_dir();
            let (back, has_owner) = match &incoming {
                Incoming::Inbox { file } => {
                    let inbox = self.config.inbox_dir();
                    (inbox.join(file), inbox.exists())
                }
                Incoming::Upload { id } => (
                    upload_part(&uploads, id),
                    upload_record(&uploads, id).exists(),
                ),
            };
            if has_owner {
                tracing::warn!(file = %name, to = %back.display(), "delivery interrupted by a restart; put back");
                std::fs::rename(entry.path(), &back)?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Inbox takes link each file into quarantine as `.NAME.pending` until intake decides;
    /// a crash leaves the link behind (the file itself went back to the inbox or the store).
    /// A link to a stored file whose row is queued marks an intake that journaled the bundle
    /// but crashed before announcing it: the announcement is made now.
    fn remove_pending_links(&self, announced: &[String]) {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(self.config.quarantine_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with('.') && name.ends_with(".pending")) {
                continue;
            }
            let inode = entry.metadata().map(|m| m.ino()).ok();
            let stored = std::fs::read_dir(self.bundles_dir())
                .into_iter()
                .flatten()
                .flatten()
                .find(|s| {
                    s.metadata()
                        .map(|m| Some(m.ino()) == inode)
                        .unwrap_or(false)
                });
            if let Some(stem) = stored.and_then(|s| {
                s.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".bundle").map(str::to_owned))
            }) {
                let id = format!("sha256:{stem}");
                if let Ok(Some(b)) = self.journal.get(&id) {
                    if b.state == State::Queued && !announced.contains(&id) {
                        self.announce(&b, "queued", None, None);
                    }
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_file_is_kept_finished_or_taken_again_by_its_rows_state() {
        for s in [State::Queued, State::Applying, State::Waiting] {
            assert_eq!(stored_file(Some(s)), StoredFile::Keep);
        }
        assert_eq!(stored_file(Some(State::Applied)), StoredFile::FinishApplied);
        for s in [None, Some(State::Failed), Some(State::Refused)] {
            assert_eq!(stored_file(s), StoredFile::Intake);
        }
    }
}
