//! Kiln's database layer: SQLite (WAL, the default) and PostgreSQL through sqlx's `Any` driver,
//! with one set of runtime queries in the SQL subset both accept.
//!
//! * All times are epoch seconds passed in by the caller (`now`), so the engine's fake clock
//!   drives the store too.
//! * Booleans are integer 0/1 columns; properties are JSON text (`[value, source]`, as Buildbot).
//! * The build-request queue is the `buildrequests` table, and all the SQL on it lives in
//!   `queue/` as a few named verbs (submit, claim, cancel, unclaim, release, complete): a
//!   claim is one conditional `UPDATE` (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has a
//!   single writer). [`QueueStore`] is the queue as one master sees it.
//! * Logs are stored as zstd chunks with a line index ([`logs`](crate::Store::append_log)).
//! * Write transactions on SQLite start with `BEGIN IMMEDIATE` so they never fail with
//!   `SQLITE_BUSY` on the read-to-write upgrade.
//!
//! One file per farm noun, each with the `impl Store` block for its tables: `masters`,
//! `workers`, `builders`, `sourcestamps`, `changes`, `buildsets`, `builds`, `steps`, `logs`;
//! `queue/` for build requests, `recovery` for crash recovery, `api_queries` for the REST
//! API's filtered lists, `rows` for what they share (column readers, property JSON,
//! placeholders). This file connects, migrates and runs SQLite batches.

pub mod api_queries;
mod builders;
mod builds;
mod buildsets;
mod changes;
mod events;
mod log_reads;
mod logs;
mod masters;
mod queue;
mod recovery;
mod rows;
mod sourcestamps;
mod steps;
mod workers;

use std::borrow::Cow;
use std::sync::Once;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, SqlSafeStr, Transaction};

pub use builders::BuilderRow;
pub use builds::{BuildFilter, NewBuild};
pub use buildsets::{BuildsetFilter, NewBuildset};
pub use changes::{ChangeFilter, NewChange};
pub use events::{CHANNEL as EVENTS_CHANNEL, EventBus, EventBusOptions, RecvError, Subscription};
pub use logs::{
    AppendOutcome, ChunkInfo, JanitorReport, LOG_CHUNK_MAX_BYTES, LOG_CHUNK_MAX_LINES, LogCap,
    LogWriter, MAX_READ_LINES, TailRing, slugify,
};
pub use masters::MasterRow;
pub use queue::{BuildRequestFilter, PendingBuilder};
pub use queue::{QueueStore, RequestContext};
pub use recovery::Recovery;
pub use rows::MAX_LIST_LIMIT;
pub(crate) use rows::{
    Arg, Params, Sql, clamp_limit, get_bool, get_i64, get_opt_i64, get_opt_str, get_results,
    get_str, prop_json, read_props,
};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} {1} not found")]
    NotFound(&'static str, i64),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?} (use sqlite:… or postgres://…)")]
    BadUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Tunables of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// Per-log cap on stored bytes for appends through [`Store::append_log`]; past it a marker
    /// line is stored and the rest is dropped. A [`LogWriter`] has its own cap, given when the
    /// log is opened ([`Store::add_log_writer`]).
    pub log_max_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            log_max_bytes: Some(1 << 30),
        }
    }
}

/// The database, cheap to clone (the pools are shared).
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads (and, on PostgreSQL, everything).
    pub(crate) pool: AnyPool,
    /// Writes. On SQLite this is one connection: SQLite has one writer at a time anyway, and
    /// writers queueing on the pool wait without the busy handler's millisecond sleeps that
    /// concurrent writer connections would hit. On PostgreSQL it is `pool`.
    pub(crate) wpool: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) opts: StoreOptions,
    /// For connections outside the pools (the event bus's `LISTEN`).
    pub(crate) url: events::DbUrl,
}

/// (version, description, SQLite text, PostgreSQL text), in order.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "api_indexes",
        include_str!("../migrations/sqlite/0002_api_indexes.sql"),
        include_str!("../migrations/postgres/0002_api_indexes.sql"),
    ),
    (
        3,
        "queue collapse key",
        include_str!("../migrations/sqlite/0003_queue_collapse.sql"),
        include_str!("../migrations/postgres/0003_queue_collapse.sql"),
    ),
];

fn migrator(backend: Backend) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, name, sqlite, pg)| {
                let sql = match backend {
                    Backend::Sqlite => *sqlite,
                    Backend::Postgres => *pg,
                };
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Store {
    /// Connects with default options and runs the migrations.
    /// `sqlite:path` (created if missing unless a `mode=` is given; WAL is switched on) or
    /// `postgres://user@host/db`.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, opts: StoreOptions) -> Result<Store> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        if backend == Backend::Sqlite && url.contains(":memory:") {
            // Every pooled connection would get its own empty database.
            return Err(StoreError::BadUrl(format!(
                "{url}: in-memory SQLite is not supported through the pool; use a file"
            )));
        }
        let given = events::DbUrl(url.into());
        // A SQLite file is created when missing unless the URL says otherwise.
        let url: Cow<str> = if backend == Backend::Sqlite && !url.contains("mode=") {
            Cow::Owned(format!(
                "{url}{}mode=rwc",
                if url.contains('?') { '&' } else { '?' }
            ))
        } else {
            Cow::Borrowed(url)
        };
        let pool_options = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                // A SQLite connection is a file handle that cannot drop away; the default
                // check before each use is one more hop to the connection's thread for every
                // statement.
                .test_before_acquire(backend == Backend::Postgres)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *conn)
                                .await?;
                        }
                        Ok(())
                    })
                })
        };
        let (pool, wpool) = match backend {
            Backend::Sqlite => {
                // The writer first: it creates the file and switches it to WAL, which
                // readers then share.
                let wpool = pool_options(1).connect(&url).await?;
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&wpool)
                    .await?;
                migrator(backend).run(&wpool).await?;
                let readers = opts.max_connections.saturating_sub(1).max(1);
                (pool_options(readers).connect(&url).await?, wpool)
            }
            Backend::Postgres => {
                let pool = pool_options(opts.max_connections).connect(&url).await?;
                migrator(backend).run(&pool).await?;
                (pool.clone(), pool)
            }
        };
        Ok(Store {
            pool,
            wpool,
            backend,
            opts,
            url: given,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Changes the per-log byte cap for logs appended from now on.
    pub fn set_log_max_bytes(&mut self, cap: Option<u64>) {
        self.opts.log_max_bytes = cap;
    }

    /// The SQLite journal mode (`wal` by default); `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(row.try_get::<String, _>(0)?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.wpool.close().await;
    }

    /// SQLite only: runs `statements` (several, `;`-separated, with `$N` parameters numbered
    /// across all of them) as one transaction in a single trip to the writer connection's
    /// thread, instead of one trip per statement. Returns the rows of every `RETURNING`.
    pub(crate) async fn sqlite_batch<'q>(
        &self,
        statements: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> Result<Vec<AnyRow>> {
        debug_assert_eq!(self.backend, Backend::Sqlite);
        let mut conn = self.wpool.acquire().await?;
        match statements.fetch_all(&mut *conn).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // A statement after BEGIN failed: the transaction is still open on this
                // connection; end it before the connection goes back to the pool.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(e.into())
            }
        }
    }

    /// A write transaction: `BEGIN IMMEDIATE` on SQLite.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.wpool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.wpool.begin().await?,
        })
    }
}
