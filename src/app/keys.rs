//! The master keys and the key ring: where each master key is held (configured,
//! a key file, the generated development key, an HSM, a KMS) and the tenant keys
//! the index keeps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, MasterConfig, MasterKeySource};
use crate::crypto::{
    CacheLimits, CryptoError, KeyId, KeyProvider, KeyRing, LocalMasterKey, MasterKeys, SecretKey,
    TenantKeyLoader, TenantKeyRecord, TenantKeyState, LOCAL_MASTER,
};
use crate::custody::{
    decode_key, read_key_file, Custodian, Holder, Pkcs11Master, SecretSource, TransitMaster,
    TransitSettings,
};
use crate::index::Index;

/// Tenant keys persisted in the index database.
struct IndexKeyLoader(Index);

impl TenantKeyLoader for IndexKeyLoader {
    fn load(&self, tenant: &str) -> Result<Vec<TenantKeyRecord>, CryptoError> {
        let rows = self
            .0
            .tenant_keys(tenant)
            .map_err(|e| CryptoError::KeyStore(e.to_string()))?;
        rows.into_iter()
            .map(|row| {
                Ok(TenantKeyRecord {
                    id: KeyId {
                        tenant: row.tenant,
                        version: row.version as u32,
                    },
                    state: TenantKeyState::parse(&row.state)
                        .ok_or(CryptoError::KeyStore("unknown key state".into()))?,
                    wrapped: row.wrapped_key,
                    master: row.master_key,
                })
            })
            .collect()
    }

    fn add_active(&self, record: &TenantKeyRecord) -> Result<(), CryptoError> {
        let wrapped = record
            .wrapped
            .as_deref()
            .ok_or(CryptoError::KeyMaterial("a new key is wrapped"))?;
        self.0
            .add_active_tenant_key(
                &record.id.tenant,
                record.id.version as i64,
                wrapped,
                &record.master,
            )
            .map_err(|e| CryptoError::KeyStore(e.to_string()))
    }

    fn retire(&self, id: &KeyId) -> Result<(), CryptoError> {
        match self.0.retire_tenant_key(&id.tenant, id.version as i64) {
            Ok(true) => Ok(()),
            Ok(false) => Err(CryptoError::UnknownKey(format!(
                "{id} is not a previous key version"
            ))),
            Err(e) => Err(CryptoError::KeyStore(e.to_string())),
        }
    }

    fn shred(&self, tenant: &str) -> Result<(), CryptoError> {
        self.0
            .shred_tenant_keys(tenant)
            .map(|_| ())
            .map_err(|e| CryptoError::KeyStore(e.to_string()))
    }
}

/// The local master key: configured, a key file, or (embedded default only) a
/// generated development key.
fn local_master(config: &Config) -> anyhow::Result<Option<Holder>> {
    let path = match config.master_key_source() {
        MasterKeySource::Configured => {
            let key = decode_key(config.keys.master_key.as_bytes())?;
            let origin = "configuration / environment".to_string();
            return Ok(Some(Holder::Local {
                key: LocalMasterKey::new(&key, origin.clone()),
                origin,
            }));
        }
        MasterKeySource::File(path) => {
            let key = read_key_file(&path)?;
            let origin = format!("file {}", path.display());
            return Ok(Some(Holder::Local {
                key: LocalMasterKey::new(&key, origin.clone()),
                origin,
            }));
        }
        MasterKeySource::Missing => {
            // Without a local key, every key must be wrapped by a named master.
            if config.keys.active_master != LOCAL_MASTER {
                return Ok(None);
            }
            anyhow::bail!(
                "no master key is configured: set keys.master_key_file or \
                 KASTELL__KEYS__MASTER_KEY, or name a master of keys.masters in \
                 keys.active_master (a generated development key is only used with the \
                 embedded local blob store)"
            )
        }
        MasterKeySource::Development(path) => path,
    };
    if !path.exists() {
        crate::private_files::create_dir_all(&config.storage.data_dir)?;
        let key = SecretKey::generate()?;
        crate::private_files::write_new(&path, key.expose())?;
    }
    let key = decode_key(&std::fs::read(&path)?)?;
    tracing::warn!(
        key_file = %path.display(),
        "!!! USING A GENERATED DEVELOPMENT MASTER KEY, stored next to the data it protects. \
         Anyone with this directory can read every image. Configure keys.master_key_file for real use. !!!"
    );
    let origin = format!("development key {}", path.display());
    Ok(Some(Holder::Local {
        key: LocalMasterKey::new(&key, origin.clone()),
        origin,
    }))
}

/// Opens the holder of one named master key.
pub fn open_master(name: &str, master: &MasterConfig) -> anyhow::Result<Holder> {
    let secret = |file: &str, env: &str| {
        if !file.is_empty() {
            SecretSource::File(PathBuf::from(file))
        } else if !env.is_empty() {
            SecretSource::Env(env.to_string())
        } else {
            SecretSource::None
        }
    };
    let holder = if let Some(path) = master.url.strip_prefix("file:") {
        let path = PathBuf::from(path);
        let key = read_key_file(&path)?;
        let origin = format!("file {}", path.display());
        Holder::Local {
            key: LocalMasterKey::new(&key, origin.clone()),
            origin,
        }
    } else if master.url.starts_with("pkcs11:") {
        Holder::Pkcs11(Pkcs11Master::open(
            name,
            &master.url,
            &secret(&master.pin_file, &master.pin_env),
        )?)
    } else {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        Holder::Transit(TransitMaster::open(
            name,
            &master.url,
            TransitSettings {
                token: secret(&master.token_file, &master.token_env),
                ca_file: path(&master.ca_file),
                client_identity_file: path(&master.client_identity_file),
                timeout: if master.timeout_secs == 0 {
                    crate::custody::DEFAULT_TIMEOUT
                } else {
                    std::time::Duration::from_secs(master.timeout_secs)
                },
            },
        )?)
    };
    Ok(holder)
}

/// Every configured master key, each opened and counted.
pub fn custodians(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<Custodian>>> {
    let mut custodians = BTreeMap::new();
    if let Some(local) = local_master(config)? {
        custodians.insert(
            LOCAL_MASTER.to_string(),
            Arc::new(Custodian::new(LOCAL_MASTER, local)),
        );
    }
    for (name, master) in &config.keys.masters {
        let holder = open_master(name, master)
            .with_context(|| format!("opening master key {name} (keys.masters.{name})"))?;
        custodians.insert(name.clone(), Arc::new(Custodian::new(name, holder)));
    }
    Ok(custodians)
}

/// The master keys: the local one (if configured), every `keys.masters` entry,
/// the active one and the tenants' own.
pub fn master_keys(config: &Config) -> anyhow::Result<Arc<MasterKeys>> {
    let providers = custodians(config)?
        .into_iter()
        .map(|(name, custodian)| (name, custodian as Arc<dyn KeyProvider>))
        .collect();
    Ok(Arc::new(MasterKeys::new(
        providers,
        &config.keys.active_master,
        config.keys.tenant_masters.clone(),
    )?))
}

/// The key ring over the index's tenant keys, with the default tenant's key made.
pub fn key_ring(config: &Config, index: &Index) -> anyhow::Result<Arc<KeyRing>> {
    // A retired master was destroyed (or is to be): wrapping new keys under it
    // would lose them.
    let retired = index.retired_masters()?;
    for name in
        std::iter::once(&config.keys.active_master).chain(config.keys.tenant_masters.values())
    {
        if retired.contains(name) {
            anyhow::bail!(
                "master key {name} was retired (`kastell keys retire-master`): it cannot wrap \
                 new keys; name another in keys.active_master / keys.tenant_masters"
            );
        }
    }
    let ring = Arc::new(tenant_key_ring(config, index)?);
    match ring.ensure_tenant(&config.keys.default_tenant) {
        Ok(_) => {}
        // A shredded tenant stays shredded: serve 410 for its data, store nothing new.
        Err(CryptoError::Shredded(_)) => tracing::warn!(
            tenant = %config.keys.default_tenant,
            "the keys of this tenant were shredded: its images answer 410 Gone and nothing new can be stored"
        ),
        // A key holder that is down or refuses does not stop the server: the
        // tenant's requests answer 503 or 410 saying why, the others are served.
        Err(error @ (CryptoError::Unavailable(_) | CryptoError::Revoked(_))) => tracing::error!(
            tenant = %config.keys.default_tenant,
            %error,
            "the key of this tenant cannot be unwrapped: its requests answer 503 (unavailable) or 410 (revoked) until it can"
        ),
        Err(error) => {
            return Err(anyhow::Error::new(error)).with_context(|| {
                format!("preparing the key of tenant {}", config.keys.default_tenant)
            })
        }
    }
    Ok(ring)
}

/// The key ring over the tenant keys kept in the control index `index`, no tenant
/// prepared (for commands that make a tenant's key themselves).
pub fn tenant_key_ring(config: &Config, index: &Index) -> anyhow::Result<KeyRing> {
    Ok(KeyRing::new(
        master_keys(config)?,
        Arc::new(IndexKeyLoader(index.clone())),
        CacheLimits {
            max_keys: config.keys.cache.max_keys,
            ttl: std::time::Duration::from_secs(config.keys.cache.ttl_secs),
        },
    ))
}
