//! `[exports.<name>]`: the stores de-identified exports may be written to
//! (`kastell export --to export:<name>`), each with its jurisdiction, which
//! `crate::sovereignty::export_allowed` judges against
//! `sovereignty.export_destinations` before anything is written.

use serde::{Deserialize, Serialize};

use super::Location;

/// One export store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportStoreConfig {
    /// Where: `file:///dir`, `s3://bucket/prefix`, `az://…`, `gs://…` (the
    /// settings of cloud stores come from the environment, as for `[storage]`).
    pub url: String,
    /// Where it is and who runs it; an export store without one receives nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// Names of export stores: letters, digits, `-`, `_`, at most 64.
pub fn valid_export_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
