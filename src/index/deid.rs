//! De-identification projects of a tenant (`deid_projects`) and what their
//! de-identified identifiers stand for (`deid_map`). The index holds a
//! project's secret only as the wrapped bytes it is given.

use diesel::sql_types::{BigInt, Binary, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::Bind;
use super::{now, with_conn, Index, IndexError, IndexPool};

/// A stored project.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StoredProject {
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The version of the tenant key the secret is wrapped under.
    #[diesel(sql_type = BigInt)]
    pub key_version: i64,
    #[diesel(sql_type = Binary)]
    pub wrapped_secret: Vec<u8>,
    /// Profile option names, comma-separated.
    #[diesel(sql_type = Text)]
    pub options: String,
    /// `CREATOR:XX` entries, comma-separated.
    #[diesel(sql_type = Text)]
    pub safe_private: String,
    /// `x,y,width,height` regions, `;`-separated.
    #[diesel(sql_type = Text)]
    pub blank_regions: String,
    /// `audited` or `impossible`.
    #[diesel(sql_type = Text)]
    pub reidentification: String,
    #[diesel(sql_type = BigInt)]
    pub research: i64,
    #[diesel(sql_type = Text)]
    pub created_at: String,
    #[diesel(sql_type = Text)]
    pub created_by: String,
}

/// One de-identified identifier and what it stands for.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct MappedIdentifier {
    #[diesel(sql_type = Text)]
    pub mapped: String,
    #[diesel(sql_type = Text)]
    pub original: String,
    /// `patient`, `study`, `series`, `instance` or `other`.
    #[diesel(sql_type = Text)]
    pub level: String,
}

const COLUMNS: &str = "name, key_version, wrapped_secret, options, safe_private, \
                       blank_regions, reidentification, research, created_at, created_by";

/// Rows written to `deid_map` per statement.
const MAP_BATCH: usize = 200;

impl Index {
    /// Adds a project; `false` if one of that name exists.
    pub fn add_deid_project(&self, project: &StoredProject) -> Result<bool, IndexError> {
        let inserted = with_conn!(self, conn => conn.run(
            &format!("INSERT INTO deid_projects ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                      ON CONFLICT (name) DO NOTHING"),
            &[
                Bind::Text(project.name.clone()),
                Bind::Int(project.key_version),
                Bind::Bytes(project.wrapped_secret.clone()),
                Bind::Text(project.options.clone()),
                Bind::Text(project.safe_private.clone()),
                Bind::Text(project.blank_regions.clone()),
                Bind::Text(project.reidentification.clone()),
                Bind::Int(project.research),
                Bind::Text(now()),
                Bind::Text(project.created_by.clone()),
            ],
        )?);
        Ok(inserted > 0)
    }

    pub fn deid_project(&self, name: &str) -> Result<Option<StoredProject>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StoredProject>(
            &format!("SELECT {COLUMNS} FROM deid_projects WHERE name = ?"),
            &[Bind::Text(name.to_string())],
        )?)
        .pop())
    }

    /// The project research callers are served through, if one is chosen.
    pub fn research_project(&self) -> Result<Option<StoredProject>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StoredProject>(
            &format!("SELECT {COLUMNS} FROM deid_projects WHERE research = 1"),
            &[],
        )?)
        .pop())
    }

    pub fn deid_projects(&self) -> Result<Vec<StoredProject>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StoredProject>(
            &format!("SELECT {COLUMNS} FROM deid_projects ORDER BY name"),
            &[],
        )?))
    }

    /// Makes `name` the research project (none other stays one); `false` when
    /// it does not exist or is not `audited`.
    pub fn set_research_project(&self, name: &str) -> Result<bool, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            conn.run("UPDATE deid_projects SET research = 0 WHERE research = 1", &[])?;
            let changed = conn.run(
                "UPDATE deid_projects SET research = 1 WHERE name = ? AND reidentification = 'audited'",
                &[Bind::Text(name.to_string())],
            )?;
            Ok(changed > 0)
        }))
    }

    /// Replaces a project's wrapped secret if it is still the one read
    /// (compare and swap, for a key rotation running beside other writers).
    pub fn rewrap_deid_secret(
        &self,
        name: &str,
        old_version: i64,
        key_version: i64,
        wrapped: &[u8],
    ) -> Result<bool, IndexError> {
        let changed = with_conn!(self, conn => conn.run(
            "UPDATE deid_projects SET key_version = ?, wrapped_secret = ? WHERE name = ? AND key_version = ?",
            &[
                Bind::Int(key_version),
                Bind::Bytes(wrapped.to_vec()),
                Bind::Text(name.to_string()),
                Bind::Int(old_version),
            ],
        )?);
        Ok(changed > 0)
    }

    /// Records what de-identified identifiers stand for (already known ones
    /// are left as they are: the mapping is a function).
    pub fn record_deid_map(
        &self,
        project: &str,
        entries: &[MappedIdentifier],
    ) -> Result<(), IndexError> {
        if entries.is_empty() {
            return Ok(());
        }
        with_conn!(self, conn => conn.write(|conn| {
            for batch in entries.chunks(MAP_BATCH) {
                let rows = vec!["(?, ?, ?, ?)"; batch.len()].join(", ");
                let mut binds = Vec::with_capacity(batch.len() * 4);
                for entry in batch {
                    binds.push(Bind::Text(project.to_string()));
                    binds.push(Bind::Text(entry.mapped.clone()));
                    binds.push(Bind::Text(entry.original.clone()));
                    binds.push(Bind::Text(entry.level.clone()));
                }
                conn.run(
                    &format!(
                        "INSERT INTO deid_map (project, mapped, original, level) VALUES {rows} \
                         ON CONFLICT (project, mapped) DO NOTHING"
                    ),
                    &binds,
                )?;
            }
            Ok(())
        }))
    }

    /// What `mapped` stands for in `project`, if it was handed out.
    pub fn deid_original(
        &self,
        project: &str,
        mapped: &str,
    ) -> Result<Option<MappedIdentifier>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<MappedIdentifier>(
            "SELECT mapped, original, level FROM deid_map WHERE project = ? AND mapped = ?",
            &[Bind::Text(project.to_string()), Bind::Text(mapped.to_string())],
        )?)
        .pop())
    }

    /// Erases every project and what its identifiers stood for (the tenant is
    /// shredded: its secrets are unreadable already, and the map holds
    /// original UIDs and patient IDs).
    pub fn erase_deid(&self) -> Result<usize, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let mapped = conn.run("DELETE FROM deid_map", &[])?;
            let projects = conn.run("DELETE FROM deid_projects", &[])?;
            Ok(mapped + projects)
        }))
    }
}
