//! The store: the only module that knows SQL. SQLite in WAL mode, one file, or PostgreSQL
//! for replicas (docs/scale.md); created and migrated on start (`migrations/sqlite`,
//! `migrations/postgres`: the same schema). One set of queries through sqlx's `Any` driver
//! (`$N` placeholders, `sql::QueryBuilder`); only locking and the mark generations differ.
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
//!   PostgreSQL, where replicas recompute at once: generations come from one sequence, and
//!   figures are saved only under a row lock on a mark still at the generation read
//!   (`bulk::fresh`), so older figures never overwrite newer ones.
//! - `nights` and `statements` are a pure function of `readings` and the registry: they can
//!   be dropped and recomputed at any time.
//! - `reading_packs` hold, for each meter, exactly its readings below `pack_cover.upto`
//!   (`packs.rs`): the ingest commit that stores a reading below it drops what it falls
//!   into. They too can be dropped at any time (with `pack_cover`): rounds then read the table.

mod bulk;
pub mod feed;
mod held;
mod ingest;
pub mod lease;
pub mod monitor;
mod nights;
pub mod packs;
mod registry;
mod results;
mod settle;
mod sink;
mod sql;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Any, AnyPool, Executor, Transaction};

pub use bulk::{RoundMark, SaveSummary, SavedPair};
pub use held::{HeldKey, HeldReading};
pub use ingest::{CommitSummary, IngestTx, NewReading, Quarantined, ReadFailure, StatusUpdate};
pub use lease::{Lease, LeaseKind};
pub use registry::{
    settled_power_refusal, settled_refusal, AuditEntry, Binding, HouseholdRow, ImportSummary,
    MeterRow,
};
pub use results::{ComputedNight, DirtyMark, NightRow, StatementRow, StoredReading, CLAIM_S};
pub use settle::ThinSummary;
pub use sink::{SinkBacklog, SinkHead, SinkNight, SinkReading};

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
    /// Refused: it reaches before the settled cut (docs/bounded-state.md), where readings
    /// were thinned and the rules can no longer be applied to all of them.
    #[error("settled: {0}")]
    Settled(String),
    /// A write in flight was cancelled (the runtime is shutting down); nothing of it
    /// was committed.
    #[error("store: a write in flight was cancelled")]
    Cancelled,
}

/// Which database a [`Store`] talks to; the SQL is shared, only locking and a few
/// statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file in WAL mode (or `sqlite::memory:`).
    Sqlite,
    /// A PostgreSQL database, shared by any number of server replicas.
    Postgres,
}

/// What a read-then-write transaction must exclude (see [`Store::begin_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteLock {
    /// Registry imports: one at a time.
    Registry,
    /// Saving recomputed figures: rows are locked as they are read.
    Figures,
    /// Ingest commits and thinning: they read the settled cut before writing (on
    /// PostgreSQL `FOR SHARE`, nothing more).
    Settled,
}

/// A handle on the store, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating and migrating) the store at `url`: `sqlite://path`,
    /// `sqlite::memory:`, or `postgres://…` (the database must exist; its schema is
    /// created and migrated here, under PostgreSQL's migration lock, so replicas may start
    /// at once).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url).await;
        }
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", "-65536")
            // A recompute round's statements return 1,024 rows each: buffered whole, the
            // worker thread steps on instead of waiting for the task every 50 rows (sqlx's
            // default). 100,000 households cold: 6.03-6.69 s -> 5.75-6.04 s (BENCHMARKS.md).
            .row_buffer_size(1024);
        let memory = url.contains(":memory:");
        if !memory {
            let path = opts.get_filename().to_path_buf();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            // Create the file and switch it to WAL once on a lone connection before the
            // pool opens several at once: the switch needs an exclusive lock, and SQLite
            // does not wait for it (WAL mode is then stored in the file, later switches
            // are no-ops).
            use sqlx::Connection;
            sqlx::SqliteConnection::connect_with(&opts)
                .await?
                .close()
                .await?;
        }
        // The pool connects from the URL alone (the `Any` driver takes no SQLite options),
        // so each connection sets what the options above set, first thing.
        let pool = AnyPoolOptions::new()
            // One connection in memory, or each would see its own empty database.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        // 64 MiB of page cache per connection (SQLite's default is 2 MiB):
                        // an ingest batch touches pages all over the readings key, and with
                        // a small cache they are read back from the WAL again and again
                        // (halves the insert rate here). The file is also memory-mapped (up
                        // to 1 GiB): a connection's cache is dropped whenever another one
                        // commits, and recompute rounds read each meter's packs again and
                        // again; from the map that is a memory read, not a `pread` and a
                        // copy (a cold recompute round's reads took 14 % less here).
                        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                         PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                         PRAGMA cache_size = -65536; PRAGMA mmap_size = 1073741824;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // The readings export trigger exists exactly while the sink is enabled.
        let enabled: Option<i64> =
            sqlx::query_scalar("SELECT value FROM sink_state WHERE key = 'enabled'")
                .fetch_optional(&pool)
                .await?;
        if enabled == Some(1) {
            sqlx::query(sink::SQLITE_READINGS_TRIGGER)
                .execute(&pool)
                .await?;
        }
        let store = Self {
            pool,
            backend: Backend::Sqlite,
        };
        store.convert_legacy_nights().await?;
        Ok(store)
    }

    async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let collation: Option<String> = sqlx::query_scalar(
            "SELECT datcollate::text FROM pg_database WHERE datname = current_database()",
        )
        .fetch_optional(&pool)
        .await?;
        if let Some(c) = collation.filter(|c| c != "C" && c != "POSIX") {
            tracing::warn!(
                collation = %c,
                "the database does not sort text in byte order: lists and exports may order \
                 rows differently from SQLite (the figures do not depend on it); create it \
                 with `createdb --locale=C --template=template0` (docs/scale.md)"
            );
        }
        let store = Self {
            pool,
            backend: Backend::Postgres,
        };
        store.convert_legacy_nights().await?;
        Ok(store)
    }

    /// Moves nights a store kept a row each (before migration 0009) into the packed form.
    async fn convert_legacy_nights(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write(WriteLock::Figures).await?;
        let moved = nights::convert_legacy(&mut tx, self.backend).await?;
        tx.commit().await?;
        if moved > 0 {
            tracing::info!(
                nights = moved,
                "stored nights moved to one packed row per household and season"
            );
        }
        Ok(())
    }

    /// The database behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that reads and then writes. SQLite: `BEGIN IMMEDIATE` (a
    /// deferred one fails with `SQLITE_BUSY`, which `busy_timeout` does not retry, when
    /// another connection commits in between). PostgreSQL: registry imports take a
    /// transaction-scoped advisory lock (one import at a time across replicas); saving
    /// figures locks the `dirty` rows it reads (`FOR UPDATE`, in `bulk.rs`).
    async fn begin_write(&self, lock: WriteLock) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                if lock == WriteLock::Registry {
                    // Any constant key: only registry imports take it.
                    sqlx::query("SELECT 1 FROM pg_advisory_xact_lock(7155110001)")
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(tx)
            }
        }
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
