//! The effective configuration as it may be shown: secrets redacted through
//! `crate::redact`.

use super::Config;
use crate::redact::{is_secret_name, redact_url, REDACTED};

impl Config {
    /// The effective configuration as TOML, with secrets (passwords in URLs, secret
    /// blob settings, the master key, webhook secrets) redacted.
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
        for master in shown.keys.masters.values_mut() {
            // A PKCS#11 URL carries no secret (a `pin-value` is refused).
            if master.url.starts_with("transit+") {
                master.url = redact_url(&master.url);
            }
        }
        shown.events.nats.url = redact_url(&self.events.nats.url);
        for hook in &mut shown.events.webhooks {
            if !hook.secret.is_empty() {
                hook.secret = REDACTED.into();
            }
            hook.url = redact_url(&hook.url);
        }
        for export in shown.exports.values_mut() {
            export.url = redact_url(&export.url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_secrets_and_broker_passwords_are_redacted() {
        let mut config = Config::default();
        config.events.nats.url = "nats://kastell:hunter2secret@127.0.0.1:4222".into();
        config.events.webhooks.push(crate::config::WebhookConfig {
            name: "ris".into(),
            url: "https://ris.example/hook?token=hunter2secret".into(),
            secret: "hunter2secret-signing".into(),
            ..Default::default()
        });
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("ris.example"), "{shown}");
    }
}
