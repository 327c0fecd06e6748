//! Storage through sqlx: PostgreSQL in production, an embedded SQLite file by default.
//!
//! Both backends share one schema (see `migrations/`) and one set of SQL statements; the
//! few dialect differences (`FOR UPDATE`) are decided by [`Backend`]. Every version of every
//! resource is kept in `resource_version`; `resource` holds one row per logical id pointing
//! at its current version, so the current version is found without scanning history.
//! Search index rows (`idx_*`) describe the current version and are written in the same
//! transaction as the version.

mod index;
pub mod search;
mod versions;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Transaction};

pub use versions::{
    Current, HistoryScope, StoredVersion, VersionWrite, current_for_update,
    current_with_body_for_update, history, read_current, read_version, write_version,
};

use crate::config::DatabaseConfig;

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
                let options = AnyConnectOptions::from_str(url.expose_secret())
                    .context("parsing the database URL")?
                    .log_statements(tracing::log::LevelFilter::Trace)
                    .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
                let pool = AnyPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
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
                Self::connect_sqlite(url.expose_secret(), config.max_connections).await?
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
                )
                .await?
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn connect_sqlite(url: &str, readers: u32) -> anyhow::Result<Store> {
        let options = AnyConnectOptions::from_str(url)
            .context("parsing the SQLite URL")?
            .log_statements(tracing::log::LevelFilter::Trace);
        fn pragmas(
            conn: &mut AnyConnection,
            _meta: sqlx::pool::PoolConnectionMetadata,
        ) -> futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::raw_sql(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
                     PRAGMA foreign_keys = ON;",
                )
                .execute(conn)
                .await
                .map(|_| ())
            })
        }
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(pragmas)
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
