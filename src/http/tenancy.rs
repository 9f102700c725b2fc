//! Which tenant a request is for. `{prefix}/…` (and WADO-URI) is the default
//! tenant; `/tenants/{tenant}{prefix}/…` (and `/tenants/{tenant}{wado}`) is another
//! tenant's DICOMweb service. The tenant part is taken off the path before routing,
//! so one route table serves every tenant, and the request carries an [`AppState`]
//! holding only that tenant's services: handlers cannot reach another tenant's
//! index or key.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use super::auth::authorize;
use super::error::ApiError;
use super::AppState;
use crate::auth::{Action, Authenticator};
use crate::service::tenants::Tenants;
use actix_web::http::Method;

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
}

/// What a request asks to do, by method: searching and retrieving read, STOW
/// writes, DELETE deletes.
fn action_of(method: &Method) -> Action {
    match *method {
        Method::POST | Method::PUT => Action::Write,
        Method::DELETE => Action::Delete,
        _ => Action::Read,
    }
}

/// `/tenants/{tenant}{rest}` → `(tenant, rest)`, when `rest` is a DICOMweb or
/// WADO-URI path.
fn split_tenant<'a>(path: &'a str, site: &Site) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix("/tenants/")?;
    let (tenant, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let under = |base: &str| tail == base || tail.starts_with(&format!("{base}/"));
    (under(&site.path_prefix) || under(&site.wado_uri_path)).then_some((tenant, tail))
}

/// The middleware: resolves the tenant, rewrites the path, attaches the state.
pub async fn resolve(
    mut request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let site = request
        .app_data::<web::Data<Site>>()
        .cloned()
        .expect("the Site is registered as app data");
    let path = request.path().to_string();
    // Health checks answer without credentials (orchestrators probe them).
    let open_path = path == "/healthz" || path == "/readyz";
    let admin_path = path == "/admin" || path.starts_with("/admin/");
    let (tenant, prefix) = match split_tenant(&path, &site) {
        Some((tenant, tail)) => {
            let tail = tail.to_string();
            let query = request.query_string().to_string();
            let path_and_query = if query.is_empty() {
                tail
            } else {
                format!("{tail}?{query}")
            };
            let mut parts = request.head().uri.clone().into_parts();
            parts.path_and_query = Some(
                path_and_query
                    .parse()
                    .map_err(|_| ApiError::BadRequest("invalid request path".into()))?,
            );
            let uri = Uri::from_parts(parts)
                .map_err(|_| ApiError::BadRequest("invalid request path".into()))?;
            request.match_info_mut().get_mut().update(&uri);
            request.head_mut().uri = uri;
            (
                tenant.to_string(),
                format!("/tenants/{tenant}{}", site.path_prefix),
            )
        }
        None if path.starts_with("/tenants/") => {
            return Err(ApiError::NotFound("no such resource".into()).into())
        }
        None => (
            site.tenants.default_name().to_string(),
            site.path_prefix.clone(),
        ),
    };
    // Who is asking, and may they: before anything of the tenant is touched, so an
    // unknown tenant and a forbidden one look alike to a caller without rights.
    let principal = if open_path {
        None
    } else if admin_path {
        // Administration spans tenants: it needs admin on every tenant.
        Some(authorize(&site.authenticator, request.headers(), "*", Action::Admin).await?)
    } else {
        Some(
            authorize(
                &site.authenticator,
                request.headers(),
                &tenant,
                action_of(request.method()),
            )
            .await?,
        )
    };
    let services = site.tenants.get(&tenant).await.map_err(ApiError::from)?;
    let method = request.method().clone();
    let client = request
        .connection_info()
        .realip_remote_addr()
        .unwrap_or("-")
        .to_string();
    let started = std::time::Instant::now();
    request.extensions_mut().insert(AppState {
        services,
        tenant: tenant.clone(),
        path_prefix: prefix,
        route_prefix: site.path_prefix.clone(),
        public_base_url: site.public_base_url.clone(),
        max_request_bytes: site.max_request_bytes,
        warning_agent: site.warning_agent.clone(),
        sovereignty_report: site.sovereignty_report.clone(),
        principal,
    });
    let response = next.call(request).await?;
    // The access log names the route pattern (`/dicomweb/studies/{study}`), never
    // the path or query: those carry UIDs and patient names.
    tracing::info!(
        target: "kastell::access",
        client = %client,
        tenant = %tenant,
        method = %method,
        route = response.request().match_pattern().as_deref().unwrap_or("(unmatched)"),
        status = response.status().as_u16(),
        millis = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}
