//! Logging, tracing and metrics.
//!
//! Logs go to stderr as text or JSON lines (`[log]`). The server also keeps
//! OpenTelemetry metrics, rendered for Prometheus at `GET /metrics`, and, when an
//! OTLP endpoint is configured (`[telemetry]`), exports its `tracing` spans and its
//! metrics there over OTLP/HTTP (protobuf). Without an endpoint no exporter is
//! built and nothing leaves the host.
//!
//! Spans: one per request, named after the endpoint of the route table
//! (`RetrieveFrames`), one per index call (`index.search`) and one per blob store
//! call (`store.read_range`). None carries a UID, a name or a path.

pub mod metrics;
mod otlp_client;

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// The standard variable naming an OTLP endpoint, read when
/// `telemetry.otlp_endpoint` is empty.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The Prometheus registry `/metrics` renders, once the server has set it up.
static PROMETHEUS: OnceLock<prometheus::Registry> = OnceLock::new();

/// Installs the global subscriber (logs only: the CLI commands). `RUST_LOG`, when
/// set, overrides `log.level`.
pub fn init(config: &LogConfig) {
    install(config, None);
}

/// What the server set up; [`Telemetry::shutdown`] flushes what is still buffered.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: SdkMeterProvider,
}

/// Installs logging, the metrics behind `/metrics` and, when an OTLP endpoint is
/// configured, the OTLP exporters of spans and metrics (the server).
pub fn init_server(log: &LogConfig, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes([opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        )])
        .build();
    let registry = prometheus::Registry::new();
    let prometheus_reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        // Every instrument is Kastell's own: an `otel_scope_name` label on each
        // series would say nothing.
        .scope_info_enabled(false)
        .build()
        .context("setting up the Prometheus metrics")?;
    let mut meters = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(prometheus_reader);
    let endpoint = otlp_endpoint(config, std::env::var(OTLP_ENDPOINT_ENV).ok());
    let mut tracer_provider = None;
    if let Some(endpoint) = &endpoint {
        let client = otlp_client::OtlpClient::new().context("building the OTLP HTTP client")?;
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()
            .context("setting up the OTLP span exporter")?;
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/metrics"))
            .build()
            .context("setting up the OTLP metric exporter")?;
        meters = meters.with_reader(
            PeriodicReader::builder(metric_exporter)
                .with_interval(Duration::from_secs(config.export_interval_secs))
                .build(),
        );
        tracer_provider = Some(
            SdkTracerProvider::builder()
                .with_resource(resource)
                .with_span_processor(BatchSpanProcessor::builder(spans).build())
                .build(),
        );
    }
    let meter_provider = meters.build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    // A second server in one process (tests) keeps the first registry.
    let _ = PROMETHEUS.set(registry);
    install(log, tracer_provider.as_ref());
    match &endpoint {
        Some(endpoint) => tracing::info!(
            %endpoint,
            service_name = %config.service_name,
            "exporting traces and metrics over OTLP/HTTP"
        ),
        None => tracing::debug!("no OTLP endpoint configured: telemetry stays on this host"),
    }
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
    })
}

impl Telemetry {
    /// Exports what is still buffered (the last spans, a final metric reading).
    pub fn shutdown(self) {
        if let Some(tracer_provider) = self.tracer_provider {
            if let Err(error) = tracer_provider.shutdown() {
                eprintln!("flushing the last spans failed: {error}");
            }
        }
        if let Err(error) = self.meter_provider.shutdown() {
            eprintln!("flushing the last metrics failed: {error}");
        }
    }
}

/// The OTLP base URL (signal paths `/v1/traces`, `/v1/metrics` are appended):
/// the configured one, else the standard environment variable; `None` exports
/// nothing.
fn otlp_endpoint(config: &TelemetryConfig, env: Option<String>) -> Option<String> {
    let endpoint = if config.otlp_endpoint.is_empty() {
        env.unwrap_or_default()
    } else {
        config.otlp_endpoint.clone()
    };
    let endpoint = endpoint.trim().trim_end_matches('/');
    (!endpoint.is_empty()).then(|| endpoint.to_string())
}

/// The metrics in the Prometheus text exposition format (empty before the server
/// set them up).
pub fn prometheus_text() -> String {
    let Some(registry) = PROMETHEUS.get() else {
        return String::new();
    };
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "rendering the metrics failed");
            String::new()
        })
}

/// The content type of [`prometheus_text`].
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

fn install(config: &LogConfig, tracer_provider: Option<&SdkTracerProvider>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match config.format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    // Traces do not follow the log level: an operator running at `warn` still gets
    // Kastell's request, index and store spans, and warnings as span events.
    let traces = tracer_provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(metrics::SCOPE))
            .with_filter(filter_fn(|meta| {
                meta.target().starts_with("kastell")
                    && if meta.is_span() {
                        *meta.level() <= Level::INFO
                    } else {
                        *meta.level() <= Level::WARN
                    }
            }))
    });
    let result = Registry::default().with(logs).with(traces).try_init();
    if let Err(error) = result {
        eprintln!("logging was already initialised: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_configuration_then_the_environment() {
        let mut config = TelemetryConfig::default();
        assert_eq!(otlp_endpoint(&config, None), None);
        assert_eq!(otlp_endpoint(&config, Some(" ".into())), None);
        assert_eq!(
            otlp_endpoint(&config, Some("http://collector:4318/".into())).as_deref(),
            Some("http://collector:4318")
        );
        config.otlp_endpoint = "https://otel.example.org".into();
        assert_eq!(
            otlp_endpoint(&config, Some("http://collector:4318".into())).as_deref(),
            Some("https://otel.example.org")
        );
    }
}
