//! Opening the index: the embedded migrations and running them, the connection
//! pool of each database with its session settings (SQLite pragmas, PostgreSQL
//! timeouts), and the index URL forms.

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::{Connection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::conn::{Dialect, PgSession};
use super::sqlite::{SqlitePool, WriterQueue};
use super::{pools, with_conn, Index, IndexError, IndexPool};

/// The SQLite migrations in `schema/sqlite/`, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/sqlite");
/// The PostgreSQL migrations in `schema/postgres/`, compiled into the binary.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/postgres");

/// The version diesel gives `schema/*/2026-12-03-000000_study_datetime_utc`
/// (its directory name up to the first `_`, without dashes).
const STUDY_DATETIME_UTC_MIGRATION: &str = "20261203000000";
/// Advisory lock held while migrating PostgreSQL, so processes starting together
/// take turns ("KASTELL" in ASCII).
const MIGRATION_LOCK: i64 = 0x004B_4153_5445_4C4C;

/// Pool and timeout settings.
#[derive(Debug, Clone, Copy)]
pub struct IndexOptions {
    pub pool_size: u32,
    pub busy_timeout: Duration,
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`.
    pub statement_timeout: Duration,
    /// SQLite: concurrent STOW batches share one transaction (see `index::sqlite`).
    pub group_commit: bool,
}

#[derive(Debug)]
struct SqlitePragmas {
    busy_timeout: Duration,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers run beside the writer; FULL sync because an acknowledged
        // STOW must survive a power cut; case-sensitive LIKE because DICOM string
        // matching is case-sensitive (person names are matched on folded copies);
        // secure_delete because a deleted or shredded study's patient data must
        // not linger in free pages of the file.
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA case_sensitive_like = ON; PRAGMA secure_delete = ON;",
            self.busy_timeout.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The SQLite file of a `sqlite://` URL.
pub fn sqlite_path(url: &str) -> Result<&str, IndexError> {
    url.strip_prefix("sqlite://")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| IndexError::UnsupportedUrl(crate::redact::redact_url(url)))
}

/// A PostgreSQL URL whose connection attempts give up after `timeout` (libpq's
/// `connect_timeout`, whole seconds, at least 2) unless the URL sets its own:
/// without it, an attempt to a server that accepts and never answers waits
/// forever and keeps one of the pool's few connecting threads with it.
fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout=") {
        return url.to_string();
    }
    let secs = timeout.as_millis().div_ceil(1000).max(2);
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={secs}")
}

pub(crate) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Index {
    /// Opens the index at `url`, creating the database and running pending migrations.
    pub fn open(url: &str, options: IndexOptions) -> Result<Self, IndexError> {
        Self::open_as(url, options, "main")
    }

    /// Like `open`; `label` names the pool in the pool-usage metrics.
    pub(super) fn open_as(
        url: &str,
        options: IndexOptions,
        label: &str,
    ) -> Result<Self, IndexError> {
        let applied = Self::migrate(url)?;
        let pool = if is_postgres(url) {
            let pool = Pool::builder()
                .max_size(options.pool_size)
                .connection_timeout(options.acquire_timeout)
                .connection_customizer(Box::new(PgSession {
                    statement_timeout: options.statement_timeout,
                }))
                .build(ConnectionManager::<PgConnection>::new(
                    with_connect_timeout(url, options.acquire_timeout),
                ))
                .map_err(|e| IndexError::Pool(e.to_string()))?;
            IndexPool::Postgres(pool)
        } else {
            let path = sqlite_path(url)?;
            let pool = Pool::builder()
                .max_size(options.pool_size)
                .connection_timeout(options.acquire_timeout)
                .connection_customizer(Box::new(SqlitePragmas {
                    busy_timeout: options.busy_timeout,
                }))
                .build(ConnectionManager::<SqliteConnection>::new(path))
                .map_err(|e| IndexError::Pool(e.to_string()))?;
            let writers = WriterQueue::for_file(Path::new(path), options.busy_timeout);
            IndexPool::Sqlite(SqlitePool::new(pool, writers, options.group_commit))
        };
        let index = Self {
            pool: std::sync::Arc::new(pool),
        };
        pools::register(label, std::sync::Arc::downgrade(&index.pool));
        // Studies stored before the column existed get their instant once, by
        // the process that adds the column, rather than by a scan at every start.
        if applied.iter().any(|m| m == STUDY_DATETIME_UTC_MIGRATION) {
            let filled = index.fill_study_datetime_utc()?;
            tracing::info!(
                studies = filled,
                "study date-times in UTC filled in for timezone matching"
            );
        }
        Ok(index)
    }

    pub fn dialect(&self) -> Dialect {
        match &*self.pool {
            IndexPool::Sqlite(_) => Dialect::Sqlite,
            IndexPool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs pending migrations; returns the names of those applied. On PostgreSQL
    /// under an advisory lock, so that processes starting at once take turns.
    pub fn migrate(url: &str) -> Result<Vec<String>, IndexError> {
        let applied = if is_postgres(url) {
            let mut conn =
                PgConnection::establish(url).map_err(|e| IndexError::Pool(e.to_string()))?;
            conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
            let applied = conn
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>())
                .map_err(|e| IndexError::Migration(e.to_string()));
            conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))?;
            applied?
        } else {
            let path = sqlite_path(url)?;
            // Only the service user may read the index: a new directory is 0700
            // and a new database 0600 (SQLite gives its -wal and -shm files the
            // database's mode), whatever the umask.
            if let Some(parent) = Path::new(path).parent() {
                crate::private_files::create_dir_all(parent)?;
            }
            crate::private_files::create_file(Path::new(path))?;
            let mut conn =
                SqliteConnection::establish(path).map_err(|e| IndexError::Pool(e.to_string()))?;
            conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000;")?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(|e| IndexError::Migration(e.to_string()))?
                .iter()
                .map(|v| v.to_string())
                .collect()
        };
        Ok(applied)
    }

    /// Checks the database answers.
    pub fn probe(&self) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.batch_execute("SELECT 1")?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::Text;
    use diesel::QueryableByName;

    use super::*;
    use crate::index::test_db::PgTestDb;

    #[test]
    fn an_unsupported_url_is_named_without_its_password() {
        let options = IndexOptions {
            pool_size: 1,
            busy_timeout: Duration::from_secs(1),
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
            group_commit: true,
        };
        let error = Index::open("mysql://kastell:hunter2@db/k", options).unwrap_err();
        let shown = error.to_string();
        assert!(shown.contains("mysql://kastell:***@db/k"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn postgres_connection_attempts_get_a_timeout_unless_the_url_has_one() {
        let second = Duration::from_millis(1500);
        assert_eq!(
            with_connect_timeout("postgres://k@db/kastell", second),
            "postgres://k@db/kastell?connect_timeout=2"
        );
        assert_eq!(
            with_connect_timeout(
                "postgres://k@db/kastell?sslmode=require",
                Duration::from_secs(30)
            ),
            "postgres://k@db/kastell?sslmode=require&connect_timeout=30"
        );
        assert_eq!(
            with_connect_timeout("postgres://k@db/kastell?connect_timeout=5", second),
            "postgres://k@db/kastell?connect_timeout=5"
        );
    }

    #[test]
    fn every_migration_reverts_cleanly() {
        use diesel::RunQueryDsl;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.run_pending_migrations(SQLITE_MIGRATIONS).unwrap();
        conn.revert_all_migrations(SQLITE_MIGRATIONS).unwrap();
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = Text)]
            name: String,
        }
        let left: Vec<String> = diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> '__diesel_schema_migrations'",
        )
        .load::<Name>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
        assert!(left.is_empty(), "tables left after revert: {left:?}");
        conn.run_pending_migrations(SQLITE_MIGRATIONS).unwrap();
    }

    /// The same on PostgreSQL, against the server named by `KASTELL_TEST_POSTGRES`
    /// (the test command always sets it) in a database made for the test.
    #[test]
    fn every_postgres_migration_reverts_cleanly() {
        use diesel::RunQueryDsl;
        let Some(db) = PgTestDb::from_env() else {
            eprintln!(
                "KASTELL_TEST_POSTGRES is not set: the PostgreSQL half of this test did not run"
            );
            return;
        };
        let url = db.url();
        // Two concurrent migrators: the advisory lock makes them take turns.
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || Index::migrate(&url))
            })
            .collect();
        let applied: usize = runs
            .into_iter()
            .map(|r| r.join().unwrap().unwrap().len())
            .sum();
        let total =
            diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES_MIGRATIONS)
                .unwrap()
                .len();
        assert_eq!(applied, total, "each migration applied once");
        let mut conn = PgConnection::establish(&url).unwrap();
        conn.revert_all_migrations(POSTGRES_MIGRATIONS).unwrap();
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = Text)]
            tablename: String,
        }
        let left: Vec<String> = diesel::sql_query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> '__diesel_schema_migrations'",
        )
        .load::<Name>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|n| n.tablename)
        .collect();
        assert!(left.is_empty(), "tables left after revert: {left:?}");
        conn.run_pending_migrations(POSTGRES_MIGRATIONS).unwrap();
        drop(conn);
        drop(db);
    }
}
