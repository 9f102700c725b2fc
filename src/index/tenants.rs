//! The tenant registry (in the control index) and where each tenant's own index
//! lives. Tenants are isolated by construction: a tenant's studies are in a
//! database (SQLite file) or schema (PostgreSQL) of its own, so a query for one
//! tenant cannot name another tenant's rows, whatever UIDs it is given.

use diesel::sql_types::Text;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};

use super::conn::IndexConn;
use super::sql::Bind;
use super::{is_postgres, now, with_conn, Index, IndexError, IndexOptions, IndexPool};

/// One registered tenant.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct TenantRow {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub display_name: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Text)]
    pub created_at: String,
}

impl TenantRow {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// Tenant names appear in URLs, file names and schema names: lower-case letters,
/// digits and dashes, starting with a letter or digit, at most 63 characters.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// The PostgreSQL schema of a tenant's index.
fn schema_of(tenant: &str) -> String {
    format!("kastell_tenant_{}", tenant.replace('-', "_"))
}

/// The index URL of `tenant`, derived from the control index URL: a sibling SQLite
/// file (`index.sqlite` → `index.<tenant>.sqlite`), or the same PostgreSQL database
/// with the tenant's schema first on the search path.
pub fn tenant_index_url(control_url: &str, tenant: &str) -> Result<String, IndexError> {
    if !valid_tenant_name(tenant) {
        return Err(IndexError::InvalidTenant(tenant.to_string()));
    }
    if is_postgres(control_url) {
        let separator = if control_url.contains('?') { '&' } else { '?' };
        return Ok(format!(
            "{control_url}{separator}options=-c%20search_path%3D{}",
            schema_of(tenant)
        ));
    }
    let path = super::sqlite_path(control_url)?;
    let file = std::path::Path::new(path);
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("index");
    let extension = file
        .extension()
        .and_then(|s| s.to_str())
        .unwrap_or("sqlite");
    let name = format!("{stem}.{tenant}.{extension}");
    Ok(format!("sqlite://{}", file.with_file_name(name).display()))
}

impl Index {
    /// Opens (creating and migrating it when new) the index of a tenant.
    pub fn open_tenant(
        control_url: &str,
        tenant: &str,
        options: IndexOptions,
    ) -> Result<Index, IndexError> {
        let url = tenant_index_url(control_url, tenant)?;
        if is_postgres(control_url) {
            let mut conn = PgConnection::establish(control_url)
                .map_err(|e| IndexError::Pool(e.to_string()))?;
            diesel::sql_query(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                schema_of(tenant)
            ))
            .execute(&mut conn)?;
        }
        Index::open_as(&url, options, tenant)
    }

    /// Registers a tenant (in the control index). `false` if it existed.
    pub fn add_tenant(&self, name: &str, display_name: &str) -> Result<bool, IndexError> {
        if !valid_tenant_name(name) {
            return Err(IndexError::InvalidTenant(name.to_string()));
        }
        let inserted = with_conn!(self, conn => conn.run(
            "INSERT INTO tenants (name, display_name, status, created_at) VALUES (?, ?, 'active', ?) \
             ON CONFLICT (name) DO NOTHING",
            &[
                Bind::Text(name.to_string()),
                Bind::Text(display_name.to_string()),
                Bind::Text(now()),
            ],
        )?);
        Ok(inserted == 1)
    }

    pub fn tenants(&self) -> Result<Vec<TenantRow>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<TenantRow>(
            "SELECT name, display_name, status, created_at FROM tenants ORDER BY name",
            &[],
        )?))
    }

    pub fn tenant(&self, name: &str) -> Result<Option<TenantRow>, IndexError> {
        let rows = with_conn!(self, conn => conn.load::<TenantRow>(
            "SELECT name, display_name, status, created_at FROM tenants WHERE name = ?",
            &[Bind::Text(name.to_string())],
        )?);
        Ok(rows.into_iter().next())
    }

    /// Sets a tenant active or disabled; `false` if there is no such tenant.
    pub fn set_tenant_status(&self, name: &str, active: bool) -> Result<bool, IndexError> {
        let status = if active { "active" } else { "disabled" };
        let updated = with_conn!(self, conn => conn.run(
            "UPDATE tenants SET status = ? WHERE name = ?",
            &[Bind::Text(status.to_string()), Bind::Text(name.to_string())],
        )?);
        Ok(updated == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_indexes_sit_beside_the_control_index() {
        assert_eq!(
            tenant_index_url("sqlite:///data/index.sqlite", "radiology").unwrap(),
            "sqlite:///data/index.radiology.sqlite"
        );
        assert_eq!(
            tenant_index_url("postgres://db/kastell", "st-anna").unwrap(),
            "postgres://db/kastell?options=-c%20search_path%3Dkastell_tenant_st_anna"
        );
        assert_eq!(
            tenant_index_url("postgres://db/kastell?sslmode=require", "a").unwrap(),
            "postgres://db/kastell?sslmode=require&options=-c%20search_path%3Dkastell_tenant_a"
        );
        for bad in ["", "Upper", "../etc", "a b", "-x", "a_b"] {
            assert!(
                tenant_index_url("sqlite:///i.sqlite", bad).is_err(),
                "{bad}"
            );
        }
    }
}
