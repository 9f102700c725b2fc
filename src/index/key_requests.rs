//! Requests for destructive key operations under dual control (`key_requests`):
//! filed by one administrator, approved by a different one before they expire.
//! Times are Unix seconds.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::Bind;
use super::{with_conn, Index, IndexError, IndexPool};

#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct KeyRequest {
    #[diesel(sql_type = BigInt)]
    pub request_id: i64,
    /// `shred-tenant` or `retire-master`.
    #[diesel(sql_type = Text)]
    pub action: String,
    /// The tenant or the master key.
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Text)]
    pub requested_by: String,
    #[diesel(sql_type = BigInt)]
    pub requested_at: i64,
    #[diesel(sql_type = BigInt)]
    pub expires_at: i64,
    /// `pending`, `approved` or `cancelled`.
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub approved_by: Option<String>,
}

const COLUMNS: &str =
    "request_id, action, target, requested_by, requested_at, expires_at, state, approved_by";

impl Index {
    /// Files a request; returns its id.
    pub fn file_key_request(
        &self,
        action: &str,
        target: &str,
        requested_by: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<i64, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            conn.run(
                "INSERT INTO key_requests (action, target, requested_by, requested_at, expires_at, state) \
                 VALUES (?, ?, ?, ?, ?, 'pending')",
                &[
                    Bind::Text(action.to_string()),
                    Bind::Text(target.to_string()),
                    Bind::Text(requested_by.to_string()),
                    Bind::Int(now),
                    Bind::Int(expires_at),
                ],
            )?;
            let rows = conn.load::<KeyRequest>(
                &format!("SELECT {COLUMNS} FROM key_requests WHERE requested_by = ? AND requested_at = ? \
                          ORDER BY request_id DESC LIMIT 1"),
                &[Bind::Text(requested_by.to_string()), Bind::Int(now)],
            )?;
            Ok(rows.first().map_or(0, |row| row.request_id))
        }))
    }

    pub fn key_request(&self, id: i64) -> Result<Option<KeyRequest>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<KeyRequest>(
            &format!("SELECT {COLUMNS} FROM key_requests WHERE request_id = ?"),
            &[Bind::Int(id)],
        )?)
        .pop())
    }

    /// Requests still pending and not expired at `now`.
    pub fn pending_key_requests(&self, now: i64) -> Result<Vec<KeyRequest>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<KeyRequest>(
            &format!("SELECT {COLUMNS} FROM key_requests WHERE state = 'pending' AND expires_at > ? \
                      ORDER BY request_id"),
            &[Bind::Int(now)],
        )?))
    }

    /// Approves a pending request by someone other than its filer, before it
    /// expires; one statement, so two approvals cannot both win. Returns whether
    /// it was approved.
    pub fn approve_key_request(&self, id: i64, by: &str, now: i64) -> Result<bool, IndexError> {
        let changed = with_conn!(self, conn => conn.run(
            "UPDATE key_requests SET state = 'approved', approved_by = ?, approved_at = ? \
             WHERE request_id = ? AND state = 'pending' AND expires_at > ? AND requested_by <> ?",
            &[
                Bind::Text(by.to_string()),
                Bind::Int(now),
                Bind::Int(id),
                Bind::Int(now),
                Bind::Text(by.to_string()),
            ],
        )?);
        Ok(changed > 0)
    }

    /// Cancels a pending request.
    pub fn cancel_key_request(&self, id: i64) -> Result<bool, IndexError> {
        let changed = with_conn!(self, conn => conn.run(
            "UPDATE key_requests SET state = 'cancelled' WHERE request_id = ? AND state = 'pending'",
            &[Bind::Int(id)],
        )?);
        Ok(changed > 0)
    }
}
