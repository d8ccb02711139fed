//! A throwaway PostgreSQL server for tests and benchmarks: Debian's binaries, `initdb` in a
//! temporary directory, listening only on a Unix socket there, stopped and removed on drop.
//!
//! Nothing is skipped: without the binaries (`postgresql` package, or `QINGNUAN_PG_BIN`)
//! the test fails and says so. As root (initdb and postgres refuse it) the server runs as
//! `nobody`, the temporary directory handed over to that user.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running PostgreSQL server with one database, `qingnuan`.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_nobody: bool,
}

/// Where the server binaries are: `QINGNUAN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QINGNUAN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found: install Debian's `postgresql` package \
             (apt-get install -y postgresql) or set QINGNUAN_PG_BIN to the directory holding \
             initdb, pg_ctl and postgres"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgServer {
    /// initdb, start, create the database. `durable`: keep `fsync` on (benchmarks);
    /// tests turn it off, a crash of the machine is not what they test.
    pub fn start(durable: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("qn-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let as_nobody = is_root();
        if as_nobody {
            let st = Command::new("chown")
                .args(["-R", "nobody:"])
                .arg(dir.path())
                .status()
                .unwrap_or_else(|e| panic!("chown: {e}"));
            assert!(
                st.success(),
                "chown of {} to nobody failed",
                dir.path().display()
            );
        }
        // Any port number: only the socket's name carries it (no TCP listener), and the
        // directory is ours, so two servers never collide.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id() % 20_000 + NEXT.fetch_add(1, Ordering::Relaxed) % 1000;
        let port = 20_000 + u16::try_from(n).unwrap_or(0);
        let server = Self {
            dir,
            bin,
            port,
            as_nobody,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "qingnuan",
                "--auth=trust",
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        let mut opts = format!(
            "-k {} -p {} -c listen_addresses='' -c max_connections=100",
            server.dir.path().display(),
            port
        );
        if !durable {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = server.dir.path().join("postgres.log");
        server.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &log.display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        server.run(
            "createdb",
            &[
                "-h",
                &server.dir.path().display().to_string(),
                "-p",
                &port.to_string(),
                "-U",
                "qingnuan",
                "qingnuan",
            ],
        );
        server
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of the server's programs (as `nobody` when we are root); panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The programs look up their cwd; ours may not be readable by `nobody`.
        cmd.args(args).current_dir(self.dir.path());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{} {:?} failed: {}\n{}\n{}",
            exe.display(),
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `[store] url` of the database (over the Unix socket).
    pub fn url(&self) -> String {
        self.url_of("qingnuan")
    }

    /// The URL of another database of this server.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "postgres://qingnuan@localhost/{db}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Creates another (empty) database.
    pub fn create_db(&self, db: &str) {
        self.run(
            "createdb",
            &[
                "-h",
                &self.dir.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "qingnuan",
                db,
            ],
        );
    }

    /// The server's directory (socket, log, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

impl PgServer {
    /// Creates a new empty database and returns its URL (one server, many databases:
    /// starting a server costs a second or two, a database a few milliseconds).
    pub fn fresh_url(&self) -> String {
        static NEXT_DB: AtomicU32 = AtomicU32::new(0);
        let db = format!("qn{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        self.create_db(&db);
        self.url_of(&db)
    }
}

/// Which database a test runs its store on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A database on a PostgreSQL server of its own.
    Postgres,
}

/// What keeps a test's database alive: its directory or its server.
pub enum Guard {
    /// The SQLite file's directory.
    Dir(tempfile::TempDir),
    /// The PostgreSQL server.
    Pg(PgServer),
}

/// A new, empty `[store] url` of `kind`, and what keeps it alive.
pub fn url(kind: Kind) -> (Guard, String) {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let url = format!("sqlite://{}/s.db", dir.path().display());
            (Guard::Dir(dir), url)
        }
        Kind::Postgres => {
            let pg = PgServer::start(false);
            let url = pg.url();
            (Guard::Pg(pg), url)
        }
    }
}

/// Runs an async test body once per backend, as `name::sqlite` and `name::postgres`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::pg_support::Kind::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::pg_support::Kind::Postgres).await
                }
            }
        )*
    };
}
