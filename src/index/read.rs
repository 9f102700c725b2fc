//! Reading the index: QIDO searches, the instances of a retrieval scope, and the
//! lookups of maintenance and import (study UIDs, the fingerprint of a stored
//! instance).

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

use super::catalog::{InstanceRow, Level, SeriesRow, StudyRow};
use super::conn::{Dialect, IndexConn};
use super::qido::{self, SearchRequest};
use super::sql::{Bind, SqlBuilder};
use super::{with_conn, Hit, Index, IndexError, IndexPool, SearchResult, StoredInstance};
use crate::service::request::Scope;

#[derive(QueryableByName)]
struct SeriesHit {
    #[diesel(embed)]
    study: StudyRow,
    #[diesel(embed)]
    series: SeriesRow,
}

#[derive(QueryableByName)]
struct InstanceHit {
    #[diesel(embed)]
    study: StudyRow,
    #[diesel(embed)]
    series: SeriesRow,
    #[diesel(embed)]
    instance: InstanceRow,
}

/// The columns of a [`StoredInstance`], over the aliases `st`, `se` and `i`.
const INSTANCE_COLUMNS: &str =
    "st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, \
     i.sop_class_uid, i.transfer_syntax_uid, i.blob_key, i.blob_size, i.header_length, \
     i.pixel_data_offset, i.pixel_data_length, i.number_of_frames, i.bits_allocated, \
     i.content_sha256, i.frame_offsets";

impl Index {
    /// Runs a QIDO search.
    pub fn search(
        &self,
        request: &SearchRequest,
        max_results: u64,
    ) -> Result<SearchResult, IndexError> {
        let plan = qido::plan(request)?;
        let limit = match request.limit {
            Some(0) | None => max_results,
            Some(limit) => limit.min(max_results),
        };
        let (select, order) = match plan.level {
            Level::Study => ("SELECT st.* ", " ORDER BY st.study_pk"),
            Level::Series => ("SELECT st.*, se.* ", " ORDER BY se.series_pk"),
            Level::Instance => ("SELECT st.*, se.*, i.* ", " ORDER BY i.instance_pk"),
        };
        // One row past the page tells whether more matches follow (the 299
        // "additional results" warning) without counting them: a count walks
        // every match, so its cost grows with the archive while the page's
        // does not (benches/README.md, "QIDO at ten million instances").
        let probe = limit.saturating_add(1);
        // limit and offset are numbers we parsed, written into the text.
        let page = format!(" LIMIT {probe} OFFSET {}", request.offset);
        let mut sql = SqlBuilder::new();
        if plan.level == Level::Study && self.dialect() == Dialect::Postgres {
            // PostgreSQL reads the table row of every index entry it walks
            // unless the index holds every column the walk needs: a page at
            // offset 50,000, or a month of StudyDate sorted by key, read tens of
            // thousands of rows to return 100. So the page's keys come first,
            // from indexes alone where the conditions allow (`studies_pkey` and
            // the covering indexes of schema/postgres/2026-12-04-000100), and
            // only the page's rows are read. SQLite's indexes carry the rowid
            // already, and its plans for the plain form meet the target.
            sql.push("SELECT st.* FROM studies st WHERE st.study_pk IN (SELECT st.study_pk ")
                .push(plan.from_where.sql())
                .push(order)
                .push(&page)
                .push(")")
                .push(order);
        } else {
            sql.push(select)
                .push(plan.from_where.sql())
                .push(order)
                .push(&page);
        }
        let binds = plan.from_where.binds();
        let mut hits: Vec<Hit> = with_conn!(self, conn => match plan.level {
            Level::Study => conn
                .load::<StudyRow>(sql.sql(), binds)?
                .into_iter()
                .map(|study| Hit { study, series: None, instance: None })
                .collect(),
            Level::Series => conn
                .load::<SeriesHit>(sql.sql(), binds)?
                .into_iter()
                .map(|h| Hit { study: h.study, series: Some(h.series), instance: None })
                .collect(),
            Level::Instance => conn
                .load::<InstanceHit>(sql.sql(), binds)?
                .into_iter()
                .map(|h| Hit { study: h.study, series: Some(h.series), instance: Some(h.instance) })
                .collect(),
        });
        let more = hits.len() as u64 > limit;
        hits.truncate(limit as usize);
        Ok(SearchResult {
            hits,
            more,
            requested: plan.requested,
            stored: plan.stored,
            ignored: plan.ignored,
        })
    }

    /// One stored instance for each study or series in `pks` (the first one
    /// stored), or the instances in `pks` themselves, with the key of the
    /// entity it stands for: where QIDO reads the attributes the index does not
    /// keep. One statement, whatever the number of keys.
    pub fn representatives(
        &self,
        level: Level,
        pks: &[i64],
    ) -> Result<Vec<(i64, StoredInstance)>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            owner_pk: i64,
            #[diesel(embed)]
            instance: StoredInstance,
        }
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        // The keys are numbers the index itself returned, written into the text.
        let list = pks.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let (owner, chosen) = match level {
            Level::Instance => ("i.instance_pk", format!("i.instance_pk IN ({list})")),
            Level::Series => (
                "se.series_pk",
                format!(
                    "i.instance_pk IN (SELECT MIN(instance_pk) FROM instances \
                     WHERE series_fk IN ({list}) GROUP BY series_fk)"
                ),
            ),
            Level::Study => (
                "st.study_pk",
                format!(
                    "i.instance_pk IN (SELECT MIN(i2.instance_pk) FROM instances i2 \
                     JOIN series s2 ON s2.series_pk = i2.series_fk \
                     WHERE s2.study_fk IN ({list}) GROUP BY s2.study_fk)"
                ),
            ),
        };
        let sql = format!(
            "SELECT {owner} AS owner_pk, {INSTANCE_COLUMNS} \
             FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE {chosen}"
        );
        let rows = with_conn!(self, conn => conn.load::<Row>(&sql, &[])?);
        Ok(rows.into_iter().map(|r| (r.owner_pk, r.instance)).collect())
    }

    /// The instances of a study, series or instance, in a stable order.
    pub fn instances(&self, scope: &Scope) -> Result<Vec<StoredInstance>, IndexError> {
        let mut sql = SqlBuilder::new();
        sql.push(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE ",
        ));
        push_scope_condition(&mut sql, scope);
        sql.push(" ORDER BY se.series_pk, i.instance_number, i.instance_pk");
        // Three shapes (study, series, instance), asked on every retrieval.
        Ok(with_conn!(self, conn => conn.load_prepared::<StoredInstance>(sql.sql(), sql.binds())?))
    }

    /// The Study Instance UID of every study in the index.
    pub fn study_uids(&self) -> Result<Vec<String>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            study_instance_uid: String,
        }
        let rows = with_conn!(self, conn => conn.load::<Row>(
            "SELECT study_instance_uid FROM studies ORDER BY study_pk",
            &[],
        )?);
        Ok(rows.into_iter().map(|r| r.study_instance_uid).collect())
    }

    /// The plaintext size and SHA-256 (hex) of the instance stored under a SOP
    /// Instance UID: what identifies its bytes, so that the bulk import can tell a
    /// file that is already stored without uploading it again.
    pub fn stored_fingerprint(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<(i64, String)>, IndexError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            blob_size: i64,
            #[diesel(sql_type = Text)]
            content_sha256: String,
        }
        let rows = with_conn!(self, conn => conn.load::<Row>(
            "SELECT blob_size, content_sha256 FROM instances WHERE sop_instance_uid = ?",
            &[Bind::Text(sop_instance_uid.to_string())],
        )?);
        Ok(rows
            .into_iter()
            .next()
            .map(|r| (r.blob_size, r.content_sha256)))
    }
}

/// The condition selecting the instances of `scope`, over the aliases `st`, `se`
/// and `i` of a join of studies, series and instances.
pub(super) fn push_scope_condition(sql: &mut SqlBuilder, scope: &Scope) {
    let (study, series, instance) = match scope {
        Scope::Study { study } => (study, None, None),
        Scope::Series { study, series } => (study, Some(series), None),
        Scope::Instance {
            study,
            series,
            instance,
        } => (study, Some(series), Some(instance)),
    };
    sql.push("st.study_instance_uid = ")
        .bind(Bind::Text(study.clone()));
    if let Some(series) = series {
        sql.push(" AND se.series_instance_uid = ")
            .bind(Bind::Text(series.clone()));
    }
    if let Some(instance) = instance {
        sql.push(" AND i.sop_instance_uid = ")
            .bind(Bind::Text(instance.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::test_indexes;
    use crate::index::{conn, generate};

    /// One stored instance stands for each study and series (the first one
    /// stored, inside that study or series), and each instance for itself; one
    /// statement whatever the number of keys.
    #[test]
    fn representatives_are_the_first_stored_of_each_entity() {
        for (index, _db) in test_indexes() {
            generate::generate(&index, 3, 2, 4, 11, &|_| {}).unwrap();
            let all = |resource| {
                let mut request = SearchRequest::new(resource);
                request.limit = Some(1000);
                index.search(&request, 1000).unwrap().hits
            };
            let studies = all(qido::Resource::Studies);
            let series = all(qido::Resource::Series);
            let instances = all(qido::Resource::Instances);
            assert_eq!((studies.len(), series.len(), instances.len()), (3, 6, 24));

            let pks: Vec<i64> = studies.iter().map(|h| h.study.study_pk).collect();
            let before = conn::statements_on_this_thread();
            let chosen = index.representatives(Level::Study, &pks).unwrap();
            assert_eq!(conn::statements_on_this_thread() - before, 1);
            assert_eq!(chosen.len(), 3);
            for hit in &studies {
                let (_, instance) = chosen
                    .iter()
                    .find(|(pk, _)| *pk == hit.study.study_pk)
                    .expect("a representative per study");
                assert_eq!(instance.study_instance_uid, hit.study.study_instance_uid);
                // The first stored instance of the study.
                let first = instances
                    .iter()
                    .filter(|i| i.study.study_pk == hit.study.study_pk)
                    .map(|i| i.instance.as_ref().unwrap())
                    .min_by_key(|i| i.instance_pk)
                    .unwrap();
                assert_eq!(instance.sop_instance_uid, first.sop_instance_uid);
            }

            let pks: Vec<i64> = series
                .iter()
                .map(|h| h.series.as_ref().unwrap().series_pk)
                .collect();
            let chosen = index.representatives(Level::Series, &pks).unwrap();
            assert_eq!(chosen.len(), 6);
            for hit in &series {
                let row = hit.series.as_ref().unwrap();
                let (_, instance) = chosen.iter().find(|(pk, _)| *pk == row.series_pk).unwrap();
                assert_eq!(instance.series_instance_uid, row.series_instance_uid);
            }

            let some: Vec<i64> = instances[5..9]
                .iter()
                .map(|h| h.instance.as_ref().unwrap().instance_pk)
                .collect();
            let chosen = index.representatives(Level::Instance, &some).unwrap();
            let mut uids: Vec<&str> = chosen
                .iter()
                .map(|(_, i)| i.sop_instance_uid.as_str())
                .collect();
            let mut expected: Vec<&str> = instances[5..9]
                .iter()
                .map(|h| h.instance.as_ref().unwrap().sop_instance_uid.as_str())
                .collect();
            uids.sort();
            expected.sort();
            assert_eq!(uids, expected);
            assert!(index
                .representatives(Level::Series, &[])
                .unwrap()
                .is_empty());
        }
    }

    /// A study of 2,000 instances: listing them, and finding them for metadata or
    /// retrieval, each take a fixed number of statements, not one per instance.
    #[test]
    fn large_studies_cost_a_bounded_number_of_queries() {
        for (index, _db) in test_indexes() {
            let made = generate::generate(&index, 1, 2, 1000, 7, &|_| {}).unwrap();
            assert_eq!(made.instances, 2000);
            let study = "2.25.7.0".to_string();
            let request = SearchRequest {
                resource: qido::Resource::StudyInstances {
                    study: study.clone(),
                },
                matches: vec![],
                include: vec![qido::IncludeField::All],
                fuzzy: false,
                empty_value_matching: false,
                multiple_value_matching: false,
                limit: Some(5000),
                offset: 0,
            };
            let before = conn::statements_on_this_thread();
            let result = index.search(&request, 5000).unwrap();
            assert_eq!(result.hits.len(), 2000);
            assert_eq!(
                conn::statements_on_this_thread() - before,
                1,
                "{:?}",
                index.dialect()
            );
            let before = conn::statements_on_this_thread();
            let located = index
                .instances(&Scope::Study {
                    study: study.clone(),
                })
                .unwrap();
            assert_eq!(located.len(), 2000);
            assert_eq!(conn::statements_on_this_thread() - before, 1);
        }
    }

    /// The "additional results" warning needs to know that more matches follow a
    /// page, not how many: the page's own statement reads one row past it. A
    /// count (a second statement, or one walking every match) would make every
    /// full page cost as much as the whole result.
    #[test]
    fn a_full_page_knows_that_more_follow_without_counting_them() {
        for (index, _db) in test_indexes() {
            generate::generate(&index, 1, 2, 1000, 7, &|_| {}).unwrap();
            let page = |limit: u64, offset: u64| {
                let request = SearchRequest {
                    resource: qido::Resource::StudyInstances {
                        study: "2.25.7.0".to_string(),
                    },
                    matches: vec![],
                    include: vec![],
                    fuzzy: false,
                    empty_value_matching: false,
                    multiple_value_matching: false,
                    limit: Some(limit),
                    offset,
                };
                let before = conn::statements_on_this_thread();
                let result = index.search(&request, 5000).unwrap();
                let statements = conn::statements_on_this_thread() - before;
                (result.hits.len(), result.more, statements)
            };
            let dialect = index.dialect();
            assert_eq!(page(100, 0), (100, true, 1), "{dialect:?}");
            assert_eq!(page(100, 1800), (100, true, 1), "{dialect:?}");
            // The last page: exactly full, nothing follows.
            assert_eq!(page(100, 1900), (100, false, 1), "{dialect:?}");
            assert_eq!(page(100, 1950), (50, false, 1), "{dialect:?}");
            assert_eq!(page(100, 2000), (0, false, 1), "{dialect:?}");
            // The server maximum bounds the page like a limit does.
            assert_eq!(page(5000, 0), (2000, false, 1), "{dialect:?}");
        }
    }

    #[test]
    fn generated_data_is_consistent_on_both_databases() {
        for (index, _db) in test_indexes() {
            let made = generate::generate(&index, 30, 2, 3, 11, &|_| {}).unwrap();
            assert_eq!((made.studies, made.series, made.instances), (30, 60, 180));
            let request = SearchRequest::new(qido::Resource::Studies);
            let studies = index.search(&request, 1000).unwrap();
            assert_eq!(studies.hits.len(), 30);
            for hit in &studies.hits {
                assert_eq!(hit.study.number_of_study_related_instances, 6);
                assert!(hit.study.patient_id.as_deref().unwrap().starts_with('P'));
            }
        }
    }
}
