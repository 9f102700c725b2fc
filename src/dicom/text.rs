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
