//! Which tenant a request is for. `{prefix}/…` (and WADO-URI) is the default
//! tenant; `/tenants/{tenant}{prefix}/…` (and `/tenants/{tenant}{wado}`) is another
//! tenant's DICOMweb service. The tenant part is taken off the path before routing,
//! so one route table serves every tenant, and the request carries an [`AppState`]
//! holding only that tenant's services: handlers cannot reach another tenant's
//! index or key.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use super::auth::{authenticate, forbidden};
use super::client_addr::client_address;
use crate::audit::{Action as AuditAction, ActorKind, AuditEvent, Outcome};
use crate::auth::{Principal, PrincipalKind};
use crate::http::endpoint::{self, is_tenant_name, split_tenant, Permission};
use crate::http::error::ApiError;
use crate::http::state::{AppState, DeidentifiedBy, Site, StoredStudies};
use crate::service::Scope;

/// How long a store or delete waits for its audit record to be committed
/// before it answers 503 instead of acknowledging (the record is written when
/// the index is back).
const AUDIT_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

fn actor_of(principal: &Principal) -> (String, ActorKind) {
    let kind = match principal.kind {
        PrincipalKind::Token => ActorKind::Token,
        PrincipalKind::ApiKey => ActorKind::ApiKey,
        PrincipalKind::Anonymous => ActorKind::Anonymous,
    };
    (principal.subject.clone(), kind)
}

/// Hands an event to the audit writer; a failure is logged loudly (the writer
/// only fails when it has stopped).
async fn record(site: &Site, event: AuditEvent) {
    if let Err(error) = site.audit.record(event).await {
        tracing::error!(%error, "AUDIT EVENT NOT RECORDED");
    }
}

/// Hands a refusal (login failure, access denied) to the audit writer, within
/// the per-client limits that keep a flood from growing the trail.
async fn record_refusal(site: &Site, event: AuditEvent) {
    if let Err(error) = site.audit.record_refusal(event).await {
        tracing::error!(%error, "AUDIT EVENT NOT RECORDED");
    }
}

/// The UIDs a WADO-URI request names, decoded as its handler decodes them.
fn wado_uri_uids(request: &actix_web::HttpRequest) -> [Option<String>; 3] {
    let pairs = crate::http::protocol::query::query_pairs(request).unwrap_or_default();
    ["studyUID", "seriesUID", "objectUID"].map(|name| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.clone())
    })
}

/// The path the router matches (actix decodes percent-encoded characters that
/// need no encoding, so `/%61dmin` is routed as `/admin`), refused with 400 when
/// it holds a form a proxy, the router or a file system could read otherwise:
/// empty or dot segments, encoded slashes, backslashes or NUL.
pub(super) fn routed_path(request: &ServiceRequest) -> Result<String, ApiError> {
    let raw = request.path();
    let lower = raw.to_ascii_lowercase();
    let refused = |why: &str| Err(ApiError::BadRequest(format!("the request path {why}")));
    if raw.contains("//") {
        return refused("has an empty segment");
    }
    if raw.contains('\\') || ["%2f", "%5c", "%00"].iter().any(|e| lower.contains(e)) {
        return refused("holds an encoded slash, a backslash or NUL");
    }
    let routed = request.match_info().as_str().to_string();
    let decoded = percent_encoding::percent_decode_str(&routed).decode_utf8_lossy();
    if routed
        .split('/')
        .chain(decoded.split('/'))
        .any(|segment| segment == "." || segment == "..")
    {
        return refused("has a dot segment");
    }
    if routed.contains("//") {
        return refused("has an empty segment");
    }
    Ok(routed)
}

/// The middleware: resolves the tenant, rewrites the path, attaches the state.
pub async fn resolve(
    mut request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let site = request
        .app_data::<web::Data<Site>>()
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("no site state".into()))?;
    // Every decision below is made on the path the router will match, after
    // refusing forms that could mean one thing here and another there.
    let path = routed_path(&request)?;
    let endpoint::Routed { endpoint, pattern } = endpoint::of_request(&request, site.mounts());
    let route = pattern.unwrap_or_else(|| "(unmatched)".to_string());
    let permission = endpoint.permission(request.method(), &path);
    let open_path = permission == Permission::Open;
    let (tenant, prefix) = match split_tenant(&path, site.mounts()) {
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
            let name = path["/tenants/".len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            if !is_tenant_name(name) {
                return Err(ApiError::BadRequest("invalid tenant name in the path".into()).into());
            }
            return Err(ApiError::NotFound("no such resource".into()).into());
        }
        None => (
            site.tenants.default_name().to_string(),
            site.path_prefix.clone(),
        ),
    };
    let client = client_address(
        request.peer_addr().map(|peer| peer.ip()),
        request.headers(),
        &site.trusted_proxies,
        site.client_address_header,
    );
    // Who is asking, and may they: before anything of the tenant is touched, so an
    // unknown tenant and a forbidden one look alike to a caller without rights.
    // Refusals are audited (login failure, access denied).
    let needed = match permission {
        Permission::Open => None,
        // Administration spans tenants: it needs admin on every tenant.
        Permission::Admin => Some(("*", crate::auth::Action::Admin)),
        Permission::Tenant(action) => Some((tenant.as_str(), action)),
    };
    let mut research = false;
    let principal = if let Some((scope, action)) = needed {
        let principal = match authenticate(&site.authenticator, request.headers()).await {
            Ok(principal) => principal,
            Err(error) => {
                let status = actix_web::ResponseError::status_code(&error).as_u16();
                let event = AuditEvent::new(
                    "unknown",
                    ActorKind::Anonymous,
                    &tenant,
                    AuditAction::LoginFailure,
                    Outcome::Failure,
                )
                .client_address(&client)
                .status(status as i64)
                .detail(format!("{} {}", request.method(), route));
                record_refusal(&site, event).await;
                return Err(error.into());
            }
        };
        // A caller with only the research permission may search and retrieve
        // where every answer can be de-identified (see `serves_research`).
        let research_only = action == crate::auth::Action::Read
            && !principal.may(scope, action)
            && principal.may(scope, crate::auth::Action::Research)
            && endpoint.serves_research();
        if research_only {
            research = true;
        } else if !principal.may(scope, action) {
            let (actor, kind) = actor_of(&principal);
            let event = AuditEvent::new(
                actor,
                kind,
                &tenant,
                AuditAction::AccessDenied,
                Outcome::Failure,
            )
            .client_address(&client)
            .status(403)
            .detail(format!("{action} needed"));
            record_refusal(&site, event).await;
            return Err(forbidden(&principal, scope, action).into());
        }
        Some(principal)
    } else {
        None
    };
    let services = site.tenants.get(&tenant).await.map_err(ApiError::from)?;
    let research = if research {
        match crate::service::deid::research_project(&services).await {
            Ok(Some(project)) => Some(project),
            Ok(None) => {
                return Err(ApiError::Forbidden(
                    "this tenant has no research project: a caller with only the research \
                     permission is served nothing"
                        .into(),
                )
                .into())
            }
            Err(error) => return Err(ApiError::from(error).into()),
        }
    } else {
        None
    };
    let research_request = research.is_some();
    // Counted only once the tenant exists: one counter per tenant served.
    let _slot = match request.app_data::<web::Data<super::shield::Shield>>() {
        Some(shield) if !open_path => Some(shield.tenant_slot(&tenant)?),
        _ => None,
    };
    let method = request.method().clone();
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
        principal: principal.clone(),
        research,
        from_trusted_proxy: request
            .peer_addr()
            .is_some_and(|peer| site.trusted_proxies.contains(peer.ip().to_canonical())),
    });
    let response = next.call(request).await?;
    // One audit record per DICOMweb request: who, what, which UIDs, how it ended.
    if let Some(principal) = &principal {
        if let Some(action) = endpoint.audit_action() {
            let status = response.status().as_u16();
            let outcome = if status < 400 {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let (actor, kind) = actor_of(principal);
            let info = response.request().match_info();
            let base = AuditEvent::new(actor, kind, &tenant, action, outcome)
                .client_address(&client)
                .status(status as i64);
            let stored = response
                .request()
                .extensions()
                .get::<StoredStudies>()
                .map(|s| s.0.clone());
            // A record lists at most MAX_INSTANCE_UIDS instances: a large STOW
            // is spread over several records rather than cut.
            let events: Vec<AuditEvent> = match stored {
                Some(studies) if !studies.is_empty() => studies
                    .into_iter()
                    .flat_map(|(study, instances)| {
                        let study = base.clone().study(study);
                        if instances.is_empty() {
                            return vec![study];
                        }
                        instances
                            .chunks(crate::audit::MAX_INSTANCE_UIDS)
                            .map(|chunk| study.clone().instances(chunk.to_vec()))
                            .collect()
                    })
                    .collect(),
                _ => {
                    // Path segments as the route matched them (what the handler
                    // serves), or the decoded query of WADO-URI (no other
                    // route's query values are recorded).
                    let [wado_study, wado_series, wado_object] =
                        if endpoint == endpoint::Endpoint::RetrieveWadoUri {
                            wado_uri_uids(response.request())
                        } else {
                            [None, None, None]
                        };
                    let mut event = base;
                    let deidentified =
                        response
                            .request()
                            .extensions()
                            .get::<DeidentifiedBy>()
                            .map(|by| {
                                (
                                    format!(
                                        "de-identified: project {}, {}",
                                        by.project, by.profile
                                    ),
                                    by.originals.clone(),
                                )
                            });
                    let (wado_study, wado_series, wado_object) = match deidentified {
                        Some((detail, originals)) => {
                            event = event.detail(detail);
                            match originals {
                                Some(Scope::Study { study }) => (Some(study), None, None),
                                Some(Scope::Series { study, series }) => {
                                    (Some(study), Some(series), None)
                                }
                                Some(Scope::Instance {
                                    study,
                                    series,
                                    instance,
                                }) => (Some(study), Some(series), Some(instance)),
                                None => (wado_study, wado_series, wado_object),
                            }
                        }
                        None => (wado_study, wado_series, wado_object),
                    };
                    let path_uid = |name: &str| {
                        if research_request {
                            None
                        } else {
                            info.get(name).map(str::to_string)
                        }
                    };
                    if let Some(study) = path_uid("study").or(wado_study) {
                        event = event.study(study);
                    }
                    if let Some(series) = path_uid("series").or(wado_series) {
                        event = event.series(series);
                    }
                    if let Some(instance) = path_uid("instance").or(wado_object) {
                        event = event.instances([instance]);
                    }
                    vec![event]
                }
            };
            // Stores and deletes that changed something are in the trail before
            // they are answered (a crash right after the answer keeps them),
            // within a bound: when the index is down the request says so rather
            // than hang. Refusals and failures, like reads, are batched.
            let changed = matches!(action, AuditAction::Store | AuditAction::Delete)
                && response.status().is_success();
            if changed {
                let auditing = std::time::Instant::now();
                let committed =
                    tokio::time::timeout(AUDIT_COMMIT_TIMEOUT, site.audit.record_committed(events))
                        .await;
                if action == AuditAction::Store {
                    crate::telemetry::metrics::stow_stage("audit", auditing.elapsed());
                }
                if !matches!(committed, Ok(Ok(()))) {
                    let error = match committed {
                        Ok(Err(error)) => error.to_string(),
                        _ => format!("not committed within {AUDIT_COMMIT_TIMEOUT:?}"),
                    };
                    tracing::error!(%error, %action, "AUDIT EVENT NOT RECORDED: not acknowledging");
                    return Err(ApiError::Unavailable(format!(
                        "the audit record of this {action} could not be written"
                    ))
                    .into());
                }
            } else {
                for event in events {
                    record(&site, event).await;
                }
            }
        }
    }
    // The access log names the route pattern (`/dicomweb/studies/{study}`), never
    // the path or query: those carry UIDs and patient names.
    tracing::info!(
        target: "kastell::access",
        client = %client,
        tenant = %tenant,
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        millis = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}
