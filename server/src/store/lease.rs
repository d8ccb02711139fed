//! Leases: one replica at a time runs a singleton task (the InfluxDB sink, the city
//! feed, the morning settle). On PostgreSQL a lease is a session-level advisory lock on a connection of its
//! own; on SQLite (one process per file) it is always held.
//!
//! Invariant: a lease is held exactly while its connection lives and holds the lock;
//! when a replica dies or loses its connection the database releases it, and another
//! replica's next [`Lease::held`] takes it over.

use sqlx::AnyConnection;
use sqlx::Connection;

use super::{Backend, Store, StoreError};

/// The singleton tasks that take a lease, each with its advisory lock key (next to the
/// registry import's transaction lock, 7155110001).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// The InfluxDB/VictoriaMetrics sink.
    Sink,
    /// The city platform feed.
    Feed,
    /// Settling each morning (`[store] settle_after_days`).
    Settle,
}

impl LeaseKind {
    fn key(self) -> i64 {
        match self {
            LeaseKind::Sink => 7_155_110_002,
            LeaseKind::Feed => 7_155_110_003,
            LeaseKind::Settle => 7_155_110_004,
        }
    }

    /// The task's name, for logs and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Sink => "sink",
            LeaseKind::Feed => "feed",
            LeaseKind::Settle => "settle",
        }
    }
}

/// A replica's claim on one singleton task.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    kind: LeaseKind,
    /// The connection that holds (or tries for) the advisory lock, PostgreSQL only.
    conn: Option<AnyConnection>,
    /// Whether `conn` holds the lock.
    held: bool,
}

impl Store {
    /// A lease on `kind`, not yet taken (the first [`Lease::held`] tries).
    pub fn lease(&self, kind: LeaseKind) -> Lease {
        Lease {
            store: self.clone(),
            kind,
            conn: None,
            held: false,
        }
    }
}

impl Lease {
    /// Whether this replica holds the lease now, taking it when it is free. A held lease
    /// is checked on its connection; a lost connection is dropped (the database released
    /// the lock with it) and the lease is tried again on a new one.
    pub async fn held(&mut self) -> Result<bool, StoreError> {
        if self.store.backend == Backend::Sqlite {
            return Ok(true);
        }
        let result = self.check().await;
        if let Err(e) = &result {
            if self.held {
                tracing::warn!(task = self.kind.as_str(), error = %e, "lease lost with its connection");
            }
            self.conn = None;
            self.held = false;
        }
        result
    }

    async fn check(&mut self) -> Result<bool, StoreError> {
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => self.conn.insert(self.store.pool.acquire().await?.detach()),
        };
        if self.held {
            conn.ping().await?;
            return Ok(true);
        }
        let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.kind.key())
            .fetch_one(conn)
            .await?;
        if took {
            tracing::info!(
                task = self.kind.as_str(),
                "lease taken: this replica runs it"
            );
            self.held = true;
        }
        Ok(took)
    }

    /// Gives the lease up: unlocks (so another replica may take it at once), then closes
    /// the connection (which would release the lock too, but only once the server has
    /// noticed).
    pub async fn release(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.held {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(self.kind.key())
                    .execute(&mut conn)
                    .await;
            }
            let _ = conn.close().await;
        }
        self.held = false;
    }
}
