//! QIDO-RS query parsing: a query string through the handler's parsing
//! (src/http/protocol/query.rs `parse_query`, src/http/handlers/qido.rs `parse_search`) to the SQL
//! plan (src/index/qido.rs `plan`).
//!
//! Also the change feed's query (src/http/protocol/feed.rs `parse_feed_query`).
//!
//! Input: one byte choosing the resource (or the change feed), then the query
//! string (without `?`).
//! Property: every value reaches SQL as a bind parameter, never as SQL text
//! (as many `?` placeholders as binds); a change feed query accepted is a
//! sequence number and a page within the bound.
#![no_main]

use kastell::http::protocol::accept::{acceptable, negotiate_model};
use kastell::http::protocol::feed::parse_feed_query;
use kastell::http::protocol::query::parse_query;
use kastell::http::handlers::qido::parse_search;
use kastell::index::qido::plan;
use kastell::service::Resource;
use libfuzzer_sys::fuzz_target;

const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
const SERIES: &str = "1.2.826.0.1.3680043.8.498.2";

fuzz_target!(|data: &[u8]| {
    let Some((&which, query)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    if which % 7 == 6 {
        let max_page = 1 + u32::from(which) * 4;
        if let Ok((after, limit)) = parse_feed_query(query, max_page) {
            assert!(after >= 0, "after {after}");
            assert!((1..=max_page).contains(&limit), "limit {limit} of {max_page}");
        }
        return;
    }
    let resource = match which % 7 {
        0 => Resource::Studies,
        1 => Resource::Series,
        2 => Resource::Instances,
        3 => Resource::StudySeries {
            study: STUDY.into(),
        },
        4 => Resource::StudyInstances {
            study: STUDY.into(),
        },
        _ => Resource::SeriesInstances {
            study: STUDY.into(),
            series: SERIES.into(),
        },
    };
    let Ok(pairs) = parse_query(query) else {
        return;
    };
    let Ok(parsed) = parse_search(pairs, resource) else {
        return;
    };
    let _ = negotiate_model(&acceptable(&parsed.accept, None), false);
    let Ok(plan) = plan(&parsed.request) else {
        return;
    };
    let sql = plan.from_where.sql();
    assert_eq!(
        sql.matches('?').count(),
        plan.from_where.binds().len(),
        "a query value reached the SQL text: {sql}"
    );
});
