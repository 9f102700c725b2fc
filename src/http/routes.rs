//! The route table: every DICOMweb endpoint once, with what it consumes, produces
//! and which query parameters it reads, and beside it the site's other resources
//! (capabilities, the OpenAPI description, WADO-URI, health, metrics,
//! administration). `configure` registers both, and the capabilities description
//! (`OPTIONS /`) and the OpenAPI document are generated from them, so what we say
//! we support is what is routed.

use actix_web::http::Method;
use actix_web::{web, Route};

use super::{capabilities, delete, openapi, qido, rendered, stow, telemetry, wado, wado_uri};

const DICOM_JSON: &str = "application/dicom+json";
const MULTIPART_DICOM: &str = "multipart/related; type=\"application/dicom\"";
/// DICOM JSON metadata with bulk data parts (STOW-RS).
const MULTIPART_DICOM_JSON: &str = "multipart/related; type=\"application/dicom+json\"";
/// Native DICOM Model documents (search results, metadata, STOW-RS metadata).
const MULTIPART_DICOM_XML: &str = "multipart/related; type=\"application/dicom+xml\"";
const SINGLE_DICOM: &str = "application/dicom";
const MULTIPART_OCTET: &str = "multipart/related; type=\"application/octet-stream\"";
const OCTET: &str = "application/octet-stream";
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

/// One endpoint of the DICOMweb service.
pub struct Endpoint {
    pub method: Method,
    /// Relative to the DICOMweb prefix, in actix syntax (`{study}`).
    pub path: &'static str,
    /// The transaction, as PS3.18 names it.
    pub name: &'static str,
    pub consumes: &'static [&'static str],
    pub produces: &'static [&'static str],
    pub query: &'static [&'static str],
    pub route: fn() -> Route,
}

#[allow(clippy::too_many_arguments)]
fn endpoint(
    method: Method,
    path: &'static str,
    name: &'static str,
    consumes: &'static [&'static str],
    produces: &'static [&'static str],
    query: &'static [&'static str],
    route: fn() -> Route,
) -> Endpoint {
    Endpoint {
        method,
        path,
        name,
        consumes,
        produces,
        query,
        route,
    }
}

// One line per endpoint reads as the table it is.
#[rustfmt::skip]
pub fn endpoints() -> Vec<Endpoint> {
    use Method as M;
    const INSTANCES: &[&str] = &[MULTIPART_DICOM];
    const INSTANCE: &[&str] = &[MULTIPART_DICOM, SINGLE_DICOM];
    // DICOM JSON, or the Native DICOM Model (XML), a document a part.
    const MODELS: &[&str] = &[DICOM_JSON, MULTIPART_DICOM_XML];
    const STOW: &[&str] = &[MULTIPART_DICOM, MULTIPART_DICOM_JSON, MULTIPART_DICOM_XML];
    const STORE_RESPONSE: &[&str] = &[DICOM_JSON, "application/dicom+xml"];
    const BULK: &[&str] = &[MULTIPART_OCTET, OCTET];
    vec![
        endpoint(M::GET, "/studies", "SearchForStudies", &[], MODELS, QIDO_PARAMS, || web::get().to(qido::search_studies)),
        endpoint(M::POST, "/studies", "StoreInstances", STOW, STORE_RESPONSE, &[], || web::post().to(stow::store)),
        endpoint(M::GET, "/series", "SearchForSeries", &[], MODELS, QIDO_PARAMS, || web::get().to(qido::search_all_series)),
        endpoint(M::GET, "/instances", "SearchForInstances", &[], MODELS, QIDO_PARAMS, || web::get().to(qido::search_all_instances)),
        endpoint(M::GET, "/studies/{study}", "RetrieveStudy", &[], INSTANCES, &["accept"], || web::get().to(wado::retrieve)),
        endpoint(M::POST, "/studies/{study}", "StoreInstances", STOW, STORE_RESPONSE, &[], || web::post().to(stow::store_in_study)),
        endpoint(M::DELETE, "/studies/{study}", "DeleteStudy", &[], &[], &[], || web::delete().to(delete::delete)),
        endpoint(M::GET, "/studies/{study}/metadata", "RetrieveStudyMetadata", &[], MODELS, &["accept"], || web::get().to(wado::metadata)),
        endpoint(M::GET, "/studies/{study}/rendered", "RetrieveRenderedStudy", &[], IMAGES, RENDERED_PARAMS, || web::get().to(rendered::rendered)),
        endpoint(M::GET, "/studies/{study}/thumbnail", "RetrieveStudyThumbnail", &[], IMAGES, THUMBNAIL_PARAMS, || web::get().to(rendered::thumbnail)),
        endpoint(M::GET, "/studies/{study}/pixeldata", "RetrieveStudyPixelData", &[], COMPRESSED_FRAMES, &["accept"], || web::get().to(wado::pixeldata)),
        endpoint(M::GET, "/studies/{study}/series", "SearchForStudySeries", &[], MODELS, QIDO_PARAMS, || web::get().to(qido::search_study_series)),
        endpoint(M::GET, "/studies/{study}/instances", "SearchForStudyInstances", &[], MODELS, QIDO_PARAMS, || web::get().to(qido::search_study_instances)),
        endpoint(M::GET, "/studies/{study}/series/{series}", "RetrieveSeries", &[], INSTANCES, &["accept"], || web::get().to(wado::retrieve)),
        endpoint(M::DELETE, "/studies/{study}/series/{series}", "DeleteSeries", &[], &[], &[], || web::delete().to(delete::delete)),
        endpoint(M::GET, "/studies/{study}/series/{series}/metadata", "RetrieveSeriesMetadata", &[], MODELS, &["accept"], || web::get().to(wado::metadata)),
        endpoint(M::GET, "/studies/{study}/series/{series}/rendered", "RetrieveRenderedSeries", &[], IMAGES, RENDERED_PARAMS, || web::get().to(rendered::rendered)),
        endpoint(M::GET, "/studies/{study}/series/{series}/thumbnail", "RetrieveSeriesThumbnail", &[], IMAGES, THUMBNAIL_PARAMS, || web::get().to(rendered::thumbnail)),
        endpoint(M::GET, "/studies/{study}/series/{series}/pixeldata", "RetrieveSeriesPixelData", &[], COMPRESSED_FRAMES, &["accept"], || web::get().to(wado::pixeldata)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances", "SearchForSeriesInstances", &[], MODELS, QIDO_PARAMS, || web::get().to(qido::search_series_instances)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}", "RetrieveInstance", &[], INSTANCE, &["accept"], || web::get().to(wado::retrieve)),
        endpoint(M::DELETE, "/studies/{study}/series/{series}/instances/{instance}", "DeleteInstance", &[], &[], &[], || web::delete().to(delete::delete)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/metadata", "RetrieveInstanceMetadata", &[], MODELS, &["accept"], || web::get().to(wado::metadata)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/rendered", "RetrieveRenderedInstance", &[], RENDERED_INSTANCE, RENDERED_PARAMS, || web::get().to(rendered::rendered)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/thumbnail", "RetrieveInstanceThumbnail", &[], IMAGES, THUMBNAIL_PARAMS, || web::get().to(rendered::thumbnail)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/pixeldata", "RetrieveInstancePixelData", &[], COMPRESSED_FRAMES, &["accept"], || web::get().to(wado::pixeldata)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", "RetrieveFrames", &[], COMPRESSED_FRAMES, &["accept"], || web::get().to(wado::frames)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", "RetrieveRenderedFrames", &[], IMAGES, RENDERED_PARAMS, || web::get().to(rendered::rendered)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", "RetrieveFrameThumbnail", &[], IMAGES, THUMBNAIL_PARAMS, || web::get().to(rendered::thumbnail)),
        endpoint(M::GET, "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:.*}", "RetrieveBulkdata", &[], BULK, &["accept"], || web::get().to(wado::bulkdata)),
    ]
}

/// Where a resource of the site (outside the route table's transactions) is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    /// Relative to the DICOMweb prefix, like the route table.
    Prefix,
    /// At the configured WADO-URI path (the endpoint's own path is empty).
    WadoUri,
    /// At the root of the site.
    Root,
}

/// The site's other resources, in the route table's form: the capabilities and the
/// OpenAPI description of the DICOMweb service, WADO-URI, the health checks, the
/// metrics and the administration endpoint.
#[rustfmt::skip]
pub fn site_endpoints() -> Vec<(Mount, Endpoint)> {
    use Method as M;
    const DESCRIPTIONS: &[&str] = &[capabilities::WADL, "application/json"];
    const WADO_URI: &[&str] = &[SINGLE_DICOM, "image/jpeg", "image/png", "image/gif"];
    const TEXT: &[&str] = &["text/plain"];
    const JSON: &[&str] = &["application/json"];
    vec![
        (Mount::Prefix, endpoint(M::OPTIONS, "", "RetrieveCapabilities", &[], DESCRIPTIONS, &[], || web::method(Method::OPTIONS).to(capabilities::describe))),
        (Mount::Prefix, endpoint(M::OPTIONS, "/", "RetrieveCapabilities", &[], DESCRIPTIONS, &[], || web::method(Method::OPTIONS).to(capabilities::describe))),
        (Mount::Prefix, endpoint(M::GET, "/openapi.json", openapi::NAME, &[], JSON, &[], || web::get().to(openapi::describe))),
        (Mount::WadoUri, endpoint(M::GET, "", "RetrieveWadoUri", &[], WADO_URI, WADO_URI_PARAMS, || web::get().to(wado_uri::retrieve))),
        (Mount::Root, endpoint(M::GET, "/healthz", "Healthz", &[], TEXT, &[], || web::get().to(super::healthz))),
        (Mount::Root, endpoint(M::GET, "/readyz", "Readyz", &[], TEXT, &[], || web::get().to(super::readyz))),
        (Mount::Root, endpoint(M::GET, "/metrics", "Metrics", &[], TEXT, &[], || web::get().to(telemetry::metrics))),
        (Mount::Root, endpoint(M::GET, "/admin/sovereignty", "AdminSovereignty", &[], JSON, &[], || web::get().to(super::sovereignty))),
    ]
}
