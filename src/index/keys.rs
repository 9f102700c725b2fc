//! Persistence of wrapped tenant keys and the log of key operations. The index
//! stores key material only as the opaque wrapped bytes it is given.

use diesel::sql_types::{BigInt, Binary, Nullable, Text};

use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::Bind;
use super::{now, with_conn, Index, IndexError, IndexPool};
use diesel::{PgConnection, SqliteConnection};

/// A stored tenant key: wrapped bytes (`None` once shredded) and its state.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StoredTenantKey {
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Binary>)]
    pub wrapped_key: Option<Vec<u8>>,
}

/// One key operation.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct KeyEvent {
    #[diesel(sql_type = Text)]
    pub at: String,
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub key_version: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub detail: Option<String>,
}

impl Index {
    pub fn tenant_keys(&self, tenant: &str) -> Result<Vec<StoredTenantKey>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StoredTenantKey>(
            "SELECT tenant, version, state, wrapped_key FROM tenant_keys WHERE tenant = ? ORDER BY version",
            &[Bind::Text(tenant.to_string())],
        )?))
    }

    /// Adds a new active version; the active one becomes previous; one transaction.
    pub fn add_active_tenant_key(
        &self,
        tenant: &str,
        version: i64,
        wrapped: &[u8],
    ) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let at = now();
            conn.run(
                "UPDATE tenant_keys SET state = 'previous', changed_at = ? WHERE tenant = ? AND state = 'active'",
                &[Bind::Text(at.clone()), Bind::Text(tenant.to_string())],
            )?;
            conn.run(
                "INSERT INTO tenant_keys (tenant, version, state, wrapped_key, created_at, changed_at) \
                 VALUES (?, ?, 'active', ?, ?, ?)",
                &[
                    Bind::Text(tenant.to_string()),
                    Bind::Int(version),
                    Bind::Bytes(wrapped.to_vec()),
                    Bind::Text(at.clone()),
                    Bind::Text(at),
                ],
            )?;
            record_event(conn, tenant, if version == 1 { "key-created" } else { "key-rotated" }, Some(version), None)
        }))
    }

    /// Destroys one superseded key version.
    pub fn retire_tenant_key(&self, tenant: &str, version: i64) -> Result<bool, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let changed = conn.run(
                "UPDATE tenant_keys SET state = 'retired', wrapped_key = NULL, changed_at = ? \
                 WHERE tenant = ? AND version = ? AND state = 'previous'",
                &[Bind::Text(now()), Bind::Text(tenant.to_string()), Bind::Int(version)],
            )?;
            if changed > 0 {
                record_event(conn, tenant, "key-retired", Some(version), None)?;
            }
            Ok(changed > 0)
        }))
    }

    /// Destroys every key of a tenant (crypto-shredding).
    pub fn shred_tenant_keys(&self, tenant: &str) -> Result<usize, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let shredded = conn.run(
                "UPDATE tenant_keys SET state = 'shredded', wrapped_key = NULL, changed_at = ? \
                 WHERE tenant = ? AND state <> 'shredded'",
                &[Bind::Text(now()), Bind::Text(tenant.to_string())],
            )?;
            record_event(conn, tenant, "keys-shredded", None, Some(format!("{shredded} key versions destroyed")))?;
            Ok(shredded)
        }))
    }

    /// Appends a key operation to the log.
    pub fn record_key_event(
        &self,
        tenant: &str,
        action: &str,
        detail: Option<String>,
    ) -> Result<(), IndexError> {
        with_conn!(self, conn => record_event(conn, tenant, action, None, detail))
    }

    pub fn key_events(&self, tenant: &str) -> Result<Vec<KeyEvent>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<KeyEvent>(
            "SELECT at, tenant, action, key_version, detail FROM key_events WHERE tenant = ? ORDER BY event_pk",
            &[Bind::Text(tenant.to_string())],
        )?))
    }
}

fn record_event<C: IndexConn>(
    conn: &mut C,
    tenant: &str,
    action: &str,
    version: Option<i64>,
    detail: Option<String>,
) -> Result<(), IndexError> {
    conn.run(
        "INSERT INTO key_events (at, tenant, action, key_version, detail) VALUES (?, ?, ?, ?, ?)",
        &[
            Bind::Text(now()),
            Bind::Text(tenant.to_string()),
            Bind::Text(action.to_string()),
            Bind::NullableInt(version),
            Bind::NullableText(detail),
        ],
    )?;
    Ok(())
}
