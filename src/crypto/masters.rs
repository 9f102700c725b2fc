//! The master keys of an installation, by name: which provider holds each, which
//! one wraps new tenant keys, and which tenants hold their own key-encryption
//! key (bring your own key). Every wrapped key names the master that wrapped
//! it, so several masters can be in use at once while `kastell keys
//! rotate-master` moves the keys from one to another.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::keys::{KeyProvider, SecretKey};
use super::CryptoError;

/// The name of the master key read from `keys.master_key` / `keys.master_key_file`
/// (or the generated development key): what every key wrapped before named
/// masters existed is wrapped by.
pub const LOCAL_MASTER: &str = "local";

/// The master keys by name, the one new keys are wrapped by, and the tenants
/// whose keys another (their own) master wraps.
pub struct MasterKeys {
    providers: BTreeMap<String, Arc<dyn KeyProvider>>,
    active: String,
    tenant_masters: BTreeMap<String, String>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("masters", &self.providers.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("tenant_masters", &self.tenant_masters)
            .finish()
    }
}

impl MasterKeys {
    /// `active` and every master `tenant_masters` names must be among `providers`.
    pub fn new(
        providers: BTreeMap<String, Arc<dyn KeyProvider>>,
        active: &str,
        tenant_masters: BTreeMap<String, String>,
    ) -> Result<Self, CryptoError> {
        for name in std::iter::once(active).chain(tenant_masters.values().map(String::as_str)) {
            if !providers.contains_key(name) {
                return Err(CryptoError::UnknownKey(format!(
                    "master key {name} is not configured"
                )));
            }
        }
        Ok(Self {
            providers,
            active: active.to_string(),
            tenant_masters,
        })
    }

    /// One master, the active one, for everything.
    pub fn single(name: &str, provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            providers: BTreeMap::from([(name.to_string(), provider)]),
            active: name.to_string(),
            tenant_masters: BTreeMap::new(),
        }
    }

    /// The master new keys of the installation (the audit chain key, tenants
    /// without a key of their own) are wrapped by.
    pub fn active_name(&self) -> &str {
        &self.active
    }

    /// The master new keys of `tenant` are wrapped by: its own, or the active one.
    pub fn name_for_tenant(&self, tenant: &str) -> &str {
        self.tenant_masters
            .get(tenant)
            .map_or(self.active.as_str(), String::as_str)
    }

    pub fn tenant_masters(&self) -> &BTreeMap<String, String> {
        &self.tenant_masters
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn KeyProvider>, CryptoError> {
        self.providers.get(name).ok_or_else(|| {
            CryptoError::Unavailable(format!(
                "master key {name} is not configured (keys.masters), so the keys it wraps \
                 cannot be opened"
            ))
        })
    }

    /// Wraps `key` under master `name`.
    pub fn wrap(
        &self,
        name: &str,
        key: &SecretKey,
        context: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.get(name)?.wrap_tenant_key(key, context)
    }

    /// Unwraps what master `name` wrapped.
    pub fn unwrap(
        &self,
        name: &str,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        self.get(name)?.unwrap_tenant_key(wrapped, context)
    }
}
