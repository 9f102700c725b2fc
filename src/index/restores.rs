//! The journal of restores from offline tiers (issue 15), and the day each
//! study was last retrieved. Which objects are offline and how a restore is
//! asked for are the store's; when to ask is `service::restore`'s.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::{with_conn, Index, IndexError, IndexPool};

/// Keys bound per statement.
const CHUNK: usize = 500;

/// One object's restore.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct BlobRestore {
    #[diesel(sql_type = Text)]
    pub blob_key: String,
    #[diesel(sql_type = Text)]
    pub study_instance_uid: String,
    /// `requested`, `pending` or `ready`.
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = BigInt)]
    pub requested_at_ms: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub ready_until_ms: Option<i64>,
}

impl BlobRestore {
    /// Whether the object can be read at `now_ms`.
    pub fn is_ready(&self, now_ms: i64) -> bool {
        self.state == "ready" && self.ready_until_ms.is_none_or(|until| until > now_ms)
    }
}

/// Restores of one study, for `kastell lifecycle restores`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct StudyRestores {
    #[diesel(sql_type = Text)]
    pub study_instance_uid: String,
    #[diesel(sql_type = BigInt)]
    pub waiting: i64,
    #[diesel(sql_type = BigInt)]
    pub ready: i64,
    #[diesel(sql_type = BigInt)]
    pub requested_at_ms: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const COLUMNS: &str = "blob_key, study_instance_uid, state, requested_at_ms, ready_until_ms";

impl Index {
    /// The restores of `keys` that are journaled.
    pub fn restores_of(&self, keys: &[String]) -> Result<Vec<BlobRestore>, IndexError> {
        let mut all = Vec::new();
        for chunk in keys.chunks(CHUNK) {
            let mut sql = SqlBuilder::new();
            sql.push(&format!(
                "SELECT {COLUMNS} FROM blob_restores WHERE blob_key IN ("
            ))
            .bind_list(chunk.iter().map(|k| Bind::Text(k.clone())))
            .push(")");
            all.extend(with_conn!(self, conn => conn.load::<BlobRestore>(sql.sql(), sql.binds())?));
        }
        Ok(all)
    }

    /// Journals the restore of each `(blob key, study)` as `requested`, unless
    /// one is journaled already that has not expired at `now_ms`; returns the
    /// keys newly journaled (the caller asks the store for those).
    pub fn journal_restores(
        &self,
        objects: &[(String, String)],
        now_ms: i64,
    ) -> Result<Vec<String>, IndexError> {
        let mut journaled = Vec::new();
        with_conn!(self, conn => conn.write(|conn| {
            journaled.clear();
            for (key, study) in objects {
                // A restored copy that expired is asked for again.
                conn.run(
                    "DELETE FROM blob_restores WHERE blob_key = ? AND state = 'ready' \
                     AND ready_until_ms IS NOT NULL AND ready_until_ms <= ?",
                    &[Bind::Text(key.clone()), Bind::Int(now_ms)],
                )?;
                let inserted = conn.run(
                    "INSERT INTO blob_restores (blob_key, study_instance_uid, state, \
                     requested_at_ms, ready_until_ms, checked_at_ms) \
                     VALUES (?, ?, 'requested', ?, NULL, 0) ON CONFLICT (blob_key) DO NOTHING",
                    &[
                        Bind::Text(key.clone()),
                        Bind::Text(study.clone()),
                        Bind::Int(now_ms),
                    ],
                )?;
                if inserted == 1 {
                    journaled.push(key.clone());
                }
            }
            Ok(())
        }))?;
        Ok(journaled)
    }

    /// Records where an object's restore stands after the store was asked
    /// (`requested`, `pending` or `ready`, readable until `ready_until_ms`).
    pub fn set_restore_state(
        &self,
        key: &str,
        state: &str,
        ready_until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.run(
            "UPDATE blob_restores SET state = ?, ready_until_ms = ?, checked_at_ms = ? \
             WHERE blob_key = ?",
            &[
                Bind::Text(state.to_string()),
                Bind::NullableInt(ready_until_ms),
                Bind::Int(now_ms),
                Bind::Text(key.to_string()),
            ],
        )?);
        Ok(())
    }

    /// Ends the restore of `key` (the object is readable without one, or the
    /// store no longer has it).
    pub fn forget_restore(&self, key: &str) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.run(
            "DELETE FROM blob_restores WHERE blob_key = ?",
            &[Bind::Text(key.to_string())],
        )?);
        Ok(())
    }

    /// Restores not ready, last checked before `checked_before_ms`, the oldest
    /// first, at most `limit`.
    pub fn restores_to_check(
        &self,
        checked_before_ms: i64,
        limit: i64,
    ) -> Result<Vec<BlobRestore>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<BlobRestore>(
            &format!(
                "SELECT {COLUMNS} FROM blob_restores WHERE state <> 'ready' \
                 AND checked_at_ms < ? ORDER BY checked_at_ms, blob_key LIMIT ?"
            ),
            &[Bind::Int(checked_before_ms), Bind::Int(limit)],
        )?))
    }

    /// Restores whose restored copy expired at `now_ms`, at most `limit`.
    pub fn expired_restores(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<BlobRestore>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<BlobRestore>(
            &format!(
                "SELECT {COLUMNS} FROM blob_restores WHERE state = 'ready' \
                 AND ready_until_ms IS NOT NULL AND ready_until_ms <= ? \
                 ORDER BY ready_until_ms, blob_key LIMIT ?"
            ),
            &[Bind::Int(now_ms), Bind::Int(limit)],
        )?))
    }

    /// Objects whose restore is not ready yet.
    pub fn restores_waiting(&self) -> Result<i64, IndexError> {
        Ok(with_conn!(self, conn => conn.load_one::<Count>(
            "SELECT COUNT(*) AS n FROM blob_restores WHERE state <> 'ready'",
            &[],
        )?)
        .n)
    }

    /// Removes the rows of objects no instance references any more (moved
    /// out of the tier, or deleted); returns how many.
    pub fn prune_restores(&self) -> Result<usize, IndexError> {
        Ok(with_conn!(self, conn => conn.run(
            "DELETE FROM blob_restores WHERE NOT EXISTS \
             (SELECT 1 FROM instances WHERE instances.blob_key = blob_restores.blob_key)",
            &[],
        )?))
    }

    /// The restores journaled, per study, most recent first, at most `limit`.
    pub fn restores_by_study(&self, limit: i64) -> Result<Vec<StudyRestores>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StudyRestores>(
            "SELECT study_instance_uid, \
             CAST(SUM(CASE WHEN state = 'ready' THEN 0 ELSE 1 END) AS BIGINT) AS waiting, \
             CAST(SUM(CASE WHEN state = 'ready' THEN 1 ELSE 0 END) AS BIGINT) AS ready, \
             MAX(requested_at_ms) AS requested_at_ms FROM blob_restores \
             GROUP BY study_instance_uid ORDER BY 4 DESC, 1 LIMIT ?",
            &[Bind::Int(limit)],
        )?))
    }

    /// The study of the instance whose object is `key`, if one is.
    pub fn study_of_blob(&self, key: &str) -> Result<Option<String>, IndexError> {
        #[derive(QueryableByName)]
        struct Study {
            #[diesel(sql_type = Text)]
            study_instance_uid: String,
        }
        let rows = with_conn!(self, conn => conn.load::<Study>(
            "SELECT st.study_instance_uid FROM instances i \
             JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE i.blob_key = ?",
            &[Bind::Text(key.to_string())],
        )?);
        Ok(rows.into_iter().next().map(|s| s.study_instance_uid))
    }

    /// Records that `studies` were retrieved on `day` (`YYYYMMDD`): one write
    /// per study and day at most.
    pub fn mark_retrieved(&self, studies: &[String], day: &str) -> Result<(), IndexError> {
        for chunk in studies.chunks(CHUNK) {
            let mut sql = SqlBuilder::new();
            sql.push("UPDATE studies SET last_retrieved_on = ")
                .bind(Bind::Text(day.to_string()))
                .push(" WHERE (last_retrieved_on IS NULL OR last_retrieved_on < ")
                .bind(Bind::Text(day.to_string()))
                .push(") AND study_instance_uid IN (")
                .bind_list(chunk.iter().map(|s| Bind::Text(s.clone())))
                .push(")");
            with_conn!(self, conn => conn.run(sql.sql(), sql.binds())?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::index::generate::generate;
    use crate::index::tests::test_indexes;

    #[test]
    fn restores_are_journaled_once_and_pruned_with_their_instances() {
        for (index, _db) in test_indexes() {
            generate(&index, 1, 1, 2, 7, &|_| {}).unwrap();
            let keys: Vec<(String, String)> = index
                .move_candidates(0, 10)
                .unwrap()
                .into_iter()
                .map(|c| (c.blob_key, "1.2.3".to_string()))
                .collect();
            assert_eq!(keys.len(), 2);
            let first = index.journal_restores(&keys, 1000).unwrap();
            assert_eq!(first.len(), 2);
            // Asked again while journaled: nothing new.
            assert!(index.journal_restores(&keys, 2000).unwrap().is_empty());
            assert!(index.expired_restores(i64::MAX, 10).unwrap().is_empty());
            assert_eq!(index.restores_waiting().unwrap(), 2);
            index
                .set_restore_state(&keys[0].0, "ready", Some(5000), 3000)
                .unwrap();
            let all: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
            let rows = index.restores_of(&all).unwrap();
            let ready = rows.iter().find(|r| r.blob_key == keys[0].0).unwrap();
            assert!(ready.is_ready(4000));
            assert!(!ready.is_ready(6000));
            assert!(index.expired_restores(4000, 10).unwrap().is_empty());
            assert_eq!(index.expired_restores(6000, 10).unwrap().len(), 1);
            assert_eq!(index.restores_waiting().unwrap(), 1);
            // Checked at 3000: not before 3000.
            assert_eq!(index.restores_to_check(3000, 10).unwrap().len(), 1);
            // The copy expired: asked for again.
            assert_eq!(index.journal_restores(&keys[..1], 6000).unwrap().len(), 1);
            let by_study = index.restores_by_study(10).unwrap();
            assert_eq!(by_study.len(), 1);
            assert_eq!(by_study[0].waiting, 2);
            // Nothing references an unknown key: pruned.
            index
                .journal_restores(&[("derived/00".into(), "1.2.3".into())], 7000)
                .unwrap();
            assert_eq!(index.prune_restores().unwrap(), 1);
            assert_eq!(index.restores_waiting().unwrap(), 2);
        }
    }
}
