//! Cross-origin requests from browser viewers served from another origin.

/// The CORS middleware for browser viewers served from another origin. Preflight
/// `OPTIONS` requests (with `Origin` and `Access-Control-Request-Method`) are
/// answered by it; the headers DICOMweb clients read are exposed.
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    if origins.is_empty() {
        return actix_cors::Cors::default();
    }
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "OPTIONS", "HEAD"])
        .allowed_headers([
            actix_web::http::header::ACCEPT,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::AUTHORIZATION,
        ])
        .expose_headers(["content-type", "content-location", "location", "warning"])
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}
