//! One typed configuration, layered: built-in defaults → TOML file (`--config`) →
//! environment (`KASTELL__SECTION__KEY`) → command-line flags.
//!
//! Every key is listed, with its default and environment variable, in
//! `kastell.example.toml` at the top of the repository.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod exposure;
pub mod proxies;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod limits;
pub use limits::LimitsConfig;

/// Prefix of every environment variable that sets a config key.
pub const ENV_PREFIX: &str = "KASTELL__";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub index: IndexConfig,
    pub dicomweb: DicomWebConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub sovereignty: SovereigntyConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds to.
    pub listen: SocketAddr,
    /// Number of HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest request body accepted, in bytes; larger requests get 413.
    pub max_request_bytes: u64,
    /// How long in-flight requests may take to finish on shutdown, in seconds.
    pub shutdown_timeout_secs: u64,
    /// On SIGTERM or SIGINT, how long to keep serving with `/readyz` answering
    /// 503 before the listening socket closes, in seconds: time for a load
    /// balancer to take the instance out of rotation, so that no client meets a
    /// refused connection during a rolling update.
    pub drain_delay_secs: u64,
    /// Origins browsers may call from (a viewer served elsewhere), e.g.
    /// `["https://viewer.example.org"]`; `["*"]` allows any; empty disables CORS.
    pub cors_allowed_origins: Vec<String>,
    /// Reverse proxies (IP addresses or CIDR blocks) whose `client_address_header`
    /// names the client in the audit trail and access log. Empty: the TCP peer is
    /// the client and no forwarding header is believed.
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies write: `x-forwarded-for` or `forwarded`.
    pub client_address_header: proxies::ClientAddressHeader,
    /// Serve on a non-loopback address although anonymous requests may write or
    /// delete, or the master key is the generated development key. Refused
    /// without this; meant for closed test networks only.
    pub allow_insecure_exposure: bool,
    /// Where the host running Kastell is. It decrypts images, holds the master key in
    /// memory and writes the logs; backends local to it (the SQLite file, the local
    /// blob directory, a loopback database) inherit this declaration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the embedded defaults: the SQLite index and the local blob store.
    pub data_dir: PathBuf,
    /// Where blobs live; empty means `file://<data_dir>/blobs`.
    pub blob_url: String,
    /// object_store settings of a cloud backend (`aws_endpoint`, `aws_region`,
    /// `aws_virtual_hosted_style_request`, `azure_storage_account_name`, ...); they
    /// win over the `AWS_*` / `AZURE_*` / `GOOGLE_*` environment variables.
    pub blob_options: std::collections::BTreeMap<String, String>,
    /// Upload part size for blob writes, in bytes. Bounds memory per upload.
    pub upload_part_bytes: usize,
    /// Upload parts in flight per blob.
    pub upload_concurrency: usize,
    /// Largest DICOM header (everything before Pixel Data) kept in memory for parsing.
    pub max_header_bytes: usize,
    /// Blobs not referenced by the index and older than this many seconds are
    /// removed by the orphan sweep at start-up (left-overs of a crash mid-upload).
    pub orphan_grace_secs: u64,
    /// A cloud backend retries a failed request (connection error, timeout,
    /// server error) at most this many times...
    pub blob_max_retries: usize,
    /// ...and begins no retry later than this after the first attempt, in
    /// milliseconds; then the request fails with 503. Bounds how long a request
    /// waits for a blob store that went away.
    pub blob_retry_timeout_ms: u64,
    /// Where the blob store is; a local one (file://, memory://, a loopback
    /// endpoint) inherits `server.location` when this is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Index database: `sqlite://PATH` or `postgres://user@host/db`; empty means
    /// `sqlite://<data_dir>/index.sqlite`.
    pub url: String,
    /// Connections in the index pool (also bounds concurrent index work).
    pub pool_size: u32,
    /// How long a write waits for a locked database, in milliseconds.
    pub busy_timeout_ms: u64,
    /// How long a request waits for a free connection, in milliseconds.
    pub acquire_timeout_ms: u64,
    /// Longest a single statement may run on PostgreSQL, in milliseconds.
    pub statement_timeout_ms: u64,
    /// Where the index database is; a local one (SQLite, PostgreSQL on a loopback
    /// address or Unix socket) inherits `server.location` when this is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DicomWebConfig {
    /// Path under which the DICOMweb services are served.
    pub path_prefix: String,
    /// Path of WADO-URI (`?requestType=WADO&...`).
    pub wado_uri_path: String,
    /// Absolute base URL clients reach the server at (e.g. behind a proxy). Empty
    /// means: derive it from `Host` (or, from a trusted proxy, `X-Forwarded-*`)
    /// of each request.
    pub public_base_url: String,
    /// Largest number of results one QIDO response carries (the server maximum).
    pub qido_max_results: u32,
    /// Accept a new object under an existing SOP Instance UID and replace the old one.
    pub overwrite_existing: bool,
    /// Name used in `Warning: 299 <service>` headers.
    pub warning_agent: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// File holding the master key: 32 raw bytes, or their base64 or hex text.
    pub master_key_file: String,
    /// The master key as base64 text (a secret: prefer the file, or set it through
    /// `KASTELL__KEYS__MASTER_KEY`).
    pub master_key: String,
    /// With no master key configured and the embedded blob store, generate a
    /// development key under the data directory (with a loud warning).
    pub allow_development_key: bool,
    /// The tenant whose key encrypts new objects.
    pub default_tenant: String,
    /// Where the master key is held; it is read from a file or the environment of
    /// the host, so it inherits `server.location` when this is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// Who may do what (see `crate::auth` for the grant syntax).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Permissions of requests that carry no credentials, on every tenant:
    /// `read`, `write`, `delete`, `admin` or `*`. Empty means every request must
    /// authenticate. The default keeps the embedded setup usable without an
    /// identity provider, and the server warns loudly at start while it is on.
    pub anonymous: Vec<String>,
    /// How long a looked-up API key is remembered, in seconds: a revoked key
    /// keeps working on a running server for at most this long.
    pub api_key_cache_secs: u64,
    pub jwt: JwtConfig,
}

/// OAuth2 / OIDC bearer tokens (JWT). Enabled when `issuer` and one of
/// `jwks_file` / `jwks_url` are set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Expected `iss` claim, e.g. `https://login.example.org/realms/hospital`.
    pub issuer: String,
    /// Expected `aud` claim (required when JWT is enabled).
    pub audience: String,
    /// JWKS (the identity provider's public keys) from a file...
    pub jwks_file: String,
    /// ...or from an http(s) URL.
    pub jwks_url: String,
    /// Reload the JWKS this often, in seconds (also on an unknown `kid`).
    pub refresh_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim holding the roles, an array or a space-separated string; a dotted
    /// path reaches into objects (`realm_access.roles` for Keycloak). The
    /// `scope` claim is always read as well.
    pub roles_claim: String,
}

impl JwtConfig {
    /// JWT is on when there is an issuer to expect and somewhere to get keys from.
    pub fn enabled(&self) -> bool {
        let has_keys = !self.jwks_file.is_empty() || !self.jwks_url.is_empty();
        !self.issuer.is_empty() && has_keys
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `kastell=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A backend's jurisdiction declaration: where it is and under whose law. Kastell
/// cannot find this out by itself (an IP address says nothing about who may be
/// compelled to hand the data over), so the operator states it and
/// `crate::sovereignty` checks it against the policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// ISO 3166-1 alpha-2 code of the country the data sits in, e.g. `DE`.
    pub country: String,
    /// Who runs the backend, e.g. `Klinikum Nord IT` or `Amazon Web Services EMEA SARL`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator: String,
    /// Whether the operator is subject to a law that lets a foreign state compel
    /// access to the data (e.g. the US CLOUD Act for a European subsidiary of a US
    /// company). Left out means "not stated", which a policy forbidding such
    /// operators does not accept for personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_access_law: Option<bool>,
    /// Free text shown in the report (contract, data centre, certification).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The EU member states and the other EEA states (Iceland, Liechtenstein, Norway):
/// the default home of personal data, where the GDPR applies directly.
pub const EU_EEA_COUNTRIES: [&str; 30] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IS",
    "IT", "LI", "LT", "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// The jurisdiction policy checked at start-up (see `crate::sovereignty`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SovereigntyConfig {
    /// Countries (ISO 3166-1 alpha-2) where personal metadata (the index), the
    /// keys, the audit trail and the host processing them may be.
    pub personal_data_countries: Vec<String>,
    /// Whether those may sit with an operator subject to foreign-access law.
    pub allow_foreign_access_law: bool,
    /// What blob stores may be.
    pub blob_stores: BlobStorePolicy,
    /// Refuse to start while any backend (or the host) has no location declared.
    pub require_declarations: bool,
}

/// Where the blob store may be.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BlobStorePolicy {
    /// Anywhere: every blob is encrypted before it leaves the host and its keys
    /// stay where the personal-data rules allow, so the provider holds ciphertext only.
    CiphertextAnywhere,
    /// Under the same rules as personal metadata.
    SameAsPersonalData,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_request_bytes: 16 * 1024 * 1024 * 1024,
            shutdown_timeout_secs: 30,
            drain_delay_secs: 0,
            cors_allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            client_address_header: proxies::ClientAddressHeader::XForwardedFor,
            allow_insecure_exposure: false,
            location: None,
        }
    }
}

impl StorageConfig {
    /// `blob_options` as the (name, value) pairs the blob store is built with.
    pub fn blob_option_pairs(&self) -> Vec<(String, String)> {
        self.blob_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("kastell-data"),
            blob_url: String::new(),
            blob_options: Default::default(),
            upload_part_bytes: 8 * 1024 * 1024,
            upload_concurrency: 2,
            max_header_bytes: 64 * 1024 * 1024,
            orphan_grace_secs: 24 * 3600,
            blob_max_retries: 3,
            blob_retry_timeout_ms: 10_000,
            location: None,
        }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 8,
            busy_timeout_ms: 10_000,
            acquire_timeout_ms: 30_000,
            statement_timeout_ms: 30_000,
            location: None,
        }
    }
}

impl Default for DicomWebConfig {
    fn default() -> Self {
        Self {
            path_prefix: "/dicomweb".into(),
            wado_uri_path: "/wado".into(),
            public_base_url: String::new(),
            qido_max_results: 1000,
            overwrite_existing: false,
            warning_agent: "kastell".into(),
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            master_key_file: String::new(),
            master_key: String::new(),
            allow_development_key: true,
            default_tenant: "default".into(),
            location: None,
        }
    }
}

impl Default for SovereigntyConfig {
    fn default() -> Self {
        Self {
            personal_data_countries: EU_EEA_COUNTRIES.iter().map(|c| c.to_string()).collect(),
            allow_foreign_access_law: false,
            blob_stores: BlobStorePolicy::CiphertextAnywhere,
            // The embedded default must start with no configuration at all; it warns
            // loudly instead that the host's location is undeclared.
            require_declarations: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: vec!["read".into(), "write".into(), "delete".into()],
            api_key_cache_secs: 30,
            jwt: JwtConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            refresh_secs: 300,
            leeway_secs: 30,
            roles_claim: "roles".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// File name of the generated development master key under the data directory.
pub const DEVELOPMENT_KEY_FILE: &str = "development-master.key";

/// Where the master key comes from, decided from the configuration alone (the
/// application reads it; the sovereignty report says where it is held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `keys.master_key` (the file or `KASTELL__KEYS__MASTER_KEY`).
    Configured,
    /// `keys.master_key_file`.
    File(PathBuf),
    /// A key generated next to the data: the embedded default only.
    Development(PathBuf),
    /// None configured, and a generated key is not allowed here.
    Missing,
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub blob_url: Option<String>,
    pub index_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Rule(String),
}

impl Config {
    /// Loads the layered configuration.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").lowercase(true));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        if let Some(listen) = overrides.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.storage.data_dir = dir.clone();
        }
        if let Some(url) = &overrides.blob_url {
            config.storage.blob_url = url.clone();
        }
        if let Some(url) = &overrides.index_url {
            config.index.url = url.clone();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let prefix = &self.dicomweb.path_prefix;
        if !prefix.starts_with('/') || (prefix.len() > 1 && prefix.ends_with('/')) {
            return Err(ConfigError::Rule(format!(
                "dicomweb.path_prefix must start with '/' and not end with one, got {prefix:?}"
            )));
        }
        let wado = &self.dicomweb.wado_uri_path;
        if !wado.starts_with('/') || wado == prefix {
            return Err(ConfigError::Rule(format!(
                "dicomweb.wado_uri_path must start with '/' and differ from path_prefix, got {wado:?}"
            )));
        }
        if self.storage.upload_part_bytes < 5 * 1024 * 1024 {
            return Err(ConfigError::Rule(
                "storage.upload_part_bytes must be at least 5 MiB (the S3 minimum part size)"
                    .into(),
            ));
        }
        let tenant = &self.keys.default_tenant;
        if tenant.is_empty()
            || !tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Rule(format!(
                "keys.default_tenant must be letters, digits, '-' or '_', got {tenant:?}"
            )));
        }
        self.validate_auth()?;
        self.validate_telemetry()?;
        proxies::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|e| ConfigError::Rule(format!("server.trusted_proxies: {e}")))?;
        if self.index.pool_size == 0 || self.dicomweb.qido_max_results == 0 {
            return Err(ConfigError::Rule(
                "index.pool_size and dicomweb.qido_max_results must be positive".into(),
            ));
        }
        Ok(())
    }

    fn validate_telemetry(&self) -> Result<(), ConfigError> {
        let telemetry = &self.telemetry;
        let endpoint = &telemetry.otlp_endpoint;
        let http_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http_url {
            return Err(ConfigError::Rule(format!(
                "telemetry.otlp_endpoint must be an http(s) URL (OTLP/HTTP), got {endpoint:?}"
            )));
        }
        if telemetry.export_interval_secs == 0 || telemetry.service_name.is_empty() {
            return Err(ConfigError::Rule(
                "telemetry.export_interval_secs must be positive and service_name not empty".into(),
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if let Err(e) = crate::auth::parse_actions(&self.auth.anonymous) {
            return Err(ConfigError::Rule(format!("auth.anonymous: {e}")));
        }
        let jwt = &self.auth.jwt;
        if !jwt.jwks_file.is_empty() && !jwt.jwks_url.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt: set jwks_file or jwks_url, not both".into(),
            ));
        }
        let http_url = jwt.jwks_url.starts_with("https://") || jwt.jwks_url.starts_with("http://");
        if !jwt.jwks_url.is_empty() && !http_url {
            return Err(ConfigError::Rule(format!(
                "auth.jwt.jwks_url must be an http(s) URL, got {:?}",
                jwt.jwks_url
            )));
        }
        let has_keys = !jwt.jwks_file.is_empty() || !jwt.jwks_url.is_empty();
        if has_keys == jwt.issuer.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt: issuer and a JWKS source (jwks_file or jwks_url) go together".into(),
            ));
        }
        // Without an audience, a token the same identity provider issued for any
        // other application would be accepted here.
        if jwt.enabled() && jwt.audience.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt.audience must be set when JWT is enabled".into(),
            ));
        }
        if jwt.refresh_secs == 0 || jwt.roles_claim.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt.refresh_secs must be positive and roles_claim not empty".into(),
            ));
        }
        Ok(())
    }

    /// The blob store URL with the embedded default filled in.
    pub fn effective_blob_url(&self) -> String {
        if self.storage.blob_url.is_empty() {
            format!(
                "file://{}",
                absolute(&self.storage.data_dir.join("blobs")).display()
            )
        } else {
            self.storage.blob_url.clone()
        }
    }

    /// The index database URL with the embedded default filled in.
    pub fn effective_index_url(&self) -> String {
        if self.index.url.is_empty() {
            format!(
                "sqlite://{}",
                absolute(&self.storage.data_dir.join("index.sqlite")).display()
            )
        } else {
            self.index.url.clone()
        }
    }

    /// Where the master key comes from: the configured key, the key file, or (with
    /// the embedded local blob store only) a generated development key.
    pub fn master_key_source(&self) -> MasterKeySource {
        if !self.keys.master_key.is_empty() {
            MasterKeySource::Configured
        } else if !self.keys.master_key_file.is_empty() {
            MasterKeySource::File(PathBuf::from(&self.keys.master_key_file))
        } else if self.keys.allow_development_key && self.storage.blob_url.is_empty() {
            MasterKeySource::Development(self.storage.data_dir.join(DEVELOPMENT_KEY_FILE))
        } else {
            MasterKeySource::Missing
        }
    }

    /// The effective configuration as TOML, with secrets (passwords in URLs) redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for (name, value) in shown.storage.blob_options.iter_mut() {
            if name.contains("secret")
                || name.contains("key")
                || name.contains("token")
                || name.contains("password")
            {
                *value = "***".into();
            }
        }
        shown.storage.blob_url = redact_url(&self.effective_blob_url());
        shown.index.url = redact_url(&self.effective_index_url());
        if !shown.keys.master_key.is_empty() {
            shown.keys.master_key = "***".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_setup() {
        let config = Config::default();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.dicomweb.path_prefix, "/dicomweb");
        assert!(config.effective_index_url().starts_with("sqlite://"));
        assert!(config
            .effective_index_url()
            .ends_with("kastell-data/index.sqlite"));
        assert!(config.effective_blob_url().ends_with("kastell-data/blobs"));
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "k.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\n[dicomweb]\nqido_max_results = 50\n",
            )?;
            jail.set_env("KASTELL__DICOMWEB__QIDO_MAX_RESULTS", "70");
            let overrides = Overrides {
                data_dir: Some(PathBuf::from("/tmp/x")),
                ..Default::default()
            };
            let config = Config::load(Some(Path::new("k.toml")), &overrides).expect("loads");
            assert_eq!(config.server.listen.port(), 9000);
            assert_eq!(config.dicomweb.qido_max_results, 70);
            assert_eq!(config.storage.data_dir, PathBuf::from("/tmp/x"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[server]\nlistne = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("k.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }

    /// `KASTELL__INDEX__LOCATION__COUNTRY` nests into `index.location.country`, and a
    /// country code that reads like a word ("NO", Norway) stays a string.
    #[test]
    fn locations_come_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "k.toml",
                "[server]\nlocation = { country = \"DE\", operator = \"Klinikum\", foreign_access_law = false }\n\
                 [sovereignty]\nblob_stores = \"same-as-personal-data\"\n",
            )?;
            jail.set_env("KASTELL__INDEX__LOCATION__COUNTRY", "NO");
            jail.set_env("KASTELL__INDEX__LOCATION__FOREIGN_ACCESS_LAW", "true");
            jail.set_env("KASTELL__SOVEREIGNTY__PERSONAL_DATA_COUNTRIES", "[DE, AT]");
            let config =
                Config::load(Some(Path::new("k.toml")), &Overrides::default()).expect("loads");
            let server = config.server.location.clone().expect("server location");
            assert_eq!(server.country, "DE");
            assert_eq!(server.operator, "Klinikum");
            assert_eq!(server.foreign_access_law, Some(false));
            let index = config.index.location.clone().expect("index location");
            assert_eq!(index.country, "NO");
            assert_eq!(index.foreign_access_law, Some(true));
            assert_eq!(config.storage.location, None);
            assert_eq!(config.sovereignty.personal_data_countries, ["DE", "AT"]);
            assert_eq!(
                config.sovereignty.blob_stores,
                BlobStorePolicy::SameAsPersonalData
            );
            // The effective configuration still renders (absent locations left out).
            let shown = config.to_redacted_toml();
            assert!(shown.contains("country = \"NO\""), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn auth_defaults_to_anonymous_access_and_checks_jwt_settings() {
        let auth = Config::default().auth;
        assert_eq!(auth.anonymous, ["read", "write", "delete"]);
        assert!(!auth.jwt.enabled());
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "k.toml",
                "[auth]\nanonymous = []\n[auth.jwt]\nissuer = \"https://idp\"\n\
                 jwks_file = \"/etc/kastell/jwks.json\"\naudience = \"kastell\"\n",
            )?;
            jail.set_env("KASTELL__AUTH__JWT__LEEWAY_SECS", "5");
            let config =
                Config::load(Some(Path::new("k.toml")), &Overrides::default()).expect("loads");
            assert!(config.auth.anonymous.is_empty());
            assert!(config.auth.jwt.enabled());
            assert_eq!(config.auth.jwt.leeway_secs, 5);
            assert_eq!(config.auth.jwt.refresh_secs, 300);

            for bad in [
                "[auth]\nanonymous = [\"read\", \"everything\"]\n",
                // JWT without an audience would accept tokens meant for other apps.
                "[auth.jwt]\nissuer = \"https://idp\"\njwks_url = \"https://idp/certs\"\n",
                "[auth.jwt]\njwks_url = \"https://idp/certs\"\naudience = \"k\"\n",
                "[auth.jwt]\nissuer = \"i\"\naudience = \"k\"\njwks_url = \"ftp://idp\"\n",
                "[auth.jwt]\nissuer = \"i\"\naudience = \"k\"\njwks_url = \"https://a\"\njwks_file = \"b\"\n",
            ] {
                jail.create_file("bad.toml", bad)?;
                assert!(
                    Config::load(Some(Path::new("bad.toml")), &Overrides::default()).is_err(),
                    "{bad}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn telemetry_is_off_by_default_and_takes_an_http_endpoint() {
        let telemetry = Config::default().telemetry;
        assert!(telemetry.otlp_endpoint.is_empty());
        assert_eq!(telemetry.service_name, "kastell");
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "KASTELL__TELEMETRY__OTLP_ENDPOINT",
                "http://otel-collector:4318",
            );
            jail.set_env("KASTELL__TELEMETRY__EXPORT_INTERVAL_SECS", "5");
            jail.set_env("KASTELL__LOG__FORMAT", "json");
            let config = Config::load(None, &Overrides::default()).expect("loads");
            assert_eq!(config.telemetry.otlp_endpoint, "http://otel-collector:4318");
            assert_eq!(config.telemetry.export_interval_secs, 5);
            assert_eq!(config.log.format, LogFormat::Json);
            // OTLP over gRPC (no scheme, port 4317) is not what this exporter speaks.
            jail.set_env("KASTELL__TELEMETRY__OTLP_ENDPOINT", "otel-collector:4317");
            assert!(Config::load(None, &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://kastell:secret@db:5432/k"),
            "postgres://kastell:***@db:5432/k"
        );
        assert_eq!(redact_url("sqlite:///a/b"), "sqlite:///a/b");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The example file documents every key: it must parse and equal the defaults.
    #[test]
    fn example_file_lists_the_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kastell.example.toml"))
                .unwrap();
        let parsed: Config = toml::from_str(&text).expect("example parses");
        assert_eq!(parsed, Config::default());
    }
}
