//! Fresh PostgreSQL databases for tests, on the server `KASTELL_TEST_POSTGRES`
//! names: the one copy that the unit tests and the integration tests in tests/
//! share (so it is compiled always, and hidden from the documentation).

// Test support: a database that cannot be made fails the test that asked.
#![allow(clippy::expect_used)]

use diesel::{Connection, PgConnection, RunQueryDsl};

/// The environment variable naming the tests' PostgreSQL server, as
/// `postgres://user@host:port` (without a database; tests/run-all.sh sets it).
pub const SERVER_VAR: &str = "KASTELL_TEST_POSTGRES";

/// A database made for one test, named `kastell_t_<uuid>` (the names
/// tests/run-all.sh sweeps up after an interrupted run), dropped when this handle
/// goes unless [`PgTestDb::keep`] was called.
#[derive(Debug)]
pub struct PgTestDb {
    server: String,
    name: String,
    keep: bool,
}

impl PgTestDb {
    /// The server `KASTELL_TEST_POSTGRES` names, if it is set.
    pub fn server() -> Option<String> {
        std::env::var(SERVER_VAR).ok()
    }

    /// A fresh database on the server `KASTELL_TEST_POSTGRES` names; `None` when
    /// it is not set.
    pub fn from_env() -> Option<Self> {
        Self::server().map(|server| Self::create(&server))
    }

    /// A fresh database on `server`. Panics when the server does not answer or
    /// refuses: the test cannot go on without it.
    pub fn create(server: &str) -> Self {
        let name = format!("kastell_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&format!("{server}/postgres"))
            .expect("PostgreSQL for the tests");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create a test database");
        Self {
            server: server.to_string(),
            name,
            keep: false,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Leaves the database in place when this handle goes, and returns its URL:
    /// for a database that outlives the values of the test that made it (an
    /// integration test's data directory, used by server and CLI processes).
    /// tests/run-all.sh drops those when the suite ends.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.url()
    }
}

/// FORCE closes the connections still open on the database (the pools of the
/// test's indexes). Errors are ignored: a drop must not panic, and the database
/// is a leftover at worst.
impl Drop for PgTestDb {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(mut admin) = PgConnection::establish(&format!("{}/postgres", self.server)) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}
