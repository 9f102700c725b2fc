//! `[log]` and `[telemetry]`: the log filter and format, and OpenTelemetry export.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `kastell=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// OpenTelemetry export. Metrics are also served at `GET /metrics` whatever is set
/// here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry collector), e.g.
    /// `http://otel-collector:4318`; spans go to `/v1/traces`, metrics to
    /// `/v1/metrics`. Empty: `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else nothing is
    /// exported.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans and metrics.
    pub service_name: String,
    /// How often metrics are exported over OTLP, in seconds.
    pub export_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "kastell".into(),
            export_interval_secs: 60,
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let endpoint = &self.otlp_endpoint;
        let http_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http_url {
            return Err(ConfigError::Rule(format!(
                "telemetry.otlp_endpoint must be an http(s) URL (OTLP/HTTP), got {endpoint:?}"
            )));
        }
        if self.export_interval_secs == 0 || self.service_name.is_empty() {
            return Err(ConfigError::Rule(
                "telemetry.export_interval_secs must be positive and service_name not empty".into(),
            ));
        }
        Ok(())
    }
}
