//! The relational index: studies, series and instances with the attributes QIDO
//! matches and returns, and where each instance's blob is. Diesel over SQLite (the
//! embedded default) or PostgreSQL, chosen by the URL. Every call here is blocking;
//! the service layer runs them on tokio's blocking pool, bounded by the pool size.
//!
//! `Index` is a handle on one database's connection pool; its methods are spread
//! by job: `open` (migrations, pool, session settings), `write` (storing
//! instances), `read` (QIDO and retrieval lookups), `delete` (deletions and the
//! UIDs they leave gone), `blobs` (derived objects and blob listings), with the
//! error type in `error` and the records passed in and out in `records`.
//! `test_db` makes the PostgreSQL databases of the tests.

pub mod api_keys;
pub mod audit;
mod blobs;
pub mod catalog;
pub mod changes;
pub mod conn;
pub mod deid;
mod delete;
mod error;
pub mod exports;
pub mod generate;
pub mod key_requests;
pub mod keys;
mod metadata;
pub mod moves;
mod open;
mod pools;
pub mod protection;
pub mod qido;
mod read;
mod records;
pub mod restores;
pub mod sql;
mod sqlite;
pub mod stats;
pub mod tenants;
#[doc(hidden)]
pub mod test_db;
mod write;

use std::time::SystemTime;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};

pub use error::IndexError;
pub use metadata::MetadataRecord;
pub(crate) use open::is_postgres;
pub use open::{sqlite_path, IndexOptions, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
pub use records::{
    DeletedBlobs, Hit, NewInstance, SearchResult, StoreOutcome, StoredFields, StoredInstance,
};

enum IndexPool {
    Sqlite(sqlite::SqlitePool),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

#[derive(Clone)]
pub struct Index {
    pool: std::sync::Arc<IndexPool>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("backend", &self.dialect())
            .finish()
    }
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever database
/// the index uses; the body is compiled once per database. Every call is a span
/// `index.<method>` and a duration metric (waiting for the connection included),
/// named after the calling `Index` method, so no call site names itself.
macro_rules! with_conn {
    ($index:expr, $conn:ident => $body:expr) => {{
        // The type name of an item declared here is the path of the function
        // around it (`kastell::index::Index::search::here`).
        fn here() {}
        let caller = std::any::type_name_of_val(&here);
        match &*$index.pool {
            IndexPool::Sqlite(pool) => {
                let _call = $crate::telemetry::metrics::IndexCall::start(caller, "sqlite");
                let mut session = pool.session()?;
                let $conn: &mut $crate::index::conn::SqliteSession = &mut session;
                $body
            }
            IndexPool::Postgres(pool) => {
                let _call = $crate::telemetry::metrics::IndexCall::start(caller, "postgresql");
                let mut pooled = pool.get().map_err(|e| IndexError::Pool(e.to_string()))?;
                let $conn: &mut ::diesel::pg::PgConnection = &mut pooled;
                $body
            }
        }
    }};
}
pub(crate) use with_conn;

pub(crate) fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::test_db::PgTestDb;
    use super::*;

    /// A fresh SQLite index, and a fresh PostgreSQL database when
    /// `KASTELL_TEST_POSTGRES` names a server (with its handle: the database goes
    /// when the handle does).
    pub(crate) fn test_indexes() -> Vec<(Index, Option<PgTestDb>)> {
        let dir = tempfile::tempdir().unwrap().keep();
        let options = IndexOptions {
            pool_size: 2,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            group_commit: true,
        };
        let mut indexes = vec![(
            Index::open(&format!("sqlite://{}/i.sqlite", dir.display()), options).unwrap(),
            None,
        )];
        if let Some(db) = PgTestDb::from_env() {
            indexes.push((Index::open(&db.url(), options).unwrap(), Some(db)));
        }
        indexes
    }
}
