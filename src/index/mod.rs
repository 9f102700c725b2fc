//! The relational index: studies, series and instances with the attributes QIDO
//! matches and returns, and where each instance's blob is. Diesel over SQLite (the
//! embedded default) or PostgreSQL, chosen by the URL. Every call here is blocking;
//! the service layer runs them on tokio's blocking pool, bounded by the pool size.

pub mod api_keys;
pub mod audit;
pub mod catalog;
pub mod conn;
pub mod generate;
pub mod keys;
mod pools;
pub mod qido;
pub mod sql;
pub mod stats;
pub mod tenants;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{Connection, QueryableByName, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use conn::{Dialect, IndexConn, PgSession};

use catalog::{Attr, InstanceRow, Kind, Level, SeriesRow, StudyRow};
use qido::{QueryError, SearchRequest};
use sql::{Bind, SqlBuilder};

/// The SQLite migrations in `schema/sqlite/`, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/sqlite");
/// The PostgreSQL migrations in `schema/postgres/`, compiled into the binary.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/postgres");
/// Advisory lock held while migrating PostgreSQL, so processes starting together
/// take turns ("KASTELL" in ASCII).
const MIGRATION_LOCK: i64 = 0x004B_4153_5445_4C4C;

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
}

impl IndexError {
    /// The database cannot be reached, lost the connection, is busy or cut a
    /// statement off at its timeout: the same request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error as DieselError};
        match self {
            IndexError::Pool(_) => true,
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

/// Pool and timeout settings.
#[derive(Debug, Clone, Copy)]
pub struct IndexOptions {
    pub pool_size: u32,
    pub busy_timeout: Duration,
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`.
    pub statement_timeout: Duration,
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

/// One instance to add to the index, with its blob already durable.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub blob_key: String,
    pub blob_size: i64,
    pub content_sha256: String,
    pub header_length: i64,
    pub pixel_data_offset: Option<i64>,
    pub pixel_data_length: Option<i64>,
    /// Encapsulated pixel data: the frame boundaries in the blob (see the
    /// `frame_offsets` column), when they could be told while storing.
    pub frame_offsets: Option<String>,
    /// Values of the catalog attributes stored from the header, as DICOM text
    /// (the Request Attributes Sequence as DICOM JSON).
    pub values: Vec<(&'static Attr, Option<String>)>,
    /// (ScheduledProcedureStepID, RequestedProcedureID) of each request item.
    pub request_items: Vec<(Option<String>, Option<String>)>,
}

/// What happened to one instance of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    /// The same bytes were stored before: nothing changed.
    AlreadyStored,
    /// Overwrite is enabled and the instance replaced an older object.
    Replaced {
        old_blob_key: String,
    },
    /// A different object is stored under this SOP Instance UID.
    Conflict,
    /// The series exists, but in another study.
    SeriesInOtherStudy,
}

/// The blobs a deletion leaves to remove.
#[derive(Debug, Default)]
pub struct DeletedBlobs {
    pub instances: Vec<String>,
    pub derived: Vec<String>,
}

/// Where a stored instance is, for retrieval.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredInstance {
    #[diesel(sql_type = Text)]
    pub study_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub series_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub sop_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub sop_class_uid: String,
    #[diesel(sql_type = Text)]
    pub transfer_syntax_uid: String,
    #[diesel(sql_type = Text)]
    pub blob_key: String,
    #[diesel(sql_type = BigInt)]
    pub blob_size: i64,
    #[diesel(sql_type = BigInt)]
    pub header_length: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub pixel_data_offset: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub pixel_data_length: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub number_of_frames: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub bits_allocated: Option<i64>,
    #[diesel(sql_type = Text)]
    pub content_sha256: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub frame_offsets: Option<String>,
}

/// Which instances a retrieval covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Study {
        study: String,
    },
    Series {
        study: String,
        series: String,
    },
    Instance {
        study: String,
        series: String,
        instance: String,
    },
}

/// One QIDO match with the rows of its levels.
#[derive(Debug, Clone)]
pub struct Hit {
    pub study: StudyRow,
    pub series: Option<SeriesRow>,
    pub instance: Option<InstanceRow>,
}

#[derive(Debug)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Matches beyond this page.
    pub remaining: u64,
    pub requested: Vec<&'static Attr>,
    pub ignored: Vec<String>,
}

#[derive(QueryableByName)]
struct SeriesHit {
    #[diesel(embed)]
    study: StudyRow,
    #[diesel(embed)]
    series: SeriesRow,
}

#[derive(QueryableByName)]
struct InstanceHit {
    #[diesel(embed)]
    study: StudyRow,
    #[diesel(embed)]
    series: SeriesRow,
    #[diesel(embed)]
    instance: InstanceRow,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Pk {
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

#[derive(QueryableByName)]
struct ExistingSeries {
    #[diesel(sql_type = BigInt)]
    study_fk: i64,
}

#[derive(QueryableByName)]
struct ExistingInstance {
    #[diesel(sql_type = BigInt)]
    instance_pk: i64,
    #[diesel(sql_type = Text)]
    content_sha256: String,
    #[diesel(sql_type = Text)]
    blob_key: String,
}

#[derive(QueryableByName)]
struct BlobKeyRow {
    #[diesel(sql_type = Text)]
    blob_key: String,
}

enum IndexPool {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
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
                let mut pooled = pool.get().map_err(|e| IndexError::Pool(e.to_string()))?;
                let $conn: &mut SqliteConnection = &mut pooled;
                $body
            }
            IndexPool::Postgres(pool) => {
                let _call = $crate::telemetry::metrics::IndexCall::start(caller, "postgresql");
                let mut pooled = pool.get().map_err(|e| IndexError::Pool(e.to_string()))?;
                let $conn: &mut PgConnection = &mut pooled;
                $body
            }
        }
    }};
}
pub(crate) use with_conn;

pub(crate) fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The SQLite file of a `sqlite://` URL.
pub fn sqlite_path(url: &str) -> Result<&str, IndexError> {
    url.strip_prefix("sqlite://")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| IndexError::UnsupportedUrl(url.to_string()))
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
    fn open_as(url: &str, options: IndexOptions, label: &str) -> Result<Self, IndexError> {
        Self::migrate(url)?;
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
            IndexPool::Sqlite(pool)
        };
        let index = Self {
            pool: std::sync::Arc::new(pool),
        };
        pools::register(label, std::sync::Arc::downgrade(&index.pool));
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

    /// Adds a batch of instances in one transaction and refreshes the counts and
    /// ModalitiesInStudy / SOPClassesInStudy of every study and series touched.
    pub fn store_instances(
        &self,
        batch: &[NewInstance],
        overwrite: bool,
    ) -> Result<Vec<StoreOutcome>, IndexError> {
        // Studies are written in UID order so that concurrent writers lock them in
        // the same order (no deadlocks); outcomes go back in request order.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|a, b| {
            batch[*a]
                .study_instance_uid
                .cmp(&batch[*b].study_instance_uid)
        });
        with_conn!(self, conn => conn.write(|conn| {
            let mut outcomes = vec![StoreOutcome::Stored; batch.len()];
            let mut studies = BTreeSet::new();
            let mut series_touched = BTreeSet::new();
            for &i in &order {
                outcomes[i] = store_one(conn, &batch[i], overwrite, &mut studies, &mut series_touched)?;
            }
            refresh_aggregates(conn, &studies, &series_touched)?;
            Ok(outcomes)
        }))
    }

    /// Runs a QIDO search.
    pub fn search(
        &self,
        request: &SearchRequest,
        max_results: u64,
    ) -> Result<SearchResult, IndexError> {
        let plan = qido::plan(request)?;
        let limit = match request.limit {
            Some(0) | None => max_results,
            Some(limit) => limit.min(max_results),
        };
        let (select, order) = match plan.level {
            Level::Study => ("SELECT st.* ", " ORDER BY st.study_pk"),
            Level::Series => ("SELECT st.*, se.* ", " ORDER BY se.series_pk"),
            Level::Instance => ("SELECT st.*, se.*, i.* ", " ORDER BY i.instance_pk"),
        };
        let mut sql = SqlBuilder::new();
        // limit and offset are numbers we parsed, written into the text.
        sql.push(select)
            .push(plan.from_where.sql())
            .push(order)
            .push(&format!(" LIMIT {limit} OFFSET {}", request.offset));
        let binds = plan.from_where.binds();
        let (hits, total) = with_conn!(self, conn => {
            let hits: Vec<Hit> = match plan.level {
                Level::Study => conn
                    .load::<StudyRow>(sql.sql(), binds)?
                    .into_iter()
                    .map(|study| Hit { study, series: None, instance: None })
                    .collect(),
                Level::Series => conn
                    .load::<SeriesHit>(sql.sql(), binds)?
                    .into_iter()
                    .map(|h| Hit { study: h.study, series: Some(h.series), instance: None })
                    .collect(),
                Level::Instance => conn
                    .load::<InstanceHit>(sql.sql(), binds)?
                    .into_iter()
                    .map(|h| Hit { study: h.study, series: Some(h.series), instance: Some(h.instance) })
                    .collect(),
            };
            // Counting the rest costs a second query, so only when the page is full.
            let total = if hits.len() as u64 == limit {
                let count_sql = format!("SELECT COUNT(*) AS count {}", plan.from_where.sql());
                Some(conn.load_one::<Count>(&count_sql, plan.from_where.binds())?.count as u64)
            } else {
                None
            };
            (hits, total)
        });
        let remaining = total.map_or(0, |total| {
            total.saturating_sub(request.offset + hits.len() as u64)
        });
        Ok(SearchResult {
            hits,
            remaining,
            requested: plan.requested,
            ignored: plan.ignored,
        })
    }

    /// The instances of a study, series or instance, in a stable order.
    pub fn instances(&self, scope: &Scope) -> Result<Vec<StoredInstance>, IndexError> {
        let mut sql = SqlBuilder::new();
        sql.push(
            "SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, \
             i.transfer_syntax_uid, i.blob_key, i.blob_size, i.header_length, i.pixel_data_offset, \
             i.pixel_data_length, i.number_of_frames, i.bits_allocated, i.content_sha256, \
             i.frame_offsets FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE st.study_instance_uid = ",
        );
        match scope {
            Scope::Study { study } => {
                sql.bind(Bind::Text(study.clone()));
            }
            Scope::Series { study, series } => {
                sql.bind(Bind::Text(study.clone()));
                sql.push(" AND se.series_instance_uid = ")
                    .bind(Bind::Text(series.clone()));
            }
            Scope::Instance {
                study,
                series,
                instance,
            } => {
                sql.bind(Bind::Text(study.clone()));
                sql.push(" AND se.series_instance_uid = ")
                    .bind(Bind::Text(series.clone()));
                sql.push(" AND i.sop_instance_uid = ")
                    .bind(Bind::Text(instance.clone()));
            }
        }
        sql.push(" ORDER BY se.series_pk, i.instance_number, i.instance_pk");
        Ok(with_conn!(self, conn => conn.load::<StoredInstance>(sql.sql(), sql.binds())?))
    }

    /// Deletes the instances of a scope, the series and studies left empty, and
    /// remembers their UIDs (for 410 Gone), with the derived objects (metadata,
    /// thumbnails) of every UID that went. Returns the blobs to remove; no
    /// instance blobs when nothing matched.
    pub fn delete(&self, scope: &Scope) -> Result<DeletedBlobs, IndexError> {
        #[derive(QueryableByName)]
        struct Doomed {
            #[diesel(sql_type = BigInt)]
            instance_pk: i64,
            #[diesel(sql_type = Text)]
            blob_key: String,
            #[diesel(sql_type = Text)]
            sop_instance_uid: String,
            #[diesel(sql_type = BigInt)]
            series_pk: i64,
            #[diesel(sql_type = BigInt)]
            study_pk: i64,
        }
        let mut sql = SqlBuilder::new();
        sql.push(
            "SELECT i.instance_pk, i.blob_key, i.sop_instance_uid, se.series_pk, st.study_pk \
             FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE st.study_instance_uid = ",
        );
        let (study, series, instance) = match scope {
            Scope::Study { study } => (study, None, None),
            Scope::Series { study, series } => (study, Some(series), None),
            Scope::Instance {
                study,
                series,
                instance,
            } => (study, Some(series), Some(instance)),
        };
        sql.bind(Bind::Text(study.clone()));
        if let Some(series) = series {
            sql.push(" AND se.series_instance_uid = ")
                .bind(Bind::Text(series.clone()));
        }
        if let Some(instance) = instance {
            sql.push(" AND i.sop_instance_uid = ")
                .bind(Bind::Text(instance.clone()));
        }
        with_conn!(self, conn => conn.write(|conn| {
            let doomed = conn.load::<Doomed>(sql.sql(), sql.binds())?;
            if doomed.is_empty() {
                return Ok(DeletedBlobs::default());
            }
            let at = now();
            let mut gone_uids: Vec<String> = doomed.iter().map(|r| r.sop_instance_uid.clone()).collect();
            let mut series_touched = BTreeSet::new();
            let mut studies_touched = BTreeSet::new();
            for row in &doomed {
                conn.run("DELETE FROM instances WHERE instance_pk = ?", &[Bind::Int(row.instance_pk)])?;
                remember_deleted(conn, &row.sop_instance_uid, "instance", &at)?;
                series_touched.insert(row.series_pk);
                studies_touched.insert(row.study_pk);
            }
            #[derive(QueryableByName)]
            struct Emptied {
                #[diesel(sql_type = Text)]
                uid: String,
            }
            for series_pk in &series_touched {
                let emptied = conn.load::<Emptied>(
                    "DELETE FROM series WHERE series_pk = ? AND NOT EXISTS \
                     (SELECT 1 FROM instances WHERE series_fk = ?) RETURNING series_instance_uid AS uid",
                    &[Bind::Int(*series_pk), Bind::Int(*series_pk)],
                )?;
                for row in emptied {
                    remember_deleted(conn, &row.uid, "series", &at)?;
                    gone_uids.push(row.uid);
                }
            }
            for study_pk in &studies_touched {
                let emptied = conn.load::<Emptied>(
                    "DELETE FROM studies WHERE study_pk = ? AND NOT EXISTS \
                     (SELECT 1 FROM series WHERE study_fk = ?) RETURNING study_instance_uid AS uid",
                    &[Bind::Int(*study_pk), Bind::Int(*study_pk)],
                )?;
                for row in emptied {
                    remember_deleted(conn, &row.uid, "study", &at)?;
                    gone_uids.push(row.uid);
                }
            }
            // Counts of what remains (rows already deleted are simply not updated).
            refresh_aggregates(conn, &studies_touched, &series_touched)?;
            let mut derived = Vec::new();
            for chunk in gone_uids.chunks(500) {
                let mut sql = SqlBuilder::new();
                sql.push("DELETE FROM derived_blobs WHERE scope_uid IN (");
                for (i, uid) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.bind(Bind::Text(uid.clone()));
                }
                sql.push(") RETURNING blob_key");
                derived.extend(conn.load::<BlobKeyRow>(sql.sql(), sql.binds())?.into_iter().map(|r| r.blob_key));
            }
            Ok(DeletedBlobs {
                instances: doomed.into_iter().map(|row| row.blob_key).collect(),
                derived,
            })
        }))
    }

    /// The derived object recorded for `(scope_uid, kind, variant)`: its source
    /// etag and blob key.
    pub fn derived(
        &self,
        scope_uid: &str,
        kind: &str,
        variant: &str,
    ) -> Result<Option<(String, String)>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            source_etag: String,
            #[diesel(sql_type = Text)]
            blob_key: String,
        }
        let rows = with_conn!(self, conn => conn.load::<Row>(
            "SELECT source_etag, blob_key FROM derived_blobs WHERE scope_uid = ? AND kind = ? AND variant = ?",
            &[
                Bind::Text(scope_uid.to_string()),
                Bind::Text(kind.to_string()),
                Bind::Text(variant.to_string()),
            ],
        )?);
        Ok(rows.into_iter().next().map(|r| (r.source_etag, r.blob_key)))
    }

    /// Records a derived object, replacing an older one; returns the replaced
    /// blob (to remove) if there was one.
    pub fn record_derived(
        &self,
        scope_uid: &str,
        kind: &str,
        variant: &str,
        source_etag: &str,
        blob_key: &str,
    ) -> Result<Option<String>, IndexError> {
        let key = [
            Bind::Text(scope_uid.to_string()),
            Bind::Text(kind.to_string()),
            Bind::Text(variant.to_string()),
        ];
        with_conn!(self, conn => conn.write(|conn| {
            let old = conn.load::<BlobKeyRow>(
                "DELETE FROM derived_blobs WHERE scope_uid = ? AND kind = ? AND variant = ? RETURNING blob_key",
                &key,
            )?;
            let mut binds = key.to_vec();
            binds.extend([
                Bind::Text(source_etag.to_string()),
                Bind::Text(blob_key.to_string()),
                Bind::Text(now()),
            ]);
            conn.run(
                "INSERT INTO derived_blobs (scope_uid, kind, variant, source_etag, blob_key, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                &binds,
            )?;
            Ok(old.into_iter().next().map(|r| r.blob_key))
        }))
    }

    /// Every derived blob the index references.
    pub fn derived_blob_keys(&self) -> Result<Vec<String>, IndexError> {
        let rows = with_conn!(self, conn => conn.load::<BlobKeyRow>("SELECT blob_key FROM derived_blobs", &[])?);
        Ok(rows.into_iter().map(|r| r.blob_key).collect())
    }

    /// Whether the most specific UID of a scope was deleted through DICOMweb.
    pub fn was_deleted(&self, scope: &Scope) -> Result<bool, IndexError> {
        let uid = match scope {
            Scope::Study { study } => study,
            Scope::Series { series, .. } => series,
            Scope::Instance { instance, .. } => instance,
        };
        let rows = with_conn!(self, conn => conn.load::<BlobKeyRow>(
            "SELECT uid AS blob_key FROM deleted_uids WHERE uid = ?",
            &[Bind::Text(uid.clone())],
        )?);
        Ok(!rows.is_empty())
    }

    /// The Study Instance UID of every study in the index.
    pub fn study_uids(&self) -> Result<Vec<String>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            study_instance_uid: String,
        }
        let rows = with_conn!(self, conn => conn.load::<Row>(
            "SELECT study_instance_uid FROM studies ORDER BY study_pk",
            &[],
        )?);
        Ok(rows.into_iter().map(|r| r.study_instance_uid).collect())
    }

    /// Every indexed blob with its plaintext size, in index order.
    pub fn all_blobs(&self) -> Result<Vec<(String, i64)>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            blob_key: String,
            #[diesel(sql_type = BigInt)]
            blob_size: i64,
        }
        let rows = with_conn!(self, conn => conn.load::<Row>("SELECT blob_key, blob_size FROM instances ORDER BY instance_pk", &[])?);
        Ok(rows
            .into_iter()
            .map(|r| (r.blob_key, r.blob_size))
            .collect())
    }

    /// The plaintext size and SHA-256 (hex) of the instance stored under a SOP
    /// Instance UID: what identifies its bytes, so that the bulk import can tell a
    /// file that is already stored without uploading it again.
    pub fn stored_fingerprint(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<(i64, String)>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            blob_size: i64,
            #[diesel(sql_type = Text)]
            content_sha256: String,
        }
        let rows = with_conn!(self, conn => conn.load::<Row>(
            "SELECT blob_size, content_sha256 FROM instances WHERE sop_instance_uid = ?",
            &[Bind::Text(sop_instance_uid.to_string())],
        )?);
        Ok(rows
            .into_iter()
            .next()
            .map(|r| (r.blob_size, r.content_sha256)))
    }

    /// Which of `keys` the index references.
    pub fn referenced_blob_keys(&self, keys: &[String]) -> Result<HashSet<String>, IndexError> {
        let mut found = HashSet::new();
        for chunk in keys.chunks(500) {
            let mut sql = SqlBuilder::new();
            for (n, table) in ["instances", "derived_blobs"].into_iter().enumerate() {
                if n > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push(&format!("SELECT blob_key FROM {table} WHERE blob_key IN ("));
                for (i, key) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.bind(Bind::Text(key.clone()));
                }
                sql.push(")");
            }
            let rows = with_conn!(self, conn => conn.load::<BlobKeyRow>(sql.sql(), sql.binds())?);
            found.extend(rows.into_iter().map(|row| row.blob_key));
        }
        Ok(found)
    }
}

/// The columns (and bound values) that store one catalog attribute.
fn attribute_columns(attr: &Attr, value: &Option<String>, out: &mut Vec<(String, Bind)>) {
    let column = attr.column.to_string();
    match attr.kind {
        Kind::PersonName => {
            let norm = value.as_deref().map(qido::normalize_person_name);
            let words = value.as_deref().map(crate::dicom::text::person_name_words);
            out.push((column.clone(), Bind::NullableText(value.clone())));
            out.push((format!("{column}_norm"), Bind::NullableText(norm)));
            out.push((format!("{column}_words"), Bind::NullableText(words)));
        }
        Kind::Time => {
            let norm = value.as_deref().and_then(|v| {
                crate::dicom::text::normalize_time(v, crate::dicom::text::Bound::Lower)
            });
            out.push((column.clone(), Bind::NullableText(value.clone())));
            out.push((format!("{column}_norm"), Bind::NullableText(norm)));
        }
        Kind::Date => {
            let normalized = value
                .as_deref()
                .map(|v| crate::dicom::text::normalize_date(v).unwrap_or_else(|| v.to_string()));
            out.push((column, Bind::NullableText(normalized)));
        }
        Kind::Int => {
            let number = value
                .as_deref()
                .and_then(|v| v.split('\\').next())
                .and_then(|v| v.trim().parse::<i64>().ok());
            out.push((column, Bind::NullableInt(number)));
        }
        Kind::Uid | Kind::Text | Kind::RequestSequence => {
            out.push((column, Bind::NullableText(value.clone())));
        }
        Kind::ModalitiesInStudy | Kind::SopClassesInStudy | Kind::Count => {}
    }
}

fn level_columns(instance: &NewInstance, level: Level) -> Vec<(String, Bind)> {
    let mut columns = Vec::new();
    for (attr, value) in &instance.values {
        if attr.level == level {
            attribute_columns(attr, value, &mut columns);
        }
    }
    columns
}

fn upsert_sql(
    table: &str,
    key_column: &str,
    key: &str,
    mut columns: Vec<(String, Bind)>,
    extra: Vec<(String, Bind)>,
) -> SqlBuilder {
    columns.retain(|(c, _)| c != key_column);
    let timestamp = now();
    let mut sql = SqlBuilder::new();
    sql.push(&format!("INSERT INTO {table} ({key_column}"));
    for (column, _) in columns.iter().chain(extra.iter()) {
        sql.push(", ").push(column);
    }
    sql.push(", created_at, updated_at) VALUES (")
        .bind(Bind::Text(key.to_string()));
    for (_, value) in columns.iter().chain(extra.iter()) {
        sql.push(", ").bind(value.clone());
    }
    sql.push(", ")
        .bind(Bind::Text(timestamp.clone()))
        .push(", ")
        .bind(Bind::Text(timestamp))
        .push(")");
    // A later instance of the same study or series fills in what the first lacked;
    // it never overwrites what is there.
    sql.push(&format!(
        " ON CONFLICT ({key_column}) DO UPDATE SET updated_at = excluded.updated_at"
    ));
    for (column, _) in &columns {
        sql.push(&format!(
            ", {column} = COALESCE({table}.{column}, excluded.{column})"
        ));
    }
    let pk = if table == "studies" {
        "study_pk"
    } else {
        "series_pk"
    };
    sql.push(&format!(" RETURNING {pk} AS pk"));
    sql
}

fn store_one<C: IndexConn>(
    conn: &mut C,
    instance: &NewInstance,
    overwrite: bool,
    studies: &mut BTreeSet<i64>,
    series_touched: &mut BTreeSet<i64>,
) -> Result<StoreOutcome, IndexError> {
    let existing = conn
        .load::<ExistingInstance>(
            "SELECT instance_pk, content_sha256, blob_key FROM instances WHERE sop_instance_uid = ?",
            &[Bind::Text(instance.sop_instance_uid.clone())],
        )?
        .pop();
    let mut replaced = None;
    if let Some(existing) = existing {
        if existing.content_sha256 == instance.content_sha256 {
            return Ok(StoreOutcome::AlreadyStored);
        }
        if !overwrite {
            return Ok(StoreOutcome::Conflict);
        }
        let series_fk = conn
            .load_one::<Pk>(
                "DELETE FROM instances WHERE instance_pk = ? RETURNING series_fk AS pk",
                &[Bind::Int(existing.instance_pk)],
            )?
            .pk;
        series_touched.insert(series_fk);
        replaced = Some(existing.blob_key);
    }

    let study_sql = upsert_sql(
        "studies",
        "study_instance_uid",
        &instance.study_instance_uid,
        level_columns(instance, Level::Study),
        vec![],
    );
    let study_pk = conn.load_one::<Pk>(study_sql.sql(), study_sql.binds())?.pk;

    let existing_series = conn
        .load::<ExistingSeries>(
            "SELECT study_fk FROM series WHERE series_instance_uid = ?",
            &[Bind::Text(instance.series_instance_uid.clone())],
        )?
        .pop();
    if let Some(series) = &existing_series {
        if series.study_fk != study_pk {
            return Ok(StoreOutcome::SeriesInOtherStudy);
        }
    }
    let series_sql = upsert_sql(
        "series",
        "series_instance_uid",
        &instance.series_instance_uid,
        level_columns(instance, Level::Series),
        vec![("study_fk".into(), Bind::Int(study_pk))],
    );
    let series_pk = conn
        .load_one::<Pk>(series_sql.sql(), series_sql.binds())?
        .pk;
    if existing_series.is_none() {
        for (step, procedure) in &instance.request_items {
            conn.run(
                "INSERT INTO series_requests (series_fk, scheduled_procedure_step_id, requested_procedure_id) VALUES (?, ?, ?)",
                &[Bind::Int(series_pk), Bind::NullableText(step.clone()), Bind::NullableText(procedure.clone())],
            )?;
        }
    }

    // Stored again after a deletion: no longer gone.
    conn.run(
        "DELETE FROM deleted_uids WHERE uid IN (?, ?, ?)",
        &[
            Bind::Text(instance.study_instance_uid.clone()),
            Bind::Text(instance.series_instance_uid.clone()),
            Bind::Text(instance.sop_instance_uid.clone()),
        ],
    )?;
    let mut columns = level_columns(instance, Level::Instance);
    columns.retain(|(c, _)| c != "sop_instance_uid" && c != "sop_class_uid");
    columns.extend([
        ("series_fk".to_string(), Bind::Int(series_pk)),
        (
            "sop_class_uid".to_string(),
            Bind::Text(instance.sop_class_uid.clone()),
        ),
        (
            "transfer_syntax_uid".to_string(),
            Bind::Text(instance.transfer_syntax_uid.clone()),
        ),
        (
            "blob_key".to_string(),
            Bind::Text(instance.blob_key.clone()),
        ),
        ("blob_size".to_string(), Bind::Int(instance.blob_size)),
        (
            "content_sha256".to_string(),
            Bind::Text(instance.content_sha256.clone()),
        ),
        (
            "header_length".to_string(),
            Bind::Int(instance.header_length),
        ),
        (
            "pixel_data_offset".to_string(),
            Bind::NullableInt(instance.pixel_data_offset),
        ),
        (
            "pixel_data_length".to_string(),
            Bind::NullableInt(instance.pixel_data_length),
        ),
        (
            "frame_offsets".to_string(),
            Bind::NullableText(instance.frame_offsets.clone()),
        ),
        ("created_at".to_string(), Bind::Text(now())),
    ]);
    let mut sql = SqlBuilder::new();
    sql.push("INSERT INTO instances (sop_instance_uid");
    for (column, _) in &columns {
        sql.push(", ").push(column);
    }
    sql.push(") VALUES (")
        .bind(Bind::Text(instance.sop_instance_uid.clone()));
    for (_, value) in &columns {
        sql.push(", ").bind(value.clone());
    }
    sql.push(")");
    conn.run(sql.sql(), sql.binds())?;
    studies.insert(study_pk);
    series_touched.insert(series_pk);
    Ok(match replaced {
        Some(old_blob_key) => StoreOutcome::Replaced { old_blob_key },
        None => StoreOutcome::Stored,
    })
}

fn remember_deleted<C: IndexConn>(
    conn: &mut C,
    uid: &str,
    level: &str,
    at: &str,
) -> Result<(), IndexError> {
    conn.run(
        "DELETE FROM deleted_uids WHERE uid = ?",
        &[Bind::Text(uid.to_string())],
    )?;
    conn.run(
        "INSERT INTO deleted_uids (uid, level, deleted_at) VALUES (?, ?, ?)",
        &[
            Bind::Text(uid.to_string()),
            Bind::Text(level.to_string()),
            Bind::Text(at.to_string()),
        ],
    )?;
    Ok(())
}

fn refresh_aggregates<C: IndexConn>(
    conn: &mut C,
    studies: &BTreeSet<i64>,
    series: &BTreeSet<i64>,
) -> Result<(), IndexError> {
    let mut all_studies = studies.clone();
    for series_pk in series {
        conn.run(
            "UPDATE series SET number_of_series_related_instances = \
             (SELECT COUNT(*) FROM instances WHERE series_fk = ?) WHERE series_pk = ?",
            &[Bind::Int(*series_pk), Bind::Int(*series_pk)],
        )?;
        if let Some(study) = conn
            .load::<Pk>(
                "SELECT study_fk AS pk FROM series WHERE series_pk = ?",
                &[Bind::Int(*series_pk)],
            )?
            .pop()
        {
            all_studies.insert(study.pk);
        }
    }
    for study_pk in all_studies {
        let pk = Bind::Int(study_pk);
        let dialect = conn.dialect();
        let modalities = dialect.backslash_list("modality");
        let sop_classes = dialect.backslash_list("sop_class_uid");
        let sql = format!(
            "UPDATE studies SET \
             number_of_study_related_series = (SELECT COUNT(*) FROM series WHERE study_fk = ?), \
             number_of_study_related_instances = (SELECT COUNT(*) FROM instances i JOIN series s \
                 ON s.series_pk = i.series_fk WHERE s.study_fk = ?), \
             modalities_in_study = (SELECT {modalities} FROM (SELECT DISTINCT modality \
                 FROM series WHERE study_fk = ? AND modality IS NOT NULL AND modality <> '' ORDER BY modality) m), \
             sop_classes_in_study = (SELECT {sop_classes} FROM (SELECT DISTINCT i.sop_class_uid \
                 FROM instances i JOIN series s ON s.series_pk = i.series_fk WHERE s.study_fk = ? \
                 ORDER BY i.sop_class_uid) c) \
             WHERE study_pk = ?"
        );
        conn.run(&sql, &[pk.clone(), pk.clone(), pk.clone(), pk.clone(), pk])?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        let Ok(base) = std::env::var("KASTELL_TEST_POSTGRES") else {
            eprintln!(
                "KASTELL_TEST_POSTGRES is not set: the PostgreSQL half of this test did not run"
            );
            return;
        };
        let name = format!("kastell_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&format!("{base}/postgres")).unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .unwrap();
        let url = format!("{base}/{name}");
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
        diesel::sql_query(format!("DROP DATABASE {name}"))
            .execute(&mut admin)
            .unwrap();
    }

    /// A fresh SQLite index, and a fresh PostgreSQL database when
    /// `KASTELL_TEST_POSTGRES` names a server (with its name).
    pub(crate) fn test_indexes() -> Vec<(Index, Option<String>)> {
        let dir = tempfile::tempdir().unwrap().keep();
        let options = IndexOptions {
            pool_size: 2,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        };
        let mut indexes = vec![(
            Index::open(&format!("sqlite://{}/i.sqlite", dir.display()), options).unwrap(),
            None,
        )];
        if let Ok(base) = std::env::var("KASTELL_TEST_POSTGRES") {
            use diesel::RunQueryDsl;
            let name = format!("kastell_t_{}", uuid::Uuid::new_v4().simple());
            let mut admin = PgConnection::establish(&format!("{base}/postgres")).unwrap();
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .unwrap();
            indexes.push((
                Index::open(&format!("{base}/{name}"), options).unwrap(),
                Some(name),
            ));
        }
        indexes
    }

    /// A study of 2,000 instances: listing them, and finding them for metadata or
    /// retrieval, each take a fixed number of statements, not one per instance.
    #[test]
    fn large_studies_cost_a_bounded_number_of_queries() {
        for (index, _) in test_indexes() {
            let made = generate::generate(&index, 1, 2, 1000, 7, &|_| {}).unwrap();
            assert_eq!(made.instances, 2000);
            let study = "2.25.7.0".to_string();
            let request = SearchRequest {
                resource: qido::Resource::StudyInstances {
                    study: study.clone(),
                },
                matches: vec![],
                include: vec![qido::IncludeField::All],
                fuzzy: false,
                empty_value_matching: false,
                limit: Some(5000),
                offset: 0,
            };
            let before = conn::statements_on_this_thread();
            let result = index.search(&request, 5000).unwrap();
            assert_eq!(result.hits.len(), 2000);
            assert_eq!(
                conn::statements_on_this_thread() - before,
                1,
                "{:?}",
                index.dialect()
            );
            let before = conn::statements_on_this_thread();
            let located = index
                .instances(&Scope::Study {
                    study: study.clone(),
                })
                .unwrap();
            assert_eq!(located.len(), 2000);
            assert_eq!(conn::statements_on_this_thread() - before, 1);
            // A full page also counts what remains: one statement more.
            let mut paged = request.clone();
            paged.limit = Some(100);
            let before = conn::statements_on_this_thread();
            let page = index.search(&paged, 5000).unwrap();
            assert_eq!((page.hits.len(), page.remaining), (100, 1900));
            assert_eq!(conn::statements_on_this_thread() - before, 2);
        }
    }

    #[test]
    fn generated_data_is_consistent_on_both_databases() {
        for (index, _) in test_indexes() {
            let made = generate::generate(&index, 30, 2, 3, 11, &|_| {}).unwrap();
            assert_eq!((made.studies, made.series, made.instances), (30, 60, 180));
            let request = SearchRequest {
                resource: qido::Resource::Studies,
                matches: vec![],
                include: vec![],
                fuzzy: false,
                empty_value_matching: false,
                limit: None,
                offset: 0,
            };
            let studies = index.search(&request, 1000).unwrap();
            assert_eq!(studies.hits.len(), 30);
            for hit in &studies.hits {
                assert_eq!(hit.study.number_of_study_related_instances, 6);
                assert!(hit.study.patient_id.as_deref().unwrap().starts_with('P'));
            }
        }
    }
}
