//! The index's error type, and how the layers above classify a failure: the
//! database unavailable for now (retry later) or out of space.

use super::qido::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("unsupported index URL {0:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("index database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("no index connection available: {0}")]
    Pool(String),
    #[error("index migration failed: {0}")]
    Migration(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("index I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid tenant name {0:?}: use lower-case letters, digits and dashes")]
    InvalidTenant(String),
    /// A deletion refused by its guard: retention or a legal hold (409).
    #[error("{0}")]
    Protected(String),
    /// This process's other writers of the same SQLite file held it longer than
    /// the busy timeout (see `index::sqlite`).
    #[error("the index is busy: no turn to write within {0:?}")]
    WriterBusy(std::time::Duration),
    /// The transaction a batch shared with others' failed as a whole (see
    /// `index::sqlite::GroupCommit`); `unavailable` as the error it had.
    #[error("index transaction failed: {message}")]
    GroupFailed { message: String, unavailable: bool },
}

impl IndexError {
    /// The database cannot be reached, lost the connection, is busy or cut a
    /// statement off at its timeout: the same request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error as DieselError};
        match self {
            IndexError::Pool(_) | IndexError::WriterBusy(_) => true,
            IndexError::GroupFailed { unavailable, .. } => *unavailable,
            IndexError::Database(DieselError::BrokenTransactionManager) => true,
            IndexError::Database(DieselError::DatabaseError(kind, info)) => {
                let message = info.message();
                matches!(kind, DatabaseErrorKind::ClosedConnection)
                    || [
                        // libpq, when the server or the network went away
                        "server closed the connection",
                        "no connection to the server",
                        "could not send data to server",
                        "could not receive data from server",
                        "terminating connection",
                        "connection to server",
                        // PostgreSQL's statement_timeout, SQLite's busy timeout
                        "canceling statement due to statement timeout",
                        "database is locked",
                    ]
                    .iter()
                    .any(|text| message.contains(text))
            }
            _ => false,
        }
    }

    /// The database has no space left (SQLITE_FULL; PostgreSQL's disk_full).
    pub fn is_full(&self) -> bool {
        match self {
            IndexError::Database(diesel::result::Error::DatabaseError(_, info)) => {
                let message = info.message();
                message.contains("database or disk is full")
                    || message.contains("No space left on device")
            }
            IndexError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}
