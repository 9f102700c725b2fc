//! Blob references beyond retrieval: the derived objects (metadata, thumbnails)
//! recorded per UID, and the listings of blob keys that maintenance (verify,
//! garbage collection, tenant removal) compares with the store.

use std::collections::HashSet;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::records::BlobKeyRow;
use super::sql::{Bind, SqlBuilder};
use super::{now, with_conn, Index, IndexError, IndexPool};

impl Index {
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

    /// Which of `keys` the index references.
    pub fn referenced_blob_keys(&self, keys: &[String]) -> Result<HashSet<String>, IndexError> {
        let mut found = HashSet::new();
        for chunk in keys.chunks(500) {
            let mut sql = SqlBuilder::new();
            for (n, table) in ["instances", "derived_blobs"].into_iter().enumerate() {
                if n > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push(&format!("SELECT blob_key FROM {table} WHERE blob_key IN ("))
                    .bind_list(chunk.iter().map(|key| Bind::Text(key.clone())))
                    .push(")");
            }
            let rows = with_conn!(self, conn => conn.load::<BlobKeyRow>(sql.sql(), sql.binds())?);
            found.extend(rows.into_iter().map(|row| row.blob_key));
        }
        Ok(found)
    }
}
