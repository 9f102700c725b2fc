//! The change feed (issue 14): `GET {prefix}/changefeed?after=SEQ&limit=N`
//! pages through every create, replace and delete of an instance and every
//! "study stable" of the tenant, in sequence order with no gaps;
//! `GET {prefix}/changefeed/latest` names the latest. A client keeps the last
//! sequence it processed and asks for what comes after it.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::state::{AppState, Site};
use crate::service::events::{self, FeedEntry};

/// Entries a page holds when the request does not say.
const DEFAULT_LIMIT: u32 = 100;

/// One page of the feed, with a `Link: rel="next"` when the page is full.
pub async fn page(
    state: web::ReqData<AppState>,
    site: web::Data<Site>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (after, limit) = parse_query(request.query_string(), site.changefeed_max_page)?;
    let entries = events::changefeed(&state.services, after, i64::from(limit)).await?;
    let mut response = HttpResponse::Ok();
    response.content_type("application/json");
    if entries.len() == limit as usize {
        if let Some(last) = entries.last() {
            response.insert_header((
                "Link",
                format!(
                    "<{}?after={}&limit={limit}>; rel=\"next\"",
                    request.path(),
                    last.seq
                ),
            ));
        }
    }
    let body: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(response.json(body))
}

/// The latest entry (`{"sequence": 0}` before the first change).
pub async fn latest(state: web::ReqData<AppState>) -> Result<HttpResponse, ApiError> {
    let body = match events::latest_change(&state.services).await? {
        Some(entry) => entry_json(&entry),
        None => json!({ "sequence": 0 }),
    };
    Ok(HttpResponse::Ok().json(body))
}

fn entry_json(entry: &FeedEntry) -> Value {
    let mut value = json!({
        "sequence": entry.seq,
        "timestamp": entry.occurred_at,
        "action": entry.action,
    });
    if let Value::Object(fields) = &mut value {
        for (name, field) in [
            ("studyInstanceUID", &entry.study_instance_uid),
            ("seriesInstanceUID", &entry.series_instance_uid),
            ("sopInstanceUID", &entry.sop_instance_uid),
            ("sopClassUID", &entry.sop_class_uid),
        ] {
            if let Some(field) = field {
                fields.insert(name.into(), json!(field));
            }
        }
        if let Some(Value::Object(detail)) = entry
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
        {
            fields.extend(detail);
        }
    }
    value
}

/// `after` (default 0) and `limit` (default 100, at most `max_page`); anything
/// else, a repeated parameter or a value out of range is a 400.
fn parse_query(query: &str, max_page: u32) -> Result<(i64, u32), ApiError> {
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
        assert_eq!(parse_query("", 1000).unwrap(), (0, 100));
        assert_eq!(parse_query("after=7&limit=3", 1000).unwrap(), (7, 3));
        assert_eq!(parse_query("limit=1000", 1000).unwrap(), (0, 1000));
        assert_eq!(parse_query("", 10).unwrap(), (0, 10));
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
            assert!(parse_query(bad, 1000).is_err(), "{bad}");
        }
    }
}
