//! Text rules of matching: folding person names for case- and accent-insensitive
//! search, and normalising DA/TM values so they compare by meaning.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Folds a person name (or a pattern) for insensitive comparison: accents removed,
/// upper case. `*` and `?` pass through unchanged.
pub fn fold_person_name(value: &str) -> String {
    value
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_uppercase)
        .collect()
}

/// The folded name components of a person name, each prefixed with a space and the
/// whole closed by one: `" DOE JOHN "`. Fuzzy matching looks for `" <TERM>"` in it,
/// i.e. a prefix of any component.
pub fn person_name_words(value: &str) -> String {
    let folded = fold_person_name(value);
    let mut words = String::from(" ");
    for word in folded
        .split(|c: char| c == '^' || c == '=' || c == '\\' || c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        words.push_str(word);
        words.push(' ');
    }
    words
}

/// Normalises a DA value to `YYYYMMDD` (accepting the old `YYYY.MM.DD` form).
pub fn normalize_date(value: &str) -> Option<String> {
    let digits: String = value.trim().chars().filter(|c| *c != '.').collect();
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// A TimezoneOffsetFromUTC value (`+HHMM` or `-HHMM`, PS3.3 C.12.1.1.8) in
/// minutes east of UTC; `None` when it is not one (hours above 14, minutes
/// above 59, or any other form).
pub fn utc_offset_minutes(value: &str) -> Option<i32> {
    let value = value.trim();
    let (sign, digits) = match value.as_bytes().first()? {
        b'+' => (1, &value[1..]),
        b'-' => (-1, &value[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    (hours <= 14 && minutes <= 59).then_some(sign * (hours * 60 + minutes))
}

/// A local date-time `YYYYMMDDHHMMSS.FFFFFF` (a normalised date followed by a
/// normalised time) at `offset_minutes` east of UTC, as the same instant in
/// UTC, in the same form. `None` for an impossible date or time.
pub fn to_utc(local: &str, offset_minutes: i32) -> Option<String> {
    use chrono::{Datelike, NaiveDate, TimeDelta, Timelike};
    let number = |range: std::ops::Range<usize>| -> Option<u32> { local.get(range)?.parse().ok() };
    if local.len() != 21 || local.as_bytes().get(14) != Some(&b'.') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(4..6)?, number(6..8)?)?;
    let time = date.and_hms_micro_opt(
        number(8..10)?,
        number(10..12)?,
        number(12..14)?,
        number(15..21)?,
    )?;
    let utc = time.checked_sub_signed(TimeDelta::try_minutes(i64::from(offset_minutes))?)?;
    Some(format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}.{:06}",
        utc.year(),
        utc.month(),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.nanosecond() / 1000
    ))
}

/// Which end of a range a partial time is completed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Lower,
    Upper,
}

/// Normalises a TM value to `HHMMSS.FFFFFF`, completing missing precision towards
/// `bound` (`14` is `140000.000000` as a lower and `145959.999999` as an upper bound).
/// Accepts the old `HH:MM:SS` form.
pub fn normalize_time(value: &str, bound: Bound) -> Option<String> {
    let value = value.trim();
    let (whole, fraction) = match value.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (value, None),
    };
    let whole: String = whole.chars().filter(|c| *c != ':').collect();
    if whole.is_empty()
        || whole.len() > 6
        || whole.len() % 2 != 0
        || !whole.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if let Some(f) = fraction {
        if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) || whole.len() != 6
        {
            return None;
        }
    }
    let fill = match bound {
        Bound::Lower => "000000",
        Bound::Upper => "595959",
    };
    let mut out = whole.clone();
    out.push_str(&fill[whole.len()..]);
    let hours: u32 = out[..2].parse().ok()?;
    let minutes: u32 = out[2..4].parse().ok()?;
    let seconds: u32 = out[4..6].parse().ok()?;
    if hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    out.push('.');
    let fraction_fill = if bound == Bound::Upper && fraction.is_none() {
        '9'
    } else {
        '0'
    };
    let digits = fraction.unwrap_or("");
    out.push_str(digits);
    for _ in digits.len()..6 {
        out.push(fraction_fill);
    }
    Some(out)
}

/// Trims DICOM padding: trailing spaces and NULs always, leading spaces too except for
/// the text VRs where they are significant.
pub fn trim_value(value: &str, keep_leading: bool) -> &str {
    let trimmed = value.trim_end_matches([' ', '\0']);
    if keep_leading {
        trimmed
    } else {
        trimmed.trim_start_matches(' ')
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_offsets_and_conversion() {
        assert_eq!(super::utc_offset_minutes("+0100"), Some(60));
        assert_eq!(super::utc_offset_minutes("-0530"), Some(-330));
        for bad in ["0100", "+100", "+1500", "+0160", "+01:00", ""] {
            assert_eq!(super::utc_offset_minutes(bad), None, "{bad}");
        }
        // Across midnight and a month end, both ways.
        assert_eq!(
            super::to_utc("20230301003000.000000", 60).as_deref(),
            Some("20230228233000.000000")
        );
        assert_eq!(
            super::to_utc("20231231233000.500000", -120).as_deref(),
            Some("20240101013000.500000")
        );
        assert_eq!(super::to_utc("20230230120000.000000", 0), None);
        assert_eq!(super::to_utc("2023023012", 0), None);
    }

    use super::*;

    #[test]
    fn folds_names() {
        assert_eq!(fold_person_name("Müller^Jürgen"), "MULLER^JURGEN");
        assert_eq!(fold_person_name("*doe*"), "*DOE*");
        assert_eq!(person_name_words("Doe^John Paul^^Dr"), " DOE JOHN PAUL DR ");
    }

    #[test]
    fn normalizes_times_by_meaning() {
        assert_eq!(
            normalize_time("2230", Bound::Lower).unwrap(),
            "223000.000000"
        );
        assert_eq!(
            normalize_time("223000", Bound::Lower).unwrap(),
            "223000.000000"
        );
        assert_eq!(normalize_time("14", Bound::Upper).unwrap(), "145959.999999");
        assert_eq!(
            normalize_time("10:20:30.5", Bound::Lower).unwrap(),
            "102030.500000"
        );
        assert_eq!(
            normalize_time("102030.5", Bound::Upper).unwrap(),
            "102030.500000"
        );
        assert!(normalize_time("25", Bound::Lower).is_none());
        assert!(normalize_time("123", Bound::Lower).is_none());
        assert!(normalize_time("abc", Bound::Lower).is_none());
        assert_eq!(normalize_date("2024.01.31").unwrap(), "20240131");
        assert!(normalize_date("2024013").is_none());
    }
}
