//! The HTTP client the OTLP exporters send with: the reqwest (0.12, rustls with
//! ring and the native roots) the rest of Kastell already builds. The exporter
//! crate's own reqwest integration is for a newer reqwest, which would bring a
//! second HTTP and TLS stack into the binary.
//!
//! It is reqwest's blocking client because the SDK exports from its own threads
//! (the batch span processor and the periodic metric reader), outside any async
//! runtime.

use std::io::Read;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// A collector answer larger than this is cut off: it is only read for errors.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// How long one export may take before it is abandoned (the SDK retries later).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(super) struct OtlpClient(reqwest::blocking::Client);

impl OtlpClient {
    // Joining fails only if building the client panicked, which reqwest does
    // not do; this runs once at start-up.
    #[allow(clippy::expect_used)]
    pub(super) fn new() -> reqwest::Result<Self> {
        // The blocking client starts a runtime of its own and must not be built on
        // one (`serve` calls this before the server's runtime, but be safe).
        std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(TIMEOUT)
                .build()
        })
        .join()
        .expect("building the HTTP client does not panic")
        .map(OtlpClient)
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let response = self.0.execute(request.try_into()?)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        response.take(MAX_RESPONSE_BYTES).read_to_end(&mut body)?;
        let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}
