//! The names of files intake holds in `bundles/` while it decides (pure). A delivery moves its
//! file there under a name that says where it came from, so that start-up recovery can put an
//! interrupted one back: an upload's part to `uploads/ID.part`, an inbox file to the inbox.
//! The uploads module, the inbox and recovery all name and read these files here.

use std::path::{Path, PathBuf};

/// What the file was before intake took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The part file of upload `id`.
    Upload {
        /// The upload's id.
        id: String,
    },
    /// Inbox file `file` (its name made safe: ASCII letters, digits, `.`, `_`, `-`).
    Inbox {
        /// The inbox file's name.
        file: String,
    },
}

const SUFFIX: &str = ".incoming";
const INBOX_PREFIX: &str = "inbox-";

impl Incoming {
    /// The file's name in `bundles/`.
    pub fn file_name(&self) -> String {
        match self {
            Incoming::Upload { id } => format!("{id}{SUFFIX}"),
            Incoming::Inbox { file } => format!("{INBOX_PREFIX}{file}{SUFFIX}"),
        }
    }

    /// What a name in `bundles/` was, or `None` for a name that is not an incoming file.
    pub fn parse(name: &str) -> Option<Incoming> {
        let stem = name.strip_suffix(SUFFIX).filter(|s| !s.is_empty())?;
        Some(match stem.strip_prefix(INBOX_PREFIX) {
            Some(file) => Incoming::Inbox {
                file: file.to_owned(),
            },
            None => Incoming::Upload {
                id: stem.to_owned(),
            },
        })
    }
}

/// Upload `id`'s part file (the bytes received so far) in the uploads folder.
pub fn upload_part(uploads_dir: &Path, id: &str) -> PathBuf {
    uploads_dir.join(format!("{id}.part"))
}

/// Upload `id`'s record in the uploads folder.
pub fn upload_record(uploads_dir: &Path, id: &str) -> PathBuf {
    uploads_dir.join(format!("{id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_files_are_not_incoming() {
        for incoming in [
            Incoming::Upload { id: "u-1f".into() },
            Incoming::Inbox {
                file: "app_v2.bundle".into(),
            },
        ] {
            assert_eq!(Incoming::parse(&incoming.file_name()), Some(incoming));
        }
        assert_eq!(
            Incoming::parse("inbox-a.bundle.incoming"),
            Some(Incoming::Inbox {
                file: "a.bundle".into()
            })
        );
        for other in ["abc.bundle", ".incoming", "x.incoming.tmp", "u-1f.part"] {
            assert_eq!(Incoming::parse(other), None, "{other}");
        }
        assert_eq!(
            upload_part(Path::new("/d/uploads"), "u"),
            Path::new("/d/uploads/u.part")
        );
        assert_eq!(
            upload_record(Path::new("/d/uploads"), "u"),
            Path::new("/d/uploads/u.json")
        );
    }
}
