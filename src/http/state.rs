//! The state the middleware and the handlers share: [`Site`], what every worker
//! knows of the whole server, and [`AppState`], what one request may use (its
//! tenant's services, how the client reached us, who is asking). Middleware and
//! handlers depend on this module and on the endpoint table, never on each other.

use std::sync::Arc;

use actix_web::HttpRequest;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::proxies::{ClientAddressHeader, TrustedProxies};
use crate::service::tenants::Tenants;
use crate::service::Services;

/// What the middleware needs, shared by every worker.
pub struct Site {
    pub tenants: Arc<Tenants>,
    pub path_prefix: String,
    pub wado_uri_path: String,
    pub public_base_url: String,
    pub max_request_bytes: u64,
    pub warning_agent: String,
    /// The control-chain report, computed once at start-up.
    pub sovereignty_report: Arc<serde_json::Value>,
    pub authenticator: Authenticator,
    pub audit: AuditLog,
    /// Set on the first SIGTERM or SIGINT: `/readyz` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Peers whose forwarding header names the client (`server.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    pub client_address_header: ClientAddressHeader,
    /// The event sinks' backlog and errors, as this process's dispatchers see them.
    pub events: crate::service::events::EventStatus,
    /// Most changes one change feed page returns (`events.max_page`).
    pub changefeed_max_page: u32,
}

impl Site {
    /// Where the DICOMweb service and WADO-URI are mounted.
    pub fn mounts(&self) -> super::endpoint::Mounts<'_> {
        super::endpoint::Mounts {
            prefix: &self.path_prefix,
            wado_uri: &self.wado_uri_path,
        }
    }
}

/// Instances a STOW request stored, by study: put in the request's extensions by
/// the STOW handler for the audit record.
pub struct StoredStudies(pub Vec<(String, Vec<String>)>);

/// What a de-identified answer went through, for the audit record: the
/// project and its profile, and the original UIDs the request's de-identified
/// ones stand for (a research caller names the project's UIDs; the trail
/// records whose data it was).
pub struct DeidentifiedBy {
    pub project: String,
    pub profile: String,
    pub originals: Option<crate::service::Scope>,
}

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
    /// The project every answer goes through when the caller may only receive
    /// de-identified data (the research permission without read).
    pub research: Option<std::sync::Arc<crate::service::deid::Project>>,
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
            (
                info.scheme().to_string(),
                info.host().to_string(),
                forwarded,
            )
        } else {
            let scheme = if request.app_config().secure() {
                "https"
            } else {
                "http"
            };
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

#[cfg(test)]
mod tests {
    use super::*;

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
