//! A query builder that writes each backend's placeholders: `$1, $2, …` for PostgreSQL
//! (sqlx's own `QueryBuilder<Any>` writes `?`, which PostgreSQL refuses), `?` for SQLite
//! (it reads `$N` too, but looks each named one up in a list: quadratic in a statement's
//! 800 binds, a fifth of ingest's time). Lists of bound values are written by
//! `push_values` (`VALUES (…), (…)`) and `push_tuples` (`(…, …)`), never by hand.

use std::fmt::{Display, Write};

use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;
use sqlx::{Arguments, Encode, Type};

use super::Backend;

/// SQL text and its bound values, built in one pass.
pub(super) struct QueryBuilder<'q> {
    sql: String,
    args: AnyArguments<'q>,
    /// Values bound so far (the last placeholder's number).
    n: usize,
    /// `$N` placeholders (PostgreSQL), else `?`.
    numbered: bool,
}

impl<'q> QueryBuilder<'q> {
    /// Starts with `init`, for `backend`'s placeholders.
    pub(super) fn new(backend: Backend, init: impl Into<String>) -> Self {
        Self {
            sql: init.into(),
            args: AnyArguments::default(),
            n: 0,
            numbered: backend == Backend::Postgres,
        }
    }

    /// Appends SQL text.
    pub(super) fn push(&mut self, sql: impl Display) -> &mut Self {
        let _ = write!(self.sql, "{sql}");
        self
    }

    /// Appends a placeholder and binds `value` to it.
    pub(super) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        // AnyArguments::add fails only for a value that cannot encode, which none here is;
        // a failure would surface as a bind count mismatch from the database.
        let _ = self.args.add(value);
        self.n += 1;
        if self.numbered {
            let _ = write!(self.sql, "${}", self.n);
        } else {
            self.sql.push('?');
        }
        self
    }

    /// A list of items separated by `separator`.
    fn separated(&mut self, separator: &'static str) -> Separated<'_, 'q> {
        Separated {
            qb: self,
            separator,
            first: true,
        }
    }

    /// `VALUES (…), (…)`: one parenthesised row per item, `push` binds its columns.
    pub(super) fn push_values<I, F>(&mut self, items: I, mut push: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'q>, I::Item),
    {
        self.push("VALUES ");
        let mut first = true;
        for item in items {
            if !first {
                self.push(", ");
            }
            first = false;
            self.push("(");
            push(self.separated(", "), item);
            self.push(")");
        }
        self
    }

    /// `(…, …)`: the items as one parenthesised list (for `IN`).
    pub(super) fn push_tuples<I, F>(&mut self, items: I, mut push: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'q>, I::Item),
    {
        self.push("(");
        let mut first = true;
        for item in items {
            if !first {
                self.push(", ");
            }
            first = false;
            push(self.separated(", "), item);
        }
        self.push(")");
        self
    }

    /// The query, ready to execute (the builder is left empty of values).
    pub(super) fn build(&mut self) -> Query<'_, Any, AnyArguments<'_>> {
        sqlx::query_with(&self.sql, std::mem::take(&mut self.args))
    }
}

/// Items of a list, separated.
pub(super) struct Separated<'b, 'q> {
    qb: &'b mut QueryBuilder<'q>,
    separator: &'static str,
    first: bool,
}

impl<'q> Separated<'_, 'q> {
    fn sep(&mut self) {
        if !self.first {
            self.qb.push(self.separator);
        }
        self.first = false;
    }

    /// Appends a placeholder as a new item.
    pub(super) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.sep();
        self.qb.push_bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_in_order() {
        for (backend, want) in [
            (
                Backend::Postgres,
                "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) WHERE k IN ($5, $6)",
            ),
            (
                Backend::Sqlite,
                "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) WHERE k IN (?, ?)",
            ),
        ] {
            let qb = sample(backend);
            assert_eq!(qb.sql, want);
            assert_eq!(qb.n, 6);
        }
    }

    fn sample(backend: Backend) -> QueryBuilder<'static> {
        let mut qb = QueryBuilder::new(backend, "INSERT INTO t (a, b) ");
        qb.push_values([(1_i64, "x"), (2, "y")], |mut b, (a, s)| {
            b.push_bind(a).push_bind(s);
        });
        qb.push(" WHERE k IN ");
        qb.push_tuples(["p", "q"], |mut b, v| {
            b.push_bind(v);
        });
        qb
    }

    /// The SQLite pragmas the store relies on hold on every pooled connection.
    #[tokio::test]
    async fn sqlite_connections_keep_their_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(&format!("sqlite://{}/p.db", dir.path().display()))
            .await
            .unwrap();
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(store.pool.acquire().await.unwrap());
        }
        for c in &mut conns {
            let mut got = Vec::new();
            for p in [
                "journal_mode",
                "synchronous",
                "foreign_keys",
                "busy_timeout",
                "cache_size",
            ] {
                let r = sqlx::query(&format!("PRAGMA {p}"))
                    .fetch_one(&mut **c)
                    .await
                    .unwrap_or_else(|e| panic!("{p}: {e}"));
                use sqlx::Row;
                let v = r
                    .try_get::<String, _>(0)
                    .or_else(|_| r.try_get::<i64, _>(0).map(|v| v.to_string()))
                    .unwrap_or_else(|e| panic!("{p}: {e}"));
                got.push(v);
            }
            assert_eq!(got, ["wal", "2", "1", "10000", "-65536"]);
        }
    }
}
