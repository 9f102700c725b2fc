//! Tenant keys: one key-encryption key per tenant and version, stored wrapped by the
//! master key (in the index database, through an injected [`TenantKeyLoader`]) and
//! held unwrapped in memory only here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::keys::SecretKey;
use super::masters::MasterKeys;
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
    pub fn wrapping_context(&self) -> Vec<u8> {
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
    /// The master key that wrapped it (see [`MasterKeys`]).
    pub master: String,
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

/// How many unwrapped tenant keys are held, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Unwrapped keys held at most, over all tenants: beyond, the tenants loaded
    /// longest ago are dropped (and their keys zeroed).
    pub max_keys: usize,
    /// How long an unwrapped key is held after its provider last unwrapped it. It
    /// is unwrapped again after half of this, so a provider outage shorter than
    /// half goes unnoticed; a key its holder revoked stops working within it.
    pub ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_keys: 4096,
            ttl: Duration::from_secs(900),
        }
    }
}

/// An unwrapped key and where it came from.
struct HeldKey {
    key: Arc<SecretKey>,
    /// SHA-256 of the master's name and the wrapped bytes: the same wrapped key
    /// is not unwrapped again while it is held.
    origin: [u8; 32],
    unwrapped: Instant,
}

struct TenantKeys {
    loaded: Instant,
    active: Option<u32>,
    keys: HashMap<u32, HeldKey>,
    /// Versions whose provider could not or would not unwrap them at the last
    /// load, with why.
    failed: HashMap<u32, CryptoError>,
    shredded: Vec<u32>,
}

/// How long a tenant's keys are trusted from memory before the database is asked
/// again, so a rotation or shredding done by another process takes effect.
const REFRESH: Duration = Duration::from_secs(5);

pub struct KeyRing {
    masters: Arc<MasterKeys>,
    loader: Arc<dyn TenantKeyLoader>,
    limits: CacheLimits,
    tenants: RwLock<HashMap<String, Arc<TenantKeys>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("masters", &self.masters)
            .finish()
    }
}

fn origin_of(master: &str, wrapped: &[u8]) -> [u8; 32] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(master.as_bytes());
    digest.update(&[0]);
    digest.update(wrapped);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    out
}

impl KeyRing {
    pub fn new(
        masters: Arc<MasterKeys>,
        loader: Arc<dyn TenantKeyLoader>,
        limits: CacheLimits,
    ) -> Self {
        Self {
            masters,
            loader,
            limits,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    /// The master keys tenant keys are wrapped by (the audit chain key is wrapped
    /// by the active one too).
    pub fn masters(&self) -> &Arc<MasterKeys> {
        &self.masters
    }

    pub fn provider_description(&self) -> String {
        let active = self.masters.active_name();
        match self.masters.get(active) {
            Ok(provider) => format!("{active}: {}", provider.describe()),
            Err(_) => active.to_string(),
        }
    }

    fn tenant(&self, tenant: &str) -> Result<Arc<TenantKeys>, CryptoError> {
        let previous = {
            let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
            match tenants.get(tenant) {
                Some(keys) if keys.loaded.elapsed() < REFRESH => return Ok(keys.clone()),
                other => other.cloned(),
            }
        };
        let keys = Arc::new(self.unwrap_all(self.loader.load(tenant)?, previous.as_deref())?);
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        tenants.insert(tenant.to_string(), keys.clone());
        self.bound(&mut tenants, tenant);
        Ok(keys)
    }

    /// Drops tenants whose keys were not asked for within the TTL, then the ones
    /// loaded longest ago while more keys than allowed are held (never `keep`).
    fn bound(&self, tenants: &mut HashMap<String, Arc<TenantKeys>>, keep: &str) {
        tenants.retain(|name, keys| name == keep || keys.loaded.elapsed() < self.limits.ttl);
        let mut held: usize = tenants.values().map(|keys| keys.keys.len()).sum();
        while held > self.limits.max_keys {
            let Some(oldest) = tenants
                .iter()
                .filter(|(name, _)| name.as_str() != keep)
                .min_by_key(|(_, keys)| keys.loaded)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(dropped) = tenants.remove(&oldest) {
                held -= dropped.keys.len();
            }
        }
    }

    fn unwrap_all(
        &self,
        records: Vec<TenantKeyRecord>,
        previous: Option<&TenantKeys>,
    ) -> Result<TenantKeys, CryptoError> {
        let mut keys = TenantKeys {
            loaded: Instant::now(),
            active: None,
            keys: HashMap::new(),
            failed: HashMap::new(),
            shredded: Vec::new(),
        };
        for record in records {
            let version = record.id.version;
            let wrapped = match (record.state, record.wrapped) {
                (TenantKeyState::Shredded | TenantKeyState::Retired, _) | (_, None) => {
                    keys.shredded.push(version);
                    continue;
                }
                (_, Some(wrapped)) => wrapped,
            };
            if record.state == TenantKeyState::Active {
                keys.active = Some(version);
            }
            let origin = origin_of(&record.master, &wrapped);
            let held = previous
                .and_then(|p| p.keys.get(&version))
                .filter(|held| held.origin == origin);
            if let Some(held) = held.filter(|h| h.unwrapped.elapsed() < self.limits.ttl / 2) {
                keys.keys.insert(version, clone_held(held));
                continue;
            }
            match self
                .masters
                .unwrap(&record.master, &wrapped, &record.id.wrapping_context())
            {
                Ok(key) => {
                    keys.keys.insert(
                        version,
                        HeldKey {
                            key: Arc::new(key),
                            origin,
                            unwrapped: Instant::now(),
                        },
                    );
                }
                // A provider that cannot be reached leaves the keys held from it
                // in use until their TTL; one that refuses ends them now.
                Err(CryptoError::Unavailable(why))
                    if held.is_some_and(|h| h.unwrapped.elapsed() < self.limits.ttl) =>
                {
                    tracing::warn!(
                        key = %record.id,
                        master = %record.master,
                        %why,
                        "the key provider is unavailable: using the key unwrapped earlier"
                    );
                    if let Some(held) = held {
                        keys.keys.insert(version, clone_held(held));
                    }
                }
                // A holder that cannot be reached or refuses fails this key
                // alone (its tenant answers 503 or 410, the others are served);
                // a wrapped key that does not open under its master (the
                // wrong master key configured, a tampered row) fails the load,
                // loudly, as before masters had holders of their own.
                Err(error @ (CryptoError::Unavailable(_) | CryptoError::Revoked(_))) => {
                    keys.failed.insert(version, error);
                }
                Err(error) => {
                    return Err(CryptoError::KeyStore(format!(
                        "tenant key {} (master key {}): {error}",
                        record.id, record.master
                    )))
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

    /// Drops every unwrapped key (they are zeroed once the last request using one
    /// is done): at shutdown.
    pub fn clear(&self) {
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Drops the keys of tenants not asked for within the TTL (for a timer: a
    /// server without requests would otherwise hold them indefinitely).
    pub fn evict_idle(&self) {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        tenants.retain(|_, keys| keys.loaded.elapsed() < self.limits.ttl);
    }

    /// How many unwrapped keys are held now.
    #[cfg(test)]
    pub fn held_keys(&self) -> usize {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|keys| keys.keys.len())
            .sum()
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
        let id = KeyId {
            tenant: tenant.to_string(),
            version,
        };
        let key = Self::held(&keys, &id)?;
        Ok((id, key))
    }

    fn held(keys: &TenantKeys, id: &KeyId) -> Result<Arc<SecretKey>, CryptoError> {
        if let Some(held) = keys.keys.get(&id.version) {
            return Ok(held.key.clone());
        }
        if let Some(error) = keys.failed.get(&id.version) {
            return Err(error.clone());
        }
        if keys.shredded.contains(&id.version)
            || (keys.keys.is_empty() && !keys.shredded.is_empty())
        {
            return Err(CryptoError::Shredded(id.to_string()));
        }
        Err(CryptoError::UnknownKey(id.to_string()))
    }

    /// The key an existing object names.
    pub fn key(&self, id: &KeyId) -> Result<Arc<SecretKey>, CryptoError> {
        let keys = self.tenant(&id.tenant)?;
        Self::held(&keys, id)
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
            .chain(keys.failed.keys())
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
        let master = self.masters.name_for_tenant(tenant).to_string();
        let wrapped = self.masters.wrap(&master, &key, &id.wrapping_context())?;
        self.loader.add_active(&TenantKeyRecord {
            id: id.clone(),
            state: TenantKeyState::Active,
            wrapped: Some(wrapped),
            master,
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

fn clone_held(held: &HeldKey) -> HeldKey {
    HeldKey {
        key: held.key.clone(),
        origin: held.origin,
        unwrapped: held.unwrapped,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::keys::{KeyProvider, LocalMasterKey};
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
            Arc::new(MasterKeys::single(
                "local",
                Arc::new(LocalMasterKey::new(&master, "test")),
            )),
            Arc::new(MemoryLoader::default()),
            CacheLimits::default(),
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

    /// A master key whose provider can be taken away, counting its unwraps.
    struct Flaky {
        inner: LocalMasterKey,
        unwraps: std::sync::atomic::AtomicUsize,
        mode: Mutex<Option<CryptoError>>,
    }

    impl KeyProvider for Flaky {
        fn wrap_tenant_key(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
            self.inner.wrap_tenant_key(key, context)
        }
        fn unwrap_tenant_key(
            &self,
            wrapped: &[u8],
            context: &[u8],
        ) -> Result<SecretKey, CryptoError> {
            self.unwraps
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(error) = self.mode.lock().unwrap().clone() {
                return Err(error);
            }
            self.inner.unwrap_tenant_key(wrapped, context)
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn kind(&self) -> &'static str {
            "test"
        }
    }

    fn flaky_ring(limits: CacheLimits) -> (KeyRing, Arc<Flaky>) {
        let flaky = Arc::new(Flaky {
            inner: LocalMasterKey::new(&SecretKey::generate().unwrap(), "test"),
            unwraps: Default::default(),
            mode: Mutex::new(None),
        });
        let ring = KeyRing::new(
            Arc::new(MasterKeys::single("hsm", flaky.clone())),
            Arc::new(MemoryLoader::default()),
            limits,
        );
        (ring, flaky)
    }

    /// Makes every tenant's keys older by `by`, as if that time had passed.
    fn age(ring: &KeyRing, by: Duration) {
        let earlier = |at: Instant| {
            at.checked_sub(by)
                .expect("the clock started long enough ago")
        };
        let mut tenants = ring.tenants.write().unwrap();
        for keys in tenants.values_mut() {
            *keys = Arc::new(TenantKeys {
                loaded: earlier(keys.loaded),
                active: keys.active,
                keys: keys
                    .keys
                    .iter()
                    .map(|(version, held)| {
                        let mut held = clone_held(held);
                        held.unwrapped = earlier(held.unwrapped);
                        (*version, held)
                    })
                    .collect(),
                failed: keys.failed.clone(),
                shredded: keys.shredded.clone(),
            });
        }
    }

    #[test]
    fn held_keys_are_not_unwrapped_again_until_half_their_ttl() {
        let ttl = Duration::from_secs(600);
        let (ring, flaky) = flaky_ring(CacheLimits { max_keys: 100, ttl });
        let id = ring.ensure_tenant("a").unwrap();
        let first = ring.key(&id).unwrap();
        assert_eq!(flaky.unwraps.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The database is read again after REFRESH; the key is not unwrapped again.
        age(&ring, REFRESH);
        assert_eq!(ring.key(&id).unwrap().expose(), first.expose());
        assert_eq!(flaky.unwraps.load(std::sync::atomic::Ordering::SeqCst), 1);
        // After half the TTL it is.
        age(&ring, ttl / 2);
        ring.key(&id).unwrap();
        assert_eq!(flaky.unwraps.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn an_outage_is_bridged_by_held_keys_and_a_revocation_is_not() {
        let ttl = Duration::from_secs(600);
        let (ring, flaky) = flaky_ring(CacheLimits { max_keys: 100, ttl });
        let id = ring.ensure_tenant("a").unwrap();
        ring.key(&id).unwrap();
        *flaky.mode.lock().unwrap() = Some(CryptoError::Unavailable("down".into()));
        age(&ring, ttl / 2);
        assert!(
            ring.key(&id).is_ok(),
            "held within its TTL through an outage"
        );
        assert!(ring.active("a").is_ok());
        // A tenant whose key was never unwrapped fails closed.
        *flaky.mode.lock().unwrap() = None;
        let other = ring.ensure_tenant("b").unwrap();
        ring.forget("b");
        *flaky.mode.lock().unwrap() = Some(CryptoError::Unavailable("down".into()));
        assert!(matches!(ring.key(&other), Err(CryptoError::Unavailable(_))));
        // Past its TTL, a held key is not used either.
        age(&ring, ttl);
        assert!(matches!(ring.key(&id), Err(CryptoError::Unavailable(_))));
        // The provider is back, then the holder revokes: the key ends at once.
        *flaky.mode.lock().unwrap() = None;
        age(&ring, REFRESH);
        assert!(ring.key(&id).is_ok());
        *flaky.mode.lock().unwrap() = Some(CryptoError::Revoked("destroyed".into()));
        age(&ring, ttl / 2);
        assert!(matches!(ring.key(&id), Err(CryptoError::Revoked(_))));
        assert!(matches!(ring.active("a"), Err(CryptoError::Revoked(_))));
    }

    #[test]
    fn the_cache_is_bounded_and_cleared() {
        let (ring, _) = flaky_ring(CacheLimits {
            max_keys: 3,
            ttl: Duration::from_secs(600),
        });
        for tenant in ["a", "b", "c", "d", "e"] {
            ring.ensure_tenant(tenant).unwrap();
            ring.active(tenant).unwrap();
            assert!(ring.held_keys() <= 3, "{}", ring.held_keys());
        }
        assert!(ring.is_fresh("e"), "the tenant just asked for is kept");
        assert!(!ring.is_fresh("a"), "the oldest is dropped");
        ring.clear();
        assert_eq!(ring.held_keys(), 0);
    }
}
