//! `[keys]`: the master key (configured, a file, or the generated development
//! key), further master keys by name (`[keys.masters.<name>]`: a file, an HSM
//! through PKCS#11, a remote KMS), the tenants that hold their own, the cache of
//! unwrapped keys, dual control of destructive key operations, and the default
//! tenant.

use std::collections::BTreeMap;
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
    /// The master key new tenant keys (and the audit chain key) are wrapped by:
    /// `local` (the key above) or the name of one of `masters`. Keys wrapped by
    /// another master keep working as long as it is configured; `kastell keys
    /// rotate-master` moves them.
    pub active_master: String,
    /// Further master keys by name.
    pub masters: BTreeMap<String, MasterConfig>,
    /// Tenants whose key-encryption keys are wrapped by a master key they hold
    /// themselves (bring your own key): tenant → name in `masters`.
    pub tenant_masters: BTreeMap<String, String>,
    pub cache: KeyCacheConfig,
    pub dual_control: DualControlConfig,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            master_key_file: String::new(),
            master_key: String::new(),
            allow_development_key: true,
            default_tenant: "default".into(),
            location: None,
            active_master: LOCAL_MASTER_NAME.into(),
            masters: BTreeMap::new(),
            tenant_masters: BTreeMap::new(),
            cache: KeyCacheConfig::default(),
            dual_control: DualControlConfig::default(),
        }
    }
}

/// The name of the master key `master_key` / `master_key_file` configure.
pub const LOCAL_MASTER_NAME: &str = "local";

/// A master key held outside this configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Where the key is:
    /// * `file:/path`: 32 bytes (or their base64 or hex) in a file of mode 600;
    /// * `pkcs11:token=<label>;object=<key label>?module-path=/usr/lib/…/libsofthsm2.so`
    ///   (RFC 7512; `slot-id=<n>` instead of `token`, `pin-source=file:/path`):
    ///   a non-extractable AES-256 key inside an HSM;
    /// * `transit+https://host:8200/v1/transit/keys/<name>`: a key of a Vault or
    ///   OpenBao Transit engine (`transit+http://` only on a loopback address).
    pub url: String,
    /// The HSM user PIN in a file (instead of `pin-source` in the URL).
    pub pin_file: String,
    /// The HSM user PIN in this environment variable.
    pub pin_env: String,
    /// The KMS token in a file (Transit: `X-Vault-Token`).
    pub token_file: String,
    /// The KMS token in this environment variable.
    pub token_env: String,
    /// PEM file of the CA that signs the KMS's certificate (default: the system's).
    pub ca_file: String,
    /// PEM file of a client certificate and its key, for mutual TLS with the KMS.
    pub client_identity_file: String,
    /// Seconds a KMS request may take (1–60).
    pub timeout_secs: u64,
    /// Who holds the key: `operator` (the default) or the tenant it is assigned
    /// to, for the sovereignty report.
    pub held_by: String,
    /// Where the key is held and under which law.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// The unwrapped tenant keys a server holds in memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyCacheConfig {
    /// Unwrapped keys held at most (over all tenants), 1–1,000,000.
    pub max_keys: usize,
    /// Seconds an unwrapped key is held after its provider last unwrapped it
    /// (10–86,400). It is unwrapped again after half of this, so an HSM or KMS
    /// outage shorter than half is not felt; a key revoked by its holder stops
    /// working within it.
    pub ttl_secs: u64,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        Self {
            max_keys: 4096,
            ttl_secs: 900,
        }
    }
}

/// Whether shredding a tenant or retiring a master key needs a second
/// administrator's approval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DualControlMode {
    /// When more than one administrator (an active API key with `admin` on the
    /// tenant, or on `*` for master keys) exists.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DualControlConfig {
    pub mode: DualControlMode,
    /// Per tenant, for shredding it.
    pub tenants: BTreeMap<String, DualControlMode>,
    /// Seconds a request waits for its approval (1–604,800).
    pub window_secs: u64,
}

impl Default for DualControlConfig {
    fn default() -> Self {
        Self {
            mode: DualControlMode::Auto,
            tenants: BTreeMap::new(),
            window_secs: 24 * 3600,
        }
    }
}

impl DualControlConfig {
    pub fn mode_for_tenant(&self, tenant: &str) -> DualControlMode {
        self.tenants.get(tenant).copied().unwrap_or(self.mode)
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
        let rule = |text: String| Err(ConfigError::Rule(text));
        if !(1..=1_000_000).contains(&self.cache.max_keys) {
            return rule(format!(
                "keys.cache.max_keys must be 1–1000000, got {}",
                self.cache.max_keys
            ));
        }
        if !(10..=86_400).contains(&self.cache.ttl_secs) {
            return rule(format!(
                "keys.cache.ttl_secs must be 10–86400, got {}",
                self.cache.ttl_secs
            ));
        }
        if !(1..=604_800).contains(&self.dual_control.window_secs) {
            return rule(format!(
                "keys.dual_control.window_secs must be 1–604800, got {}",
                self.dual_control.window_secs
            ));
        }
        for (name, master) in &self.masters {
            if name == LOCAL_MASTER_NAME || !is_plain_name(name) {
                return rule(format!(
                    "keys.masters.{name}: a master key's name is letters, digits, '-' or '_' \
                     and not {LOCAL_MASTER_NAME:?}"
                ));
            }
            if !(master.url.starts_with("file:")
                || master.url.starts_with("pkcs11:")
                || master.url.starts_with("transit+https://")
                || master.url.starts_with("transit+http://"))
            {
                return rule(format!(
                    "keys.masters.{name}.url must start with file:, pkcs11:, transit+https:// \
                     or transit+http://"
                ));
            }
            if master.timeout_secs > 60 {
                return rule(format!(
                    "keys.masters.{name}.timeout_secs must be at most 60"
                ));
            }
            if !master.held_by.is_empty()
                && master.held_by != "operator"
                && !self
                    .tenant_masters
                    .iter()
                    .any(|(t, m)| m == name && *t == master.held_by)
            {
                return rule(format!(
                    "keys.masters.{name}.held_by is \"operator\" or the tenant it is assigned to in \
                     keys.tenant_masters"
                ));
            }
        }
        let known = |name: &str| name == LOCAL_MASTER_NAME || self.masters.contains_key(name);
        if !known(&self.active_master) {
            return rule(format!(
                "keys.active_master {:?} is neither \"local\" nor in keys.masters",
                self.active_master
            ));
        }
        for (tenant, master) in &self.tenant_masters {
            if !is_plain_name(tenant) || !known(master) {
                return rule(format!(
                    "keys.tenant_masters.{tenant} = {master:?}: not a master key in keys.masters"
                ));
            }
        }
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

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_master(url: &str) -> KeysConfig {
        let mut keys = KeysConfig::default();
        keys.masters.insert(
            "hsm".into(),
            MasterConfig {
                url: url.into(),
                ..Default::default()
            },
        );
        keys
    }

    #[test]
    fn masters_are_checked_by_name_url_assignment_and_bounds() {
        assert!(with_master("pkcs11:token=t;object=k?module-path=/m.so")
            .validate()
            .is_ok());
        assert!(with_master("transit+https://kms.example/v1/transit/keys/k")
            .validate()
            .is_ok());
        assert!(with_master("file:/etc/kastell/m.key").validate().is_ok());
        assert!(with_master("https://kms.example/v1/transit/keys/k")
            .validate()
            .is_err());
        let mut keys = with_master("file:/k");
        keys.active_master = "hsm".into();
        assert!(keys.validate().is_ok());
        keys.active_master = "nowhere".into();
        assert!(
            keys.validate().is_err(),
            "an active master must be configured"
        );
        let mut keys = with_master("file:/k");
        keys.masters.insert(
            "local".into(),
            MasterConfig {
                url: "file:/x".into(),
                ..Default::default()
            },
        );
        assert!(keys.validate().is_err(), "`local` is the key file's name");
        let mut keys = with_master("file:/k");
        keys.tenant_masters
            .insert("clinic".into(), "elsewhere".into());
        assert!(
            keys.validate().is_err(),
            "a tenant's master must be configured"
        );
        keys.tenant_masters.insert("clinic".into(), "hsm".into());
        keys.masters.get_mut("hsm").unwrap().held_by = "clinic".into();
        assert!(keys.validate().is_ok());
        keys.masters.get_mut("hsm").unwrap().held_by = "radiology".into();
        assert!(
            keys.validate().is_err(),
            "held by a tenant it is not assigned to"
        );
        let mut keys = KeysConfig::default();
        keys.cache.ttl_secs = 5;
        assert!(keys.validate().is_err());
        keys.cache.ttl_secs = 900;
        keys.cache.max_keys = 0;
        assert!(keys.validate().is_err());
        keys.cache.max_keys = 10;
        keys.dual_control.window_secs = 0;
        assert!(keys.validate().is_err());
        let mut keys = with_master("transit+https://kms.example/v1/transit/keys/k");
        keys.masters.get_mut("hsm").unwrap().timeout_secs = 61;
        assert!(keys.validate().is_err());
    }

    #[test]
    fn dual_control_per_tenant_overrides_the_default() {
        let mut dual = DualControlConfig::default();
        assert_eq!(dual.mode_for_tenant("a"), DualControlMode::Auto);
        dual.tenants.insert("a".into(), DualControlMode::Always);
        dual.mode = DualControlMode::Never;
        assert_eq!(dual.mode_for_tenant("a"), DualControlMode::Always);
        assert_eq!(dual.mode_for_tenant("b"), DualControlMode::Never);
    }
}
