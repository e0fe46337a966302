//! A small emergency reserve of disk in the data directory, so that what the device must
//! record about a full disk (a refusal, a failed apply, their events) can still be written
//! when the disk is full, as CockroachDB keeps its `EMERGENCY_BALLAST`.
//!
//! `DATA_DIR/ballast` holds [`SIZE`] allocated bytes. A journal or event write that fails is
//! tried once more after the ballast is deleted ([`Ballast::released_retry`]); the queue
//! worker makes it again once the disk has room ([`Ballast::ensure`]).

use std::io::Write;
use std::path::PathBuf;

/// Bytes kept: a few hundred journal rows and events.
pub const SIZE: u64 = 1 << 20;

/// The reserve file.
pub struct Ballast {
    path: PathBuf,
}

impl Ballast {
    /// The reserve of the data directory `data_dir` (not made yet: [`Ballast::ensure`]).
    pub fn new(data_dir: &std::path::Path) -> Ballast {
        Ballast {
            path: data_dir.join("ballast"),
        }
    }

    /// Makes the reserve if it is missing and the disk has room for it and as much again.
    pub fn ensure(&self) {
        if self.path.exists() {
            return;
        }
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        if fs4::available_space(dir).map_or(true, |a| a < 2 * SIZE) {
            return;
        }
        let made = sideload_bundle::fsutil::replace_file(&self.path, 0o600, |f| {
            // Written, not sparse: the blocks must really be taken.
            let zeros = vec![0u8; 64 << 10];
            for _ in 0..SIZE / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
            Ok(())
        });
        if let Err(e) = made {
            tracing::warn!(error = %e, "cannot make the disk reserve (ballast)");
        }
    }

    /// Deletes the reserve; true if there was one to free.
    pub fn release(&self) -> bool {
        let freed = std::fs::remove_file(&self.path).is_ok();
        if freed {
            tracing::warn!(path = %self.path.display(), "disk full: the reserve (ballast) is freed to record it");
        }
        freed
    }

    /// Runs `write`; if it fails and a reserve was there to free, frees it and runs it again.
    pub fn released_retry<T, E>(&self, mut write: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        match write() {
            Err(_) if self.release() => write(),
            done => done,
        }
    }
}
