//! The effective configuration as it may be shown: secrets redacted through
//! `crate::redact`.

use super::Config;
use crate::redact::{is_secret_name, redact_url, REDACTED};

impl Config {
    /// The effective configuration as TOML, with secrets (passwords in URLs, secret
    /// blob settings, the master key) redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for (name, value) in shown.storage.blob_options.iter_mut() {
            if is_secret_name(name) {
                *value = REDACTED.into();
            }
        }
        shown.storage.blob_url = redact_url(&self.effective_blob_url());
        shown.index.url = redact_url(&self.effective_index_url());
        if !shown.keys.master_key.is_empty() {
            shown.keys.master_key = REDACTED.into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}
