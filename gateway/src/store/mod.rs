//! Storage through sqlx: PostgreSQL in production, an embedded SQLite file by default.
//!
//! Both backends share one schema (see `migrations/`) and one set of SQL statements; the
//! few dialect differences (`FOR UPDATE`) are decided by [`Backend`]. Every version of every
//! resource is kept in `resource_version`; `resource` holds one row per logical id pointing
//! at its current version, so the current version is found without scanning history.
//! Search index rows (`idx_*`) describe the current version and are written in the same
//! transaction as the version. Erasure ([`erasure`]) removes a resource's content and the
//! salts of its log leaves but keeps every row, so history and the log keep their shape.

pub mod binding;
pub(crate) mod bulk;
pub mod clients;
pub mod consent;
pub mod erasure;
pub mod grants;
pub mod hl7v2;
mod index;
pub mod log;
pub mod search;
pub mod users;
mod versions;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, Connection, Transaction};

pub use index::{is_indexed, is_supported};
pub use versions::{
    Current, HistoryScope, StoredVersion, VersionWrite, current_for_update,
    current_with_body_for_update, history, read_current, read_current_checked, read_version,
    versions_without_leaf, write_new_versions, write_version,
};

use crate::config::{DatabaseConfig, SqliteSynchronous};

/// How often [`Store::write`] runs a transaction that conflicts with concurrent ones.
pub const ATTEMPTS: u32 = 5;

/// Whether a database error is a conflict between concurrent transactions that running the
/// whole transaction again resolves: a serialization failure or deadlock (PostgreSQL), a
/// unique key taken by a transaction that committed first (two creates of one client-chosen
/// id), or a busy database (SQLite).
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "23505" | "5" | "261" | "517")
        ),
        _ => false,
    }
}

/// Serializes, until the end of the transaction, every transaction that takes the same `key`
/// (a PostgreSQL advisory lock on a hash of it). Conditional creates and updates take one on
/// their criteria, so two concurrent `If-None-Exist` creates of the same resource cannot both
/// miss each other. SQLite has a single writer, so there is nothing to do.
pub async fn lock(conn: &mut AnyConnection, key: &str) -> Result<(), sqlx::Error> {
    if Backend::of(conn) == Backend::Postgres {
        sqlx::query(
            "SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS l",
        )
        .bind(key)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// [`lock`] on several keys, in the order given, in one statement (one round trip): a
/// transaction Bundle takes all its criteria's locks at once, sorted.
pub async fn lock_all(conn: &mut AnyConnection, keys: &[String]) -> Result<(), sqlx::Error> {
    if keys.is_empty() || Backend::of(conn) != Backend::Postgres {
        return Ok(());
    }
    let mut sql = search::Sql::default();
    sql.text = format!(
        "SELECT 1 AS locked FROM (SELECT {}) AS l",
        lock_list(&mut sql, keys)
    );
    sql.query().execute(conn).await?;
    Ok(())
}

/// The select list that takes [`lock`] on each of `keys` (PostgreSQL), their values bound in
/// `sql`. A select list is evaluated from left to right, so the locks are taken in order.
pub(crate) fn lock_list(sql: &mut search::Sql, keys: &[String]) -> String {
    let locks: Vec<String> = keys
        .iter()
        .map(|key| {
            format!(
                "pg_advisory_xact_lock(hashtextextended({}, 0))",
                sql.text(key)
            )
        })
        .collect();
    locks.join(", ")
}

/// The settings every SQLite connection starts with.
fn sqlite_pragmas(
    synchronous: SqliteSynchronous,
) -> impl for<'c> Fn(
    &'c mut AnyConnection,
    sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'c, Result<(), sqlx::Error>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |conn, _meta| {
        // audited: the synchronous level is one of two constants
        let sql = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA busy_timeout = 10000; \
             PRAGMA foreign_keys = ON;",
            synchronous.pragma()
        );
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(conn)
                .await
                .map(|_| ())
        })
    }
}

/// How long a pooled PostgreSQL connection may have been idle and still be handed out
/// without a ping.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(10);

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of(conn: &AnyConnection) -> Backend {
        if conn.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// The database: a pool for reads and a pool for writes (the same pool on PostgreSQL;
/// on SQLite a single writer connection, since SQLite serializes writers anyway).
#[derive(Debug, Clone)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Connects (creating the SQLite file if needed) and runs the migrations.
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let store = match &config.url {
            Some(url) if url.expose_secret().starts_with("postgres") => {
                // PostgreSQL compiles a statement whose estimated cost is high with LLVM
                // (JIT), which takes seconds: a search across every type under consent cost
                // 4.5 s of compiling for 28 ms of executing. The gateway's statements are
                // short, so JIT is off on its connections unless the URL sets it.
                let jit_configured = url.expose_secret().contains("jit");
                let options = AnyConnectOptions::from_str(url.expose_secret())
                    .context("parsing the database URL")?
                    .log_statements(tracing::log::LevelFilter::Trace)
                    .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
                let pool = AnyPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    // sqlx pings a connection when it returns to the pool; pinging it again
                    // when it is taken costs every transaction a round trip (7% of the
                    // gateway's CPU for an HL7 v2 message), so only a connection that has
                    // been idle for a while (the server may have closed it) is pinged first
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > IDLE_BEFORE_PING {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            if !jit_configured {
                                sqlx::raw_sql("SET jit = off").execute(conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .context("connecting to PostgreSQL")?;
                Store {
                    read: pool.clone(),
                    write: pool,
                    backend: Backend::Postgres,
                }
            }
            Some(url) if url.expose_secret().starts_with("sqlite:") => {
                Self::connect_sqlite(
                    url.expose_secret(),
                    config.max_connections,
                    config.sqlite_synchronous,
                )
                .await?
            }
            Some(_) => anyhow::bail!("database.url must start with postgres:// or sqlite:"),
            None => {
                std::fs::create_dir_all(&config.data_dir).with_context(|| {
                    format!("creating the data directory {}", config.data_dir.display())
                })?;
                let path = config.data_dir.join("gateway.db");
                Self::connect_sqlite(
                    &format!("sqlite://{}?mode=rwc", path.display()),
                    config.max_connections,
                    config.sqlite_synchronous,
                )
                .await?
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn connect_sqlite(
        url: &str,
        readers: u32,
        synchronous: SqliteSynchronous,
    ) -> anyhow::Result<Store> {
        let options = AnyConnectOptions::from_str(url)
            .context("parsing the SQLite URL")?
            .log_statements(tracing::log::LevelFilter::Trace);
        let pragmas = sqlite_pragmas(synchronous);
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(pragmas.clone())
            .connect_with(options.clone())
            .await
            .context("opening the SQLite database")?;
        let read = AnyPoolOptions::new()
            .max_connections(readers.max(1))
            .after_connect(pragmas)
            .connect_with(options)
            .await
            .context("opening the SQLite database for reading")?;
        Ok(Store {
            read,
            write,
            backend: Backend::Sqlite,
        })
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator
            .run(&self.write)
            .await
            .context("running database migrations")?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction: everything done through it commits together or not at all.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        self.write.begin().await
    }

    /// Runs `work` in a write transaction and commits it. When the database reports a conflict
    /// with a concurrent transaction (see [`is_transient`]), the whole transaction is rolled
    /// back and run again, up to [`ATTEMPTS`] times; `work` must therefore be repeatable
    /// (it may only have effects through the connection it is given).
    #[tracing::instrument(name = "db.transaction", skip_all)]
    pub async fn write<T>(
        &self,
        mut work: impl AsyncFnMut(&mut AnyConnection) -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin().await?;
            let result = match work(&mut tx).await {
                Ok(value) => tx.commit().await.map(|()| value).map_err(Into::into),
                Err(error) => Err(error), // dropping `tx` rolls it back
            };
            match result {
                Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                    tracing::warn!(
                        attempt,
                        "transaction conflicted with a concurrent one; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                Err(error) if error.is_transient() => {
                    return Err(crate::error::Error::Conflict(format!(
                        "the request conflicted with concurrent requests {ATTEMPTS} times; retry it"
                    )));
                }
                other => return other,
            }
        }
    }

    /// SQLite: copies every page of the write-ahead log into the database file and empties
    /// the log (`PRAGMA wal_checkpoint(TRUNCATE)`), so that page images holding erased content
    /// leave it. Returns whether the log could be emptied (it cannot while a reader still uses
    /// an older snapshot; the next checkpoint then does it). PostgreSQL: nothing to do here.
    pub async fn truncate_write_ahead_log(&self) -> Result<bool, sqlx::Error> {
        if self.backend != Backend::Sqlite {
            return Ok(true);
        }
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.write)
            .await?;
        let busy: i64 = sqlx::Row::try_get(&row, 0)?;
        Ok(busy == 0)
    }

    /// A connection for reading.
    pub async fn reader(&self) -> Result<sqlx::pool::PoolConnection<Any>, sqlx::Error> {
        self.read.acquire().await
    }

    /// Whether the database answers (for `/health/ready`).
    pub async fn ping(&self) -> bool {
        match self.read.acquire().await {
            Ok(mut conn) => conn.ping().await.is_ok(),
            Err(_) => false,
        }
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}
