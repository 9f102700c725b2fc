//! Persistence of static API keys. The index never sees a key, only the hex
//! SHA-256 of its text (made in `crate::auth`), so a copy of the database cannot
//! be used to call the archive.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::Bind;
use super::{now, with_conn, Index, IndexError, IndexPool};

/// One API key as stored: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct ApiKeyRecord {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub name: String,
    /// A tenant name, or `*` for every tenant.
    #[diesel(sql_type = Text)]
    pub tenant: String,
    /// Comma-separated actions (`read,write`), as written by `crate::auth`.
    #[diesel(sql_type = Text)]
    pub permissions: String,
    #[diesel(sql_type = Text)]
    pub created_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub revoked_at: Option<String>,
}

#[derive(QueryableByName)]
struct NewId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

const COLUMNS: &str = "id, name, tenant, permissions, created_at, revoked_at";

impl Index {
    /// Stores a new key by its hash and returns its id.
    pub fn add_api_key(
        &self,
        name: &str,
        tenant: &str,
        permissions: &str,
        key_hash: &str,
    ) -> Result<i64, IndexError> {
        let binds = [
            Bind::Text(name.to_string()),
            Bind::Text(tenant.to_string()),
            Bind::Text(permissions.to_string()),
            Bind::Text(key_hash.to_string()),
            Bind::Text(now()),
        ];
        Ok(with_conn!(self, conn => conn.load_one::<NewId>(
            "INSERT INTO api_keys (name, tenant, permissions, key_hash, created_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING id",
            &binds,
        )?.id))
    }

    /// Every key, revoked ones included, oldest first.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, IndexError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY id");
        Ok(with_conn!(self, conn => conn.load::<ApiKeyRecord>(&sql, &[])?))
    }

    /// The key whose text hashes to `key_hash`, revoked or not.
    pub fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, IndexError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?");
        Ok(with_conn!(self, conn => conn
            .load::<ApiKeyRecord>(&sql, &[Bind::Text(key_hash.to_string())])?
            .into_iter()
            .next()))
    }

    /// Marks a key revoked; false when no such key exists or it was revoked before
    /// (the first revocation time is kept).
    pub fn revoke_api_key(&self, id: i64) -> Result<bool, IndexError> {
        Ok(with_conn!(self, conn => conn.run(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            &[Bind::Text(now()), Bind::Int(id)],
        )?) > 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::index::tests::test_indexes;

    #[test]
    fn keys_are_added_found_by_hash_listed_and_revoked() {
        for (index, _db) in test_indexes() {
            let first = index.add_api_key("ct-1", "default", "write", "aa").unwrap();
            let second = index
                .add_api_key("script", "*", "read,delete", "bb")
                .unwrap();
            assert!(second > first);
            let found = index.api_key_by_hash("bb").unwrap().unwrap();
            assert_eq!(
                (found.id, found.name.as_str(), found.tenant.as_str()),
                (second, "script", "*")
            );
            assert_eq!(found.permissions, "read,delete");
            assert!(found.revoked_at.is_none());
            assert!(index.api_key_by_hash("cc").unwrap().is_none());
            // The hash is unique: the same key cannot be stored twice.
            assert!(index.add_api_key("dup", "default", "read", "aa").is_err());
            assert!(index.revoke_api_key(first).unwrap());
            assert!(!index.revoke_api_key(first).unwrap(), "already revoked");
            assert!(!index.revoke_api_key(9999).unwrap(), "no such key");
            let listed = index.api_keys().unwrap();
            assert_eq!(listed.len(), 2);
            assert!(listed[0].revoked_at.is_some());
            assert!(listed[1].revoked_at.is_none());
        }
    }
}
