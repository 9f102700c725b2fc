//! De-identified export jobs of a tenant (`export_jobs`, `export_items`): the
//! instances a job covers, in order, and what became of each.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::Bind;
use super::{now, with_conn, Index, IndexError, IndexPool};

#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct ExportJob {
    #[diesel(sql_type = BigInt)]
    pub job_id: i64,
    #[diesel(sql_type = Text)]
    pub project: String,
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Text)]
    pub selection: String,
    /// `running` or `done`.
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Text)]
    pub created_at: String,
    #[diesel(sql_type = Text)]
    pub created_by: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct ExportItem {
    #[diesel(sql_type = BigInt)]
    pub position: i64,
    #[diesel(sql_type = Text)]
    pub study_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub series_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub sop_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub file_id: String,
    /// `pending`, `done`, `excluded` or `failed`.
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub detail: Option<String>,
}

/// How many items of a job are in each state.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StateCount {
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// One instance a new job covers: its UIDs and its place in the file-set.
#[derive(Debug, Clone)]
pub struct NewExportItem {
    pub study: String,
    pub series: String,
    pub instance: String,
    pub file_id: String,
}

const JOB_COLUMNS: &str =
    "job_id, project, target, selection, state, created_at, created_by, finished_at";
const ITEM_COLUMNS: &str = "position, study_instance_uid, series_instance_uid, sop_instance_uid, \
                            file_id, state, detail";
const ITEM_BATCH: usize = 100;

impl Index {
    /// Files a job and every instance it covers, in one transaction.
    pub fn create_export_job(
        &self,
        project: &str,
        target: &str,
        selection: &str,
        created_by: &str,
        items: &[NewExportItem],
    ) -> Result<i64, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let at = now();
            conn.run(
                "INSERT INTO export_jobs (project, target, selection, state, created_at, created_by) \
                 VALUES (?, ?, ?, 'running', ?, ?)",
                &[
                    Bind::Text(project.to_string()),
                    Bind::Text(target.to_string()),
                    Bind::Text(selection.to_string()),
                    Bind::Text(at.clone()),
                    Bind::Text(created_by.to_string()),
                ],
            )?;
            let job = conn
                .load::<ExportJob>(
                    &format!("SELECT {JOB_COLUMNS} FROM export_jobs WHERE created_at = ? AND created_by = ? \
                              ORDER BY job_id DESC LIMIT 1"),
                    &[Bind::Text(at), Bind::Text(created_by.to_string())],
                )?
                .pop()
                .map_or(0, |job| job.job_id);
            for (batch_index, batch) in items.chunks(ITEM_BATCH).enumerate() {
                let rows = vec!["(?, ?, ?, ?, ?, ?, 'pending')"; batch.len()].join(", ");
                let mut binds = Vec::with_capacity(batch.len() * 6);
                for (i, item) in batch.iter().enumerate() {
                    binds.push(Bind::Int(job));
                    binds.push(Bind::Int((batch_index * ITEM_BATCH + i) as i64));
                    binds.push(Bind::Text(item.study.clone()));
                    binds.push(Bind::Text(item.series.clone()));
                    binds.push(Bind::Text(item.instance.clone()));
                    binds.push(Bind::Text(item.file_id.clone()));
                }
                conn.run(
                    &format!(
                        "INSERT INTO export_items (job_id, position, study_instance_uid, \
                         series_instance_uid, sop_instance_uid, file_id, state) VALUES {rows}"
                    ),
                    &binds,
                )?;
            }
            Ok(job)
        }))
    }

    pub fn export_job(&self, job: i64) -> Result<Option<ExportJob>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<ExportJob>(
            &format!("SELECT {JOB_COLUMNS} FROM export_jobs WHERE job_id = ?"),
            &[Bind::Int(job)],
        )?)
        .pop())
    }

    pub fn export_jobs(&self) -> Result<Vec<ExportJob>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<ExportJob>(
            &format!("SELECT {JOB_COLUMNS} FROM export_jobs ORDER BY job_id"),
            &[],
        )?))
    }

    pub fn export_counts(&self, job: i64) -> Result<Vec<StateCount>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StateCount>(
            "SELECT state, COUNT(*) AS n FROM export_items WHERE job_id = ? GROUP BY state ORDER BY state",
            &[Bind::Int(job)],
        )?))
    }

    /// Items of a job after `after` (a position), in order, at most `limit`;
    /// only those in `state` when given.
    pub fn export_items(
        &self,
        job: i64,
        state: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ExportItem>, IndexError> {
        let (filter, mut binds) = match state {
            Some(state) => (" AND state = ?", vec![Bind::Text(state.to_string())]),
            None => ("", Vec::new()),
        };
        let mut all = vec![Bind::Int(job), Bind::Int(after)];
        all.append(&mut binds);
        all.push(Bind::Int(limit));
        Ok(with_conn!(self, conn => conn.load::<ExportItem>(
            &format!("SELECT {ITEM_COLUMNS} FROM export_items WHERE job_id = ? AND position > ?{filter} \
                      ORDER BY position LIMIT ?"),
            &all,
        )?))
    }

    /// Records what became of one item.
    pub fn finish_export_item(
        &self,
        job: i64,
        position: i64,
        state: &str,
        detail: &str,
    ) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.run(
            "UPDATE export_items SET state = ?, detail = ? WHERE job_id = ? AND position = ?",
            &[
                Bind::Text(state.to_string()),
                Bind::Text(detail.to_string()),
                Bind::Int(job),
                Bind::Int(position),
            ],
        )?);
        Ok(())
    }

    pub fn finish_export_job(&self, job: i64) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.run(
            "UPDATE export_jobs SET state = 'done', finished_at = ? WHERE job_id = ?",
            &[Bind::Text(now()), Bind::Int(job)],
        )?);
        Ok(())
    }
}
