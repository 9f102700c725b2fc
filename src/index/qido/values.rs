//! Reading match-key values (PS3.4 C.2.2.2): comma lists, wildcards and their LIKE
//! patterns, the empty-value key, person-name folding, and date and time ranges.

use super::{MatchKey, QueryError};
use crate::dicom::text::{self, Bound};

/// Splits a comma list into its values; `None` when the key matches universally
/// (empty value, or `*` where wildcards apply).
pub(super) fn any_of(value: &str, wildcards_apply: bool) -> Option<Vec<&str>> {
    if value.is_empty() || (wildcards_apply && value.chars().all(|c| c == '*')) {
        return None;
    }
    Some(value.split(',').collect())
}

pub(super) fn invalid(key: &MatchKey, reason: &'static str) -> QueryError {
    QueryError::InvalidValue {
        name: key.name.clone(),
        value: key.value.clone(),
        reason,
    }
}

pub(super) fn has_wildcard(value: &str) -> bool {
    value.contains('*') || value.contains('?')
}

/// A LIKE pattern for a DICOM wildcard value: `*` → `%`, `?` → `_`, LIKE's own
/// special characters escaped with `\`.
pub fn like_pattern(value: &str) -> String {
    let mut pattern = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '*' => pattern.push('%'),
            '?' => pattern.push('_'),
            '%' | '_' | '\\' => {
                pattern.push('\\');
                pattern.push(c);
            }
            c => pattern.push(c),
        }
    }
    pattern
}

/// The key value that, with `emptyvaluematching=true`, matches empty values:
/// two double quotes (PS3.18 §8.3.4.5).
pub const EMPTY_VALUE: &str = "\"\"";

/// The folded form person names are stored and matched in: upper case, no accents,
/// no trailing empty components.
pub fn normalize_person_name(value: &str) -> String {
    let folded = text::fold_person_name(value);
    folded
        .split('=')
        .map(|group| group.trim_end_matches(['^', ' ']))
        .collect::<Vec<_>>()
        .join("=")
        .trim_end_matches('=')
        .to_string()
}

pub(super) type Range = (Option<String>, Option<String>);

pub(super) fn date_range(key: &MatchKey, value: &str) -> Result<Range, QueryError> {
    let date = |v: &str| {
        text::normalize_date(v).ok_or_else(|| invalid(key, "expected a date YYYYMMDD or a range"))
    };
    match value.split_once('-') {
        None => {
            let d = date(value)?;
            Ok((Some(d.clone()), Some(d)))
        }
        Some(("", "")) => Err(invalid(key, "a range needs at least one end")),
        Some((low, high)) => Ok((
            (!low.is_empty()).then(|| date(low)).transpose()?,
            (!high.is_empty()).then(|| date(high)).transpose()?,
        )),
    }
}

pub(super) fn time_range(key: &MatchKey, value: &str) -> Result<Range, QueryError> {
    let time = |v: &str, bound| {
        text::normalize_time(v, bound)
            .ok_or_else(|| invalid(key, "expected a time HHMMSS.FFFFFF or a range"))
    };
    match value.split_once('-') {
        None => Ok((
            Some(time(value, Bound::Lower)?),
            Some(time(value, Bound::Upper)?),
        )),
        Some(("", "")) => Err(invalid(key, "a range needs at least one end")),
        Some((low, high)) => Ok((
            (!low.is_empty())
                .then(|| time(low, Bound::Lower))
                .transpose()?,
            (!high.is_empty())
                .then(|| time(high, Bound::Upper))
                .transpose()?,
        )),
    }
}

/// StudyDate and StudyTime both given as ranges match as one date-time range
/// (PS3.4 C.2.2.2.5.4). Returns the bounds over `date || time_norm`.
pub(super) fn combined_date_time(
    date: Option<&MatchKey>,
    time: Option<&MatchKey>,
) -> Result<Option<Range>, QueryError> {
    let (Some(date), Some(time)) = (date, time) else {
        return Ok(None);
    };
    if !date.value.contains('-')
        || !time.value.contains('-')
        || date.value.contains(',')
        || time.value.contains(',')
    {
        return Ok(None);
    }
    let (date_low, date_high) = date_range(date, &date.value)?;
    let (time_low, time_high) = time_range(time, &time.value)?;
    let low =
        date_low.map(|d| format!("{d}{}", time_low.unwrap_or_else(|| "000000.000000".into())));
    let high =
        date_high.map(|d| format!("{d}{}", time_high.unwrap_or_else(|| "235959.999999".into())));
    Ok(Some((low, high)))
}

/// The bounds over `date || time_norm` of a StudyDate key (a single date or a
/// range) together with a StudyTime key if there is one (a missing time is the
/// whole day): what TimezoneOffsetFromUTC adjustment converts to UTC. `None`
/// for a list of dates or times, which is matched unadjusted.
pub(super) fn local_date_time_bounds(
    date: &MatchKey,
    time: Option<&MatchKey>,
) -> Result<Option<Range>, QueryError> {
    if date.value.contains(',') || time.is_some_and(|t| t.value.contains(',')) {
        return Ok(None);
    }
    let (date_low, date_high) = date_range(date, &date.value)?;
    let (time_low, time_high) = match time {
        Some(time) => time_range(time, &time.value)?,
        None => (None, None),
    };
    let low =
        date_low.map(|d| format!("{d}{}", time_low.unwrap_or_else(|| "000000.000000".into())));
    let high =
        date_high.map(|d| format!("{d}{}", time_high.unwrap_or_else(|| "235959.999999".into())));
    Ok(Some((low, high)))
}
