//! What protects studies from deletion (issue 15): legal holds on a study or a
//! patient, retention releases, and the facts about a study that retention
//! rules are weighed on. The rules themselves are policy (`service::lifecycle`);
//! the index hands over the facts and keeps what people decided.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::{now, with_conn, Index, IndexError, IndexPool};

/// What retention rules and holds are weighed on, for one study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyFacts {
    pub study_instance_uid: String,
    /// When the study's first instance was received (RFC 3339).
    pub received_at: String,
    /// StudyDate (DA, `YYYYMMDD`), as stored.
    pub study_date: Option<String>,
    /// PatientBirthDate (DA), as stored.
    pub patient_birth_date: Option<String>,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
    /// The active legal holds that cover the study (its own and its patient's).
    pub holds: Vec<i64>,
    /// Whether the study was released from its retention period.
    pub released: bool,
}

/// A legal hold, active or lifted.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct LegalHold {
    #[diesel(sql_type = BigInt)]
    pub hold_id: i64,
    /// `study` or `patient`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// The Study Instance UID, or the PatientID.
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub issuer_of_patient_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub placed_by: String,
    #[diesel(sql_type = Text)]
    pub placed_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub lifted_by: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub lifted_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub lift_reason: Option<String>,
}

/// What a legal hold is placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTarget {
    Study(String),
    /// A PatientID, with its issuer when the hold is to match only that issuer's.
    Patient {
        id: String,
        issuer: Option<String>,
    },
}

/// Weighs a deletion inside its transaction: `Err(reason)` refuses it.
pub type DeletionGuard<'a> = &'a (dyn Fn(&[StudyFacts]) -> Result<(), String> + Sync);

#[derive(QueryableByName)]
struct FactsRow {
    #[diesel(sql_type = Text)]
    study_instance_uid: String,
    #[diesel(sql_type = Text)]
    created_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    study_date: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    patient_birth_date: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    modalities_in_study: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    sop_classes_in_study: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    patient_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    issuer_of_patient_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    released: i64,
}

const FACTS_SELECT: &str = "SELECT st.study_instance_uid, st.created_at, st.study_date, \
     st.patient_birth_date, st.modalities_in_study, st.sop_classes_in_study, st.patient_id, \
     st.issuer_of_patient_id, \
     CAST(CASE WHEN r.study_instance_uid IS NULL THEN 0 ELSE 1 END AS BIGINT) AS released \
     FROM studies st LEFT JOIN retention_releases r \
     ON r.study_instance_uid = st.study_instance_uid";

fn split_list(list: Option<String>) -> Vec<String> {
    list.map(|l| {
        l.split('\\')
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

fn active_holds<C: IndexConn>(conn: &mut C) -> Result<Vec<LegalHold>, IndexError> {
    Ok(conn.load::<LegalHold>(
        "SELECT hold_id, kind, target, issuer_of_patient_id, reason, placed_by, placed_at, \
         lifted_by, lifted_at, lift_reason FROM legal_holds WHERE lifted_at IS NULL \
         ORDER BY hold_id",
        &[],
    )?)
}

fn covering(holds: &[LegalHold], row: &FactsRow) -> Vec<i64> {
    holds
        .iter()
        .filter(|hold| match hold.kind.as_str() {
            "study" => hold.target == row.study_instance_uid,
            _ => {
                row.patient_id.as_deref() == Some(hold.target.as_str())
                    && (hold.issuer_of_patient_id.is_none()
                        || hold.issuer_of_patient_id == row.issuer_of_patient_id)
            }
        })
        .map(|hold| hold.hold_id)
        .collect()
}

fn to_facts(holds: &[LegalHold], row: FactsRow) -> StudyFacts {
    let covered = covering(holds, &row);
    StudyFacts {
        holds: covered,
        released: row.released != 0,
        study_instance_uid: row.study_instance_uid,
        received_at: row.created_at,
        study_date: row.study_date,
        patient_birth_date: row.patient_birth_date,
        modalities: split_list(row.modalities_in_study),
        sop_classes: split_list(row.sop_classes_in_study),
    }
}

/// The facts of the studies with these primary keys, read inside the caller's
/// transaction (a deletion weighs exactly the rows it deletes).
pub(super) fn facts_of_studies<C: IndexConn>(
    conn: &mut C,
    study_pks: impl IntoIterator<Item = i64>,
) -> Result<Vec<StudyFacts>, IndexError> {
    let holds = active_holds(conn)?;
    let pks: Vec<i64> = study_pks.into_iter().collect();
    let mut facts = Vec::with_capacity(pks.len());
    for chunk in pks.chunks(500) {
        let mut sql = SqlBuilder::new();
        sql.push(FACTS_SELECT)
            .push(" WHERE st.study_pk IN (")
            .bind_list(chunk.iter().map(|pk| Bind::Int(*pk)))
            .push(")");
        let rows = conn.load::<FactsRow>(sql.sql(), sql.binds())?;
        facts.extend(rows.into_iter().map(|row| to_facts(&holds, row)));
    }
    Ok(facts)
}

impl Index {
    /// The facts of every study of the tenant, a page at a time: studies after
    /// `after` (a Study Instance UID, in UID order), at most `limit`.
    pub fn study_facts_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StudyFacts>, IndexError> {
        let mut sql = SqlBuilder::new();
        sql.push(FACTS_SELECT);
        if let Some(after) = after {
            sql.push(" WHERE st.study_instance_uid > ")
                .bind(Bind::Text(after.to_string()));
        }
        sql.push(" ORDER BY st.study_instance_uid LIMIT ")
            .bind(Bind::Int(limit));
        with_conn!(self, conn => {
            let holds = active_holds(conn)?;
            let rows = conn.load::<FactsRow>(sql.sql(), sql.binds())?;
            Ok(rows.into_iter().map(|row| to_facts(&holds, row)).collect())
        })
    }

    /// The facts of one study, if it is stored.
    pub fn study_facts(&self, study: &str) -> Result<Option<StudyFacts>, IndexError> {
        let mut sql = SqlBuilder::new();
        sql.push(FACTS_SELECT)
            .push(" WHERE st.study_instance_uid = ")
            .bind(Bind::Text(study.to_string()));
        with_conn!(self, conn => {
            let holds = active_holds(conn)?;
            let rows = conn.load::<FactsRow>(sql.sql(), sql.binds())?;
            Ok(rows.into_iter().next().map(|row| to_facts(&holds, row)))
        })
    }

    /// Places a legal hold; returns its number.
    pub fn place_hold(
        &self,
        target: &HoldTarget,
        reason: &str,
        placed_by: &str,
    ) -> Result<i64, IndexError> {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = BigInt)]
            hold_id: i64,
        }
        let (kind, target, issuer) = match target {
            HoldTarget::Study(uid) => ("study", uid.clone(), None),
            HoldTarget::Patient { id, issuer } => ("patient", id.clone(), issuer.clone()),
        };
        let binds = [
            Bind::Text(kind.to_string()),
            Bind::Text(target),
            Bind::NullableText(issuer),
            Bind::Text(reason.to_string()),
            Bind::Text(placed_by.to_string()),
            Bind::Text(now()),
        ];
        let rows = with_conn!(self, conn => conn.write(|conn| Ok(conn.load::<Id>(
            "INSERT INTO legal_holds (kind, target, issuer_of_patient_id, reason, placed_by, placed_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING hold_id",
            &binds,
        )?))?);
        rows.into_iter()
            .next()
            .map(|row| row.hold_id)
            .ok_or(IndexError::Database(diesel::result::Error::NotFound))
    }

    /// Lifts an active legal hold; false when there is no such active hold.
    pub fn lift_hold(
        &self,
        hold_id: i64,
        reason: &str,
        lifted_by: &str,
    ) -> Result<bool, IndexError> {
        let binds = [
            Bind::Text(lifted_by.to_string()),
            Bind::Text(now()),
            Bind::Text(reason.to_string()),
            Bind::Int(hold_id),
        ];
        let changed = with_conn!(self, conn => conn.write(|conn| Ok(conn.run(
            "UPDATE legal_holds SET lifted_by = ?, lifted_at = ?, lift_reason = ? \
             WHERE hold_id = ? AND lifted_at IS NULL",
            &binds,
        )?))?);
        Ok(changed == 1)
    }

    /// The legal holds, newest first; lifted ones too when `include_lifted`.
    pub fn legal_holds(&self, include_lifted: bool) -> Result<Vec<LegalHold>, IndexError> {
        let filter = if include_lifted {
            ""
        } else {
            " WHERE lifted_at IS NULL"
        };
        let sql = format!(
            "SELECT hold_id, kind, target, issuer_of_patient_id, reason, placed_by, placed_at, \
             lifted_by, lifted_at, lift_reason FROM legal_holds{filter} ORDER BY hold_id DESC"
        );
        Ok(with_conn!(self, conn => conn.load::<LegalHold>(&sql, &[])?))
    }

    /// Releases a stored study from its retention period (an override whose
    /// reason the caller audits). False when the study is not stored.
    pub fn release_retention(
        &self,
        study: &str,
        reason: &str,
        released_by: &str,
    ) -> Result<bool, IndexError> {
        let binds = [
            Bind::Text(study.to_string()),
            Bind::Text(released_by.to_string()),
            Bind::Text(now()),
            Bind::Text(reason.to_string()),
            Bind::Text(study.to_string()),
        ];
        let inserted = with_conn!(self, conn => conn.write(|conn| {
            conn.run(
                "DELETE FROM retention_releases WHERE study_instance_uid = ?",
                &binds[..1],
            )?;
            Ok(conn.run(
                "INSERT INTO retention_releases (study_instance_uid, released_by, released_at, reason) \
                 SELECT ?, ?, ?, ? WHERE EXISTS \
                 (SELECT 1 FROM studies WHERE study_instance_uid = ?)",
                &binds,
            )?)
        })?);
        Ok(inserted == 1)
    }
}
