//! The one place errors become HTTP answers. 4xx bodies explain what was wrong;
//! 5xx bodies say nothing internal (the details go to the log).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::service::{ServiceError, OUTAGE_RETRY_AFTER_SECS};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body exceeds the configured limit of {0} bytes")]
    PayloadTooLarge(u64),
    #[error("method not allowed")]
    MethodNotAllowed(String),
    /// A Range outside a body of this many bytes.
    #[error("the requested range is outside the {0} bytes of this resource")]
    RangeNotSatisfiable(u64),
    /// No or bad credentials: 401 with `challenge` as `WWW-Authenticate`.
    #[error("{message}")]
    Unauthorized { challenge: String, message: String },
    /// Authenticated, but not allowed to do this: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A dependency the request needs (the identity provider's keys, the index for
    /// an API key) cannot be reached: 503. The text is logged, not sent.
    #[error("{0}")]
    Unavailable(String),
    /// More parts in one multipart body than the configured limit: 413.
    #[error("the request has more than {0} parts")]
    TooManyParts(usize),
    /// The request target is longer than the configured limit: 414.
    #[error("the request URL exceeds the configured limit of {0} bytes")]
    UriTooLong(usize),
    /// Too many requests in flight (in all or for the tenant): 503 with
    /// `Retry-After`.
    #[error("the server is busy; retry after {0} s")]
    Overloaded(u64),
    /// The client stopped sending the request body: 408.
    #[error("the request body stalled for more than {0} s")]
    BodyTimeout(u64),
    /// A handler panicked: 500 for that request alone.
    #[error("a request handler panicked")]
    Panicked,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl ApiError {
    fn public_message(&self) -> String {
        match self {
            ApiError::Service(error) => error.public_message(),
            ApiError::Panicked => "internal server error".to_string(),
            ApiError::Unavailable(_) => {
                "a service this request needs is unavailable; retry later".to_string()
            }
            other => other.to_string(),
        }
    }

    /// The `Retry-After` of a 503, in seconds.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded(secs) => Some(*secs),
            ApiError::Unavailable(_) => Some(OUTAGE_RETRY_AFTER_SECS),
            ApiError::Service(error) => error.retry_after_secs(),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::TooManyParts(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Service(error) => {
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let ApiError::MethodNotAllowed(allow) = self {
            if let Ok(allow) = HeaderValue::from_str(allow) {
                response.insert_header((header::ALLOW, allow));
            }
        }
        if let Some(secs) = self.retry_after_secs() {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let ApiError::Service(error) = self {
            if let Some(warning) = error.warning() {
                let value = format!("299 kastell \"{warning}\"");
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.insert_header((header::WARNING, value));
                }
            }
        }
        if let ApiError::RangeNotSatisfiable(total) = self {
            response.insert_header((header::CONTENT_RANGE, format!("bytes */{total}")));
        }
        if let ApiError::Unauthorized { challenge, .. } = self {
            if let Ok(challenge) = HeaderValue::from_str(challenge) {
                response.insert_header((header::WWW_AUTHENTICATE, challenge));
            }
        }
        let mut response = response
            .content_type("text/html; charset=utf-8")
            .body(status_report(status, &self.public_message()));
        // Errors raised by middleware become responses outside it: the headers
        // every response carries are set here too.
        crate::http::middleware::shield::secure_headers(response.headers_mut());
        response
    }
}

/// A minimal HTML Status Report (PS3.18 §8.6.3).
pub fn status_report(status: StatusCode, message: &str) -> String {
    // The one escaping of text into markup (also the XML writer's).
    let escaped = crate::dicom::xml::escape(message);
    format!(
        "<!DOCTYPE html><html><head><title>{code}</title></head><body><h1>{code} {reason}</h1><p>{escaped}</p></body></html>\n",
        code = status.as_u16(),
        reason = status.canonical_reason().unwrap_or(""),
    )
}
