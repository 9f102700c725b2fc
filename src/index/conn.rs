//! One index over two databases: the few operations the index needs, implemented
//! for SQLite and PostgreSQL connections. Queries are written once with `?`
//! placeholders; PostgreSQL gets them numbered.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::BoxedSqlQuery;
use diesel::result::{DatabaseErrorKind, Error as DieselError, QueryResult};
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{Connection, QueryableByName, RunQueryDsl};

use super::sql::Bind;
pub use super::sqlite::SqliteSession;
use super::IndexError;

thread_local! {
    static STATEMENTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Statements this thread has sent to the index so far: lets tests check that
/// building a response costs a bounded number of queries (no N+1).
pub fn statements_on_this_thread() -> u64 {
    STATEMENTS.with(|c| c.get())
}

fn count_statement() {
    STATEMENTS.with(|c| c.set(c.get() + 1));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `values` of a column joined by `\`, ordered, as one text value.
    pub fn backslash_list(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("group_concat({column}, '\\')"),
            Dialect::Postgres => format!("string_agg({column}, '\\' ORDER BY {column})"),
        }
    }
}

/// What the index asks of a database connection.
pub trait IndexConn: Sized {
    fn dialect(&self) -> Dialect;
    fn load<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static;
    /// As [`IndexConn::load`], with the statement kept prepared on the
    /// connection (diesel's statement cache, keyed by the SQL text and its bind
    /// types): SQLite parses and plans such a query once per connection instead
    /// of on every call. Only for hot queries whose text takes a few fixed
    /// shapes: each distinct text stays cached for the connection's life.
    fn load_prepared<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static;
    fn run(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<usize>;
    /// Runs `work` in a write transaction, retrying it when the database reports a
    /// conflict with a concurrent writer (never shown to the client).
    fn write<T, F>(&mut self, work: F) -> Result<T, IndexError>
    where
        F: FnMut(&mut Self) -> Result<T, IndexError>;

    /// The first row, or `NotFound`.
    fn load_one<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<T>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        self.load::<T>(sql, binds)?
            .into_iter()
            .next()
            .ok_or(DieselError::NotFound)
    }
}

macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind.clone() {
                Bind::Text(v) => query.bind::<Text, _>(v),
                Bind::Int(v) => query.bind::<BigInt, _>(v),
                Bind::NullableText(v) => query.bind::<Nullable<Text>, _>(v),
                Bind::NullableInt(v) => query.bind::<Nullable<BigInt>, _>(v),
                Bind::Bytes(v) => query.bind::<Binary, _>(v),
            };
        }
        query
    }};
}

fn sqlite_query(
    sql: &str,
    binds: &[Bind],
) -> BoxedSqlQuery<'static, Sqlite, diesel::query_builder::SqlQuery> {
    bind_all!(
        diesel::sql_query(sql.to_string()).into_boxed::<Sqlite>(),
        binds
    )
}

/// `?` placeholders numbered `$1, $2, …` (our SQL has no `?` in literals).
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_query(
    sql: &str,
    binds: &[Bind],
) -> BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery> {
    bind_all!(diesel::sql_query(numbered(sql)).into_boxed::<Pg>(), binds)
}

/// A query of fixed text whose statement diesel may cache (`sql_query` marks
/// itself uncacheable): the text is pushed piece by piece between its `?`s,
/// each bind as a parameter, so PostgreSQL gets `$n` placeholders from diesel.
struct Prepared<'a> {
    sql: &'a str,
    binds: &'a [Bind],
}

impl diesel::query_builder::QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for Prepared<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<C> RunQueryDsl<C> for Prepared<'_> {}

macro_rules! prepared_fragment {
    ($db:ty) => {
        impl diesel::query_builder::QueryFragment<$db> for Prepared<'_> {
            fn walk_ast<'b>(
                &'b self,
                mut out: diesel::query_builder::AstPass<'_, 'b, $db>,
            ) -> QueryResult<()> {
                let mut pieces = self.sql.split('?');
                out.push_sql(pieces.next().unwrap_or_default());
                let mut binds = self.binds.iter();
                for piece in pieces {
                    match binds.next() {
                        Some(Bind::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                        Some(Bind::Int(v)) => out.push_bind_param::<BigInt, _>(v)?,
                        Some(Bind::NullableText(v)) => {
                            out.push_bind_param::<Nullable<Text>, _>(v)?
                        }
                        Some(Bind::NullableInt(v)) => {
                            out.push_bind_param::<Nullable<BigInt>, _>(v)?
                        }
                        Some(Bind::Bytes(v)) => out.push_bind_param::<Binary, _>(v)?,
                        None => {
                            return Err(DieselError::QueryBuilderError(
                                "more placeholders than binds".into(),
                            ))
                        }
                    }
                    out.push_sql(piece);
                }
                if binds.next().is_some() {
                    return Err(DieselError::QueryBuilderError(
                        "more binds than placeholders".into(),
                    ));
                }
                Ok(())
            }
        }
    };
}
prepared_fragment!(Sqlite);
prepared_fragment!(Pg);

impl IndexConn for SqliteConnection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn load_prepared<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        count_statement();
        Prepared { sql, binds }.load::<T>(self)
    }

    fn load<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        count_statement();
        sqlite_query(sql, binds).load::<T>(self)
    }

    fn run(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<usize> {
        count_statement();
        sqlite_query(sql, binds).execute(self)
    }

    /// A bare connection (tools and tests): writers of this process do not
    /// queue (see `index::sqlite`); IMMEDIATE takes the write lock up front, so
    /// they wait in SQLite's busy handler instead of failing on a lock upgrade.
    fn write<T, F>(&mut self, mut work: F) -> Result<T, IndexError>
    where
        F: FnMut(&mut Self) -> Result<T, IndexError>,
    {
        self.immediate_transaction(|conn| work(conn))
    }
}

/// Errors worth running the transaction again for.
fn is_transient(error: &IndexError) -> bool {
    match error {
        IndexError::Database(DieselError::DatabaseError(kind, info)) => {
            matches!(
                kind,
                DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::UniqueViolation
            ) || info.message().contains("deadlock detected")
        }
        _ => false,
    }
}

impl IndexConn for PgConnection {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn load_prepared<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        count_statement();
        Prepared { sql, binds }.load::<T>(self)
    }

    fn load<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        count_statement();
        pg_query(sql, binds).load::<T>(self)
    }

    fn run(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<usize> {
        count_statement();
        pg_query(sql, binds).execute(self)
    }

    fn write<T, F>(&mut self, mut work: F) -> Result<T, IndexError>
    where
        F: FnMut(&mut Self) -> Result<T, IndexError>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transaction(|conn| work(conn)) {
                Err(error) if attempt < 8 && is_transient(&error) => {
                    tracing::debug!(%error, attempt, "index write conflicted with a concurrent writer; retrying");
                    std::thread::sleep(Duration::from_millis(5 * attempt as u64));
                }
                result => return result,
            }
        }
    }
}

/// Settings applied to every new PostgreSQL connection.
#[derive(Debug)]
pub struct PgSession {
    pub statement_timeout: Duration,
}

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET statement_timeout = {}",
            self.statement_timeout.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered("a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
    }

    #[derive(QueryableByName, Debug)]
    struct Row {
        #[diesel(sql_type = Text)]
        v: String,
    }

    /// A prepared query binds anew on every call (its statement is reused, its
    /// values are not), and a text whose placeholders and binds disagree is an
    /// error before any SQL runs.
    #[test]
    fn prepared_queries_bind_anew_and_count_their_placeholders() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        for value in ["first", "second", "it's ? here"] {
            let rows: Vec<Row> = conn
                .load_prepared(
                    "SELECT ? || '-' || ? AS v",
                    &[Bind::Text(value.into()), Bind::Int(7)],
                )
                .unwrap();
            assert_eq!(rows[0].v, format!("{value}-7"));
        }
        assert!(conn.load_prepared::<Row>("SELECT ? AS v", &[]).is_err());
        assert!(conn
            .load_prepared::<Row>("SELECT 'x' AS v", &[Bind::Text("y".into())])
            .is_err());
    }
}
