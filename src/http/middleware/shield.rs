//! What every request passes before anything else sees it, and every response on
//! its way out: the request target's length (414), the number of requests in
//! flight (503 with `Retry-After` instead of an endless queue), a panic in a
//! handler turned into a 500 for that request alone, and the headers that keep
//! a browser from running what an archive serves (`nosniff` everywhere, a
//! sandboxing Content-Security-Policy on anything that can carry script).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use futures_util::FutureExt;

use crate::config::LimitsConfig;
use crate::http::error::ApiError;

/// The policy of responses that a browser could run: no scripts, no plugins,
/// no same-origin access, nothing loaded from anywhere.
pub const SANDBOX_POLICY: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'";

/// Counts of requests in flight, shared by every worker.
pub struct Shield {
    limits: LimitsConfig,
    in_flight: Arc<AtomicUsize>,
    per_tenant: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// One request's place in a count, given back when the request ends (its
/// response body included: the guard travels with the response).
pub struct Slot {
    count: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shield {
    pub fn new(limits: LimitsConfig) -> Self {
        Self {
            limits,
            in_flight: Arc::new(AtomicUsize::new(0)),
            per_tenant: Mutex::new(HashMap::new()),
        }
    }

    fn take(count: &Arc<AtomicUsize>, max: usize, retry_after: u64) -> Result<Slot, ApiError> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| ApiError::Overloaded(retry_after))?;
        Ok(Slot {
            count: count.clone(),
        })
    }

    /// A place among the requests of `tenant` (an existing tenant: the map holds
    /// one counter per tenant the server serves, not per name a client sends).
    pub fn tenant_slot(&self, tenant: &str) -> Result<Slot, ApiError> {
        let count = {
            // A poisoned lock only means another request panicked while holding
            // it; the map itself is always whole.
            let mut map = self
                .per_tenant
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.entry(tenant.to_string()).or_default().clone()
        };
        Self::take(
            &count,
            self.limits.max_in_flight_per_tenant,
            self.limits.retry_after_secs,
        )
    }
}

/// Whether a response of this media type could be run by a browser that
/// opened it directly (markup that can hold script).
fn can_carry_script(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.contains("html")
        || essence.contains("xml")
        || essence.contains("svg")
        || essence.contains("javascript")
        || essence == "application/pdf"
        // A multipart body is opened by no browser, but its parts might be.
        || content_type.to_ascii_lowercase().contains("xml")
}

/// The middleware (outermost but for telemetry).
pub async fn protect(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let shield = request
        .app_data::<web::Data<Shield>>()
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("the request shield is not configured".into()))?;
    let target_length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target_length > shield.limits.max_url_bytes {
        return Ok(request.error_response(ApiError::UriTooLong(shield.limits.max_url_bytes)));
    }
    // Health checks are answered whatever the load: an orchestrator must not
    // restart a busy server.
    let counted = !matches!(request.path(), "/healthz" | "/readyz");
    let slot = if counted {
        match Shield::take(
            &shield.in_flight,
            shield.limits.max_in_flight,
            shield.limits.retry_after_secs,
        ) {
            Ok(slot) => Some(slot),
            Err(error) => return Ok(request.error_response(error)),
        }
    } else {
        None
    };
    // No clone of the request may live across the call (actix needs it
    // unshared), so a panic is answered as an error: actix turns it into a
    // response through `ApiError`, which sets the same headers.
    let mut response = match std::panic::AssertUnwindSafe(next.call(request))
        .catch_unwind()
        .await
    {
        Ok(result) => result?.map_into_boxed_body(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "a request handler panicked; answered 500");
            return Err(ApiError::Panicked.into());
        }
    };
    secure_headers(response.headers_mut());
    Ok(match slot {
        // The slot is held until the body has been sent.
        Some(slot) => {
            response.map_body(|_, body| BoxBody::new(HoldWhileSending { body, _slot: slot }))
        }
        None => response,
    })
}

/// `nosniff` on everything, the sandbox on what could carry script.
pub fn secure_headers(headers: &mut header::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let scriptable = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(can_carry_script);
    if scriptable && !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(SANDBOX_POLICY),
        );
    }
}

/// A response body that keeps the request's in-flight slot until it is sent.
struct HoldWhileSending {
    body: BoxBody,
    _slot: Slot,
}

impl MessageBody for HoldWhileSending {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_capable_types_are_recognised() {
        assert!(can_carry_script("text/html; charset=utf-8"));
        assert!(can_carry_script("application/dicom+xml"));
        assert!(can_carry_script("image/svg+xml"));
        assert!(can_carry_script(
            "multipart/related; type=\"application/dicom+xml\"; boundary=x"
        ));
        assert!(can_carry_script("application/pdf"));
        assert!(!can_carry_script("application/dicom+json"));
        assert!(!can_carry_script("image/jpeg"));
        assert!(!can_carry_script(
            "multipart/related; type=\"application/dicom\""
        ));
    }

    #[test]
    fn counts_refuse_past_the_limit_and_free_on_drop() {
        let limits = LimitsConfig {
            max_in_flight_per_tenant: 2,
            ..LimitsConfig::default()
        };
        let shield = Shield::new(limits);
        let a = shield.tenant_slot("t").unwrap();
        let _b = shield.tenant_slot("t").unwrap();
        assert!(matches!(
            shield.tenant_slot("t"),
            Err(ApiError::Overloaded(2))
        ));
        assert!(shield.tenant_slot("other").is_ok());
        drop(a);
        assert!(shield.tenant_slot("t").is_ok());
    }

    fn app_with(
        limits: LimitsConfig,
    ) -> actix_web::App<
        impl actix_web::dev::ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        actix_web::App::new()
            .app_data(web::Data::new(Shield::new(limits)))
            .wrap(actix_web::middleware::from_fn(protect))
            .route(
                "/panic",
                web::get().to(|| async {
                    panic!("a handler bug");
                    #[allow(unreachable_code)]
                    actix_web::HttpResponse::Ok().finish()
                }),
            )
            .route(
                "/page",
                web::get().to(|| async {
                    actix_web::HttpResponse::Ok()
                        .content_type("text/html")
                        .body("<p>hi</p>")
                }),
            )
    }

    #[actix_web::test]
    async fn a_panicking_handler_answers_500_and_the_next_request_is_served() {
        let app = actix_web::test::init_service(app_with(LimitsConfig::default())).await;
        let request = actix_web::test::TestRequest::get()
            .uri("/panic")
            .to_request();
        let error = actix_web::test::try_call_service(&app, request)
            .await
            .expect_err("the panic is answered as an error");
        let response = error.error_response();
        assert_eq!(response.status(), 500);
        assert_eq!(
            response
                .headers()
                .get(header::X_CONTENT_TYPE_OPTIONS)
                .unwrap(),
            "nosniff"
        );
        let request = actix_web::test::TestRequest::get()
            .uri("/page")
            .to_request();
        let response = actix_web::test::call_service(&app, request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_SECURITY_POLICY)
                .unwrap(),
            SANDBOX_POLICY
        );
    }

    #[actix_web::test]
    async fn long_targets_get_414_and_excess_requests_503() {
        let limits = LimitsConfig {
            max_url_bytes: 64,
            max_in_flight: 0,
            ..LimitsConfig::default()
        };
        let app = actix_web::test::init_service(app_with(limits)).await;
        let long = format!("/page?{}", "a".repeat(100));
        let request = actix_web::test::TestRequest::get().uri(&long).to_request();
        let response = actix_web::test::call_service(&app, request).await;
        assert_eq!(response.status(), 414);
        let request = actix_web::test::TestRequest::get()
            .uri("/page")
            .to_request();
        let response = actix_web::test::call_service(&app, request).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }
}
