//! Counts and sizes for operators (`kastell stats`), from one index (the control
//! index or a tenant's). Written once for SQLite and PostgreSQL, except the size
//! of the database itself, which each reports its own way.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use serde::Serialize;

use super::conn::{Dialect, IndexConn};
use super::{with_conn, Index, IndexError, IndexPool};

/// What one index holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, QueryableByName, Serialize)]
pub struct IndexStats {
    #[diesel(sql_type = BigInt)]
    pub studies: i64,
    #[diesel(sql_type = BigInt)]
    pub series: i64,
    #[diesel(sql_type = BigInt)]
    pub instances: i64,
    /// Plaintext bytes of the instances as stored (what clients sent); the blobs
    /// take slightly more (encryption header and tags).
    #[diesel(sql_type = BigInt)]
    pub instance_bytes: i64,
    /// Cached series metadata and thumbnails kept in the blob store.
    #[diesel(sql_type = BigInt)]
    pub derived_objects: i64,
    /// When the newest instance was stored (RFC 3339), if any.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_stored_at: Option<String>,
}

/// The instances of one store, as the index records them (issue 15).
#[derive(Debug, Clone, Default, PartialEq, Eq, QueryableByName, Serialize)]
pub struct StoreUsage {
    /// `primary` or the name of a store in `storage.stores`.
    #[diesel(sql_type = Text)]
    pub store: String,
    #[diesel(sql_type = BigInt)]
    pub objects: i64,
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
}

#[derive(QueryableByName)]
struct Bytes {
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

impl Index {
    /// Counts of studies, series, instances and derived objects, and the bytes of
    /// the instances, in one statement.
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
        // SUM is numeric on PostgreSQL: cast so both databases answer a BIGINT.
        const SQL: &str = "SELECT \
             (SELECT COUNT(*) FROM studies) AS studies, \
             (SELECT COUNT(*) FROM series) AS series, \
             (SELECT COUNT(*) FROM instances) AS instances, \
             (SELECT CAST(COALESCE(SUM(blob_size), 0) AS BIGINT) FROM instances) AS instance_bytes, \
             (SELECT COUNT(*) FROM derived_blobs) AS derived_objects, \
             (SELECT MAX(created_at) FROM instances) AS last_stored_at";
        Ok(with_conn!(self, conn => conn.load_one::<IndexStats>(SQL, &[])?))
    }

    /// Instances and their bytes per store. A key is `instances/<32 hex>` in the
    /// primary store and `<store>/instances/<32 hex>` in a named one: what
    /// precedes the last 42 characters names the store.
    pub fn usage_by_store(&self) -> Result<Vec<StoreUsage>, IndexError> {
        const SQL: &str = "SELECT CASE WHEN length(blob_key) <= 42 THEN 'primary' \
             ELSE substr(blob_key, 1, length(blob_key) - 43) END AS store, \
             COUNT(*) AS objects, CAST(COALESCE(SUM(blob_size), 0) AS BIGINT) AS bytes \
             FROM instances GROUP BY 1 ORDER BY 1";
        Ok(with_conn!(self, conn => conn.load::<StoreUsage>(SQL, &[])?))
    }

    /// The bytes the database takes: the SQLite file's pages (each tenant has a
    /// file of its own), or the whole PostgreSQL database (every tenant's schema).
    pub fn database_bytes(&self) -> Result<i64, IndexError> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT page_count * page_size AS bytes FROM pragma_page_count(), pragma_page_size()"
            }
            Dialect::Postgres => {
                "SELECT CAST(pg_database_size(current_database()) AS BIGINT) AS bytes"
            }
        };
        Ok(with_conn!(self, conn => conn.load_one::<Bytes>(sql, &[])?.bytes))
    }
}

#[cfg(test)]
mod tests {
    use crate::index::generate::generate;
    use crate::index::tests::test_indexes;

    #[test]
    fn stats_count_what_is_indexed_on_both_databases() {
        for (index, _db) in test_indexes() {
            let empty = index.stats().unwrap();
            assert_eq!(empty.instances, 0);
            assert_eq!(empty.instance_bytes, 0);
            assert_eq!(empty.last_stored_at, None);
            let made = generate(&index, 3, 2, 4, 5, &|_| {}).unwrap();
            let stats = index.stats().unwrap();
            assert_eq!(
                (stats.studies, stats.series, stats.instances),
                (
                    made.studies as i64,
                    made.series as i64,
                    made.instances as i64
                )
            );
            let bytes: i64 = index.all_blobs().unwrap().iter().map(|(_, s)| s).sum();
            assert_eq!(stats.instance_bytes, bytes);
            assert!(stats.last_stored_at.is_some());
            assert!(index.database_bytes().unwrap() > 0, "{:?}", index.dialect());
        }
    }
}
