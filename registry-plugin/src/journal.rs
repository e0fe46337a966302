//! The journal: a durable record of every bundle the device saw (received, queued, applying,
//! applied, failed, refused, with reasons and timestamps) and the anti-rollback sequence of
//! every repository.
//!
//! SQLite (one file in the data directory, WAL, `synchronous=FULL`): every state change is one
//! transaction, so a crash leaves either the old or the new state, never half of one.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// Schema migrations, applied in order; `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE bundles (
    id              TEXT PRIMARY KEY,  -- the statement's digest: one bundle however it is signed
    name            TEXT NOT NULL,     -- file name as delivered (for messages)
    file_digest     TEXT,              -- sha256 of the whole bundle file
    repository      TEXT NOT NULL,
    tags            TEXT NOT NULL,     -- JSON array
    sequence        INTEGER NOT NULL,
    manifest_digest TEXT NOT NULL,
    ordered_by      TEXT NOT NULL,
    contact         TEXT NOT NULL,
    source          TEXT NOT NULL,     -- upload | inbox | usb
    state           TEXT NOT NULL,
    reason          TEXT,
    advice          TEXT,
    engine          TEXT,              -- container engine outcome, when configured
    received_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle  TEXT NOT NULL,             -- bundles.id, or the delivery's name when refused unread
    name    TEXT NOT NULL,
    state   TEXT NOT NULL,
    reason  TEXT,
    at      INTEGER NOT NULL
);
CREATE INDEX history_bundle ON history (bundle);
CREATE TABLE sequences (
    repository TEXT PRIMARY KEY,
    sequence   INTEGER NOT NULL
);
"#,
    r#"
-- Refusals of untrusted deliveries (anyone can cause them) are kept only up to a bound.
ALTER TABLE history ADD COLUMN untrusted INTEGER NOT NULL DEFAULT 0;
CREATE INDEX history_untrusted ON history (untrusted, id);
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
];

// The bundle state, its record and its history entries are the device API's own types: the
// journal stores them and the status API answers with them.
pub use sideload_device_api::{BundleRecord, BundleState as State, HistoryEntry, UnknownState};

/// A new bundle entering the queue.
#[derive(Debug, Clone)]
pub struct NewBundle {
    /// The statement's digest.
    pub id: String,
    /// File name as delivered.
    pub name: String,
    /// sha256 of the file.
    pub file_digest: Option<String>,
    /// Target repository.
    pub repository: String,
    /// Target tags.
    pub tags: Vec<String>,
    /// Anti-rollback sequence.
    pub sequence: u64,
    /// Manifest digest the device will produce.
    pub manifest_digest: String,
    /// From the statement.
    pub ordered_by: String,
    /// From the statement.
    pub contact: String,
    /// How it arrived.
    pub source: String,
}

/// The journal, shared by the daemon's tasks. Calls are short (single-row transactions).
pub struct Journal {
    conn: Mutex<Connection>,
}

/// Journal errors are SQLite errors; they carry the operation.
pub type Result<T> = std::result::Result<T, rusqlite::Error>;

impl Journal {
    /// Opens (creating and migrating) the journal file.
    pub fn open(path: &Path) -> Result<Journal> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Journal {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest sequence applied for `repository`.
    pub fn sequence(&self, repository: &str) -> Result<Option<u64>> {
        self.conn()
            .query_row(
                "SELECT sequence FROM sequences WHERE repository = ?1",
                [repository],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(|v| v as u64))
    }

    /// Every repository's sequence.
    pub fn sequences(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT repository, sequence FROM sequences ORDER BY 1")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }

    /// Looks a bundle up by statement digest.
    pub fn get(&self, id: &str) -> Result<Option<BundleRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM bundles WHERE id = ?1"),
                [id],
                record,
            )
            .optional()
    }

    /// The bundle with statement digest `id` if it is queued, applying or applied: a delivery
    /// of it is a duplicate. A read error counts as "not live" (intake's own checks follow).
    pub fn live(&self, id: &str) -> Option<BundleRecord> {
        self.get(id).ok().flatten().filter(|b| b.state.is_live())
    }

    /// Looks a bundle up by the sha256 of its file.
    pub fn by_file_digest(&self, digest: &str) -> Result<Option<BundleRecord>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM bundles WHERE file_digest = ?1 \
                     ORDER BY updated_at DESC LIMIT 1"
                ),
                [digest],
                record,
            )
            .optional()
    }

    /// Enqueues a bundle, unless one with the same statement is already live; returns the
    /// existing record in that case (the delivery is a duplicate).
    pub fn enqueue(&self, b: &NewBundle) -> Result<Option<BundleRecord>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM bundles WHERE id = ?1"),
                [&b.id],
                record,
            )
            .optional()?;
        if let Some(existing) = existing.filter(|e| e.state.is_live()) {
            return Ok(Some(existing));
        }
        let now = now();
        tx.execute(
            "INSERT INTO bundles (id, name, file_digest, repository, tags, sequence, \
             manifest_digest, ordered_by, contact, source, state, reason, advice, engine, \
             received_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', NULL, NULL, NULL, ?11, ?11) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             file_digest = excluded.file_digest, source = excluded.source, state = 'queued', \
             reason = NULL, advice = NULL, engine = NULL, received_at = excluded.received_at, \
             updated_at = excluded.updated_at",
            params![
                b.id,
                b.name,
                b.file_digest,
                b.repository,
                serde_json::to_string(&b.tags).expect("strings serialize"),
                b.sequence as i64,
                b.manifest_digest,
                b.ordered_by,
                b.contact,
                b.source,
                now as i64
            ],
        )?;
        add_history(&tx, &b.id, &b.name, State::Queued.as_str(), None, now)?;
        tx.commit()?;
        Ok(None)
    }

    /// Moves a bundle to `state` with an optional reason and advice.
    pub fn set_state(
        &self,
        id: &str,
        state: State,
        reason: Option<&str>,
        advice: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now();
        let name: String =
            tx.query_row("SELECT name FROM bundles WHERE id = ?1", [id], |r| r.get(0))?;
        tx.execute(
            "UPDATE bundles SET state = ?2, reason = ?3, advice = ?4, updated_at = ?5 \
             WHERE id = ?1",
            params![id, state.as_str(), reason, advice, now as i64],
        )?;
        add_history(&tx, id, &name, state.as_str(), reason, now)?;
        tx.commit()
    }

    /// Marks a bundle applied and raises its repository's sequence, in one transaction: the
    /// anti-rollback floor moves exactly when the image does.
    pub fn mark_applied(&self, id: &str, repository: &str, sequence: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now();
        let name: String =
            tx.query_row("SELECT name FROM bundles WHERE id = ?1", [id], |r| r.get(0))?;
        tx.execute(
            "UPDATE bundles SET state = 'applied', reason = NULL, advice = NULL, \
             updated_at = ?2 WHERE id = ?1",
            params![id, now as i64],
        )?;
        tx.execute(
            "INSERT INTO sequences (repository, sequence) VALUES (?1, ?2) \
             ON CONFLICT (repository) DO UPDATE SET sequence = max(sequence, excluded.sequence)",
            params![repository, sequence as i64],
        )?;
        add_history(&tx, id, &name, "applied", None, now)?;
        tx.commit()
    }

    /// Records the container engine's outcome for an applied bundle.
    pub fn set_engine(&self, id: &str, outcome: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE bundles SET engine = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, outcome, now() as i64],
        )?;
        Ok(())
    }

    /// Records a refusal of a delivery that never became a queued bundle (untrusted, not a
    /// bundle, too large). `bundle` is the statement digest when it could be read.
    ///
    /// `keep_untrusted`: the delivery was untrusted (no statement that verified); it is
    /// counted, and of such refusals only the newest this many stay in the history. `None`
    /// for a refusal of a signed bundle, which is kept like every other state change.
    pub fn record_refusal(
        &self,
        bundle: &str,
        name: &str,
        reason: &str,
        keep_untrusted: Option<u64>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        add_history(
            &tx,
            bundle,
            name,
            State::Refused.as_str(),
            Some(reason),
            now(),
        )?;
        if let Some(keep) = keep_untrusted {
            tx.execute(
                "UPDATE history SET untrusted = 1 WHERE id = last_insert_rowid()",
                [],
            )?;
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('untrusted_refusals', 1) \
                 ON CONFLICT (name) DO UPDATE SET value = value + 1",
                [],
            )?;
            tx.execute(
                "DELETE FROM history WHERE untrusted = 1 AND id <= \
                 (SELECT id FROM history WHERE untrusted = 1 ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                [keep as i64],
            )?;
        }
        tx.commit()
    }

    /// How many refusals of untrusted deliveries the journal has seen (kept or not).
    pub fn untrusted_refusals(&self) -> Result<u64> {
        self.conn()
            .query_row(
                "SELECT value FROM counters WHERE name = 'untrusted_refusals'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
    }

    /// Bundles in `state`, oldest first.
    pub fn in_state(&self, state: State) -> Result<Vec<BundleRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM bundles WHERE state = ?1 ORDER BY received_at, rowid"
        ))?;
        let rows = stmt.query_map([state.as_str()], record)?;
        rows.collect()
    }

    /// The most recent bundles, newest first.
    pub fn bundles(&self, limit: usize) -> Result<Vec<BundleRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM bundles ORDER BY updated_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit as i64], record)?;
        rows.collect()
    }

    /// State changes, oldest first, after `after` (an entry id; 0 for all), at most `limit`.
    pub fn history(
        &self,
        bundle: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, bundle, name, state, reason, at FROM history \
             WHERE id > ?1 AND (?2 IS NULL OR bundle = ?2) ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after, bundle, limit as i64], |r| {
            let state: String = r.get(3)?;
            Ok(HistoryEntry {
                id: r.get(0)?,
                bundle: r.get(1)?,
                name: r.get(2)?,
                state: parse_state(3, &state)?,
                reason: r.get(4)?,
                at: r.get::<_, i64>(5)? as u64,
            })
        })?;
        rows.collect()
    }

    /// How many bundles are in each state (for metrics).
    pub fn counts(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, count(*) FROM bundles GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }
}

const COLUMNS: &str = "id, name, file_digest, repository, tags, sequence, manifest_digest, \
    ordered_by, contact, source, state, reason, advice, engine, received_at, updated_at";

/// A stored state name, strictly: an unknown one is an error, never some other state.
fn parse_state(column: usize, text: &str) -> Result<State> {
    text.parse().map_err(|e: UnknownState| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn record(r: &rusqlite::Row<'_>) -> Result<BundleRecord> {
    let tags: String = r.get(4)?;
    let state: String = r.get(10)?;
    Ok(BundleRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        file_digest: r.get(2)?,
        repository: r.get(3)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        sequence: r.get::<_, i64>(5)? as u64,
        manifest_digest: r.get(6)?,
        ordered_by: r.get(7)?,
        contact: r.get(8)?,
        source: r.get(9)?,
        state: parse_state(10, &state)?,
        reason: r.get(11)?,
        advice: r.get(12)?,
        engine: r.get(13)?,
        received_at: r.get::<_, i64>(14)? as u64,
        updated_at: r.get::<_, i64>(15)? as u64,
    })
}

fn add_history(
    conn: &Connection,
    bundle: &str,
    name: &str,
    state: &str,
    reason: Option<&str>,
    at: u64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO history (bundle, name, state, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![bundle, name, state, reason, at as i64],
    )?;
    Ok(())
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, seq: u64) -> NewBundle {
        NewBundle {
            id: id.into(),
            name: format!("{id}.bundle"),
            file_digest: Some(format!("file-{id}")),
            repository: "edge/app".into(),
            tags: vec!["v2".into()],
            sequence: seq,
            manifest_digest: "sha256:m".into(),
            ordered_by: "ci".into(),
            contact: "ops".into(),
            source: "upload".into(),
        }
    }

    #[test]
    fn lifecycle_dedupe_and_sequences_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        {
            let j = Journal::open(&path).unwrap();
            assert!(j.enqueue(&sample("a", 5)).unwrap().is_none());
            // The same statement again while live is a duplicate.
            assert_eq!(j.enqueue(&sample("a", 5)).unwrap().unwrap().id, "a");
            j.set_state("a", State::Applying, None, None).unwrap();
            j.mark_applied("a", "edge/app", 5).unwrap();
            // A lower sequence never lowers the floor.
            assert!(j.enqueue(&sample("b", 3)).unwrap().is_none());
            j.mark_applied("b", "edge/app", 3).unwrap();
            j.enqueue(&sample("c", 9)).unwrap();
            j.set_state(
                "c",
                State::Failed,
                Some("missing base"),
                Some("send v1 first"),
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.sequence("edge/app").unwrap(), Some(5));
        assert_eq!(j.get("a").unwrap().unwrap().state, State::Applied);
        let c = j.get("c").unwrap().unwrap();
        assert_eq!(
            (c.state, c.reason.as_deref()),
            (State::Failed, Some("missing base"))
        );
        // A failed bundle delivered again is queued again (a retry).
        assert!(j.enqueue(&sample("c", 9)).unwrap().is_none());
        assert_eq!(j.get("c").unwrap().unwrap().state, State::Queued);
        assert_eq!(j.by_file_digest("file-a").unwrap().unwrap().id, "a");
        let states: Vec<String> = j
            .history(Some("a"), 0, 100)
            .unwrap()
            .into_iter()
            .map(|h| h.state.to_string())
            .collect();
        assert_eq!(states, ["queued", "applying", "applied"]);
        assert_eq!(j.in_state(State::Queued).unwrap().len(), 1);
    }

    #[test]
    fn states_parse_strictly_and_an_unknown_one_is_an_error_not_failed() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>(), Ok(state));
        }
        assert_eq!(
            "Failed".parse::<State>(),
            Err(UnknownState("Failed".into()))
        );
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        j.enqueue(&sample("a", 5)).unwrap();
        // A row written by a newer sideload, or damaged.
        j.conn()
            .execute("UPDATE bundles SET state = 'resting' WHERE id = 'a'", [])
            .unwrap();
        let error = j.get("a").unwrap_err().to_string();
        assert!(
            error.contains("unknown bundle state \"resting\""),
            "{error}"
        );
    }

    #[test]
    fn untrusted_refusals_are_bounded_and_counted_signed_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        j.record_refusal("signed", "signed.bundle", "expired", None)
            .unwrap();
        for i in 0..10 {
            j.record_refusal(&format!("junk-{i}"), "junk", "not a bundle", Some(3))
                .unwrap();
        }
        let kept: Vec<String> = j
            .history(None, 0, 100)
            .unwrap()
            .into_iter()
            .map(|h| h.bundle)
            .collect();
        assert_eq!(kept, ["signed", "junk-7", "junk-8", "junk-9"]);
        assert_eq!(j.untrusted_refusals().unwrap(), 10);
    }
}
