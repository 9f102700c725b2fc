//! The HTTP face of Kastell: the route table, one module per DICOMweb service, and
//! the helpers they share. The only module that knows actix.

pub mod accept;
pub mod auth;
mod capabilities;
mod client_addr;
mod delete;
pub mod error;
pub mod multipart;
mod openapi;
pub mod qido;
mod rendered;
pub mod routes;
pub mod shield;
mod stow;
mod target;
pub mod telemetry;
pub mod tenancy;
pub mod wado;
mod wado_uri;

use actix_web::{web, HttpRequest, HttpResponse};
use percent_encoding::percent_decode_str;

use crate::service::Services;
use error::ApiError;

/// What every handler gets: the services of the request's tenant (attached by
/// the tenancy middleware) and how the client reached us.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub tenant: String,
    /// The DICOMweb base path as the client sees it (`/tenants/{t}/dicomweb` for
    /// a tenant other than the default).
    pub path_prefix: String,
    /// The configured prefix the route table is mounted at.
    pub route_prefix: String,
    pub public_base_url: String,
    pub max_request_bytes: u64,
    pub warning_agent: String,
    /// The sovereignty report (control chain) as JSON, computed from the
    /// configuration before start-up; the configuration does not change while the
    /// process runs, so neither does the report.
    pub sovereignty_report: std::sync::Arc<serde_json::Value>,
    /// Who is asking (`None` on the health checks, which need no credentials).
    pub principal: Option<crate::auth::Principal>,
    /// Whether the TCP peer is one of `server.trusted_proxies`: only then do
    /// `Forwarded` / `X-Forwarded-*` name the host and scheme of the URLs we write.
    pub from_trusted_proxy: bool,
}

impl AppState {
    /// The absolute DICOMweb base URL as this client reached us: the configured
    /// public URL, else scheme and host from `Forwarded` / `X-Forwarded-*` when
    /// the peer is a trusted proxy, else from `Host` and the connection. A client
    /// that is not a trusted proxy cannot make us write another host into a
    /// response (a shared cache in front would keep it for everyone).
    pub fn base_url(&self, request: &HttpRequest) -> String {
        if !self.public_base_url.is_empty() {
            return format!(
                "{}{}",
                self.public_base_url.trim_end_matches('/'),
                self.path_prefix
            );
        }
        let port = request.app_config().local_addr().port();
        let (scheme, host, forwarded) = if self.from_trusted_proxy {
            let info = request.connection_info();
            let forwarded = ["forwarded", "x-forwarded-host"]
                .iter()
                .any(|h| request.headers().contains_key(*h));
            (info.scheme().to_string(), info.host().to_string(), forwarded)
        } else {
            let scheme = if request.app_config().secure() { "https" } else { "http" };
            let host = request
                .headers()
                .get(actix_web::http::header::HOST)
                .and_then(|value| value.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str()))
                .map(str::to_string)
                .unwrap_or_else(|| request.app_config().host().to_string());
            (scheme.to_string(), host, false)
        };
        // Some clients (dicomweb-client among them) send `Host` without the port.
        // When nothing in between rewrote the host, the port they reached is ours.
        let default_port = if scheme == "https" { 443 } else { 80 };
        if !forwarded && !has_port(&host) && port != default_port {
            return format!("{scheme}://{host}:{port}{}", self.path_prefix);
        }
        format!("{scheme}://{host}{}", self.path_prefix)
    }

    /// A `Warning` header value (PS3.18 §8.3.4.4.1 form). The text often quotes
    /// the request (ignored parameter names, unknown keywords): anything but
    /// visible ASCII is escaped (`\u{e9}`) so that the value is a valid header,
    /// and it is cut at [`MAX_WARNING_CHARS`].
    pub fn warning(&self, text: &str) -> String {
        warning_value(&self.warning_agent, text)
    }
}

fn warning_value(agent: &str, text: &str) -> String {
    let mut value = format!("299 {agent}: ");
    for c in text.chars() {
        if value.len() >= MAX_WARNING_CHARS {
            value.push_str(" (truncated)");
            break;
        }
        if c == ' ' || c.is_ascii_graphic() {
            value.push(c);
        } else {
            value.extend(c.escape_unicode());
        }
    }
    value
}

/// The longest `Warning` value we send (clients and proxies limit header sizes).
const MAX_WARNING_CHARS: usize = 1024;

fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        // `[::1]:8080` has a port, `[::1]` has none.
        Some((_, tail)) => !tail.ends_with(']') && tail.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

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

/// Resources with their allowed methods; anything else answers 405 with `Allow`.
fn resource(path: &str, allow: String) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }
    }))
}

/// Registers every DICOMweb route of the route table under the configured
/// prefix, and the site's other resources ([`routes::site_endpoints`]: the
/// capabilities and OpenAPI descriptions, WADO-URI, the health checks, the metrics
/// and the administration endpoint) where they are mounted.
pub fn configure(config: &mut web::ServiceConfig, prefix: &str, wado_uri_path: &str) {
    let table = routes::endpoints();
    let site = routes::site_endpoints();
    let mut scope = web::scope(prefix);
    let under_prefix = site
        .iter()
        .filter(|(mount, _)| *mount == routes::Mount::Prefix)
        .map(|(_, e)| (e.path, e))
        .chain(table.iter().map(|e| (e.path, e)));
    for resource in resources(under_prefix) {
        scope = scope.service(resource);
    }
    config.service(scope);
    let elsewhere = site.iter().filter_map(|(mount, e)| match mount {
        routes::Mount::Prefix => None,
        routes::Mount::WadoUri => Some((wado_uri_path, e)),
        routes::Mount::Root => Some((e.path, e)),
    });
    for resource in resources(elsewhere) {
        config.service(resource);
    }
}

/// One resource per path with the routes of its endpoints (in table order), and a
/// 405 naming them for any other method.
fn resources<'a>(
    endpoints: impl Iterator<Item = (&'a str, &'a routes::Endpoint)>,
) -> Vec<actix_web::Resource> {
    let mut by_path: Vec<(&str, Vec<&routes::Endpoint>)> = Vec::new();
    for (path, endpoint) in endpoints {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, at_path)) => at_path.push(endpoint),
            None => by_path.push((path, vec![endpoint])),
        }
    }
    by_path
        .into_iter()
        .map(|(path, at_path)| {
            let allow = at_path
                .iter()
                .map(|e| e.method.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            at_path.iter().fold(resource(path, allow), |resource, e| {
                resource.route((e.route)())
            })
        })
        .collect()
}

/// The control chain: where each kind of data sits, under whose law, encrypted or
/// not, who holds the keys (JSON, as `kastell sovereignty report --format json`).
async fn sovereignty(state: web::ReqData<AppState>) -> HttpResponse {
    // The tenancy middleware has checked the caller is an administrator.
    HttpResponse::Ok().json(&*state.sovereignty_report)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::ReqData<AppState>, site: web::Data<tenancy::Site>) -> HttpResponse {
    if site.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("shutting down\n");
    }
    let services = state.services.clone();
    let index_ok = services.with_index(|index| index.probe()).await.is_ok();
    let store_ok = services.store.probe().await.is_ok();
    if index_ok && store_ok {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!(
                "index: {}\nblob store: {}\n",
                ok(index_ok),
                ok(store_ok)
            ))
    }
}

fn ok(flag: bool) -> &'static str {
    if flag {
        "ok"
    } else {
        "unavailable"
    }
}

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

/// Answers unknown paths with a DICOMweb status report.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such resource".into()))
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

    #[test]
    fn warnings_quoting_the_request_are_valid_header_values() {
        let warning = warning_value("kastell", "ignored: caf\u{e9}\n\u{1}x");
        assert_eq!(warning, "299 kastell: ignored: caf\\u{e9}\\u{a}\\u{1}x");
        assert!(actix_web::http::header::HeaderValue::from_str(&warning).is_ok());
        let long = warning_value("kastell", &"a".repeat(10_000));
        assert!(long.len() < MAX_WARNING_CHARS + 20 && long.ends_with("(truncated)"));
    }

    #[test]
    fn ports_are_recognised_in_hosts() {
        assert!(has_port("example.org:8080"));
        assert!(!has_port("example.org"));
        assert!(has_port("[::1]:8080"));
        assert!(!has_port("[::1]"));
    }
}
