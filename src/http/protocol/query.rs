//! The query string as DICOMweb clients write it: pairs in order,
//! percent-decoded, `+` read as a space.

use actix_web::HttpRequest;
use percent_encoding::percent_decode_str;

use crate::http::error::ApiError;

/// Query parameters in order, percent-decoded, `+` decoded as a space. PS3.18 does
/// not say how `+` reads; the clients our users run (dicomweb-client through
/// `requests`, browsers' form encoding) send spaces as `+` and a literal plus as
/// `%2B`, so we follow them (documented in the Conformance Statement).
pub fn query_pairs(request: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    parse_query(request.query_string())
}

/// The pairs of a query string (without its `?`), as [`query_pairs`] reads them.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode_str(&s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    ApiError::BadRequest(format!("query parameter {s:?} is not valid UTF-8"))
                })
        };
        pairs.push((decode(name)?, decode(value)?));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_plus_as_space() {
        let request = actix_web::test::TestRequest::with_uri(
            "/studies?StudyDescription=Head+and%20neck&TimezoneOffsetFromUTC=%2B0100&includefield",
        )
        .to_http_request();
        let pairs = query_pairs(&request).unwrap();
        assert_eq!(
            pairs[0],
            ("StudyDescription".to_string(), "Head and neck".to_string())
        );
        assert_eq!(pairs[1].1, "+0100");
        assert_eq!(pairs[2], ("includefield".to_string(), String::new()));
    }
}
