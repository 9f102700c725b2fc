//! Persistence of the audit trail (`audit_events`). The index stores rows as the
//! text it is given and knows nothing of hashing: the chain is computed by the
//! caller (`crate::audit`) inside the transaction that appends, through the `seal`
//! closure of [`Index::append_audit`], so that the head it continues from is the
//! one under the lock.

use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::QueryableByName;

use super::conn::{Dialect, IndexConn};
use super::sql::{Bind, SqlBuilder};
use super::{now, with_conn, Index, IndexError, IndexPool};

/// Transaction-scoped advisory lock that serialises audit writers sharing one
/// PostgreSQL database ("KAUDIT" in ASCII). On SQLite the write transaction
/// (`BEGIN IMMEDIATE`) already serialises them.
const AUDIT_LOCK: i64 = 0x4B41_5544_4954;

/// Rows per INSERT statement: 15 binds each keeps a statement well under
/// SQLite's and PostgreSQL's bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 100;

const COLUMNS: &str = "seq, at, actor, actor_kind, client_address, tenant, action, outcome, \
                       status, study_uid, series_uid, instance_uids, detail, prev_hash, hash";

/// One stored audit row, exactly as text in the database: the chain is verified
/// over these values, so nothing is parsed or normalised on the way.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct AuditRow {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub at: String,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Text)]
    pub actor_kind: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub client_address: Option<String>,
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub status: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub study_uid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub series_uid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub instance_uids: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub detail: Option<String>,
    #[diesel(sql_type = Text)]
    pub prev_hash: String,
    #[diesel(sql_type = Text)]
    pub hash: String,
}

/// The newest row of the chain: where the next append continues.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct AuditHead {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub hash: String,
}

/// The key that seals the chain, as stored (`audit_chain_key`): wrapped by the
/// master key provider, with the first seq it seals.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StoredChainKey {
    #[diesel(sql_type = Binary)]
    pub wrapped_key: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    pub first_keyed_seq: i64,
    /// The master key that wrapped it.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub master_key: String,
}

impl Index {
    /// The audit chain's key, if one was made.
    pub fn audit_chain_key(&self) -> Result<Option<StoredChainKey>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<StoredChainKey>(
            "SELECT wrapped_key, first_keyed_seq, master_key FROM audit_chain_key WHERE id = 1",
            &[],
        )?)
        .pop())
    }

    /// Stores the audit chain's key, to seal from `first_keyed_seq` on, if no
    /// key exists yet and the trail's head is still just before that seq (both
    /// checked under the writers' lock). Returns whether it was stored; when not,
    /// another process made the key or appended meanwhile: read it, or try again.
    pub fn create_audit_chain_key(
        &self,
        wrapped_key: Vec<u8>,
        first_keyed_seq: i64,
        master: &str,
    ) -> Result<bool, IndexError> {
        with_conn!(self, conn => conn.write(|conn| {
            if conn.dialect() == Dialect::Postgres {
                conn.run("SELECT pg_advisory_xact_lock(?)", &[Bind::Int(AUDIT_LOCK)])?;
            }
            let exists = !conn
                .load::<AuditHead>(
                    "SELECT first_keyed_seq AS seq, created_at AS hash FROM audit_chain_key",
                    &[],
                )?
                .is_empty();
            let head_seq = read_head(conn)?.map_or(0, |head| head.seq);
            if exists || head_seq + 1 != first_keyed_seq {
                return Ok(false);
            }
            conn.run(
                "INSERT INTO audit_chain_key (id, wrapped_key, first_keyed_seq, created_at, master_key) \
                 VALUES (1, ?, ?, ?, ?)",
                &[
                    Bind::Bytes(wrapped_key.clone()),
                    Bind::Int(first_keyed_seq),
                    Bind::Text(now()),
                    Bind::Text(master.to_string()),
                ],
            )?;
            Ok(true)
        }))
    }

    /// Appends a batch to the audit trail in one transaction. Takes the writers'
    /// lock, reads the head under it, and asks `seal` for the rows that continue
    /// it (`None`: the trail is empty); returns the new head (`None` when `seal`
    /// gave no rows and the trail is empty). `seal` runs again if the transaction
    /// is retried, so it must be a pure function of the head it is given.
    pub fn append_audit<F>(&self, mut seal: F) -> Result<Option<AuditHead>, IndexError>
    where
        F: FnMut(Option<&AuditHead>) -> Vec<AuditRow>,
    {
        with_conn!(self, conn => conn.write(|conn| {
            if conn.dialect() == Dialect::Postgres {
                conn.run("SELECT pg_advisory_xact_lock(?)", &[Bind::Int(AUDIT_LOCK)])?;
            }
            let head = read_head(conn)?;
            let rows = seal(head.as_ref());
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let insert = insert_sql(chunk);
                conn.run(insert.sql(), insert.binds())?;
            }
            Ok(match rows.last() {
                Some(last) => Some(AuditHead { seq: last.seq, hash: last.hash.clone() }),
                None => head,
            })
        }))
    }

    /// The newest row of the audit trail, if any.
    pub fn audit_head(&self) -> Result<Option<AuditHead>, IndexError> {
        with_conn!(self, conn => read_head(conn))
    }

    /// Up to `limit` rows with `seq > after`, in `seq` order: one page of a walk
    /// over the whole trail (keyset paging, so a walk holds one page at a time).
    pub fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<AuditRow>(
            &format!("SELECT {COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?"),
            &[Bind::Int(after), Bind::Int(limit)],
        )?))
    }

    /// Like [`Index::audit_page`], only rows recorded at or after `since` (RFC 3339
    /// UTC text in the stored format, compared as text).
    pub fn audit_page_since(
        &self,
        since: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, IndexError> {
        Ok(with_conn!(self, conn => conn.load::<AuditRow>(
            &format!("SELECT {COLUMNS} FROM audit_events WHERE at >= ? AND seq > ? ORDER BY seq LIMIT ?"),
            &[Bind::Text(since.to_string()), Bind::Int(after), Bind::Int(limit)],
        )?))
    }
}

fn read_head<C: IndexConn>(conn: &mut C) -> Result<Option<AuditHead>, IndexError> {
    Ok(conn
        .load::<AuditHead>(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )?
        .pop())
}

fn insert_sql(rows: &[AuditRow]) -> SqlBuilder {
    let mut sql = SqlBuilder::new();
    sql.push(&format!("INSERT INTO audit_events ({COLUMNS}) VALUES "));
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        let values = [
            Bind::Int(row.seq),
            Bind::Text(row.at.clone()),
            Bind::Text(row.actor.clone()),
            Bind::Text(row.actor_kind.clone()),
            Bind::NullableText(row.client_address.clone()),
            Bind::Text(row.tenant.clone()),
            Bind::Text(row.action.clone()),
            Bind::Text(row.outcome.clone()),
            Bind::NullableInt(row.status),
            Bind::NullableText(row.study_uid.clone()),
            Bind::NullableText(row.series_uid.clone()),
            Bind::NullableText(row.instance_uids.clone()),
            Bind::NullableText(row.detail.clone()),
            Bind::Text(row.prev_hash.clone()),
            Bind::Text(row.hash.clone()),
        ];
        sql.push("(").bind_list(values).push(")");
    }
    sql
}
