//! The change feed's query (`GET {prefix}/changefeed?after=SEQ&limit=N`):
//! two numbers, each bounded, anything else refused (fuzzed with the QIDO
//! query, `fuzz/fuzz_targets/qido_query.rs`).

use super::super::error::ApiError;

/// Entries a page holds when the request does not say.
const DEFAULT_LIMIT: u32 = 100;

/// `after` (default 0) and `limit` (default 100, at most `max_page`); anything
/// else, a repeated parameter or a value out of range is a 400.
pub fn parse_feed_query(query: &str, max_page: u32) -> Result<(i64, u32), ApiError> {
    let mut after: Option<i64> = None;
    let mut limit: Option<u32> = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "after" if after.is_none() => {
                after = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "after must be a sequence number (0 or more), got {:?}",
                                truncate(&value)
                            ))
                        })?,
                )
            }
            "limit" if limit.is_none() => {
                limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=max_page).contains(n))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "limit must be between 1 and {max_page}, got {:?}",
                                truncate(&value)
                            ))
                        })?,
                )
            }
            "after" | "limit" => {
                return Err(ApiError::BadRequest(format!(
                    "the query parameter {name} is given twice"
                )))
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {:?} (the change feed takes after and limit)",
                    truncate(other)
                )))
            }
        }
    }
    Ok((
        after.unwrap_or(0),
        limit.unwrap_or(DEFAULT_LIMIT.min(max_page)),
    ))
}

/// A parameter as an error message may quote it.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_after_and_limit_within_bounds() {
        assert_eq!(parse_feed_query("", 1000).unwrap(), (0, 100));
        assert_eq!(parse_feed_query("after=7&limit=3", 1000).unwrap(), (7, 3));
        assert_eq!(parse_feed_query("limit=1000", 1000).unwrap(), (0, 1000));
        assert_eq!(parse_feed_query("", 10).unwrap(), (0, 10));
        for bad in [
            "after=-1",
            "after=x",
            "after=99999999999999999999",
            "limit=0",
            "limit=1001",
            "limit=",
            "after=1&after=2",
            "offset=3",
            "includemetadata=true",
        ] {
            assert!(parse_feed_query(bad, 1000).is_err(), "{bad}");
        }
    }
}
