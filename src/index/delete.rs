//! Deleting through DICOMweb: the instances of a scope with the series and
//! studies left empty and their derived objects, and the remembered UIDs that
//! make a later retrieval answer 410 Gone.

use std::collections::BTreeSet;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

use super::changes::{self, ChangeAction, NewChange};
use super::conn::IndexConn;
use super::protection::{self, DeletionGuard};
use super::read::push_scope_condition;
use super::records::BlobKeyRow;
use super::sql::{Bind, SqlBuilder};
use super::write::refresh_aggregates;
use super::{now, with_conn, DeletedBlobs, Index, IndexError, IndexPool};
use crate::service::request::Scope;

impl Index {
    /// Deletes the instances of a scope, the series and studies left empty, and
    /// remembers their UIDs (for 410 Gone), with the derived objects (metadata,
    /// thumbnails) of every UID that went. Returns the blobs to remove; no
    /// instance blobs when nothing matched.
    ///
    /// `guard` weighs the studies touched (retention, legal holds) inside the
    /// transaction, before anything is deleted: its refusal is
    /// [`IndexError::Protected`] and nothing changes.
    pub fn delete(&self, scope: &Scope, guard: DeletionGuard) -> Result<DeletedBlobs, IndexError> {
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
            #[diesel(sql_type = Text)]
            sop_class_uid: String,
            #[diesel(sql_type = Text)]
            series_instance_uid: String,
            #[diesel(sql_type = Text)]
            study_instance_uid: String,
        }
        let mut sql = SqlBuilder::new();
        sql.push(
            "SELECT i.instance_pk, i.blob_key, i.sop_instance_uid, se.series_pk, st.study_pk, \
             i.sop_class_uid, se.series_instance_uid, st.study_instance_uid \
             FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE ",
        );
        push_scope_condition(&mut sql, scope);
        with_conn!(self, conn => conn.write(|conn| {
            let doomed = conn.load::<Doomed>(sql.sql(), sql.binds())?;
            if doomed.is_empty() {
                return Ok(DeletedBlobs::default());
            }
            let studies: BTreeSet<i64> = doomed.iter().map(|row| row.study_pk).collect();
            let facts = protection::facts_of_studies(conn, studies)?;
            guard(&facts).map_err(IndexError::Protected)?;
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
            // Series left without instances go, then studies left without series
            // (in that order: a study's last series may just have gone).
            let emptied_levels = [
                (
                    "DELETE FROM series WHERE series_pk = ? AND NOT EXISTS \
                     (SELECT 1 FROM instances WHERE series_fk = ?) RETURNING series_instance_uid AS uid",
                    &series_touched,
                    "series",
                ),
                (
                    "DELETE FROM studies WHERE study_pk = ? AND NOT EXISTS \
                     (SELECT 1 FROM series WHERE study_fk = ?) RETURNING study_instance_uid AS uid",
                    &studies_touched,
                    "study",
                ),
            ];
            for (sql, touched, level) in emptied_levels {
                for pk in touched {
                    let emptied = conn.load::<Emptied>(sql, &[Bind::Int(*pk), Bind::Int(*pk)])?;
                    for row in emptied {
                        remember_deleted(conn, &row.uid, level, &at)?;
                        if level == "study" {
                            changes::forget_settling(conn, &row.uid)?;
                        }
                        gone_uids.push(row.uid);
                    }
                }
            }
            // Counts of what remains (rows already deleted are simply not updated).
            refresh_aggregates(conn, &studies_touched, &series_touched)?;
            let mut derived = Vec::new();
            for chunk in gone_uids.chunks(500) {
                let mut sql = SqlBuilder::new();
                sql.push("DELETE FROM derived_blobs WHERE scope_uid IN (")
                    .bind_list(chunk.iter().map(|uid| Bind::Text(uid.clone())))
                    .push(") RETURNING blob_key");
                derived.extend(conn.load::<BlobKeyRow>(sql.sql(), sql.binds())?.into_iter().map(|r| r.blob_key));
            }
            // What de-identification projects handed out for what went (`deid_map`):
            // the UIDs, and the pseudonym of a patient left without a study (an
            // original PatientID is personal data the erasure must not leave behind).
            for chunk in gone_uids.chunks(500) {
                let mut sql = SqlBuilder::new();
                sql.push("DELETE FROM deid_map WHERE original IN (")
                    .bind_list(chunk.iter().map(|uid| Bind::Text(uid.clone())))
                    .push(")");
                conn.run(sql.sql(), sql.binds())?;
            }
            conn.run(
                "DELETE FROM deid_map WHERE level = 'patient' AND NOT EXISTS \
                 (SELECT 1 FROM studies WHERE studies.patient_id = deid_map.original)",
                &[],
            )?;
            // Last in the transaction (see `changes::append_changes`).
            let deleted: Vec<NewChange> = doomed
                .iter()
                .map(|row| NewChange {
                    action: ChangeAction::Deleted,
                    study_instance_uid: Some(row.study_instance_uid.clone()),
                    series_instance_uid: Some(row.series_instance_uid.clone()),
                    sop_instance_uid: Some(row.sop_instance_uid.clone()),
                    sop_class_uid: Some(row.sop_class_uid.clone()),
                    detail: None,
                })
                .collect();
            changes::append_changes(conn, &deleted)?;
            Ok(DeletedBlobs {
                instances: doomed.into_iter().map(|row| row.blob_key).collect(),
                derived,
            })
        }))
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
