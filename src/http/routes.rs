//! Route registration: each endpoint of the table (`endpoint.rs`) to its
//! handler, one actix resource per path, and a 405 naming the allowed methods for
//! any other. The only module that knows both the table and the handlers.

use actix_web::http::Method;
use actix_web::{web, HttpResponse, Route};

use super::endpoint::{self, Endpoint, Mount};
use super::error::ApiError;
use super::handlers::{
    capabilities, changefeed, delete, openapi, qido, rendered, site, stow, wado, wado_uri,
};

/// The handler of an endpoint (`None` for the two outcomes that are not routes).
fn handler(endpoint: Endpoint) -> Option<Route> {
    use Endpoint as E;
    Some(match endpoint {
        E::SearchForStudies
        | E::SearchForSeries
        | E::SearchForInstances
        | E::SearchForStudySeries
        | E::SearchForStudyInstances
        | E::SearchForSeriesInstances => web::get().to(qido::search),
        E::StoreInstances => web::post().to(stow::store),
        E::StoreStudyInstances => web::post().to(stow::store_in_study),
        E::RetrieveStudy | E::RetrieveSeries | E::RetrieveInstance => web::get().to(wado::retrieve),
        E::RetrieveStudyMetadata | E::RetrieveSeriesMetadata | E::RetrieveInstanceMetadata => {
            web::get().to(wado::metadata)
        }
        E::RetrieveRenderedStudy
        | E::RetrieveRenderedSeries
        | E::RetrieveRenderedInstance
        | E::RetrieveRenderedFrames => web::get().to(rendered::rendered),
        E::RetrieveStudyThumbnail
        | E::RetrieveSeriesThumbnail
        | E::RetrieveInstanceThumbnail
        | E::RetrieveFrameThumbnail => web::get().to(rendered::thumbnail),
        E::RetrieveStudyPixelData | E::RetrieveSeriesPixelData | E::RetrieveInstancePixelData => {
            web::get().to(wado::pixeldata)
        }
        E::RetrieveFrames => web::get().to(wado::frames),
        E::RetrieveBulkdata => web::get().to(wado::bulkdata),
        E::DeleteStudy | E::DeleteSeries | E::DeleteInstance => web::delete().to(delete::delete),
        E::RetrieveCapabilities => web::method(Method::OPTIONS).to(capabilities::describe),
        E::OpenApiDescription => web::get().to(openapi::describe),
        E::RetrieveWadoUri => web::get().to(wado_uri::retrieve),
        E::Healthz => web::get().to(site::healthz),
        E::Readyz => web::get().to(site::readyz),
        E::Metrics => web::get().to(site::metrics),
        E::AdminSovereignty => web::get().to(site::sovereignty),
        E::ChangeFeed => web::get().to(changefeed::page),
        E::ChangeFeedLatest => web::get().to(changefeed::latest),
        E::MethodNotAllowed | E::NoRoute => return None,
    })
}

/// Registers every route of the table where it is mounted: the DICOMweb
/// transactions, the capabilities and OpenAPI descriptions under the configured
/// prefix, WADO-URI at its path, the health checks, the metrics and the
/// administration endpoint at the root.
pub fn configure(config: &mut web::ServiceConfig, prefix: &str, wado_uri_path: &str) {
    let table = endpoint::table();
    let mut scope = web::scope(prefix);
    let under_prefix = table
        .iter()
        .filter(|r| r.mount == Mount::Prefix)
        .map(|r| (r.path, r));
    for resource in resources(under_prefix) {
        scope = scope.service(resource);
    }
    config.service(scope);
    let elsewhere = table.iter().filter_map(|r| match r.mount {
        Mount::Prefix => None,
        Mount::WadoUri => Some((wado_uri_path, r)),
        Mount::Root => Some((r.path, r)),
    });
    for resource in resources(elsewhere) {
        config.service(resource);
    }
}

/// One resource per path with the routes of its endpoints (in table order), and a
/// 405 naming them for any other method.
fn resources<'a>(
    routes: impl Iterator<Item = (&'a str, &'a endpoint::Route)>,
) -> Vec<actix_web::Resource> {
    let mut by_path: Vec<(&str, Vec<&endpoint::Route>)> = Vec::new();
    for (path, route) in routes {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, at_path)) => at_path.push(route),
            None => by_path.push((path, vec![route])),
        }
    }
    by_path
        .into_iter()
        .map(|(path, at_path)| {
            let allow = at_path
                .iter()
                .map(|r| r.method.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            at_path
                .iter()
                .filter_map(|r| handler(r.endpoint))
                .fold(resource(path, allow), |resource, route| {
                    resource.route(route)
                })
        })
        .collect()
}

/// Resources with their allowed methods; anything else answers 405 with `Allow`.
fn resource(path: &str, allow: String) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }
    }))
}

/// Answers unknown paths with a DICOMweb status report.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such resource".into()))
}
