//! The sealed copy of each instance's metadata (`instance_metadata`): written
//! with the instance at STOW (see `write::store_one`), read a series at a time
//! by WADO-RS metadata, re-wrapped by key rotation. The index only stores and
//! returns the bytes; sealing and opening are the store's (`store::record`).

use std::collections::HashMap;

use diesel::sql_types::{BigInt, Binary, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::{with_conn, Index, IndexError, IndexPool};

/// One sealed metadata record with the blob it is bound to.
#[derive(QueryableByName)]
pub struct MetadataRecord {
    #[diesel(sql_type = BigInt)]
    pub instance_pk: i64,
    #[diesel(sql_type = Text)]
    pub blob_key: String,
    #[diesel(sql_type = Binary)]
    pub sealed: Vec<u8>,
}

impl Index {
    /// The sealed metadata of the instances stored in `blob_keys`, by blob key;
    /// instances without one are absent.
    pub fn instance_metadata(
        &self,
        blob_keys: &[&str],
    ) -> Result<HashMap<String, Vec<u8>>, IndexError> {
        let mut found = HashMap::with_capacity(blob_keys.len());
        // A statement's parameters are bounded (SQLite: 32,766).
        for chunk in blob_keys.chunks(500) {
            let mut sql = SqlBuilder::new();
            sql.push(
                "SELECT i.instance_pk, i.blob_key, m.sealed FROM instances i \
                 JOIN instance_metadata m ON m.instance_fk = i.instance_pk WHERE i.blob_key IN (",
            )
            .bind_list(chunk.iter().map(|key| Bind::Text(key.to_string())))
            .push(")");
            let rows =
                with_conn!(self, conn => conn.load::<MetadataRecord>(sql.sql(), sql.binds())?);
            found.extend(rows.into_iter().map(|row| (row.blob_key, row.sealed)));
        }
        Ok(found)
    }

    /// Up to `limit` records after instance `after` (in key order): how key
    /// rotation walks them all without holding them all.
    pub fn metadata_records_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MetadataRecord>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<MetadataRecord>(
            "SELECT i.instance_pk, i.blob_key, m.sealed FROM instance_metadata m \
             JOIN instances i ON i.instance_pk = m.instance_fk \
             WHERE m.instance_fk > ? ORDER BY m.instance_fk LIMIT ?",
            &[Bind::Int(after), Bind::Int(limit)],
        )?))
    }

    /// Replaces the record of an instance, if the instance still has the blob it
    /// was sealed for (a replacement meanwhile brought its own).
    pub fn replace_metadata_record(
        &self,
        instance_pk: i64,
        blob_key: &str,
        sealed: Vec<u8>,
    ) -> Result<bool, IndexError> {
        let changed = with_conn!(self, conn => conn.write(|conn| Ok(conn.run(
            "UPDATE instance_metadata SET sealed = ? WHERE instance_fk = \
             (SELECT instance_pk FROM instances WHERE instance_pk = ? AND blob_key = ?)",
            &[
                Bind::Bytes(sealed.clone()),
                Bind::Int(instance_pk),
                Bind::Text(blob_key.to_string()),
            ],
        )?)))?;
        Ok(changed > 0)
    }
}
