use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::middleware::{from_fn, Next};
use actix_web::test as actix_test;
use actix_web::{App, HttpResponse};

use super::*;

const MOUNTS: Mounts = Mounts {
    prefix: "/dicomweb",
    wado_uri: "/wado",
};

/// Answers every request with the endpoint it reaches, before any handler.
async fn probe(
    request: ServiceRequest,
    _next: Next<impl MessageBody>,
) -> Result<ServiceResponse, actix_web::Error> {
    let endpoint = of_request(&request, MOUNTS).endpoint;
    Ok(request.into_response(
        HttpResponse::Ok()
            .insert_header(("x-endpoint", format!("{endpoint:?}")))
            .finish(),
    ))
}

const STUDY: &str = "1.2.392.200036.9116.2.2.2.1762893313.1029997326.945873";
const SERIES: &str = "1.2.392.200036.9116.2.2.2.2162893313.1029997326.945876";
const INSTANCE: &str = "1.2.392.200036.9116.2.2.2.2162893313.1029997326.945877";

/// The example requests of PS3.18 (the URI templates of Chapters 8–10 and the
/// examples of their tables, with the standard's example UIDs), each with the
/// endpoint the table must give it, through the real route registration.
#[actix_web::test]
async fn every_ps3_18_example_request_reaches_its_endpoint() {
    use Endpoint as E;
    let s = format!("/dicomweb/studies/{STUDY}");
    let se = format!("{s}/series/{SERIES}");
    let i = format!("{se}/instances/{INSTANCE}");
    let examples: Vec<(Method, String, Endpoint)> = vec![
        // QIDO-RS (§10.6, Table 10.6.1-2 and the examples of §10.6.1.3).
        (Method::GET, "/dicomweb/studies?PatientID=11235813".into(), E::SearchForStudies),
        (Method::GET, "/dicomweb/studies?PatientName=Doe^J*&fuzzymatching=true&limit=25&offset=50".into(), E::SearchForStudies),
        (Method::GET, "/dicomweb/studies?StudyDate=20130509-20130510&includefield=00081030".into(), E::SearchForStudies),
        (Method::GET, "/dicomweb/series?Modality=MR".into(), E::SearchForSeries),
        (Method::GET, "/dicomweb/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.4".into(), E::SearchForInstances),
        (Method::GET, format!("{s}/series?Modality=CT"), E::SearchForStudySeries),
        (Method::GET, format!("{s}/instances"), E::SearchForStudyInstances),
        (Method::GET, format!("{se}/instances?InstanceNumber=1"), E::SearchForSeriesInstances),
        // STOW-RS (§10.5).
        (Method::POST, "/dicomweb/studies".into(), E::StoreInstances),
        (Method::POST, s.clone(), E::StoreStudyInstances),
        // WADO-RS (§10.4, Table 10.4.1-1).
        (Method::GET, s.clone(), E::RetrieveStudy),
        (Method::GET, se.clone(), E::RetrieveSeries),
        (Method::GET, i.clone(), E::RetrieveInstance),
        (Method::GET, format!("{s}/metadata"), E::RetrieveStudyMetadata),
        (Method::GET, format!("{se}/metadata"), E::RetrieveSeriesMetadata),
        (Method::GET, format!("{i}/metadata"), E::RetrieveInstanceMetadata),
        (Method::GET, format!("{s}/rendered?viewport=512,512&quality=80"), E::RetrieveRenderedStudy),
        (Method::GET, format!("{se}/rendered"), E::RetrieveRenderedSeries),
        (Method::GET, format!("{i}/rendered?window=40,400,linear"), E::RetrieveRenderedInstance),
        (Method::GET, format!("{i}/frames/1,3,5/rendered"), E::RetrieveRenderedFrames),
        (Method::GET, format!("{s}/thumbnail?viewport=64,64"), E::RetrieveStudyThumbnail),
        (Method::GET, format!("{se}/thumbnail"), E::RetrieveSeriesThumbnail),
        (Method::GET, format!("{i}/thumbnail"), E::RetrieveInstanceThumbnail),
        (Method::GET, format!("{i}/frames/1/thumbnail"), E::RetrieveFrameThumbnail),
        (Method::GET, format!("{s}/pixeldata"), E::RetrieveStudyPixelData),
        (Method::GET, format!("{se}/pixeldata"), E::RetrieveSeriesPixelData),
        (Method::GET, format!("{i}/pixeldata"), E::RetrieveInstancePixelData),
        (Method::GET, format!("{i}/frames/1,3,5"), E::RetrieveFrames),
        (Method::GET, format!("{i}/bulkdata/00420011"), E::RetrieveBulkdata),
        (Method::GET, format!("{i}/bulkdata/0040A730/1/0040A123"), E::RetrieveBulkdata),
        // DELETE (Study, Series and Instance resources).
        (Method::DELETE, s.clone(), E::DeleteStudy),
        (Method::DELETE, se.clone(), E::DeleteSeries),
        (Method::DELETE, i.clone(), E::DeleteInstance),
        // Retrieve Capabilities (§8.9).
        (Method::OPTIONS, "/dicomweb".into(), E::RetrieveCapabilities),
        (Method::OPTIONS, "/dicomweb/".into(), E::RetrieveCapabilities),
        // WADO-URI (§9, the example of §9.1.2.1.2 and §9.1.2.1.5).
        (
            Method::GET,
            format!("/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={INSTANCE}&contentType=application%2Fdicom"),
            E::RetrieveWadoUri,
        ),
        // Another tenant's service is the same table.
        (Method::GET, "/tenants/north/dicomweb/studies?PatientID=1".into(), E::SearchForStudies),
        (Method::DELETE, format!("/tenants/north{i}"), E::DeleteInstance),
        (Method::GET, "/tenants/north/wado?requestType=WADO".into(), E::RetrieveWadoUri),
        // The site's own resources.
        (Method::GET, "/dicomweb/openapi.json".into(), E::OpenApiDescription),
        (Method::GET, "/healthz".into(), E::Healthz),
        (Method::GET, "/readyz".into(), E::Readyz),
        (Method::GET, "/dicomweb/changefeed".into(), E::ChangeFeed),
        (Method::GET, "/tenants/north/dicomweb/changefeed/latest".into(), E::ChangeFeedLatest),
        (Method::GET, "/metrics".into(), E::Metrics),
        (Method::GET, "/admin/sovereignty".into(), E::AdminSovereignty),
        // What actix routes is what the table names, however it is spelled.
        (Method::GET, "/%61dmin/sovereignty".into(), E::AdminSovereignty),
        (Method::GET, "/dicomweb/%73tudies".into(), E::SearchForStudies),
        // A routed path with another method, and no route at all.
        (Method::PUT, "/dicomweb/studies".into(), E::MethodNotAllowed),
        (Method::POST, "/admin/sovereignty".into(), E::MethodNotAllowed),
        (Method::GET, "/dicomweb/patients".into(), E::NoRoute),
        (Method::GET, "/tenants/north/healthz".into(), E::NoRoute),
        (Method::GET, "/".into(), E::NoRoute),
    ];
    let app = actix_test::init_service(
        App::new()
            .wrap(from_fn(probe))
            .configure(|c| crate::http::routes::configure(c, MOUNTS.prefix, MOUNTS.wado_uri)),
    )
    .await;
    for (method, uri, expected) in examples {
        let request = actix_test::TestRequest::default()
            .method(method.clone())
            .uri(&uri)
            .to_request();
        let response = actix_test::call_service(&app, request).await;
        let found = response
            .headers()
            .get("x-endpoint")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(found, format!("{expected:?}"), "{method} {uri}");
    }
}

#[test]
fn every_endpoint_is_in_the_table_once_per_method_and_path() {
    let mut seen = std::collections::HashSet::new();
    for route in table() {
        assert!(
            seen.insert((route.mount, route.path, route.method.clone())),
            "{route:?} twice"
        );
        assert!(!matches!(
            route.endpoint,
            Endpoint::MethodNotAllowed | Endpoint::NoRoute
        ));
    }
    // 30 DICOMweb transactions at 30 method-paths, then the site's 8 and the
    // change feed's 2.
    assert_eq!(transactions().count(), 30);
    assert_eq!(table().len(), 40);
}

#[test]
fn audit_actions_and_permissions_follow_the_kind_of_endpoint() {
    use Endpoint as E;
    let get = &Method::GET;
    assert_eq!(E::SearchForSeries.audit_action(), Some(AuditAction::Search));
    assert_eq!(
        E::StoreStudyInstances.audit_action(),
        Some(AuditAction::Store)
    );
    assert_eq!(
        E::RetrieveWadoUri.audit_action(),
        Some(AuditAction::Retrieve)
    );
    assert_eq!(E::DeleteSeries.audit_action(), Some(AuditAction::Delete));
    // The change feed names UIDs: audited as a query, read permission.
    assert_eq!(E::ChangeFeed.audit_action(), Some(AuditAction::Search));
    assert_eq!(
        E::ChangeFeedLatest.permission(get, "/dicomweb/changefeed/latest"),
        Permission::Tenant(Action::Read)
    );
    for quiet in [
        E::RetrieveCapabilities,
        E::OpenApiDescription,
        E::Healthz,
        E::Metrics,
        E::AdminSovereignty,
        E::NoRoute,
    ] {
        assert_eq!(quiet.audit_action(), None, "{quiet:?}");
    }
    assert_eq!(
        E::RetrieveFrames.permission(get, "/dicomweb/studies/1"),
        Permission::Tenant(Action::Read)
    );
    assert_eq!(
        E::StoreInstances.permission(&Method::POST, "/dicomweb/studies"),
        Permission::Tenant(Action::Write)
    );
    assert_eq!(
        E::DeleteStudy.permission(&Method::DELETE, "/dicomweb/studies/1"),
        Permission::Tenant(Action::Delete)
    );
    assert_eq!(E::Readyz.permission(get, "/readyz"), Permission::Open);
    assert_eq!(
        E::AdminSovereignty.permission(get, "/admin/sovereignty"),
        Permission::Admin
    );
    // Nothing routed: credentials still, by method, and admin under /admin.
    assert_eq!(E::NoRoute.permission(get, "/admin/keys"), Permission::Admin);
    assert_eq!(
        E::MethodNotAllowed.permission(&Method::PUT, "/dicomweb/studies"),
        Permission::Tenant(Action::Write)
    );
    assert_eq!(
        E::NoRoute.permission(get, "/elsewhere"),
        Permission::Tenant(Action::Read)
    );
}

#[test]
fn names_are_the_transactions_of_ps3_18() {
    assert_eq!(Endpoint::StoreStudyInstances.name(), "StoreInstances");
    assert_eq!(Endpoint::RetrieveFrames.name(), "RetrieveFrames");
    let names: std::collections::HashSet<_> = table().iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), 38, "one name per endpoint but STOW-RS");
}
