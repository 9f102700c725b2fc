//! One typed configuration, layered: built-in defaults → TOML file (`--config`) →
//! environment (`KASTELL__SECTION__KEY`) → command-line flags.
//!
//! Every key is listed, with its default and environment variable, in
//! `kastell.example.toml` at the top of the repository.

//!
//! One file per section holds its struct, its defaults and the check of its own
//! shape; this one holds [`Config`], the loading and the checks across sections.
//! The configuration is plain data: it calls no other module of Kastell (what
//! needs `auth`'s rules is checked by `crate::app`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod auth;
mod dicomweb;
mod events;
mod exports;
mod index;
mod keys;
mod lifecycle;
mod limits;
pub mod proxies;
mod redact;
mod server;
mod sovereignty;
mod storage;
mod telemetry;

pub use crate::redact::{is_secret_name, redact_url, REDACTED};
pub use auth::{AuthConfig, JwtConfig};
pub use dicomweb::DicomWebConfig;
pub use events::{EventsConfig, JobsConfig, NatsConfig, WebhookConfig, EVENT_ACTIONS};
pub use exports::{valid_export_name, ExportStoreConfig};
pub use index::IndexConfig;
pub use keys::{
    DualControlConfig, DualControlMode, KeyCacheConfig, KeysConfig, MasterConfig, MasterKeySource,
    DEVELOPMENT_KEY_FILE, LOCAL_MASTER_NAME,
};
pub use lifecycle::{
    LifecycleConfig, MoveRule, PassConfig, RetentionAnchor, RetentionConfig, RetentionRule,
    TenantLifecycleConfig,
};
pub use limits::LimitsConfig;
pub use server::ServerConfig;
pub use sovereignty::{
    BlobStorePolicy, EventDestinationPolicy, ExportDestinationPolicy, Location, SovereigntyConfig,
};
pub use storage::{NamedStoreConfig, StorageConfig, OFFLINE_S3_CLASSES};
pub use telemetry::{LogConfig, LogFormat, TelemetryConfig};

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
    pub events: EventsConfig,
    pub lifecycle: LifecycleConfig,
    /// Stores de-identified exports may go to (`[exports.<name>]`).
    pub exports: std::collections::BTreeMap<String, ExportStoreConfig>,
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

    /// Each section's own shape, in the order they have always been reported,
    /// then what spans sections.
    fn validate(&self) -> Result<(), ConfigError> {
        self.dicomweb.validate()?;
        self.storage.validate()?;
        self.keys.validate()?;
        self.auth.validate()?;
        self.telemetry.validate()?;
        self.server.validate()?;
        self.events.validate()?;
        self.lifecycle.validate()?;
        let primary = self.effective_blob_url();
        for (name, store) in &self.storage.stores {
            if store.url.trim_end_matches('/') == primary.trim_end_matches('/') {
                return Err(ConfigError::Rule(format!(
                    "storage.stores.{name} has the primary store's URL; give it its own"
                )));
            }
        }
        for (path, rules) in self.lifecycle.all_moves() {
            for rule in rules {
                if rule.to != "primary" && !self.storage.stores.contains_key(&rule.to) {
                    return Err(ConfigError::Rule(format!(
                        "{path}: rule {:?} moves to {:?}, which is not primary nor in storage.stores",
                        rule.name, rule.to
                    )));
                }
            }
        }
        for name in self.exports.keys() {
            if !valid_export_name(name) {
                return Err(ConfigError::Rule(format!(
                    "exports.{name}: a name is 1–64 letters, digits, '-' or '_'"
                )));
            }
        }
        if self.index.pool_size == 0 || self.dicomweb.qido_max_results == 0 {
            return Err(ConfigError::Rule(
                "index.pool_size and dicomweb.qido_max_results must be positive".into(),
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
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
                // `anonymous = ["read", "everything"]` is refused by
                // `crate::app::load_config` (the grant rules are `auth`'s).
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
