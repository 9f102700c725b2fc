//! Request telemetry: the outermost middleware opens one span per request, named
//! after the endpoint of the route table (`RetrieveFrames`), and counts and times
//! the request when the last byte of its answer is gone; `GET /metrics` renders the
//! metrics for Prometheus.
//!
//! The endpoint is known before the handler runs: actix matches the request path
//! against its resource map, which is the route table, so the span has its final
//! name when index and store spans open beneath it. Spans and labels carry the
//! route pattern, never the path or query (they hold UIDs and patient names), and
//! the tenant only once the tenancy middleware has resolved it: a tenant merely
//! named in a refused request's path is neither recorded nor turned into a label.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use opentelemetry::KeyValue;
use tracing::field::Empty;
use tracing::Instrument;

use crate::http::endpoint;
use crate::http::state::{AppState, Site};
use crate::telemetry::metrics::INSTRUMENTS;

/// The tenant label of requests refused before their tenant was resolved.
const NO_TENANT: &str = "(none)";

/// The method as a label: anyone can send any token as a method, and each would
/// become a series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The middleware (registered outermost, so that refusals are counted too).
pub async fn observe(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<Observed>, actix_web::Error> {
    let started = Instant::now();
    let site = request
        .app_data::<web::Data<Site>>()
        .cloned()
        .ok_or_else(|| actix_web::error::ErrorInternalServerError("no site state"))?;
    // The endpoint is found here, once, and kept for the middleware inside.
    let endpoint::Routed { endpoint, pattern } = endpoint::of_request(&request, site.mounts());
    let method = method_label(request.method());
    let route = pattern.as_deref().unwrap_or("(unmatched)");
    let span = tracing::info_span!(
        "request",
        otel.name = endpoint.name(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.method = method,
        http.route = route,
        http.status_code = Empty,
        tenant = Empty,
    );
    let received = Arc::new(AtomicU64::new(0));
    let headers = request.headers();
    if headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING) {
        let counter = received.clone();
        let payload = request.take_payload().inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        request.set_payload(Payload::Stream {
            payload: Box::pin(payload),
        });
    }
    let mut completion = Completion {
        span: span.clone(),
        started,
        endpoint: endpoint.name(),
        method,
        tenant: Cow::Borrowed(NO_TENANT),
        status: StatusCode::INTERNAL_SERVER_ERROR,
        received,
        sent: 0,
    };
    match next.call(request).instrument(span).await {
        Ok(response) => {
            completion.status = response.status();
            if let Some(state) = response.request().extensions().get::<AppState>() {
                completion.tenant = Cow::Owned(state.tenant.clone());
            }
            Ok(response.map_body(|_, body| Observed {
                body: body.boxed(),
                completion,
            }))
        }
        Err(error) => {
            // Refused by a middleware (authentication, an unknown tenant): the
            // error becomes the answer further out; it is counted now.
            completion.status = error.as_response_error().status_code();
            Err(error)
        }
    }
}

/// What is recorded once the answer is complete (or abandoned by the client):
/// on drop, so every way a response can end is counted once.
struct Completion {
    span: tracing::Span,
    started: Instant,
    endpoint: &'static str,
    method: &'static str,
    tenant: Cow<'static, str>,
    status: StatusCode,
    received: Arc<AtomicU64>,
    sent: u64,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let status = self.status;
        self.span
            .record("http.status_code", u64::from(status.as_u16()));
        self.span.record("tenant", self.tenant.as_ref());
        if status.is_server_error() {
            self.span.record("otel.status_code", "ERROR");
        }
        let endpoint = KeyValue::new("endpoint", self.endpoint);
        let method = KeyValue::new("method", self.method);
        let tenant = KeyValue::new("tenant", self.tenant.clone());
        let request_labels = [
            endpoint.clone(),
            method.clone(),
            tenant.clone(),
            KeyValue::new("status", i64::from(status.as_u16())),
            KeyValue::new("status_class", status_class(status)),
        ];
        let instruments = &*INSTRUMENTS;
        instruments.http_requests.add(1, &request_labels);
        instruments
            .http_duration
            .record(self.started.elapsed().as_secs_f64(), &request_labels);
        let byte_labels = [endpoint, method, tenant];
        let received = self.received.load(Ordering::Relaxed);
        if received > 0 {
            instruments.http_received.add(received, &byte_labels);
        }
        if self.sent > 0 {
            instruments.http_sent.add(self.sent, &byte_labels);
        }
    }
}

/// A response body that counts the bytes it hands out and completes the request's
/// telemetry when dropped, after its last byte.
pub struct Observed {
    body: BoxBody,
    completion: Completion,
}

impl MessageBody for Observed {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.body).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &poll {
            this.completion.sent += chunk.len() as u64;
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let odd = Method::from_bytes(b"1.2.840.113619").unwrap();
        assert_eq!(method_label(&odd), "_OTHER");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }
}
