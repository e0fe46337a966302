//! The two databases the ledger runs on, behind one small interface.
//!
//! The ledger's SQL is written once, in the dialect SQLite and PostgreSQL share (`TEXT` and
//! `BIGINT` columns, `$1`-style parameters, `INSERT … ON CONFLICT … DO UPDATE … WHERE`), and
//! runs unchanged on both. Values are [`Value`]s, so no query depends on a driver's types.
//! Written by hand because the crates that span both (sqlx, diesel) bring a compile-time
//! query checker or an ORM for what is a dozen statements.

use std::path::{Path, PathBuf};

use crate::LedgerError;

/// Where the ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (created if missing): the default, one file, no server.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user@host/db`), for several operators or pipelines.
    Postgres(String),
}

impl Database {
    /// `postgres://…` / `postgresql://…` is PostgreSQL; `sqlite:PATH` or any other text is
    /// an SQLite file.
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(text.strip_prefix("sqlite:").unwrap_or(text)))
        }
    }

    /// How to name it in messages (a PostgreSQL password is never shown).
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
                _ => url.clone(),
            },
        }
    }
}

/// A value going into or coming out of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A BIGINT.
    Int(i64),
    /// TEXT.
    Text(String),
}

impl Value {
    /// The text, or `None` for NULL (and for integers, which no caller reads as text).
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The text, or "" for NULL.
    pub fn string(&self) -> String {
        self.text().unwrap_or("").to_owned()
    }

    /// The integer, or `None` for NULL.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl From<u64> for Value {
    fn from(i: u64) -> Value {
        Value::Int(i.min(i64::MAX as u64) as i64)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// A result row.
pub type Row = Vec<Value>;

/// An open connection to either database.
pub enum Connection {
    /// SQLite.
    Sqlite(rusqlite::Connection),
    /// PostgreSQL.
    Postgres(Box<postgres::Client>),
}

impl Connection {
    /// Opens (SQLite: creates) the database.
    pub fn open(db: &Database) -> Result<Connection, LedgerError> {
        match db {
            Database::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| LedgerError::Open {
                        database: db.display(),
                        message: e.to_string(),
                    })?;
                }
                let conn = rusqlite::Connection::open(path).map_err(|e| open_error(db, e))?;
                // WAL lets `status` read while an ingest writes; FULL survives power cuts;
                // several CLI runs at once wait for each other instead of failing.
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                )
                .map_err(|e| open_error(db, e))?;
                conn.busy_timeout(std::time::Duration::from_secs(30))
                    .map_err(|e| open_error(db, e))?;
                Ok(Connection::Sqlite(conn))
            }
            Database::Postgres(url) => {
                let client = postgres::Client::connect(url, postgres::NoTls)
                    .map_err(|e| open_error(db, e))?;
                Ok(Connection::Postgres(Box::new(client)))
            }
        }
    }

    /// Whether this is PostgreSQL (for the one statement that differs: the migration lock).
    pub fn is_postgres(&self) -> bool {
        matches!(self, Connection::Postgres(_))
    }

    /// Runs statements without parameters (schema, transactions).
    pub fn batch(&mut self, sql: &str) -> Result<(), LedgerError> {
        match self {
            Connection::Sqlite(c) => c.execute_batch(sql).map_err(|e| query_error(sql, e)),
            Connection::Postgres(c) => c.batch_execute(sql).map_err(|e| query_error(sql, e)),
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, LedgerError> {
        match self {
            Connection::Sqlite(c) => c
                .execute(&sqlite_sql(sql), rusqlite::params_from_iter(params.iter()))
                .map(|n| n as u64)
                .map_err(|e| query_error(sql, e)),
            Connection::Postgres(c) => {
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                c.execute(sql, &refs).map_err(|e| query_error(sql, e))
            }
        }
    }

    /// Runs one query; its rows.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, LedgerError> {
        match self {
            Connection::Sqlite(c) => {
                let mut stmt = c
                    .prepare(&sqlite_sql(sql))
                    .map_err(|e| query_error(sql, e))?;
                let n = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params.iter()), |row| {
                        (0..n)
                            .map(|i| {
                                Ok(match row.get_ref(i)? {
                                    rusqlite::types::ValueRef::Null => Value::Null,
                                    rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                                    rusqlite::types::ValueRef::Text(t) => {
                                        Value::Text(String::from_utf8_lossy(t).into_owned())
                                    }
                                    rusqlite::types::ValueRef::Real(f) => Value::Int(f as i64),
                                    rusqlite::types::ValueRef::Blob(b) => {
                                        Value::Text(String::from_utf8_lossy(b).into_owned())
                                    }
                                })
                            })
                            .collect::<Result<Row, rusqlite::Error>>()
                    })
                    .map_err(|e| query_error(sql, e))?;
                rows.collect::<Result<Vec<Row>, _>>()
                    .map_err(|e| query_error(sql, e))
            }
            Connection::Postgres(c) => {
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                let rows = c.query(sql, &refs).map_err(|e| query_error(sql, e))?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| {
                                use postgres::types::Type;
                                let ty = row.columns()[i].type_().clone();
                                let v = if ty == Type::INT8 {
                                    row.try_get::<_, Option<i64>>(i).map(Value::from)
                                } else if ty == Type::INT4 {
                                    row.try_get::<_, Option<i32>>(i)
                                        .map(|v| Value::from(v.map(i64::from)))
                                } else {
                                    row.try_get::<_, Option<String>>(i).map(Value::from)
                                };
                                v.map_err(|e| query_error(sql, e))
                            })
                            .collect::<Result<Row, _>>()
                    })
                    .collect()
            }
        }
    }

    /// Runs `work` in one transaction: all of it or nothing.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        // IMMEDIATE takes SQLite's write lock at once, so two writers wait (busy_timeout)
        // instead of one failing at its first write.
        self.batch(if self.is_postgres() {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        })?;
        match work(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// SQLite numbers `$N` parameters by first appearance, not by N; `?N` is numbered by N.
fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn open_error(db: &Database, e: impl std::error::Error) -> LedgerError {
    let hint = match db {
        Database::Sqlite(_) => "check the path and its permissions",
        Database::Postgres(_) => {
            "check that the server runs and accepts this user from here (pg_hba.conf), and that the database exists"
        }
    };
    LedgerError::Open {
        database: db.display(),
        message: format!("{}; {hint}", causes(&e)),
    }
}

fn query_error(sql: &str, e: impl std::error::Error) -> LedgerError {
    let first = sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
    LedgerError::Query {
        statement: first,
        message: causes(&e),
    }
}

/// An error with its causes: the PostgreSQL driver says only "db error" at the top and keeps
/// the server's message (and "connection refused") in its sources.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        <i64 as postgres::types::ToSql>::accepts(ty)
            || <String as postgres::types::ToSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

/// The SQLite file next to which other files (charts) may be written by default.
pub fn sqlite_dir(db: &Database) -> Option<&Path> {
    match db {
        Database::Sqlite(p) => p.parent(),
        Database::Postgres(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_for_sqlite() {
        assert_eq!(
            sqlite_sql("SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '$x'"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '$x'"
        );
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            Database::parse("postgres://u:secret@127.0.0.1:5432/fleet").display(),
            "postgres://…@127.0.0.1:5432/fleet"
        );
        assert_eq!(
            Database::parse("sqlite:/var/lib/x.db"),
            Database::Sqlite("/var/lib/x.db".into())
        );
        assert_eq!(
            Database::parse("fleet.db"),
            Database::Sqlite("fleet.db".into())
        );
    }

    #[test]
    fn sqlite_round_trip_with_out_of_order_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(&Database::Sqlite(dir.path().join("t.db"))).unwrap();
        c.batch("CREATE TABLE t (a TEXT, b BIGINT)").unwrap();
        c.execute(
            "INSERT INTO t (b, a) VALUES ($2, $1)",
            &["x".into(), 5u64.into()],
        )
        .unwrap();
        let rows = c
            .query("SELECT a, b FROM t WHERE b = $1", &[5u64.into()])
            .unwrap();
        assert_eq!(rows, vec![vec![Value::from("x"), Value::Int(5)]]);
        let failed: Result<(), _> = c.transaction(|c| {
            c.execute(
                "INSERT INTO t (a, b) VALUES ($1, $2)",
                &["y".into(), 6u64.into()],
            )?;
            Err(LedgerError::Invalid("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(c.query("SELECT a FROM t", &[]).unwrap().len(), 1);
    }
}
