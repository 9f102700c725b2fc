//! `[keys]`: the master key (configured, a file, or the generated development
//! key) and the default tenant.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Location};

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

impl KeysConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let tenant = &self.default_tenant;
        if tenant.is_empty()
            || !tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Rule(format!(
                "keys.default_tenant must be letters, digits, '-' or '_', got {tenant:?}"
            )));
        }
        Ok(())
    }
}

impl Config {
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
}
