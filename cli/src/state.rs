//! The anti-rollback record of `sideload apply`: the last sequence applied per repository.
//!
//! On a device the registry plugin keeps this in its journal; the CLI keeps it in a small JSON
//! file so `apply` and `verify` can enforce invariant 6 outside a device too.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Last applied sequence per repository.
#[derive(Debug, Default)]
pub struct SequenceState {
    sequences: BTreeMap<String, u64>,
}

impl SequenceState {
    /// Reads the file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading state {}", path.display())),
        };
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("state file {} is not JSON", path.display()))?;
        let mut sequences = BTreeMap::new();
        if let Some(map) = value.get("sequences").and_then(Value::as_object) {
            for (repo, seq) in map {
                let seq = seq.as_u64().with_context(|| {
                    format!(
                        "state file {}: sequence of {repo} is not a number",
                        path.display()
                    )
                })?;
                sequences.insert(repo.clone(), seq);
            }
        }
        Ok(SequenceState { sequences })
    }

    /// The last applied sequence for a repository.
    pub fn get(&self, repository: &str) -> Option<u64> {
        self.sequences.get(repository).copied()
    }

    /// Records a sequence and writes the file atomically (temp file, fsync, rename, fsync dir).
    pub fn record(&mut self, path: &Path, repository: &str, sequence: u64) -> Result<()> {
        self.sequences.insert(repository.to_owned(), sequence);
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "sequences": self.sequences }))?;
        sideload_bundle::fsutil::replace_file_with(path, 0o600, &body)
            .with_context(|| format!("replacing state {}", path.display()))
    }
}
