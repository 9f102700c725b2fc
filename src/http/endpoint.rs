//! The endpoint table: every route Kastell serves, once, as a typed
//! [`Endpoint`] with its method, path, media types and query parameters, the
//! name that labels its spans, metrics and access log lines, the audit action it
//! records and the permission it needs. Nothing here knows a handler: the
//! route registration (`routes.rs`), the middleware (telemetry, tenancy,
//! authentication, audit) and the generated descriptions (capabilities,
//! OpenAPI) all read this table, so renaming a handler renames nothing.
//!
//! A request's endpoint is found once ([`resolve`]) from the route pattern actix
//! matched (actix stays the one router, so authorization and routing cannot
//! disagree) and kept in the request's extensions.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::dev::ServiceRequest;
use actix_web::http::Method;
use actix_web::HttpMessage;

use crate::audit::Action as AuditAction;
use crate::auth::Action;

pub const DICOM_JSON: &str = "application/dicom+json";
pub const MULTIPART_DICOM: &str = "multipart/related; type=\"application/dicom\"";
/// DICOM JSON metadata with bulk data parts (STOW-RS).
pub const MULTIPART_DICOM_JSON: &str = "multipart/related; type=\"application/dicom+json\"";
/// Native DICOM Model documents (search results, metadata, STOW-RS metadata).
pub const MULTIPART_DICOM_XML: &str = "multipart/related; type=\"application/dicom+xml\"";
pub const SINGLE_DICOM: &str = "application/dicom";
pub const MULTIPART_OCTET: &str = "multipart/related; type=\"application/octet-stream\"";
pub const OCTET: &str = "application/octet-stream";
/// The Retrieve Capabilities document (PS3.18 Annex H).
pub const WADL: &str = "application/vnd.sun.wadl+xml";
const IMAGES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "multipart/related; type=\"image/jpeg\"",
    "multipart/related; type=\"image/png\"",
    "multipart/related; type=\"image/gif\"",
];
/// An instance's rendered resource: its image, or a Structured Report as text, or
/// the document an Encapsulated Document holds (PS3.18 §10.4.1.1.3).
const RENDERED_INSTANCE: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "multipart/related; type=\"image/jpeg\"",
    "multipart/related; type=\"image/png\"",
    "multipart/related; type=\"image/gif\"",
    "text/html",
    "text/plain",
    "application/pdf",
    "text/xml",
    "model/stl",
    "model/obj",
    "model/mtl",
    OCTET,
];
const COMPRESSED_FRAMES: &[&str] = &[
    MULTIPART_OCTET,
    "multipart/related; type=\"image/jpeg\"",
    "multipart/related; type=\"image/jls\"",
    "multipart/related; type=\"image/jp2\"",
    "multipart/related; type=\"image/jpx\"",
    "multipart/related; type=\"image/jxl\"",
    "multipart/related; type=\"image/dicom-rle\"",
];

const QIDO_PARAMS: &[&str] = &[
    "{attributeID}",
    "includefield",
    "fuzzymatching",
    "emptyvaluematching",
    "multiplevaluematching",
    "limit",
    "offset",
    "accept",
    "charset",
];
const RENDERED_PARAMS: &[&str] = &[
    "accept",
    "annotation",
    "quality",
    "viewport",
    "window",
    "iccprofile",
];
const THUMBNAIL_PARAMS: &[&str] = &["accept", "viewport"];
const WADO_URI_PARAMS: &[&str] = &[
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "transferSyntax",
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "annotation",
    "imageAnnotation",
    "anonymize",
    "presentationUID",
    "presentationSeriesUID",
];

/// Every endpoint Kastell serves, and the two outcomes of a request that
/// reaches none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    SearchForStudies,
    SearchForSeries,
    SearchForInstances,
    SearchForStudySeries,
    SearchForStudyInstances,
    SearchForSeriesInstances,
    /// STOW-RS at `/studies`.
    StoreInstances,
    /// STOW-RS at `/studies/{study}` (PS3.18 names both Store Instances).
    StoreStudyInstances,
    RetrieveStudy,
    RetrieveSeries,
    RetrieveInstance,
    RetrieveStudyMetadata,
    RetrieveSeriesMetadata,
    RetrieveInstanceMetadata,
    RetrieveRenderedStudy,
    RetrieveRenderedSeries,
    RetrieveRenderedInstance,
    RetrieveRenderedFrames,
    RetrieveStudyThumbnail,
    RetrieveSeriesThumbnail,
    RetrieveInstanceThumbnail,
    RetrieveFrameThumbnail,
    RetrieveStudyPixelData,
    RetrieveSeriesPixelData,
    RetrieveInstancePixelData,
    RetrieveFrames,
    RetrieveBulkdata,
    DeleteStudy,
    DeleteSeries,
    DeleteInstance,
    /// `OPTIONS {prefix}` (with or without the slash).
    RetrieveCapabilities,
    OpenApiDescription,
    RetrieveWadoUri,
    Healthz,
    Readyz,
    Metrics,
    AdminSovereignty,
    /// The tenant's change feed (issue 14), a page of it.
    ChangeFeed,
    /// The latest entry of the change feed.
    ChangeFeedLatest,
    /// A routed path, with a method it does not serve (405).
    MethodNotAllowed,
    /// No route at all (404).
    NoRoute,
}

/// What an endpoint does, as the audit trail and the permission check see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Search,
    Store,
    Retrieve,
    Delete,
    /// Descriptions of the service (capabilities, OpenAPI): read, not audited.
    Describe,
    /// Health checks and metrics: no credentials (orchestrators and scrapers
    /// probe them; they hold no patient data).
    Open,
    /// Spans tenants: admin on every tenant.
    Admin,
    /// The change feed: read on the tenant, audited as a query (it names UIDs).
    Feed,
    /// No endpoint: the permission follows the method, nothing is audited.
    Unrouted,
}

/// What a request needs before anything of the tenant is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Nothing: served without credentials.
    Open,
    /// This action on the request's tenant.
    Tenant(Action),
    /// Administration of every tenant (`*`).
    Admin,
}

impl Endpoint {
    /// The name of spans, metric labels and access log lines: the transaction as
    /// PS3.18 names it. One of a fixed set, whatever the request.
    pub fn name(self) -> &'static str {
        use Endpoint as E;
        match self {
            E::SearchForStudies => "SearchForStudies",
            E::SearchForSeries => "SearchForSeries",
            E::SearchForInstances => "SearchForInstances",
            E::SearchForStudySeries => "SearchForStudySeries",
            E::SearchForStudyInstances => "SearchForStudyInstances",
            E::SearchForSeriesInstances => "SearchForSeriesInstances",
            E::StoreInstances | E::StoreStudyInstances => "StoreInstances",
            E::RetrieveStudy => "RetrieveStudy",
            E::RetrieveSeries => "RetrieveSeries",
            E::RetrieveInstance => "RetrieveInstance",
            E::RetrieveStudyMetadata => "RetrieveStudyMetadata",
            E::RetrieveSeriesMetadata => "RetrieveSeriesMetadata",
            E::RetrieveInstanceMetadata => "RetrieveInstanceMetadata",
            E::RetrieveRenderedStudy => "RetrieveRenderedStudy",
            E::RetrieveRenderedSeries => "RetrieveRenderedSeries",
            E::RetrieveRenderedInstance => "RetrieveRenderedInstance",
            E::RetrieveRenderedFrames => "RetrieveRenderedFrames",
            E::RetrieveStudyThumbnail => "RetrieveStudyThumbnail",
            E::RetrieveSeriesThumbnail => "RetrieveSeriesThumbnail",
            E::RetrieveInstanceThumbnail => "RetrieveInstanceThumbnail",
            E::RetrieveFrameThumbnail => "RetrieveFrameThumbnail",
            E::RetrieveStudyPixelData => "RetrieveStudyPixelData",
            E::RetrieveSeriesPixelData => "RetrieveSeriesPixelData",
            E::RetrieveInstancePixelData => "RetrieveInstancePixelData",
            E::RetrieveFrames => "RetrieveFrames",
            E::RetrieveBulkdata => "RetrieveBulkdata",
            E::DeleteStudy => "DeleteStudy",
            E::DeleteSeries => "DeleteSeries",
            E::DeleteInstance => "DeleteInstance",
            E::RetrieveCapabilities => "RetrieveCapabilities",
            E::OpenApiDescription => "OpenApiDescription",
            E::RetrieveWadoUri => "RetrieveWadoUri",
            E::Healthz => "Healthz",
            E::Readyz => "Readyz",
            E::Metrics => "Metrics",
            E::AdminSovereignty => "AdminSovereignty",
            E::ChangeFeed => "ChangeFeed",
            E::ChangeFeedLatest => "ChangeFeedLatest",
            E::MethodNotAllowed => "MethodNotAllowed",
            E::NoRoute => "NoRoute",
        }
    }

    fn kind(self) -> Kind {
        use Endpoint as E;
        match self {
            E::SearchForStudies
            | E::SearchForSeries
            | E::SearchForInstances
            | E::SearchForStudySeries
            | E::SearchForStudyInstances
            | E::SearchForSeriesInstances => Kind::Search,
            E::StoreInstances | E::StoreStudyInstances => Kind::Store,
            E::RetrieveStudy
            | E::RetrieveSeries
            | E::RetrieveInstance
            | E::RetrieveStudyMetadata
            | E::RetrieveSeriesMetadata
            | E::RetrieveInstanceMetadata
            | E::RetrieveRenderedStudy
            | E::RetrieveRenderedSeries
            | E::RetrieveRenderedInstance
            | E::RetrieveRenderedFrames
            | E::RetrieveStudyThumbnail
            | E::RetrieveSeriesThumbnail
            | E::RetrieveInstanceThumbnail
            | E::RetrieveFrameThumbnail
            | E::RetrieveStudyPixelData
            | E::RetrieveSeriesPixelData
            | E::RetrieveInstancePixelData
            | E::RetrieveFrames
            | E::RetrieveBulkdata
            | E::RetrieveWadoUri => Kind::Retrieve,
            E::DeleteStudy | E::DeleteSeries | E::DeleteInstance => Kind::Delete,
            E::RetrieveCapabilities | E::OpenApiDescription => Kind::Describe,
            E::Healthz | E::Readyz | E::Metrics => Kind::Open,
            E::AdminSovereignty => Kind::Admin,
            E::ChangeFeed | E::ChangeFeedLatest => Kind::Feed,
            E::MethodNotAllowed | E::NoRoute => Kind::Unrouted,
        }
    }

    /// What the audit trail records for a request to this endpoint; `None` for
    /// what is not audited (descriptions, health, metrics, administration reads,
    /// requests that reach no endpoint).
    pub fn audit_action(self) -> Option<AuditAction> {
        match self.kind() {
            Kind::Search | Kind::Feed => Some(AuditAction::Search),
            Kind::Store => Some(AuditAction::Store),
            Kind::Retrieve => Some(AuditAction::Retrieve),
            Kind::Delete => Some(AuditAction::Delete),
            Kind::Describe | Kind::Open | Kind::Admin | Kind::Unrouted => None,
        }
    }

    /// The permission a request to this endpoint needs. A request that reaches
    /// no endpoint still shows credentials (by its method, and as an
    /// administrator under `/admin`), so that what exists is not revealed to a
    /// caller without rights.
    pub fn permission(self, method: &Method, routed_path: &str) -> Permission {
        match self.kind() {
            Kind::Search | Kind::Retrieve | Kind::Describe | Kind::Feed => {
                Permission::Tenant(Action::Read)
            }
            Kind::Store => Permission::Tenant(Action::Write),
            Kind::Delete => Permission::Tenant(Action::Delete),
            Kind::Open => Permission::Open,
            Kind::Admin => Permission::Admin,
            Kind::Unrouted if routed_path == "/admin" || routed_path.starts_with("/admin/") => {
                Permission::Admin
            }
            Kind::Unrouted => Permission::Tenant(match *method {
                Method::POST | Method::PUT => Action::Write,
                Method::DELETE => Action::Delete,
                _ => Action::Read,
            }),
        }
    }

    /// Whether a caller with only the research permission is served here, every
    /// answer de-identified: searches, instances, metadata, WADO-URI and the
    /// descriptions. Rendered images, thumbnails, frames and bulk data are
    /// not (pixels with burned-in text, bulk values a profile cannot judge), nor
    /// the change feed (original UIDs).
    pub fn serves_research(self) -> bool {
        use Endpoint as E;
        matches!(
            self,
            E::SearchForStudies
                | E::SearchForSeries
                | E::SearchForInstances
                | E::SearchForStudySeries
                | E::SearchForStudyInstances
                | E::SearchForSeriesInstances
                | E::RetrieveStudy
                | E::RetrieveSeries
                | E::RetrieveInstance
                | E::RetrieveStudyMetadata
                | E::RetrieveSeriesMetadata
                | E::RetrieveInstanceMetadata
                | E::RetrieveWadoUri
                | E::RetrieveCapabilities
                | E::OpenApiDescription
        )
    }

    /// Whether this is a DICOMweb transaction of the route table (what the
    /// capabilities document describes), rather than a resource of the site.
    pub fn is_transaction(self) -> bool {
        matches!(
            self.kind(),
            Kind::Search | Kind::Store | Kind::Retrieve | Kind::Delete
        ) && self != Endpoint::RetrieveWadoUri
    }
}

/// Where a route is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mount {
    /// Relative to the DICOMweb prefix (`dicomweb.path_prefix`).
    Prefix,
    /// At the configured WADO-URI path (the route's own path is empty).
    WadoUri,
    /// At the root of the site.
    Root,
}

/// One row of the table: a method at a path, and what it takes and gives.
#[derive(Debug)]
pub struct Route {
    pub endpoint: Endpoint,
    pub method: Method,
    pub mount: Mount,
    /// Relative to the mount, in actix syntax (`{study}`, `{path:.*}`).
    pub path: &'static str,
    pub consumes: &'static [&'static str],
    pub produces: &'static [&'static str],
    pub query: &'static [&'static str],
}

impl Route {
    pub fn name(&self) -> &'static str {
        self.endpoint.name()
    }
}

/// The table, in the order routes are registered and described.
pub fn table() -> &'static [Route] {
    &TABLE
}

/// The DICOMweb transactions of the table (what the capabilities describe).
pub fn transactions() -> impl Iterator<Item = &'static Route> {
    TABLE.iter().filter(|r| r.endpoint.is_transaction())
}

// One line per route reads as the table it is.
#[rustfmt::skip]
static TABLE: LazyLock<Vec<Route>> = LazyLock::new(|| {
    use Endpoint as E;
    use Method as M;
    use Mount::{Prefix, Root, WadoUri};
    const INSTANCES: &[&str] = &[MULTIPART_DICOM];
    const INSTANCE: &[&str] = &[MULTIPART_DICOM, SINGLE_DICOM];
    // DICOM JSON, or the Native DICOM Model (XML), a document a part.
    const MODELS: &[&str] = &[DICOM_JSON, MULTIPART_DICOM_XML];
    const STOW: &[&str] = &[MULTIPART_DICOM, MULTIPART_DICOM_JSON, MULTIPART_DICOM_XML];
    const STORE_RESPONSE: &[&str] = &[DICOM_JSON, "application/dicom+xml"];
    const BULK: &[&str] = &[MULTIPART_OCTET, OCTET];
    const DESCRIPTIONS: &[&str] = &[WADL, "application/json"];
    const WADO_URI: &[&str] = &[SINGLE_DICOM, "image/jpeg", "image/png", "image/gif"];
    const TEXT: &[&str] = &["text/plain"];
    const JSON: &[&str] = &["application/json"];
    let route = |endpoint, method, mount, path, consumes, produces, query| Route { endpoint, method, mount, path, consumes, produces, query };
    vec![
        route(E::SearchForStudies, M::GET, Prefix, "/studies", &[], MODELS, QIDO_PARAMS),
        route(E::StoreInstances, M::POST, Prefix, "/studies", STOW, STORE_RESPONSE, &[]),
        route(E::SearchForSeries, M::GET, Prefix, "/series", &[], MODELS, QIDO_PARAMS),
        route(E::SearchForInstances, M::GET, Prefix, "/instances", &[], MODELS, QIDO_PARAMS),
        route(E::RetrieveStudy, M::GET, Prefix, "/studies/{study}", &[], INSTANCES, &["accept"]),
        route(E::StoreStudyInstances, M::POST, Prefix, "/studies/{study}", STOW, STORE_RESPONSE, &[]),
        route(E::DeleteStudy, M::DELETE, Prefix, "/studies/{study}", &[], &[], &[]),
        route(E::RetrieveStudyMetadata, M::GET, Prefix, "/studies/{study}/metadata", &[], MODELS, &["accept"]),
        route(E::RetrieveRenderedStudy, M::GET, Prefix, "/studies/{study}/rendered", &[], IMAGES, RENDERED_PARAMS),
        route(E::RetrieveStudyThumbnail, M::GET, Prefix, "/studies/{study}/thumbnail", &[], IMAGES, THUMBNAIL_PARAMS),
        route(E::RetrieveStudyPixelData, M::GET, Prefix, "/studies/{study}/pixeldata", &[], COMPRESSED_FRAMES, &["accept"]),
        route(E::SearchForStudySeries, M::GET, Prefix, "/studies/{study}/series", &[], MODELS, QIDO_PARAMS),
        route(E::SearchForStudyInstances, M::GET, Prefix, "/studies/{study}/instances", &[], MODELS, QIDO_PARAMS),
        route(E::RetrieveSeries, M::GET, Prefix, "/studies/{study}/series/{series}", &[], INSTANCES, &["accept"]),
        route(E::DeleteSeries, M::DELETE, Prefix, "/studies/{study}/series/{series}", &[], &[], &[]),
        route(E::RetrieveSeriesMetadata, M::GET, Prefix, "/studies/{study}/series/{series}/metadata", &[], MODELS, &["accept"]),
        route(E::RetrieveRenderedSeries, M::GET, Prefix, "/studies/{study}/series/{series}/rendered", &[], IMAGES, RENDERED_PARAMS),
        route(E::RetrieveSeriesThumbnail, M::GET, Prefix, "/studies/{study}/series/{series}/thumbnail", &[], IMAGES, THUMBNAIL_PARAMS),
        route(E::RetrieveSeriesPixelData, M::GET, Prefix, "/studies/{study}/series/{series}/pixeldata", &[], COMPRESSED_FRAMES, &["accept"]),
        route(E::SearchForSeriesInstances, M::GET, Prefix, "/studies/{study}/series/{series}/instances", &[], MODELS, QIDO_PARAMS),
        route(E::RetrieveInstance, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}", &[], INSTANCE, &["accept"]),
        route(E::DeleteInstance, M::DELETE, Prefix, "/studies/{study}/series/{series}/instances/{instance}", &[], &[], &[]),
        route(E::RetrieveInstanceMetadata, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/metadata", &[], MODELS, &["accept"]),
        route(E::RetrieveRenderedInstance, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/rendered", &[], RENDERED_INSTANCE, RENDERED_PARAMS),
        route(E::RetrieveInstanceThumbnail, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/thumbnail", &[], IMAGES, THUMBNAIL_PARAMS),
        route(E::RetrieveInstancePixelData, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/pixeldata", &[], COMPRESSED_FRAMES, &["accept"]),
        route(E::RetrieveFrames, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", &[], COMPRESSED_FRAMES, &["accept"]),
        route(E::RetrieveRenderedFrames, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", &[], IMAGES, RENDERED_PARAMS),
        route(E::RetrieveFrameThumbnail, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", &[], IMAGES, THUMBNAIL_PARAMS),
        route(E::RetrieveBulkdata, M::GET, Prefix, "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:.*}", &[], BULK, &["accept"]),
        route(E::RetrieveCapabilities, M::OPTIONS, Prefix, "", &[], DESCRIPTIONS, &[]),
        route(E::RetrieveCapabilities, M::OPTIONS, Prefix, "/", &[], DESCRIPTIONS, &[]),
        route(E::OpenApiDescription, M::GET, Prefix, "/openapi.json", &[], JSON, &[]),
        route(E::ChangeFeed, M::GET, Prefix, "/changefeed", &[], JSON, &["after", "limit"]),
        route(E::ChangeFeedLatest, M::GET, Prefix, "/changefeed/latest", &[], JSON, &[]),
        route(E::RetrieveWadoUri, M::GET, WadoUri, "", &[], WADO_URI, WADO_URI_PARAMS),
        route(E::Healthz, M::GET, Root, "/healthz", &[], TEXT, &[]),
        route(E::Readyz, M::GET, Root, "/readyz", &[], TEXT, &[]),
        route(E::Metrics, M::GET, Root, "/metrics", &[], TEXT, &[]),
        route(E::AdminSovereignty, M::GET, Root, "/admin/sovereignty", &[], JSON, &[]),
    ]
});

/// The table by mount and path: the endpoint of each method there.
type ByPath = HashMap<(Mount, &'static str), Vec<(Method, Endpoint)>>;

static BY_PATH: LazyLock<ByPath> = LazyLock::new(|| {
    let mut by_path: ByPath = HashMap::new();
    for route in TABLE.iter() {
        by_path
            .entry((route.mount, route.path))
            .or_default()
            .push((route.method.clone(), route.endpoint));
    }
    by_path
});

/// Where the site mounts the DICOMweb service and WADO-URI (configuration).
#[derive(Debug, Clone, Copy)]
pub struct Mounts<'a> {
    pub prefix: &'a str,
    pub wado_uri: &'a str,
}

impl Mounts<'_> {
    /// The places a route pattern actix matched may sit, most specific first
    /// (`/dicomweb/studies/{study}` → `Prefix`, `/studies/{study}`).
    fn candidates<'p>(&self, pattern: &'p str) -> impl Iterator<Item = (Mount, &'p str)> {
        let wado_uri = (pattern == self.wado_uri).then_some((Mount::WadoUri, ""));
        let prefix = pattern
            .strip_prefix(self.prefix)
            .filter(|relative| relative.is_empty() || relative.starts_with('/'))
            .map(|relative| (Mount::Prefix, relative));
        [wado_uri, prefix, Some((Mount::Root, pattern))]
            .into_iter()
            .flatten()
    }
}

/// The endpoint a request with `method` reaches, from the route pattern actix
/// matched (`None`: no route).
pub fn resolve(method: &Method, pattern: Option<&str>, mounts: Mounts) -> Endpoint {
    let Some(pattern) = pattern else {
        return Endpoint::NoRoute;
    };
    let Some(at_path) = mounts
        .candidates(pattern)
        .find_map(|place| BY_PATH.get(&place))
    else {
        return Endpoint::NoRoute;
    };
    at_path
        .iter()
        .find(|(m, _)| m == method)
        .map_or(Endpoint::MethodNotAllowed, |(_, endpoint)| *endpoint)
}

/// `/tenants/{tenant}{rest}` → `(tenant, rest)`, when `rest` is a DICOMweb or
/// WADO-URI path: another tenant's requests are routed with the tenant taken
/// off the path.
pub fn split_tenant<'a>(path: &'a str, mounts: Mounts) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix("/tenants/")?;
    let (tenant, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !is_tenant_name(tenant) {
        return None;
    }
    let under = |base: &str| tail == base || tail.starts_with(&format!("{base}/"));
    (under(mounts.prefix) || under(mounts.wado_uri)).then_some((tenant, tail))
}

/// Whether a path segment can be a tenant's name (what `kastell tenants add`
/// accepts): anything else is refused before it is looked up.
pub fn is_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a request goes: its endpoint and the route pattern actix matched
/// (`/dicomweb/studies/{study}`, with another tenant's `/tenants/{t}` taken
/// off), which names it in spans and the access log without its UIDs.
#[derive(Debug, Clone)]
pub struct Routed {
    pub endpoint: Endpoint,
    pub pattern: Option<String>,
}

/// Where a request goes, found on first use and kept in its extensions: the
/// outermost middleware finds it, every later one (and a handler) reads it.
pub fn of_request(request: &ServiceRequest, mounts: Mounts) -> Routed {
    if let Some(routed) = request.extensions().get::<Routed>() {
        return routed.clone();
    }
    // The path as actix routes it (unreserved characters percent-decoded).
    let path = request.match_info().as_str();
    let path = split_tenant(path, mounts).map_or(path, |(_, tail)| tail);
    let pattern = request.resource_map().match_pattern(path);
    let routed = Routed {
        endpoint: resolve(request.method(), pattern.as_deref(), mounts),
        pattern,
    };
    request.extensions_mut().insert(routed.clone());
    routed
}

#[cfg(test)]
mod tests;
