//! The site's operational resources: the health checks (`/healthz`, `/readyz`),
//! the metrics for Prometheus and the administration endpoint (the control
//! chain).

use actix_web::{web, HttpResponse};

use crate::http::state::{AppState, Site};

/// The control chain: where each kind of data sits, under whose law, encrypted or
/// not, who holds the keys (JSON, as `kastell sovereignty report --format json`).
pub async fn sovereignty(state: web::ReqData<AppState>) -> HttpResponse {
    // The tenancy middleware has checked the caller is an administrator.
    HttpResponse::Ok().json(&*state.sovereignty_report)
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn readyz(state: web::ReqData<AppState>, site: web::Data<Site>) -> HttpResponse {
    if site.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("shutting down\n");
    }
    let ready = state.services.readiness().await;
    let (index_ok, store_ok) = (ready.index, ready.blob_store);
    if index_ok && store_ok {
        // A sink that cannot deliver does not make the server unready (stores
        // go on, the outbox keeps the events): it is shown, with its backlog.
        let mut body = String::from("ready\n");
        for ((tenant, sink), view) in site.events.snapshot() {
            if view.backlog > 0 || view.error.is_some() {
                body.push_str(&format!(
                    "events backlog: {} (tenant {tenant}, sink {sink}){}\n",
                    view.backlog,
                    view.error.map(|e| format!(": {e}")).unwrap_or_default()
                ));
            }
        }
        HttpResponse::Ok().content_type("text/plain").body(body)
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

/// `GET /metrics`: the Prometheus text exposition of every metric. Open like the
/// health checks (scrapers rarely carry tokens); it holds counts and durations
/// per endpoint and tenant, no patient data.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::telemetry::PROMETHEUS_CONTENT_TYPE)
        .body(crate::telemetry::prometheus_text())
}
