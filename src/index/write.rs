//! Storing instances: a batch in one transaction, each instance's study and
//! series rows filled in or created, and the aggregates of every study and series
//! touched (counts, ModalitiesInStudy, SOPClassesInStudy) refreshed.

use std::collections::BTreeSet;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

use super::catalog::{Attr, Kind, Level};
use super::changes::{self, ChangeAction, NewChange};
use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::sqlite::SqlitePool;
use super::{now, qido, with_conn, Index, IndexError, IndexPool, NewInstance, StoreOutcome};

#[derive(QueryableByName)]
struct Pk {
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

#[derive(QueryableByName)]
struct ExistingSeries {
    #[diesel(sql_type = BigInt)]
    study_fk: i64,
}

#[derive(QueryableByName)]
struct ExistingInstance {
    #[diesel(sql_type = BigInt)]
    instance_pk: i64,
    #[diesel(sql_type = Text)]
    content_sha256: String,
    #[diesel(sql_type = Text)]
    blob_key: String,
}

impl Index {
    /// Fills `study_datetime_utc` for studies stored before the column existed
    /// (those that state an offset and have none yet), a thousand per
    /// transaction. Returns how many it set. Run by `Index::open` when it applies
    /// the migration that adds the column; idempotent.
    pub fn fill_study_datetime_utc(&self) -> Result<u64, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            study_pk: i64,
            #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
            study_date: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
            study_time: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
            timezone_offset_from_utc: Option<String>,
        }
        let mut filled = 0u64;
        let mut after = 0i64;
        loop {
            let rows = with_conn!(self, conn => conn.load::<Row>(
                "SELECT study_pk, study_date, study_time, timezone_offset_from_utc FROM studies \
                 WHERE study_datetime_utc IS NULL AND timezone_offset_from_utc IS NOT NULL \
                 AND timezone_offset_from_utc <> '' AND study_date IS NOT NULL AND study_pk > ? \
                 ORDER BY study_pk LIMIT 1000",
                &[Bind::Int(after)],
            )?);
            let Some(last) = rows.last() else {
                return Ok(filled);
            };
            after = last.study_pk;
            let updates: Vec<(i64, String)> = rows
                .iter()
                .filter_map(|row| {
                    utc_date_time(
                        row.study_date.as_deref(),
                        row.study_time.as_deref(),
                        row.timezone_offset_from_utc.as_deref(),
                    )
                    .map(|utc| (row.study_pk, utc))
                })
                .collect();
            filled += updates.len() as u64;
            with_conn!(self, conn => conn.write(|conn| {
                for (pk, utc) in &updates {
                    conn.run(
                        "UPDATE studies SET study_datetime_utc = ? WHERE study_pk = ? \
                         AND study_datetime_utc IS NULL",
                        &[Bind::Text(utc.clone()), Bind::Int(*pk)],
                    )?;
                }
                Ok(())
            }))?;
        }
    }

    /// Adds a batch of instances in one transaction and refreshes the counts and
    /// ModalitiesInStudy / SOPClassesInStudy of every study and series touched.
    ///
    /// On SQLite, batches stored at the same time by other threads go in the same
    /// transaction, each in its own savepoint (group commit, see
    /// `index::sqlite::GroupCommit`): one commit and one fsync for all of them,
    /// and a batch that fails leaves the others stored.
    pub fn store_instances(
        &self,
        batch: Vec<NewInstance>,
        overwrite: bool,
    ) -> Result<Vec<StoreOutcome>, IndexError> {
        if let IndexPool::Sqlite(
            pool @ SqlitePool {
                stores: Some(stores),
                ..
            },
        ) = &*self.pool
        {
            fn here() {}
            let _call = crate::telemetry::metrics::IndexCall::start(
                std::any::type_name_of_val(&here),
                "sqlite",
            );
            let size = batch.len();
            return stores.submit(
                pool,
                (batch, overwrite),
                size,
                |conn, (batch, overwrite)| store_batch(conn, batch, *overwrite),
            );
        }
        with_conn!(self, conn => conn.write(|conn| store_batch(conn, &batch, overwrite)))
    }
}

/// Stores a batch (see [`Index::store_instances`]) within the caller's transaction.
fn store_batch<C: IndexConn>(
    conn: &mut C,
    batch: &[NewInstance],
    overwrite: bool,
) -> Result<Vec<StoreOutcome>, IndexError> {
    // Studies are written in UID order so that concurrent writers lock them in
    // the same order (no deadlocks); outcomes go back in request order.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|a, b| {
        batch[*a]
            .study_instance_uid
            .cmp(&batch[*b].study_instance_uid)
    });
    let mut outcomes = vec![StoreOutcome::Stored; batch.len()];
    let mut studies = BTreeSet::new();
    let mut series_touched = BTreeSet::new();
    for &i in &order {
        outcomes[i] = store_one(
            conn,
            &batch[i],
            overwrite,
            &mut studies,
            &mut series_touched,
        )?;
    }
    refresh_aggregates(conn, &studies, &series_touched)?;
    record_changes(conn, batch, &outcomes)?;
    Ok(outcomes)
}

/// The change feed's entries for what a batch stored (in request order), and
/// its studies open again until quiet; last in the transaction (see
/// `changes::append_changes`).
fn record_changes<C: IndexConn>(
    conn: &mut C,
    batch: &[NewInstance],
    outcomes: &[StoreOutcome],
) -> Result<(), IndexError> {
    let mut changes = Vec::new();
    let mut studies = BTreeSet::new();
    for (instance, outcome) in batch.iter().zip(outcomes) {
        let action = match outcome {
            StoreOutcome::Stored => ChangeAction::Created,
            StoreOutcome::Replaced { .. } => ChangeAction::Replaced,
            _ => continue,
        };
        studies.insert(instance.study_instance_uid.as_str());
        changes.push(NewChange {
            action,
            study_instance_uid: Some(instance.study_instance_uid.clone()),
            series_instance_uid: Some(instance.series_instance_uid.clone()),
            sop_instance_uid: Some(instance.sop_instance_uid.clone()),
            sop_class_uid: Some(instance.sop_class_uid.clone()),
            detail: None,
        });
    }
    changes::unsettle(conn, &studies, changes::epoch_ms())?;
    changes::append_changes(conn, &changes)
}

/// The columns (and bound values) that store one catalog attribute.
fn attribute_columns(attr: &Attr, value: &Option<String>, out: &mut Vec<(String, Bind)>) {
    let column = attr.column.to_string();
    match attr.kind {
        Kind::PersonName => {
            let norm = value.as_deref().map(qido::normalize_person_name);
            let words = value.as_deref().map(crate::dicom::text::person_name_words);
            out.push((column.clone(), Bind::NullableText(value.clone())));
            out.push((format!("{column}_norm"), Bind::NullableText(norm)));
            out.push((format!("{column}_words"), Bind::NullableText(words)));
        }
        Kind::Time => {
            let norm = value.as_deref().and_then(|v| {
                crate::dicom::text::normalize_time(v, crate::dicom::text::Bound::Lower)
            });
            out.push((column.clone(), Bind::NullableText(value.clone())));
            out.push((format!("{column}_norm"), Bind::NullableText(norm)));
        }
        Kind::Date => {
            let normalized = value
                .as_deref()
                .map(|v| crate::dicom::text::normalize_date(v).unwrap_or_else(|| v.to_string()));
            out.push((column, Bind::NullableText(normalized)));
        }
        Kind::Int => {
            let number = value
                .as_deref()
                .and_then(|v| v.split('\\').next())
                .and_then(|v| v.trim().parse::<i64>().ok());
            out.push((column, Bind::NullableInt(number)));
        }
        Kind::Uid | Kind::Text | Kind::RequestSequence => {
            out.push((column, Bind::NullableText(value.clone())));
        }
        Kind::ModalitiesInStudy | Kind::SopClassesInStudy | Kind::Count => {}
    }
}

/// The study's date and time in UTC, when the instance states its
/// TimezoneOffsetFromUTC (see [`utc_date_time`]).
fn study_datetime_utc(instance: &NewInstance) -> Option<String> {
    let value = |column: &str| {
        instance
            .values
            .iter()
            .find(|(attr, _)| attr.column == column)
            .and_then(|(_, value)| value.as_deref())
    };
    utc_date_time(
        value("study_date"),
        value("study_time"),
        value("timezone_offset_from_utc"),
    )
}

/// StudyDate and StudyTime (as stored) at a TimezoneOffsetFromUTC, as one UTC
/// instant `YYYYMMDDHHMMSS.FFFFFF`; `None` without a date, a valid time (a
/// missing time is midnight) or a valid offset.
pub(super) fn utc_date_time(
    date: Option<&str>,
    time: Option<&str>,
    offset: Option<&str>,
) -> Option<String> {
    use crate::dicom::text;
    let offset = text::utc_offset_minutes(offset?)?;
    let date = text::normalize_date(date?)?;
    let time = match time.map(str::trim).filter(|t| !t.is_empty()) {
        Some(time) => text::normalize_time(time, text::Bound::Lower)?,
        None => "000000.000000".to_string(),
    };
    text::to_utc(&format!("{date}{time}"), offset)
}

fn level_columns(instance: &NewInstance, level: Level) -> Vec<(String, Bind)> {
    let mut columns = Vec::new();
    for (attr, value) in &instance.values {
        if attr.level == level {
            attribute_columns(attr, value, &mut columns);
        }
    }
    columns
}

fn upsert_sql(
    table: &str,
    key_column: &str,
    key: &str,
    mut columns: Vec<(String, Bind)>,
    extra: Vec<(String, Bind)>,
) -> SqlBuilder {
    columns.retain(|(c, _)| c != key_column);
    let timestamp = now();
    let mut sql = SqlBuilder::new();
    sql.push(&format!("INSERT INTO {table} ({key_column}"));
    for (column, _) in columns.iter().chain(extra.iter()) {
        sql.push(", ").push(column);
    }
    sql.push(", created_at, updated_at) VALUES (")
        .bind(Bind::Text(key.to_string()));
    for (_, value) in columns.iter().chain(extra.iter()) {
        sql.push(", ").bind(value.clone());
    }
    sql.push(", ")
        .bind(Bind::Text(timestamp.clone()))
        .push(", ")
        .bind(Bind::Text(timestamp))
        .push(")");
    // A later instance of the same study or series fills in what the first lacked;
    // it never overwrites what is there.
    sql.push(&format!(
        " ON CONFLICT ({key_column}) DO UPDATE SET updated_at = excluded.updated_at"
    ));
    for (column, _) in &columns {
        sql.push(&format!(
            ", {column} = COALESCE({table}.{column}, excluded.{column})"
        ));
    }
    let pk = if table == "studies" {
        "study_pk"
    } else {
        "series_pk"
    };
    sql.push(&format!(" RETURNING {pk} AS pk"));
    sql
}

fn store_one<C: IndexConn>(
    conn: &mut C,
    instance: &NewInstance,
    overwrite: bool,
    studies: &mut BTreeSet<i64>,
    series_touched: &mut BTreeSet<i64>,
) -> Result<StoreOutcome, IndexError> {
    let existing = conn
        .load::<ExistingInstance>(
            "SELECT instance_pk, content_sha256, blob_key FROM instances WHERE sop_instance_uid = ?",
            &[Bind::Text(instance.sop_instance_uid.clone())],
        )?
        .pop();
    let mut replaced = None;
    if let Some(existing) = existing {
        if existing.content_sha256 == instance.content_sha256 {
            return Ok(StoreOutcome::AlreadyStored);
        }
        if !overwrite {
            return Ok(StoreOutcome::Conflict);
        }
        let series_fk = conn
            .load_one::<Pk>(
                "DELETE FROM instances WHERE instance_pk = ? RETURNING series_fk AS pk",
                &[Bind::Int(existing.instance_pk)],
            )?
            .pk;
        series_touched.insert(series_fk);
        replaced = Some(existing.blob_key);
    }

    let mut study_columns = level_columns(instance, Level::Study);
    study_columns.push((
        "study_datetime_utc".into(),
        Bind::NullableText(study_datetime_utc(instance)),
    ));
    let study_sql = upsert_sql(
        "studies",
        "study_instance_uid",
        &instance.study_instance_uid,
        study_columns,
        vec![],
    );
    let study_pk = conn.load_one::<Pk>(study_sql.sql(), study_sql.binds())?.pk;

    let existing_series = conn
        .load::<ExistingSeries>(
            "SELECT study_fk FROM series WHERE series_instance_uid = ?",
            &[Bind::Text(instance.series_instance_uid.clone())],
        )?
        .pop();
    if let Some(series) = &existing_series {
        if series.study_fk != study_pk {
            return Ok(StoreOutcome::SeriesInOtherStudy);
        }
    }
    let series_sql = upsert_sql(
        "series",
        "series_instance_uid",
        &instance.series_instance_uid,
        level_columns(instance, Level::Series),
        vec![("study_fk".into(), Bind::Int(study_pk))],
    );
    let series_pk = conn
        .load_one::<Pk>(series_sql.sql(), series_sql.binds())?
        .pk;
    if existing_series.is_none() {
        for (step, procedure) in &instance.request_items {
            conn.run(
                "INSERT INTO series_requests (series_fk, scheduled_procedure_step_id, requested_procedure_id) VALUES (?, ?, ?)",
                &[Bind::Int(series_pk), Bind::NullableText(step.clone()), Bind::NullableText(procedure.clone())],
            )?;
        }
    }

    // Stored again after a deletion: no longer gone.
    conn.run(
        "DELETE FROM deleted_uids WHERE uid IN (?, ?, ?)",
        &[
            Bind::Text(instance.study_instance_uid.clone()),
            Bind::Text(instance.series_instance_uid.clone()),
            Bind::Text(instance.sop_instance_uid.clone()),
        ],
    )?;
    let mut columns = level_columns(instance, Level::Instance);
    columns.retain(|(c, _)| c != "sop_instance_uid" && c != "sop_class_uid");
    columns.extend([
        ("series_fk".to_string(), Bind::Int(series_pk)),
        (
            "sop_class_uid".to_string(),
            Bind::Text(instance.sop_class_uid.clone()),
        ),
        (
            "transfer_syntax_uid".to_string(),
            Bind::Text(instance.transfer_syntax_uid.clone()),
        ),
        (
            "blob_key".to_string(),
            Bind::Text(instance.blob_key.clone()),
        ),
        ("blob_size".to_string(), Bind::Int(instance.blob_size)),
        (
            "content_sha256".to_string(),
            Bind::Text(instance.content_sha256.clone()),
        ),
        (
            "header_length".to_string(),
            Bind::Int(instance.header_length),
        ),
        (
            "pixel_data_offset".to_string(),
            Bind::NullableInt(instance.pixel_data_offset),
        ),
        (
            "pixel_data_length".to_string(),
            Bind::NullableInt(instance.pixel_data_length),
        ),
        (
            "frame_offsets".to_string(),
            Bind::NullableText(instance.frame_offsets.clone()),
        ),
        ("created_at".to_string(), Bind::Text(now())),
    ]);
    let mut sql = SqlBuilder::new();
    sql.push("INSERT INTO instances (sop_instance_uid");
    for (column, _) in &columns {
        sql.push(", ").push(column);
    }
    sql.push(") VALUES (")
        .bind(Bind::Text(instance.sop_instance_uid.clone()));
    for (_, value) in &columns {
        sql.push(", ").bind(value.clone());
    }
    sql.push(")");
    conn.run(sql.sql(), sql.binds())?;
    if let Some(sealed) = &instance.metadata {
        conn.run(
            "INSERT INTO instance_metadata (instance_fk, sealed) \
             SELECT instance_pk, ? FROM instances WHERE sop_instance_uid = ?",
            &[
                Bind::Bytes(sealed.clone()),
                Bind::Text(instance.sop_instance_uid.clone()),
            ],
        )?;
    }
    studies.insert(study_pk);
    series_touched.insert(series_pk);
    Ok(match replaced {
        Some(old_blob_key) => StoreOutcome::Replaced { old_blob_key },
        None => StoreOutcome::Stored,
    })
}

pub(super) fn refresh_aggregates<C: IndexConn>(
    conn: &mut C,
    studies: &BTreeSet<i64>,
    series: &BTreeSet<i64>,
) -> Result<(), IndexError> {
    let mut all_studies = studies.clone();
    for series_pk in series {
        conn.run(
            "UPDATE series SET number_of_series_related_instances = \
             (SELECT COUNT(*) FROM instances WHERE series_fk = ?) WHERE series_pk = ?",
            &[Bind::Int(*series_pk), Bind::Int(*series_pk)],
        )?;
        if let Some(study) = conn
            .load::<Pk>(
                "SELECT study_fk AS pk FROM series WHERE series_pk = ?",
                &[Bind::Int(*series_pk)],
            )?
            .pop()
        {
            all_studies.insert(study.pk);
        }
    }
    for study_pk in all_studies {
        let pk = Bind::Int(study_pk);
        let dialect = conn.dialect();
        let modalities = dialect.backslash_list("modality");
        let sop_classes = dialect.backslash_list("sop_class_uid");
        let sql = format!(
            "UPDATE studies SET \
             number_of_study_related_series = (SELECT COUNT(*) FROM series WHERE study_fk = ?), \
             number_of_study_related_instances = (SELECT COUNT(*) FROM instances i JOIN series s \
                 ON s.series_pk = i.series_fk WHERE s.study_fk = ?), \
             modalities_in_study = (SELECT {modalities} FROM (SELECT DISTINCT modality \
                 FROM series WHERE study_fk = ? AND modality IS NOT NULL AND modality <> '' ORDER BY modality) m), \
             sop_classes_in_study = (SELECT {sop_classes} FROM (SELECT DISTINCT i.sop_class_uid \
                 FROM instances i JOIN series s ON s.series_pk = i.series_fk WHERE s.study_fk = ? \
                 ORDER BY i.sop_class_uid) c) \
             WHERE study_pk = ?"
        );
        conn.run(&sql, &[pk.clone(), pk.clone(), pk.clone(), pk.clone(), pk])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::catalog;
    use crate::index::tests::test_indexes;
    use dicom_core::Tag;

    fn instance(study: &str, date: &str, time: &str, offset: Option<&str>) -> NewInstance {
        let attr = |tag: (u16, u16)| catalog::find(Tag(tag.0, tag.1)).unwrap();
        NewInstance {
            study_instance_uid: study.into(),
            series_instance_uid: format!("{study}.1"),
            sop_instance_uid: format!("{study}.1.1"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blob_key: format!("key-{study}"),
            blob_size: 1,
            content_sha256: "00".into(),
            header_length: 1,
            pixel_data_offset: None,
            pixel_data_length: None,
            frame_offsets: None,
            metadata: None,
            values: vec![
                (attr((0x0020, 0x000D)), Some(study.into())),
                (attr((0x0008, 0x0020)), Some(date.into())),
                (attr((0x0008, 0x0030)), Some(time.into())),
                (attr((0x0008, 0x0201)), offset.map(Into::into)),
            ],
            request_items: vec![],
        }
    }

    #[derive(QueryableByName)]
    struct Utc {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        study_datetime_utc: Option<String>,
    }

    fn utc_of(index: &Index, study: &str) -> Option<String> {
        let read = || -> Result<Utc, IndexError> {
            Ok(with_conn!(index, conn => conn.load_one::<Utc>(
                "SELECT study_datetime_utc FROM studies WHERE study_instance_uid = ?",
                &[Bind::Text(study.into())],
            )?))
        };
        read().unwrap().study_datetime_utc
    }

    fn forget_instants(index: &Index) {
        let run = || -> Result<usize, IndexError> {
            Ok(
                with_conn!(index, conn => conn.run("UPDATE studies SET study_datetime_utc = NULL", &[])?),
            )
        };
        run().unwrap();
    }

    #[test]
    fn the_utc_instant_is_written_and_filled_in_for_older_studies() {
        for (index, _db) in test_indexes() {
            index
                .store_instances(
                    vec![
                        instance("1.2.3", "20230601", "003000", Some("+0100")),
                        instance("1.2.4", "20230601", "0030", None),
                        instance("1.2.5", "20230601", "", Some("-0530")),
                    ],
                    false,
                )
                .unwrap();
            assert_eq!(
                utc_of(&index, "1.2.3").as_deref(),
                Some("20230531233000.000000")
            );
            assert_eq!(utc_of(&index, "1.2.4"), None, "no offset: no instant");
            assert_eq!(
                utc_of(&index, "1.2.5").as_deref(),
                Some("20230601053000.000000")
            );
            // As a study stored before the column existed.
            forget_instants(&index);
            assert_eq!(index.fill_study_datetime_utc().unwrap(), 2);
            assert_eq!(
                utc_of(&index, "1.2.3").as_deref(),
                Some("20230531233000.000000")
            );
            assert_eq!(
                utc_of(&index, "1.2.5").as_deref(),
                Some("20230601053000.000000")
            );
            assert_eq!(index.fill_study_datetime_utc().unwrap(), 0);
        }
    }

    /// An index made before the column existed gets the instants when a
    /// server opens it and applies the migration (and only then).
    #[test]
    fn opening_an_older_index_fills_in_the_instants() {
        use crate::index::open::SQLITE_MIGRATIONS;
        use diesel::{Connection, SqliteConnection};
        use diesel_migrations::MigrationHarness;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let url = format!("sqlite://{}", path.display());
        let options = crate::index::IndexOptions {
            pool_size: 1,
            busy_timeout: std::time::Duration::from_secs(5),
            acquire_timeout: std::time::Duration::from_secs(5),
            statement_timeout: std::time::Duration::from_secs(30),
            group_commit: true,
        };
        let index = Index::open(&url, options).unwrap();
        index
            .store_instances(
                vec![instance("1.2.3", "20230601", "003000", Some("+0100"))],
                false,
            )
            .unwrap();
        drop(index);
        // Back to the schema before the column, with the study in it.
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.revert_last_migration(SQLITE_MIGRATIONS).unwrap();
        drop(conn);
        let index = Index::open(&url, options).unwrap();
        assert_eq!(
            utc_of(&index, "1.2.3").as_deref(),
            Some("20230531233000.000000")
        );
    }
}
