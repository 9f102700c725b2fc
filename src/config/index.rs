//! `[index]`: the index database URL, its pool and timeouts.

use serde::{Deserialize, Serialize};

use super::Location;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Index database: `sqlite://PATH` or `postgres://user@host/db`; empty means
    /// `sqlite://<data_dir>/index.sqlite`.
    pub url: String,
    /// Connections in the index pool (also bounds concurrent index work).
    pub pool_size: u32,
    /// How long a write waits for a locked database, in milliseconds.
    pub busy_timeout_ms: u64,
    /// How long a request waits for a free connection, in milliseconds.
    pub acquire_timeout_ms: u64,
    /// Longest a single statement may run on PostgreSQL, in milliseconds.
    pub statement_timeout_ms: u64,
    /// SQLite: STOW requests committing at the same time share one transaction
    /// (one fsync), each in its own savepoint.
    pub group_commit: bool,
    /// Where the index database is; a local one (SQLite, PostgreSQL on a loopback
    /// address or Unix socket) inherits `server.location` when this is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 8,
            busy_timeout_ms: 10_000,
            acquire_timeout_ms: 30_000,
            statement_timeout_ms: 30_000,
            group_commit: true,
            location: None,
        }
    }
}
