//! The tenant's change feed and the outbox of its events (issue 14): every
//! create, replace and delete of an instance and every "study stable" gets a
//! sequence number with no gap, written in the transaction of the change itself
//! (`write::store_instances`, `delete::delete`, [`Index::announce_stable_studies`]).
//! Sinks (the NATS publisher, webhooks, the job dispatcher) each keep a cursor
//! here and deliver what lies beyond it; the feed rows are the outbox.
//!
//! The number comes from `change_feed_head`, one row updated last in the
//! transaction: on PostgreSQL its row lock orders concurrent transactions of
//! several processes, so numbers follow commit order and a reader that has seen
//! N will never later find a new row below N.

use std::collections::BTreeSet;

use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::{now, with_conn, Index, IndexError, IndexPool};

/// What happened, as the feed, the events and the HTTP change feed name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeAction {
    /// An instance was stored.
    Created,
    /// An instance was stored again with different content (overwrite allowed).
    Replaced,
    /// An instance was deleted.
    Deleted,
    /// No instance of the study arrived for the configured quiet time.
    StudyStable,
    /// The tenant's key was rotated (`kastell keys rotate`): data keys re-wrapped.
    KeyRotated,
    /// A superseded version of the tenant's key was destroyed (`kastell keys retire`).
    KeyRetired,
    /// Every key of the tenant was destroyed (`kastell keys shred`); the
    /// deletions of its studies follow.
    KeyShredded,
}

impl ChangeAction {
    pub const ALL: [ChangeAction; 7] = [
        ChangeAction::Created,
        ChangeAction::Replaced,
        ChangeAction::Deleted,
        ChangeAction::StudyStable,
        ChangeAction::KeyRotated,
        ChangeAction::KeyRetired,
        ChangeAction::KeyShredded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Created => "created",
            ChangeAction::Replaced => "replaced",
            ChangeAction::Deleted => "deleted",
            ChangeAction::StudyStable => "study-stable",
            ChangeAction::KeyRotated => "key-rotated",
            ChangeAction::KeyRetired => "key-retired",
            ChangeAction::KeyShredded => "key-shredded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// A change about to be written (see [`append_changes`]).
#[derive(Debug, Clone)]
pub struct NewChange {
    pub action: ChangeAction,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub sop_class_uid: Option<String>,
    pub detail: Option<String>,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Change {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub occurred_at: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub study_instance_uid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub series_instance_uid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub sop_instance_uid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub sop_class_uid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub detail: Option<String>,
}

/// A sink's place in the feed, as `kastell events status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SinkState {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub delivered_seq: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub lease_owner: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub lease_until_ms: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Text)]
    pub updated_at: String,
}

/// A change a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct DeadLetter {
    #[diesel(sql_type = Text)]
    pub sink: String,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub last_error: String,
    #[diesel(sql_type = Text)]
    pub failed_at: String,
}

/// The patient attributes of a study, for the sinks configured to carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, QueryableByName)]
pub struct StudyPatient {
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_birth_date: Option<String>,
}

#[derive(QueryableByName)]
struct Seq {
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

/// Where a new sink starts reading the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStart {
    /// Every change the feed holds.
    Beginning,
    /// Changes after the latest at the time the sink is first seen.
    Latest,
}

/// Numbers `changes` after the tenant's last change and writes them. Call it
/// last in the transaction of the change: the head row stays locked until
/// commit (see the module's documentation).
pub(super) fn append_changes<C: IndexConn>(
    conn: &mut C,
    changes: &[NewChange],
) -> Result<(), IndexError> {
    if changes.is_empty() {
        return Ok(());
    }
    let last = conn
        .load_one::<Seq>(
            "UPDATE change_feed_head SET last_seq = last_seq + ? WHERE singleton = 1 \
             RETURNING last_seq AS seq",
            &[Bind::Int(changes.len() as i64)],
        )?
        .seq;
    let first = last - changes.len() as i64 + 1;
    let at = now();
    // Eight columns a row: 400 rows stay far below SQLite's 32,766 parameters.
    for (chunk_index, chunk) in changes.chunks(400).enumerate() {
        let mut sql = SqlBuilder::new();
        sql.push(
            "INSERT INTO change_feed (seq, occurred_at, action, study_instance_uid, \
             series_instance_uid, sop_instance_uid, sop_class_uid, detail) VALUES ",
        );
        for (i, change) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            let seq = first + (chunk_index * 400 + i) as i64;
            sql.push("(")
                .bind(Bind::Int(seq))
                .push(", ")
                .bind(Bind::Text(at.clone()))
                .push(", ")
                .bind(Bind::Text(change.action.as_str().to_string()))
                .push(", ")
                .bind(Bind::NullableText(change.study_instance_uid.clone()))
                .push(", ")
                .bind(Bind::NullableText(change.series_instance_uid.clone()))
                .push(", ")
                .bind(Bind::NullableText(change.sop_instance_uid.clone()))
                .push(", ")
                .bind(Bind::NullableText(change.sop_class_uid.clone()))
                .push(", ")
                .bind(Bind::NullableText(change.detail.clone()))
                .push(")");
        }
        conn.run(sql.sql(), sql.binds())?;
    }
    Ok(())
}

/// Marks studies as having just received an instance: open again (if they
/// were announced stable), and due for a "study stable" once quiet.
pub(super) fn unsettle<C: IndexConn>(
    conn: &mut C,
    studies: &BTreeSet<&str>,
    now_ms: i64,
) -> Result<(), IndexError> {
    for study in studies {
        conn.run(
            "INSERT INTO studies_settling (study_instance_uid, last_arrival_ms) VALUES (?, ?) \
             ON CONFLICT (study_instance_uid) DO UPDATE SET last_arrival_ms = excluded.last_arrival_ms",
            &[Bind::Text(study.to_string()), Bind::Int(now_ms)],
        )?;
    }
    Ok(())
}

/// A deleted study will not become stable.
pub(super) fn forget_settling<C: IndexConn>(conn: &mut C, study: &str) -> Result<(), IndexError> {
    conn.run(
        "DELETE FROM studies_settling WHERE study_instance_uid = ?",
        &[Bind::Text(study.to_string())],
    )?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Index {
    /// Up to `limit` changes after `after`, in order.
    pub fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<Change>(
            "SELECT seq, occurred_at, action, study_instance_uid, series_instance_uid, \
             sop_instance_uid, sop_class_uid, detail FROM change_feed WHERE seq > ? \
             ORDER BY seq LIMIT ?",
            &[Bind::Int(after), Bind::Int(limit)],
        )?))
    }

    /// Writes a change of the tenant itself (a key event), with what it adds as
    /// `detail` (JSON).
    pub fn record_tenant_change(
        &self,
        action: ChangeAction,
        detail: Option<serde_json::Value>,
    ) -> Result<(), IndexError> {
        let change = NewChange {
            action,
            study_instance_uid: None,
            series_instance_uid: None,
            sop_instance_uid: None,
            sop_class_uid: None,
            detail: detail.map(|d| d.to_string()),
        };
        with_conn!(self, conn => conn.write(|conn| append_changes(conn, std::slice::from_ref(&change))))
    }

    /// The number of the tenant's latest change (0 before the first).
    pub fn latest_change(&self) -> Result<i64, IndexError> {
        Ok(with_conn!(self, conn => conn.load_one::<Seq>(
            "SELECT last_seq AS seq FROM change_feed_head WHERE singleton = 1",
            &[],
        )?)
        .seq)
    }

    /// Announces the studies that have had no new instance since
    /// `quiet_since_ms` (up to `limit` of them, oldest first): for each, in one
    /// transaction, its settling row goes and a "study-stable" change with its
    /// counts is written. Several processes may run this at once: the delete of
    /// the settling row decides which one announces. Returns the changes
    /// written.
    pub fn announce_stable_studies(
        &self,
        quiet_since_ms: i64,
        limit: i64,
    ) -> Result<usize, IndexError> {
        #[derive(QueryableByName)]
        struct Settling {
            #[diesel(sql_type = Text)]
            study_instance_uid: String,
            #[diesel(sql_type = BigInt)]
            last_arrival_ms: i64,
        }
        #[derive(QueryableByName)]
        struct Counts {
            #[diesel(sql_type = BigInt)]
            series: i64,
            #[diesel(sql_type = BigInt)]
            instances: i64,
        }
        let due = with_conn!(self, conn => conn.load::<Settling>(
            "SELECT study_instance_uid, last_arrival_ms FROM studies_settling \
             WHERE last_arrival_ms <= ? ORDER BY last_arrival_ms LIMIT ?",
            &[Bind::Int(quiet_since_ms), Bind::Int(limit)],
        )?);
        if due.is_empty() {
            return Ok(0);
        }
        with_conn!(self, conn => conn.write(|conn| {
            let mut changes = Vec::new();
            for study in &due {
                let taken = conn.run(
                    "DELETE FROM studies_settling WHERE study_instance_uid = ? AND last_arrival_ms = ?",
                    &[Bind::Text(study.study_instance_uid.clone()), Bind::Int(study.last_arrival_ms)],
                )?;
                if taken == 0 {
                    // Another process announced it, or an instance arrived since.
                    continue;
                }
                let counts = conn.load::<Counts>(
                    "SELECT CAST(number_of_study_related_series AS BIGINT) AS series, \
                     CAST(number_of_study_related_instances AS BIGINT) AS instances \
                     FROM studies WHERE study_instance_uid = ?",
                    &[Bind::Text(study.study_instance_uid.clone())],
                )?;
                let Some(counts) = counts.into_iter().next() else {
                    continue; // deleted meanwhile
                };
                changes.push(NewChange {
                    action: ChangeAction::StudyStable,
                    study_instance_uid: Some(study.study_instance_uid.clone()),
                    series_instance_uid: None,
                    sop_instance_uid: None,
                    sop_class_uid: None,
                    detail: Some(
                        serde_json::json!({
                            "numberOfStudyRelatedSeries": counts.series,
                            "numberOfStudyRelatedInstances": counts.instances,
                        })
                        .to_string(),
                    ),
                });
            }
            append_changes(conn, &changes)?;
            Ok(changes.len())
        }))
    }

    /// Forgets the studies waiting for their quiet time since before
    /// `before_ms`, announcing nothing (stable-study announcements are off: a
    /// later switch-on must not announce every study ever stored at once).
    pub fn forget_settling_before(&self, before_ms: i64) -> Result<usize, IndexError> {
        Ok(with_conn!(self, conn => conn.run(
            "DELETE FROM studies_settling WHERE last_arrival_ms <= ?",
            &[Bind::Int(before_ms)],
        )?))
    }

    /// How many studies wait for their quiet time.
    pub fn settling_studies(&self) -> Result<i64, IndexError> {
        Ok(with_conn!(self, conn => conn.load_one::<Seq>(
            "SELECT CAST(COUNT(*) AS BIGINT) AS seq FROM studies_settling",
            &[],
        )?)
        .seq)
    }

    /// Takes (or renews) the lease of `sink` for `owner` until `until_ms`, the
    /// sink's row made on first use where `start` says. Returns the sink's
    /// cursor when the lease is `owner`'s, `None` when another process holds it.
    pub fn take_sink_lease(
        &self,
        sink: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
        start: SinkStart,
    ) -> Result<Option<i64>, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let start_seq = match start {
                SinkStart::Beginning => 0,
                SinkStart::Latest => conn
                    .load_one::<Seq>("SELECT last_seq AS seq FROM change_feed_head WHERE singleton = 1", &[])?
                    .seq,
            };
            conn.run(
                "INSERT INTO event_sinks (name, delivered_seq, lease_owner, lease_until_ms, updated_at) \
                 VALUES (?, ?, NULL, 0, ?) ON CONFLICT (name) DO NOTHING",
                &[Bind::Text(sink.to_string()), Bind::Int(start_seq), Bind::Text(now())],
            )?;
            let taken = conn.load::<Seq>(
                "UPDATE event_sinks SET lease_owner = ?, lease_until_ms = ? WHERE name = ? \
                 AND (lease_owner IS NULL OR lease_owner = ? OR lease_until_ms < ?) \
                 RETURNING delivered_seq AS seq",
                &[
                    Bind::Text(owner.to_string()),
                    Bind::Int(until_ms),
                    Bind::Text(sink.to_string()),
                    Bind::Text(owner.to_string()),
                    Bind::Int(now_ms),
                ],
            )?;
            Ok(taken.into_iter().next().map(|row| row.seq))
        }))
    }

    /// Moves `sink`'s cursor from `from` to `to` (the changes in between were
    /// delivered), if `owner` still holds its lease and nobody moved it since;
    /// `false` otherwise (the delivery is then someone else's to repeat).
    pub fn advance_sink(
        &self,
        sink: &str,
        owner: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, IndexError> {
        let moved = with_conn!(self, conn => conn.run(
            "UPDATE event_sinks SET delivered_seq = ?, last_error = NULL, updated_at = ? \
             WHERE name = ? AND lease_owner = ? AND delivered_seq = ?",
            &[
                Bind::Int(to),
                Bind::Text(now()),
                Bind::Text(sink.to_string()),
                Bind::Text(owner.to_string()),
                Bind::Int(from),
            ],
        )?);
        Ok(moved == 1)
    }

    /// Records why `sink` could not deliver (shown by `kastell events status`).
    pub fn sink_failed(&self, sink: &str, error: &str) -> Result<(), IndexError> {
        let error: String = error.chars().take(1000).collect();
        with_conn!(self, conn => conn.run(
            "UPDATE event_sinks SET last_error = ?, updated_at = ? WHERE name = ?",
            &[Bind::Text(error), Bind::Text(now()), Bind::Text(sink.to_string())],
        )?);
        Ok(())
    }

    /// Gives up on change `seq` for `sink` after `attempts`: it goes to the
    /// dead letters and the cursor moves past it, in one transaction, if
    /// `owner` holds the lease and the cursor is at `seq - 1`.
    pub fn dead_letter(
        &self,
        sink: &str,
        owner: &str,
        seq: i64,
        attempts: i32,
        error: &str,
    ) -> Result<bool, IndexError> {
        let error: String = error.chars().take(1000).collect();
        with_conn!(self, conn => conn.write(|conn| {
            let moved = conn.run(
                "UPDATE event_sinks SET delivered_seq = ?, last_error = ?, updated_at = ? \
                 WHERE name = ? AND lease_owner = ? AND delivered_seq = ?",
                &[
                    Bind::Int(seq),
                    Bind::Text(error.clone()),
                    Bind::Text(now()),
                    Bind::Text(sink.to_string()),
                    Bind::Text(owner.to_string()),
                    Bind::Int(seq - 1),
                ],
            )?;
            if moved == 1 {
                conn.run(
                    "INSERT INTO event_dead_letters (sink, seq, attempts, last_error, failed_at) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (sink, seq) DO NOTHING",
                    &[
                        Bind::Text(sink.to_string()),
                        Bind::Int(seq),
                        Bind::Int(i64::from(attempts)),
                        Bind::Text(error.clone()),
                        Bind::Text(now()),
                    ],
                )?;
            }
            Ok(moved == 1)
        }))
    }

    /// Every sink's state.
    pub fn sinks(&self) -> Result<Vec<SinkState>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<SinkState>(
            "SELECT name, delivered_seq, lease_owner, lease_until_ms, last_error, updated_at \
             FROM event_sinks ORDER BY name",
            &[],
        )?))
    }

    /// The latest `limit` dead letters, newest first.
    pub fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<DeadLetter>(
            "SELECT sink, seq, attempts, last_error, failed_at FROM event_dead_letters \
             ORDER BY failed_at DESC, seq DESC LIMIT ?",
            &[Bind::Int(limit)],
        )?))
    }

    /// The patient attributes of a study, if it is still stored.
    pub fn study_patient(&self, study: &str) -> Result<Option<StudyPatient>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StudyPatient>(
            "SELECT patient_name, patient_id, patient_birth_date FROM studies \
             WHERE study_instance_uid = ?",
            &[Bind::Text(study.to_string())],
        )?)
        .into_iter()
        .next())
    }

    /// Whether job `job_id` was finished before.
    pub fn job_done(&self, job_id: &str) -> Result<bool, IndexError> {
        Ok(self.job_attempts(job_id)?.is_some())
    }

    /// The delivery on which job `job_id` was finished, if it was.
    pub fn job_attempts(&self, job_id: &str) -> Result<Option<i64>, IndexError> {
        let rows = with_conn!(self, conn => conn.load::<Seq>(
            "SELECT CAST(attempts AS BIGINT) AS seq FROM jobs_done WHERE job_id = ?",
            &[Bind::Text(job_id.to_string())],
        )?);
        Ok(rows.into_iter().next().map(|row| row.seq))
    }

    /// Records that job `job_id` finished, on its `attempts`th delivery.
    /// Returns `false` when it was recorded before (done twice).
    pub fn record_job_done(
        &self,
        job_id: &str,
        kind: &str,
        attempts: i64,
    ) -> Result<bool, IndexError> {
        let inserted = with_conn!(self, conn => conn.run(
            "INSERT INTO jobs_done (job_id, kind, attempts, finished_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (job_id) DO NOTHING",
            &[
                Bind::Text(job_id.to_string()),
                Bind::Text(kind.to_string()),
                Bind::Int(attempts),
                Bind::Text(now()),
            ],
        )?);
        Ok(inserted == 1)
    }
}

#[cfg(test)]
mod tests;
