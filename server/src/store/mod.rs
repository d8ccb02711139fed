//! The store: the only module that knows SQL. SQLite in WAL mode, one file, created and
//! migrated on start; queries stay portable so a PostgreSQL store can share them.
//!
//! Invariants (what is on disk, what a crash leaves behind):
//! - Every ingest batch is one transaction: its readings, read failures, quarantine
//!   rows, gateway states and `dirty` marks land together or not at all. MQTT messages
//!   are acknowledged only after that commit, so a crash loses nothing (the broker
//!   redelivers) and a redelivery changes nothing (every insert is keyed and ignores repeats).
//! - `synchronous = FULL`: a committed batch survives power loss, not only a process kill.
//!   Speed comes from large transactions (ingest commits hundreds of messages at once)
//!   and a large page cache, not from a weaker sync.
//! - `dirty` lists the (household, season) pairs whose `nights`/`statements` are stale;
//!   a mark is cleared only with the generation the recompute read, so a mark made during
//!   a recompute survives it. After a crash the marks are still there and are recomputed.
//! - `nights` and `statements` are a pure function of `readings` and the registry: they can
//!   be dropped and recomputed at any time.

mod bulk;
pub mod feed;
mod ingest;
pub mod monitor;
mod registry;
mod results;
mod sink;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use bulk::{RoundInputs, SaveSummary};
pub use ingest::{CommitSummary, IngestTx, NewReading, Quarantined, ReadFailure, StatusUpdate};
pub use registry::{AuditEntry, Binding, HouseholdRow, ImportSummary, MeterRow};
pub use results::{NightRow, StatementRow, StoredReading};
pub use sink::{SinkBacklog, SinkNight, SinkReading};

/// A store failure (I/O, SQL, migration); callers log it and answer 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("store: {0}")]
    Sql(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database directory could not be created.
    #[error("store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored value that this version cannot read.
    #[error("store: corrupt value in {0}")]
    Corrupt(&'static str),
}

/// A handle on the store, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating and migrating) the store at `url` (`sqlite://path` or `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let mut opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // 64 MiB of page cache per connection (SQLite's default is 2 MiB): an ingest
            // batch touches pages all over the readings key, and with a small cache they
            // are read back from the WAL again and again (halves the insert rate here).
            .pragma("cache_size", "-65536");
        let memory = url.contains(":memory:");
        if !memory {
            let path = opts.get_filename().to_path_buf();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        } else {
            // One connection, or each would see its own empty in-memory database.
            opts = opts.shared_cache(true);
        }
        if !memory {
            // Switching a new file to WAL needs an exclusive lock, and SQLite does not
            // wait for it: do it once on a lone connection before the pool opens several
            // at once (WAL mode is then stored in the file, and later switches are no-ops).
            use sqlx::Connection;
            sqlx::SqliteConnection::connect_with(&opts)
                .await?
                .close()
                .await?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Whether the database answers (health check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
