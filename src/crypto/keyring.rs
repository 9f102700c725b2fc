//! Tenant keys: one key-encryption key per tenant and version, stored wrapped by the
//! master key (in the index database, through an injected [`TenantKeyLoader`]) and
//! held unwrapped in memory only here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::keys::{KeyProvider, SecretKey};
use super::CryptoError;

/// `tenant/version`, as written in blob headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    pub tenant: String,
    pub version: u32,
}

impl KeyId {
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let (tenant, version) = text.rsplit_once('/').ok_or(CryptoError::Format("key id"))?;
        let version = version
            .parse()
            .map_err(|_| CryptoError::Format("key id version"))?;
        if tenant.is_empty() {
            return Err(CryptoError::Format("key id tenant"));
        }
        Ok(KeyId {
            tenant: tenant.to_string(),
            version,
        })
    }

    /// What a wrapped tenant key is bound to.
    fn wrapping_context(&self) -> Vec<u8> {
        format!("kastell/tenant-key/{self}").into_bytes()
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.version)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantKeyState {
    /// New objects are encrypted under it.
    Active,
    /// Superseded by a rotation: still opens older objects, encrypts no new ones.
    Previous,
    /// Destroyed after every object was re-wrapped away from it.
    Retired,
    /// Destroyed with every other key of the tenant: its data is unreadable for good.
    Shredded,
}

impl TenantKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantKeyState::Active => "active",
            TenantKeyState::Previous => "previous",
            TenantKeyState::Retired => "retired",
            TenantKeyState::Shredded => "shredded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(TenantKeyState::Active),
            "previous" => Some(TenantKeyState::Previous),
            "retired" => Some(TenantKeyState::Retired),
            "shredded" => Some(TenantKeyState::Shredded),
            _ => None,
        }
    }
}

/// A tenant key as persisted: wrapped, never in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyRecord {
    pub id: KeyId,
    pub state: TenantKeyState,
    /// `None` once shredded.
    pub wrapped: Option<Vec<u8>>,
}

/// Persistence of wrapped tenant keys (the index database).
pub trait TenantKeyLoader: Send + Sync {
    fn load(&self, tenant: &str) -> Result<Vec<TenantKeyRecord>, CryptoError>;
    /// Stores a new active version; the active one becomes previous, atomically.
    fn add_active(&self, record: &TenantKeyRecord) -> Result<(), CryptoError>;
    /// Destroys one non-active version.
    fn retire(&self, id: &KeyId) -> Result<(), CryptoError>;
    /// Destroys every version of a tenant's keys.
    fn shred(&self, tenant: &str) -> Result<(), CryptoError>;
}

struct TenantKeys {
    loaded: Instant,
    active: Option<u32>,
    keys: HashMap<u32, Arc<SecretKey>>,
    shredded: Vec<u32>,
}

/// How long a tenant's keys are trusted from memory before the database is asked
/// again, so a rotation or shredding done by another process takes effect.
const REFRESH: Duration = Duration::from_secs(5);

pub struct KeyRing {
    provider: Arc<dyn KeyProvider>,
    loader: Arc<dyn TenantKeyLoader>,
    tenants: RwLock<HashMap<String, Arc<TenantKeys>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("provider", &self.provider.describe())
            .finish()
    }
}

impl KeyRing {
    pub fn new(provider: Arc<dyn KeyProvider>, loader: Arc<dyn TenantKeyLoader>) -> Self {
        Self {
            provider,
            loader,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    /// The master key provider the tenant keys are wrapped by (the audit chain
    /// key is wrapped by it too).
    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    pub fn provider_description(&self) -> String {
        self.provider.describe()
    }

    fn tenant(&self, tenant: &str) -> Result<Arc<TenantKeys>, CryptoError> {
        if let Some(keys) = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
        {
            if keys.loaded.elapsed() < REFRESH {
                return Ok(keys.clone());
            }
        }
        let keys = Arc::new(self.unwrap_all(self.loader.load(tenant)?)?);
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string(), keys.clone());
        Ok(keys)
    }

    fn unwrap_all(&self, records: Vec<TenantKeyRecord>) -> Result<TenantKeys, CryptoError> {
        let mut keys = TenantKeys {
            loaded: Instant::now(),
            active: None,
            keys: HashMap::new(),
            shredded: Vec::new(),
        };
        for record in records {
            match (record.state, record.wrapped) {
                (TenantKeyState::Shredded | TenantKeyState::Retired, _) | (_, None) => {
                    keys.shredded.push(record.id.version)
                }
                (state, Some(wrapped)) => {
                    let key = self
                        .provider
                        .unwrap_tenant_key(&wrapped, &record.id.wrapping_context())?;
                    keys.keys.insert(record.id.version, Arc::new(key));
                    if state == TenantKeyState::Active {
                        keys.active = Some(record.id.version);
                    }
                }
            }
        }
        Ok(keys)
    }

    fn forget(&self, tenant: &str) {
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// Whether `tenant`'s keys are loaded and fresh: then [`KeyRing::active`]
    /// and [`KeyRing::key`] answer from memory, without the loader's (blocking)
    /// read of the wrapped keys.
    pub fn is_fresh(&self, tenant: &str) -> bool {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .is_some_and(|keys| keys.loaded.elapsed() < REFRESH)
    }

    /// The key new objects of `tenant` are encrypted under.
    pub fn active(&self, tenant: &str) -> Result<(KeyId, Arc<SecretKey>), CryptoError> {
        let keys = self.tenant(tenant)?;
        let version = keys.active.ok_or_else(|| {
            if keys.shredded.is_empty() {
                CryptoError::UnknownKey(format!("{tenant} has no key"))
            } else {
                CryptoError::Shredded(tenant.to_string())
            }
        })?;
        let key = keys
            .keys
            .get(&version)
            .ok_or_else(|| CryptoError::UnknownKey(format!("{tenant} version {version}")))?
            .clone();
        Ok((
            KeyId {
                tenant: tenant.to_string(),
                version,
            },
            key,
        ))
    }

    /// The key an existing object names.
    pub fn key(&self, id: &KeyId) -> Result<Arc<SecretKey>, CryptoError> {
        let keys = self.tenant(&id.tenant)?;
        if let Some(key) = keys.keys.get(&id.version) {
            return Ok(key.clone());
        }
        if keys.shredded.contains(&id.version)
            || (keys.keys.is_empty() && !keys.shredded.is_empty())
        {
            return Err(CryptoError::Shredded(id.to_string()));
        }
        Err(CryptoError::UnknownKey(id.to_string()))
    }

    /// Makes sure `tenant` has an active key, creating version 1 if it has none.
    pub fn ensure_tenant(&self, tenant: &str) -> Result<KeyId, CryptoError> {
        let keys = self.tenant(tenant)?;
        if let Some(version) = keys.active {
            return Ok(KeyId {
                tenant: tenant.to_string(),
                version,
            });
        }
        if !keys.shredded.is_empty() {
            return Err(CryptoError::Shredded(tenant.to_string()));
        }
        self.add_version(tenant, 1)
    }

    /// Makes a new active version; older versions stay readable (retired).
    pub fn rotate(&self, tenant: &str) -> Result<KeyId, CryptoError> {
        self.forget(tenant);
        let keys = self.tenant(tenant)?;
        if keys.active.is_none() && !keys.shredded.is_empty() {
            return Err(CryptoError::Shredded(tenant.to_string()));
        }
        let next = keys
            .keys
            .keys()
            .chain(keys.shredded.iter())
            .max()
            .map_or(1, |v| v + 1);
        self.add_version(tenant, next)
    }

    fn add_version(&self, tenant: &str, version: u32) -> Result<KeyId, CryptoError> {
        let id = KeyId {
            tenant: tenant.to_string(),
            version,
        };
        let key = SecretKey::generate()?;
        let wrapped = self
            .provider
            .wrap_tenant_key(&key, &id.wrapping_context())?;
        self.loader.add_active(&TenantKeyRecord {
            id: id.clone(),
            state: TenantKeyState::Active,
            wrapped: Some(wrapped),
        })?;
        self.forget(tenant);
        Ok(id)
    }

    /// Destroys a superseded version (never the active one). The caller makes sure
    /// no object still needs it.
    pub fn retire(&self, id: &KeyId) -> Result<(), CryptoError> {
        let (active, _) = self.active(&id.tenant)?;
        if active == *id {
            return Err(CryptoError::KeyMaterial(
                "the active key cannot be retired; rotate first",
            ));
        }
        self.loader.retire(id)?;
        self.forget(&id.tenant);
        Ok(())
    }

    /// Destroys every key of `tenant`.
    pub fn shred(&self, tenant: &str) -> Result<(), CryptoError> {
        self.loader.shred(tenant)?;
        self.forget(tenant);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::keys::LocalMasterKey;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct MemoryLoader(Mutex<Vec<TenantKeyRecord>>);

    impl TenantKeyLoader for MemoryLoader {
        fn load(&self, tenant: &str) -> Result<Vec<TenantKeyRecord>, CryptoError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.id.tenant == tenant)
                .cloned()
                .collect())
        }
        fn add_active(&self, record: &TenantKeyRecord) -> Result<(), CryptoError> {
            let mut records = self.0.lock().unwrap();
            for r in records
                .iter_mut()
                .filter(|r| r.id.tenant == record.id.tenant)
            {
                if r.state == TenantKeyState::Active {
                    r.state = TenantKeyState::Previous;
                }
            }
            records.push(record.clone());
            Ok(())
        }
        fn retire(&self, id: &KeyId) -> Result<(), CryptoError> {
            for r in self.0.lock().unwrap().iter_mut().filter(|r| &r.id == id) {
                r.state = TenantKeyState::Retired;
                r.wrapped = None;
            }
            Ok(())
        }
        fn shred(&self, tenant: &str) -> Result<(), CryptoError> {
            for r in self
                .0
                .lock()
                .unwrap()
                .iter_mut()
                .filter(|r| r.id.tenant == tenant)
            {
                r.state = TenantKeyState::Shredded;
                r.wrapped = None;
            }
            Ok(())
        }
    }

    pub(crate) fn ring() -> KeyRing {
        let master = SecretKey::generate().unwrap();
        KeyRing::new(
            Arc::new(LocalMasterKey::new(&master, "test")),
            Arc::new(MemoryLoader::default()),
        )
    }

    #[test]
    fn rotation_keeps_old_versions_and_shredding_destroys_all() {
        let ring = ring();
        let first = ring.ensure_tenant("a").unwrap();
        assert_eq!(first.to_string(), "a/1");
        let old = ring.key(&first).unwrap();
        let second = ring.rotate("a").unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(ring.active("a").unwrap().0, second);
        assert_eq!(
            ring.key(&first).unwrap().expose(),
            old.expose(),
            "retired keys still open"
        );
        assert!(ring.ensure_tenant("b").is_ok());
        ring.shred("a").unwrap();
        assert!(matches!(ring.key(&first), Err(CryptoError::Shredded(_))));
        assert!(matches!(ring.active("a"), Err(CryptoError::Shredded(_))));
        assert!(ring.active("b").is_ok(), "other tenants are untouched");
        assert_eq!(
            KeyId::parse("x/y/3").unwrap(),
            KeyId {
                tenant: "x/y".into(),
                version: 3
            }
        );
    }
}
