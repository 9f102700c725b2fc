//! The change feed (issue 14): `GET {prefix}/changefeed?after=SEQ&limit=N`
//! pages through every create, replace and delete of an instance and every
//! "study stable" of the tenant, in sequence order with no gaps;
//! `GET {prefix}/changefeed/latest` names the latest. A client keeps the last
//! sequence it processed and asks for what comes after it.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::protocol::feed::parse_feed_query;
use crate::http::state::{AppState, Site};
use crate::service::events::{self, cloudevent, FeedEntry};

/// One page of the feed, with a `Link: rel="next"` when the page is full.
pub async fn page(
    state: web::ReqData<AppState>,
    site: web::Data<Site>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (after, limit) = parse_feed_query(request.query_string(), site.changefeed_max_page)?;
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
    let mut fields = serde_json::Map::new();
    fields.insert("sequence".into(), json!(entry.seq));
    fields.insert("timestamp".into(), json!(entry.occurred_at));
    fields.insert("action".into(), json!(entry.action));
    fields.extend(cloudevent::facts(entry));
    Value::Object(fields)
}
