//! Entity tags for generated documents (the capabilities and OpenAPI
//! descriptions): a strong `ETag` of the bytes, and 304 for a matching
//! `If-None-Match`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

/// A generated description with a strong `ETag` of its bytes; a matching
/// `If-None-Match` gets 304 without the body.
pub fn with_etag(request: &HttpRequest, content_type: &str, body: String) -> HttpResponse {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&digest.as_ref()[..16]));
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish();
    }
    HttpResponse::Ok()
        .content_type(content_type.to_string())
        .insert_header((header::ETAG, etag))
        .body(body)
}
