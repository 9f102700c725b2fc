//! QIDO-RS search: from a typed search request to SQL, following the matching rules
//! of PS3.4 C.2.2.2 as PS3.18 §8.3.4 applies them. The request types are in
//! `request`, the reading of match values in `values`.

mod request;
mod values;

use dicom_core::Tag;

use super::catalog::{self, Attr, Kind, Level};
use super::records::StoredFields;
use super::sql::{Bind, SqlBuilder};
use crate::dicom::text;
pub use crate::service::request::{IncludeField, MatchKey, Resource, SearchRequest};
use values::{
    any_of, combined_date_time, date_range, has_wildcard, invalid, local_date_time_bounds,
    time_range,
};
pub use values::{like_pattern, normalize_person_name, EMPTY_VALUE};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidValue {
        name: String,
        value: String,
        reason: &'static str,
    },
}

/// A search ready to run.
#[derive(Debug)]
pub struct Plan {
    pub from_where: SqlBuilder,
    pub level: Level,
    /// Attributes the results carry (beyond those always present at their level).
    pub requested: Vec<&'static Attr>,
    /// Attributes asked for that the index does not keep (read from stored
    /// instances by the service).
    pub stored: StoredFields,
    /// Match keys and includefields that were ignored, for the 299 warning.
    pub ignored: Vec<String>,
}

/// Turns a request into SQL (`FROM ... WHERE ...`, without SELECT and ORDER BY).
pub fn plan(request: &SearchRequest) -> Result<Plan, QueryError> {
    let level = request.resource.level();
    let mut sql = SqlBuilder::new();
    match level {
        Level::Study => sql.push("FROM studies st WHERE 1=1"),
        Level::Series => {
            sql.push("FROM series se JOIN studies st ON st.study_pk = se.study_fk WHERE 1=1")
        }
        Level::Instance => sql.push(
            "FROM instances i JOIN series se ON se.series_pk = i.series_fk \
             JOIN studies st ON st.study_pk = se.study_fk WHERE 1=1",
        ),
    };
    match &request.resource {
        Resource::StudySeries { study } | Resource::StudyInstances { study } => {
            sql.push(" AND st.study_instance_uid = ")
                .bind(Bind::Text(study.clone()));
        }
        Resource::SeriesInstances { study, series } => {
            sql.push(" AND st.study_instance_uid = ")
                .bind(Bind::Text(study.clone()));
            sql.push(" AND se.series_instance_uid = ")
                .bind(Bind::Text(series.clone()));
        }
        _ => {}
    }

    let mut requested: Vec<&'static Attr> = Vec::new();
    let mut ignored = Vec::new();
    let mut sequence_keys: Vec<(&MatchKey, Tag)> = Vec::new();
    let date = request
        .matches
        .iter()
        .find(|m| m.path == [Tag(0x0008, 0x0020)]);
    let time = request
        .matches
        .iter()
        .find(|m| m.path == [Tag(0x0008, 0x0030)]);
    // TimezoneOffsetFromUTC as a key is the timezone of the query's dates and
    // times (PS3.4 C.4.1.1.3.2 via PS3.18 §8.3.4): StudyDate (and StudyTime)
    // become an instant range in UTC, compared with each study's own instant
    // where the study states its offset, and with its local date and time
    // where it does not.
    let timezone = request
        .matches
        .iter()
        .find(|m| m.path == [Tag(0x0008, 0x0201)])
        .filter(|m| !m.value.is_empty());
    let query_offset = timezone
        .map(|key| {
            text::utc_offset_minutes(&key.value)
                .ok_or_else(|| invalid(key, "expected a timezone offset +HHMM or -HHMM"))
        })
        .transpose()?;
    let adjusted = match (query_offset, date) {
        (Some(offset), Some(date)) => match local_date_time_bounds(date, time)? {
            Some((low, high)) => {
                let utc = |bound: &Option<String>| {
                    bound
                        .as_ref()
                        .map(|b| {
                            text::to_utc(b, offset)
                                .ok_or_else(|| invalid(date, "not a valid date and time"))
                        })
                        .transpose()
                };
                let utc_bounds = (utc(&low)?, utc(&high)?);
                Some(((low, high), utc_bounds))
            }
            None => None,
        },
        _ => None,
    };
    let combined = if adjusted.is_some() {
        None
    } else {
        combined_date_time(date, time)?
    };
    let date_time_expr = "(st.study_date || COALESCE(st.study_time_norm, '000000.000000'))";
    if let Some(((low, high), (utc_low, utc_high))) = &adjusted {
        sql.push(" AND ((st.study_datetime_utc IS NULL");
        push_date_time_bounds(&mut sql, date_time_expr, low, high);
        sql.push(") OR (st.study_datetime_utc IS NOT NULL");
        if let Some(low) = utc_low {
            sql.push(" AND st.study_datetime_utc >= ")
                .bind(Bind::Text(low.clone()));
        }
        if let Some(high) = utc_high {
            sql.push(" AND st.study_datetime_utc <= ")
                .bind(Bind::Text(high.clone()));
        }
        sql.push("))");
    }
    if let Some((low, high)) = &combined {
        push_date_time_bounds(&mut sql, date_time_expr, low, high);
    }

    for key in &request.matches {
        if key.value.split(',').count() > MAX_LIST_VALUES {
            return Err(invalid(key, "a list of values takes at most 500 of them"));
        }
        let Some(attr) = catalog::find(key.path[0]) else {
            ignored.push(key.name.clone());
            continue;
        };
        if attr.level > level {
            ignored.push(key.name.clone());
            continue;
        }
        if key.path.len() > 1 {
            let nested_ok = attr.kind == Kind::RequestSequence
                && key.path.len() == 2
                && [
                    catalog::SCHEDULED_PROCEDURE_STEP_ID,
                    catalog::REQUESTED_PROCEDURE_ID,
                ]
                .contains(&key.path[1]);
            if !nested_ok {
                ignored.push(key.name.clone());
                continue;
            }
            push_unique(&mut requested, attr);
            sequence_keys.push((key, key.path[1]));
            continue;
        }
        push_unique(&mut requested, attr);
        if request.empty_value_matching && key.value == EMPTY_VALUE {
            add_empty_condition(&mut sql, attr);
            continue;
        }
        let date_time_done = combined.is_some() || adjusted.is_some();
        if date_time_done && (attr.column == "study_date" || attr.column == "study_time") {
            continue;
        }
        if query_offset.is_some() && attr.column == "timezone_offset_from_utc" {
            // The timezone of the query, not a value to match.
            continue;
        }
        if request.multiple_value_matching
            && key.value.contains('\\')
            && add_all_of_condition(&mut sql, attr, key)?
        {
            continue;
        }
        add_condition(&mut sql, attr, key, request.fuzzy)?;
    }
    if !sequence_keys.is_empty() {
        // All keys of one sequence must match the same item (PS3.4 C.2.2.2.6).
        sql.push(" AND EXISTS (SELECT 1 FROM series_requests r WHERE r.series_fk = se.series_pk");
        for (key, item_tag) in sequence_keys {
            let column = if item_tag == catalog::SCHEDULED_PROCEDURE_STEP_ID {
                "r.scheduled_procedure_step_id"
            } else {
                "r.requested_procedure_id"
            };
            if let Some(values) = any_of(&key.value, true) {
                sql.push(" AND (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    string_match(&mut sql, column, v);
                }
                sql.push(")");
            }
        }
        sql.push(")");
    }

    let mut stored = StoredFields::default();
    for include in &request.include {
        match include {
            IncludeField::All => {
                for attr in catalog::ATTRIBUTES {
                    if request.resource.result_levels().contains(&attr.level) {
                        push_unique(&mut requested, attr);
                    }
                }
                stored.all = true;
            }
            IncludeField::Path { name, path } => match catalog::find(path[0]) {
                Some(attr) if attr.level <= level && path.len() == 1 => {
                    push_unique(&mut requested, attr)
                }
                Some(attr) if attr.level <= level && attr.kind == Kind::RequestSequence => {
                    push_unique(&mut requested, attr)
                }
                // An attribute of a level below the results' (a SOP Instance
                // UID of a study) has no one value to return.
                Some(_) => ignored.push(name.clone()),
                // Any other attribute, from a stored instance of the result:
                // private ones at any level (theirs is unknown), standard ones
                // of the results' level or above (as for the index's attributes).
                None if path[0].0 % 2 == 1 || catalog::entity_level(path[0]) <= level => {
                    if !stored.tags.contains(&path[0]) {
                        stored.tags.push(path[0]);
                    }
                }
                None => ignored.push(name.clone()),
            },
        }
    }
    Ok(Plan {
        from_where: sql,
        level,
        requested,
        stored,
        ignored,
    })
}

/// `AND` the bounds of a local date-time range over `expr`, the plain date
/// bounds first so that the date index narrows the rows the expression is
/// evaluated on.
fn push_date_time_bounds(
    sql: &mut SqlBuilder,
    expr: &str,
    low: &Option<String>,
    high: &Option<String>,
) {
    if let Some(low) = low {
        sql.push(" AND st.study_date >= ")
            .bind(Bind::Text(low[..8].to_string()));
        sql.push(&format!(" AND {expr} >= "))
            .bind(Bind::Text(low.clone()));
    }
    if let Some(high) = high {
        sql.push(" AND st.study_date <= ")
            .bind(Bind::Text(high[..8].to_string()));
        sql.push(&format!(" AND {expr} <= "))
            .bind(Bind::Text(high.clone()));
    }
}

fn push_unique(list: &mut Vec<&'static Attr>, attr: &'static Attr) {
    if !list.iter().any(|a| a.tag == attr.tag) {
        list.push(attr);
    }
}

fn qualified(attr: &Attr, suffix: &str) -> String {
    let alias = match attr.level {
        Level::Study => "st",
        Level::Series => "se",
        Level::Instance => "i",
    };
    format!("{alias}.{}{suffix}", attr.column)
}

fn string_match(sql: &mut SqlBuilder, column: &str, value: &str) {
    if has_wildcard(value) {
        sql.push(&format!("{column} LIKE "))
            .bind(Bind::Text(like_pattern(value)))
            .push(" ESCAPE '\\'");
    } else {
        sql.push(&format!("{column} = "))
            .bind(Bind::Text(value.to_string()));
    }
}

/// `emptyvaluematching=true` with a key of `""`: the attribute is empty or absent,
/// for the value representations that can be empty and matched on (PS3.18
/// §8.3.4.5: AE, CS, DA, DT, LO, LT, PN, SH, ST, TM, UC, UR, UT). Other
/// attributes (UIDs, numbers, counts) are matched universally.
fn add_empty_condition(sql: &mut SqlBuilder, attr: &Attr) {
    match attr.kind {
        Kind::Text | Kind::PersonName | Kind::Date | Kind::Time => {
            let column = qualified(attr, "");
            sql.push(&format!(" AND ({column} IS NULL OR {column} = '')"));
        }
        Kind::ModalitiesInStudy => {
            sql.push(
                " AND NOT EXISTS (SELECT 1 FROM series m WHERE m.study_fk = st.study_pk \
                 AND m.modality IS NOT NULL AND m.modality <> '')",
            );
        }
        _ => {}
    }
}

/// Multiple Value Matching (PS3.4 C.2.2.2.8): `CT\\PT` matches an entity whose
/// multi-valued attribute holds every listed value, in any order, with others
/// besides; values may not hold wildcards. It applies to the attributes of VR
/// AE, AS, AT, CS, LO, PN, SH or UC and VM above 1; of those the index matches
/// ModalitiesInStudy. `false`: the attribute is not one of them, and the key is
/// matched as without the flag.
/// Values of one comma-separated list key. Most lists become one `OR` per
/// value, and SQLite refuses an expression deeper than 1,000: beyond this the
/// request is a 400, not a statement the database fails with a 500.
const MAX_LIST_VALUES: usize = 500;

/// Values of one Multiple Value Matching key (a study has a few modalities;
/// PS3.3 defines about sixty).
const MAX_ALL_OF_VALUES: usize = 16;

fn add_all_of_condition(
    sql: &mut SqlBuilder,
    attr: &Attr,
    key: &MatchKey,
) -> Result<bool, QueryError> {
    if attr.kind != Kind::ModalitiesInStudy {
        return Ok(false);
    }
    let values: Vec<&str> = key.value.split('\\').collect();
    if values.len() > MAX_ALL_OF_VALUES {
        // Each value is a subquery: a long key would make a statement the
        // database refuses (SQLite's expression depth) or is slow to plan.
        return Err(invalid(
            key,
            "multiple value matching takes at most 16 values",
        ));
    }
    if values
        .iter()
        .any(|v| v.is_empty() || has_wildcard(v) || v.contains(','))
    {
        return Err(invalid(
            key,
            "multiple value matching takes backslash-separated values without wildcards",
        ));
    }
    for value in values {
        sql.push(
            " AND EXISTS (SELECT 1 FROM series m WHERE m.study_fk = st.study_pk AND m.modality = ",
        )
        .bind(Bind::Text(value.to_string()))
        .push(")");
    }
    Ok(true)
}

fn add_condition(
    sql: &mut SqlBuilder,
    attr: &Attr,
    key: &MatchKey,
    fuzzy: bool,
) -> Result<(), QueryError> {
    let column = qualified(attr, "");
    match attr.kind {
        Kind::Count | Kind::RequestSequence => {
            // Returned, not matched: a value here only asks for the attribute.
        }
        Kind::Uid => {
            if let Some(values) = any_of(&key.value, true) {
                if values
                    .iter()
                    .any(|v| v.is_empty() || v.contains(['*', '?']))
                {
                    return Err(invalid(key, "UID lists take exact UIDs"));
                }
                sql.push(&format!(" AND {column} IN ("))
                    .bind_list(values.iter().map(|v| Bind::Text(v.to_string())))
                    .push(")");
            }
        }
        Kind::Text => {
            if let Some(values) = any_of(&key.value, true) {
                sql.push(" AND (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    string_match(sql, &column, v);
                }
                sql.push(")");
            }
        }
        Kind::PersonName => {
            if let Some(values) = any_of(&key.value, true) {
                sql.push(" AND (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    let folded = normalize_person_name(v);
                    if fuzzy && !has_wildcard(&folded) {
                        // Fuzzy: the start of any name component.
                        let words = text::person_name_words(&folded);
                        let pattern = format!("% {}%", like_pattern(words.trim()));
                        sql.push(&format!("{} LIKE ", qualified(attr, "_words")))
                            .bind(Bind::Text(pattern))
                            .push(" ESCAPE '\\'");
                    } else {
                        string_match(sql, &qualified(attr, "_norm"), &folded);
                    }
                }
                sql.push(")");
            }
        }
        Kind::Date => {
            if let Some(values) = any_of(&key.value, false) {
                sql.push(" AND (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    let (low, high) = date_range(key, v)?;
                    range_condition(sql, &column, low, high);
                }
                sql.push(")");
            }
        }
        Kind::Time => {
            if let Some(values) = any_of(&key.value, false) {
                sql.push(" AND (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    let (low, high) = time_range(key, v)?;
                    range_condition(sql, &qualified(attr, "_norm"), low, high);
                }
                sql.push(")");
            }
        }
        Kind::Int => {
            if let Some(values) = any_of(&key.value, false) {
                let numbers = values
                    .iter()
                    .map(|v| {
                        v.trim()
                            .parse::<i64>()
                            .map_err(|_| invalid(key, "expected an integer"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                sql.push(&format!(" AND {column} IN ("))
                    .bind_list(numbers.into_iter().map(Bind::Int))
                    .push(")");
            }
        }
        Kind::ModalitiesInStudy => {
            if let Some(values) = any_of(&key.value, true) {
                sql.push(
                    " AND EXISTS (SELECT 1 FROM series m WHERE m.study_fk = st.study_pk AND (",
                );
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    string_match(sql, "m.modality", v);
                }
                sql.push("))");
            }
        }
        Kind::SopClassesInStudy => {
            if let Some(values) = any_of(&key.value, false) {
                sql.push(
                    " AND EXISTS (SELECT 1 FROM instances c JOIN series cs ON cs.series_pk = c.series_fk \
                     WHERE cs.study_fk = st.study_pk AND c.sop_class_uid IN (",
                )
                .bind_list(values.iter().map(|v| Bind::Text(v.to_string())))
                .push("))");
            }
        }
    }
    Ok(())
}

fn range_condition(sql: &mut SqlBuilder, column: &str, low: Option<String>, high: Option<String>) {
    sql.push("(1=1");
    if let Some(low) = low {
        sql.push(&format!(" AND {column} >= "))
            .bind(Bind::Text(low));
    }
    if let Some(high) = high {
        sql.push(&format!(" AND {column} <= "))
            .bind(Bind::Text(high));
    }
    sql.push(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, value: &str) -> MatchKey {
        MatchKey {
            name: name.into(),
            path: crate::dicom::attributes::resolve_path(name).unwrap(),
            value: value.into(),
        }
    }

    fn request(matches: Vec<MatchKey>) -> SearchRequest {
        SearchRequest {
            resource: Resource::Studies,
            matches,
            include: vec![],
            fuzzy: false,
            empty_value_matching: false,
            multiple_value_matching: false,
            limit: None,
            offset: 0,
        }
    }

    #[test]
    fn multiple_value_matching_asks_for_every_modality() {
        let mut r = request(vec![key("ModalitiesInStudy", "CT\\PT")]);
        r.multiple_value_matching = true;
        let p = plan(&r).unwrap();
        assert_eq!(p.from_where.sql().matches("EXISTS").count(), 2);
        assert_eq!(p.from_where.binds().len(), 2);
        // Without the flag the key is one value, as before.
        r.multiple_value_matching = false;
        assert_eq!(plan(&r).unwrap().from_where.binds().len(), 1);
        let long_list = vec!["CT"; MAX_LIST_VALUES + 1].join(",");
        assert!(plan(&request(vec![key("ModalitiesInStudy", &long_list)])).is_err());
        let list = vec!["CT"; MAX_LIST_VALUES].join(",");
        assert!(plan(&request(vec![key("ModalitiesInStudy", &list)])).is_ok());
        let too_many = vec!["CT"; MAX_ALL_OF_VALUES + 1].join("\\");
        for bad in ["CT\\P*", "CT\\", "CT\\MR,PT", too_many.as_str()] {
            let mut r = request(vec![key("ModalitiesInStudy", bad)]);
            r.multiple_value_matching = true;
            assert!(plan(&r).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wildcards_become_like_patterns() {
        assert_eq!(like_pattern("Do?e*"), "Do_e%");
        assert_eq!(like_pattern("50%_x\\"), "50\\%\\_x\\\\");
    }

    #[test]
    fn malformed_values_are_rejected() {
        for (name, value) in [
            ("StudyDate", "2024"),
            ("StudyDate", "-"),
            ("StudyTime", "99"),
            ("SeriesNumber", "x"),
            ("StudyInstanceUID", "1.2.*"),
        ] {
            let mut r = request(vec![key(name, value)]);
            r.resource = Resource::Series;
            assert!(plan(&r).is_err(), "{name}={value} accepted");
        }
    }

    #[test]
    fn lower_level_and_unknown_keys_are_ignored() {
        let p = plan(&request(vec![
            key("SOPInstanceUID", "1.2"),
            key("PatientAge", "040Y"),
        ]))
        .unwrap();
        assert_eq!(
            p.ignored,
            vec!["SOPInstanceUID".to_string(), "PatientAge".to_string()]
        );
        assert!(p.from_where.binds().is_empty());
    }

    #[test]
    fn combined_date_time_range() {
        let p = plan(&request(vec![
            key("StudyDate", "20240101-20240102"),
            key("StudyTime", "1000-1100"),
        ]))
        .unwrap();
        assert_eq!(
            p.from_where.binds(),
            &[
                Bind::Text("20240101".into()),
                Bind::Text("20240101100000.000000".into()),
                Bind::Text("20240102".into()),
                Bind::Text("20240102110059.999999".into())
            ]
        );
    }
}
