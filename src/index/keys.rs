//! Persistence of wrapped tenant keys and the log of key operations. The index
//! stores key material only as the opaque wrapped bytes it is given.

use diesel::sql_types::{BigInt, Binary, Nullable, Text};

use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::Bind;
use super::{now, with_conn, Index, IndexError, IndexPool};

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
    #[diesel(sql_type = Text)]
    pub master_key: String,
}

/// A wrapped key of the installation: a tenant key version, or the audit chain
/// key (`tenant` empty, `version` its first sealed seq).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct WrappedKeyRow {
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = Binary)]
    pub wrapped_key: Vec<u8>,
    #[diesel(sql_type = Text)]
    pub master_key: String,
}

/// How many live keys of a tenant one master wraps.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct TenantMasterCount {
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = Text)]
    pub master_key: String,
    #[diesel(sql_type = BigInt)]
    pub keys: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
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
            "SELECT tenant, version, state, wrapped_key, master_key FROM tenant_keys WHERE tenant = ? ORDER BY version",
            &[Bind::Text(tenant.to_string())],
        )?))
    }

    /// Adds a new active version; the active one becomes previous; one transaction.
    pub fn add_active_tenant_key(
        &self,
        tenant: &str,
        version: i64,
        wrapped: &[u8],
        master: &str,
    ) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let at = now();
            conn.run(
                "UPDATE tenant_keys SET state = 'previous', changed_at = ? WHERE tenant = ? AND state = 'active'",
                &[Bind::Text(at.clone()), Bind::Text(tenant.to_string())],
            )?;
            conn.run(
                "INSERT INTO tenant_keys (tenant, version, state, wrapped_key, created_at, changed_at, master_key) \
                 VALUES (?, ?, 'active', ?, ?, ?, ?)",
                &[
                    Bind::Text(tenant.to_string()),
                    Bind::Int(version),
                    Bind::Bytes(wrapped.to_vec()),
                    Bind::Text(at.clone()),
                    Bind::Text(at),
                    Bind::Text(master.to_string()),
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

    /// Every live wrapped key (tenant keys not destroyed, and the audit chain
    /// key), in a stable order: what a master key rotation walks.
    pub fn wrapped_keys(&self) -> Result<Vec<WrappedKeyRow>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<WrappedKeyRow>(
            "SELECT tenant, version, wrapped_key, master_key FROM tenant_keys \
             WHERE wrapped_key IS NOT NULL \
             UNION ALL SELECT '' AS tenant, first_keyed_seq AS version, wrapped_key, master_key \
             FROM audit_chain_key ORDER BY tenant, version",
            &[],
        )?))
    }

    /// Replaces one wrapped key by its re-wrapping under another master, if it
    /// is still what `from` was read as (another rotation, a shredding or a
    /// retirement meanwhile wins). Returns whether it was replaced. The audit
    /// chain key is the row with an empty `tenant`.
    pub fn rewrap_key(
        &self,
        from: &WrappedKeyRow,
        wrapped: &[u8],
        master: &str,
    ) -> Result<bool, IndexError> {
        let binds = [
            Bind::Bytes(wrapped.to_vec()),
            Bind::Text(master.to_string()),
            Bind::Text(from.tenant.clone()),
            Bind::Int(from.version),
            Bind::Text(from.master_key.clone()),
            Bind::Bytes(from.wrapped_key.clone()),
        ];
        with_conn!(self, conn => conn.write(|conn| {
            let changed = if from.tenant.is_empty() {
                conn.run(
                    "UPDATE audit_chain_key SET wrapped_key = ?, master_key = ? \
                     WHERE ? = '' AND first_keyed_seq = ? AND master_key = ? AND wrapped_key = ?",
                    &binds,
                )?
            } else {
                conn.run(
                    "UPDATE tenant_keys SET wrapped_key = ?, master_key = ? \
                     WHERE tenant = ? AND version = ? AND master_key = ? AND wrapped_key = ?",
                    &binds,
                )?
            };
            if changed > 0 && !from.tenant.is_empty() {
                record_event(conn, &from.tenant, "key-rewrapped", Some(from.version),
                    Some(format!("from master key {} to {master}", from.master_key)))?;
            }
            Ok(changed > 0)
        }))
    }

    /// Live keys a master still wraps.
    pub fn master_key_references(&self, master: &str) -> Result<i64, IndexError> {
        let rows = with_conn!(self, conn => conn.load::<Count>(
            "SELECT (SELECT COUNT(*) FROM tenant_keys WHERE master_key = ? AND wrapped_key IS NOT NULL) \
                  + (SELECT COUNT(*) FROM audit_chain_key WHERE master_key = ?) AS n",
            &[Bind::Text(master.to_string()), Bind::Text(master.to_string())],
        )?);
        Ok(rows.first().map_or(0, |row| row.n))
    }

    /// Per tenant, how many live keys each master wraps.
    pub fn tenant_key_masters(&self) -> Result<Vec<TenantMasterCount>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<TenantMasterCount>(
            "SELECT tenant, master_key, COUNT(*) AS keys FROM tenant_keys \
             WHERE wrapped_key IS NOT NULL GROUP BY tenant, master_key ORDER BY tenant, master_key",
            &[],
        )?))
    }

    /// Notes a master key as retired (refused if it still wraps a key).
    pub fn retire_master(&self, master: &str, detail: &str) -> Result<bool, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let used = conn.load::<Count>(
                "SELECT (SELECT COUNT(*) FROM tenant_keys WHERE master_key = ? AND wrapped_key IS NOT NULL) \
                      + (SELECT COUNT(*) FROM audit_chain_key WHERE master_key = ?) AS n",
                &[Bind::Text(master.to_string()), Bind::Text(master.to_string())],
            )?;
            if used.first().map_or(0, |row| row.n) > 0 {
                return Ok(false);
            }
            conn.run(
                "INSERT INTO retired_masters (master_key, retired_at, detail) VALUES (?, ?, ?)",
                &[Bind::Text(master.to_string()), Bind::Text(now()), Bind::Text(detail.to_string())],
            )?;
            record_event(conn, "", "master-retired", None, Some(format!("{master}: {detail}")))?;
            Ok(true)
        }))
    }

    /// The names of retired master keys.
    pub fn retired_masters(&self) -> Result<Vec<String>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<Name>(
            "SELECT master_key AS name FROM retired_masters ORDER BY master_key",
            &[],
        )?)
        .into_iter()
        .map(|row| row.name)
        .collect())
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
