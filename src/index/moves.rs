//! The journal of objects being moved between stores (issue 15): claims,
//! the switch of an instance's blob key, and what a dead process left.
//! What to move is policy (`service::tiering`); the bytes are the store's.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::{with_conn, Index, IndexError, IndexPool};

/// What move rules are weighed on, for one instance.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct MoveCandidate {
    #[diesel(sql_type = BigInt)]
    pub instance_pk: i64,
    #[diesel(sql_type = Text)]
    pub blob_key: String,
    #[diesel(sql_type = BigInt)]
    pub blob_size: i64,
    /// When the instance was received (RFC 3339).
    #[diesel(sql_type = Text)]
    pub received_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub study_date: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub modality: Option<String>,
    #[diesel(sql_type = Text)]
    pub sop_class_uid: String,
    #[diesel(sql_type = Text)]
    pub study_instance_uid: String,
    /// The day the study was last retrieved (`YYYYMMDD`), when noted.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_retrieved_on: Option<String>,
}

/// A journal row.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct BlobMove {
    #[diesel(sql_type = Text)]
    pub from_key: String,
    #[diesel(sql_type = Text)]
    pub to_key: String,
    /// `copying` or `switched`.
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Text)]
    pub owner: String,
    #[diesel(sql_type = BigInt)]
    pub lease_until_ms: i64,
}

impl Index {
    /// Instances after `after_pk` in primary-key order, at most `limit`, with
    /// what move rules look at.
    pub fn move_candidates(
        &self,
        after_pk: i64,
        limit: i64,
    ) -> Result<Vec<MoveCandidate>, IndexError> {
        let mut sql = SqlBuilder::new();
        sql.push(
            "SELECT i.instance_pk, i.blob_key, CAST(i.blob_size AS BIGINT) AS blob_size, \
             i.created_at AS received_at, st.study_date, se.modality, i.sop_class_uid, \
             st.study_instance_uid, st.last_retrieved_on \
             FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE i.instance_pk > ",
        )
        .bind(Bind::Int(after_pk))
        .push(" ORDER BY i.instance_pk LIMIT ")
        .bind(Bind::Int(limit));
        Ok(with_conn!(self, conn => conn.load::<MoveCandidate>(sql.sql(), sql.binds())?))
    }

    /// Claims the move of `from` to `to` for `owner` until `lease_until_ms`:
    /// false when another move of that object is journaled (by anyone) or the
    /// index no longer references `from`. The journal row's primary key
    /// decides between processes, whatever the queue that sent them.
    pub fn claim_move(
        &self,
        from: &str,
        to: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, IndexError> {
        let binds = [
            Bind::Text(from.to_string()),
            Bind::Text(to.to_string()),
            Bind::Text(owner.to_string()),
            Bind::Int(lease_until_ms),
            Bind::Text(from.to_string()),
        ];
        let inserted = with_conn!(self, conn => conn.write(|conn| Ok(conn.run(
            "INSERT INTO blob_moves (from_key, to_key, state, owner, lease_until_ms) \
             SELECT ?, ?, 'copying', ?, ? WHERE EXISTS \
             (SELECT 1 FROM instances WHERE blob_key = ?) \
             ON CONFLICT (from_key) DO NOTHING",
            &binds,
        )?))?);
        Ok(inserted == 1)
    }

    /// Points the instance at its copy and marks the move switched, in one
    /// transaction. False (nothing changed) when the instance no longer has
    /// `from` (deleted or replaced meanwhile) or the claim is not `owner`'s.
    pub fn switch_move(&self, from: &str, to: &str, owner: &str) -> Result<bool, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            let marked = conn.run(
                "UPDATE blob_moves SET state = 'switched' \
                 WHERE from_key = ? AND to_key = ? AND owner = ? AND state = 'copying'",
                &[
                    Bind::Text(from.to_string()),
                    Bind::Text(to.to_string()),
                    Bind::Text(owner.to_string()),
                ],
            )?;
            if marked != 1 {
                return Ok(false);
            }
            let switched = conn.run(
                "UPDATE instances SET blob_key = ? WHERE blob_key = ?",
                &[Bind::Text(to.to_string()), Bind::Text(from.to_string())],
            )?;
            if switched != 1 {
                // Gone meanwhile: the copy is the caller's to remove.
                conn.run(
                    "UPDATE blob_moves SET state = 'copying' WHERE from_key = ?",
                    &[Bind::Text(from.to_string())],
                )?;
                return Ok(false);
            }
            Ok(true)
        }))
    }

    /// Ends a move (after its left-over object is gone).
    pub fn finish_move(&self, from: &str) -> Result<(), IndexError> {
        with_conn!(self, conn => conn.run(
            "DELETE FROM blob_moves WHERE from_key = ?",
            &[Bind::Text(from.to_string())],
        )?);
        Ok(())
    }

    /// Takes over the moves whose lease ran out before `now_ms` (their process
    /// died), for `owner` until `lease_until_ms`; returns those taken. Each row
    /// is taken by one process only: the update is conditional on the lease.
    pub fn take_over_stale_moves(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<BlobMove>, IndexError> {
        let stale = with_conn!(self, conn => conn.load::<BlobMove>(
            "SELECT from_key, to_key, state, owner, lease_until_ms FROM blob_moves \
             WHERE lease_until_ms < ? ORDER BY from_key",
            &[Bind::Int(now_ms)],
        )?);
        let mut taken = Vec::new();
        for row in stale {
            let updated = with_conn!(self, conn => conn.write(|conn| Ok(conn.run(
                "UPDATE blob_moves SET owner = ?, lease_until_ms = ? \
                 WHERE from_key = ? AND lease_until_ms = ? AND owner = ?",
                &[
                    Bind::Text(owner.to_string()),
                    Bind::Int(lease_until_ms),
                    Bind::Text(row.from_key.clone()),
                    Bind::Int(row.lease_until_ms),
                    Bind::Text(row.owner.clone()),
                ],
            )?))?);
            if updated == 1 {
                taken.push(row);
            }
        }
        Ok(taken)
    }
}
