//! Test databases: an SQLite file, and a real PostgreSQL server (Debian's `postgresql`
//! package) started for each test on a Unix socket in its own directory (no TCP port) and
//! stopped by PID when it ends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sideload_fleet::Database;

/// A PostgreSQL server for the whole test binary.
pub struct Postgres {
    child: std::sync::Mutex<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        // Fast shutdown (SIGINT), then SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install postgresql (scripts/install-deps.sh does)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/postgres: apt-get install postgresql")
}

/// Runs a PostgreSQL program as the `postgres` user when we are root (it refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        // setpriv execs (runuser would stay as the parent, and killing it orphans postgres).
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Postgres {
    fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sideload-pg")
            .tempdir_in("/tmp")
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown for postgres failed");
        }
        let out = as_postgres(&bin.join("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        // No TCP at all: the server listens only on a socket in the test's own directory, so
        // no other test (or test binary) can reach it or be reached by mistake. The port
        // number only names the socket.
        let port = 5432;
        let url = format!(
            "postgres://postgres@/postgres?host={}&port={port}",
            dir.path().display()
        );
        let mut child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("PostgreSQL exited at start: {status}");
            }
            if postgres::Client::connect(&url, postgres::NoTls).is_ok() {
                return Postgres {
                    child: std::sync::Mutex::new(child),
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("PostgreSQL did not start within 60 s");
    }

    /// A new, empty database on the server.
    pub fn database(&self) -> Database {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let socket_dir = self._dir.path().display().to_string();
        let url = |db: &str| {
            format!(
                "postgres://postgres@/{db}?host={socket_dir}&port={}",
                self.port
            )
        };
        let mut c = postgres::Client::connect(&url("postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Database::Postgres(url(&name))
    }
}

/// An SQLite ledger file and a fresh PostgreSQL database on a server of the test's own
/// (stopped, by PID, when this is dropped): every ledger test runs on both.
pub struct TestDatabases {
    /// SQLite first, then PostgreSQL.
    pub list: Vec<Database>,
    _postgres: Postgres,
    _dir: tempfile::TempDir,
}

/// See [`TestDatabases`].
pub fn databases() -> TestDatabases {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    TestDatabases {
        list: vec![Database::Sqlite(dir.path().join("fleet.db")), pg.database()],
        _postgres: pg,
        _dir: dir,
    }
}
