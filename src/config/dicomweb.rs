//! `[dicomweb]`: the paths the services are served under, the public base URL
//! and QIDO and STOW behaviour.

use serde::{Deserialize, Serialize};

use super::ConfigError;

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
    /// Seconds a series must go without a new instance before its metadata is
    /// built ahead of the first request (0: only on request).
    pub metadata_warm_after_secs: u64,
    /// Keep a sealed copy of each instance's metadata in the index, written at
    /// STOW, so that series metadata is one query rather than a read of every
    /// instance's blob (which costs a round trip each on object storage). About
    /// 1–3 KB of index per instance; off: metadata is read from the blobs.
    pub metadata_in_index: bool,
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
            metadata_warm_after_secs: 5,
            metadata_in_index: true,
        }
    }
}

impl DicomWebConfig {
    /// The paths: the prefix starts with '/' and does not end with one; WADO-URI
    /// has its own.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let prefix = &self.path_prefix;
        if !prefix.starts_with('/') || (prefix.len() > 1 && prefix.ends_with('/')) {
            return Err(ConfigError::Rule(format!(
                "dicomweb.path_prefix must start with '/' and not end with one, got {prefix:?}"
            )));
        }
        let wado = &self.wado_uri_path;
        if !wado.starts_with('/') || wado == prefix {
            return Err(ConfigError::Rule(format!(
                "dicomweb.wado_uri_path must start with '/' and differ from path_prefix, got {wado:?}"
            )));
        }
        Ok(())
    }
}
