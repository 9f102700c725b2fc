//! The master key and the key ring: where the master key comes from (configured,
//! a key file, or the generated development key) and the tenant keys the index keeps.

use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, MasterKeySource};
use crate::crypto::{
    CryptoError, KeyId, KeyProvider, KeyRing, LocalMasterKey, SecretKey, TenantKeyLoader,
    TenantKeyRecord, TenantKeyState,
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
            .add_active_tenant_key(&record.id.tenant, record.id.version as i64, wrapped)
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

/// Decodes key text: 32 raw bytes, or their base64 or hex form.
fn decode_key(bytes: &[u8]) -> anyhow::Result<SecretKey> {
    use base64::Engine;
    if bytes.len() == 32 {
        return Ok(SecretKey::from_bytes(bytes)?);
    }
    let text = std::str::from_utf8(bytes)
        .context("the master key is neither 32 bytes nor text")?
        .trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("the master key is not valid base64")?
    };
    SecretKey::from_bytes(&decoded).context("the master key must be 32 bytes (256 bits)")
}

/// The master key provider: configured key, key file, or (embedded default only) a
/// generated development key.
pub fn master_key(config: &Config) -> anyhow::Result<Arc<dyn KeyProvider>> {
    let path = match config.master_key_source() {
        MasterKeySource::Configured => {
            let key = decode_key(config.keys.master_key.as_bytes())?;
            return Ok(Arc::new(LocalMasterKey::new(
                &key,
                "configuration / environment",
            )));
        }
        MasterKeySource::File(path) => {
            let shared = crate::private_files::shared_mode_bits(&path)
                .with_context(|| format!("reading the master key file {}", path.display()))?;
            if shared != 0 {
                anyhow::bail!(
                    "the master key file {} is accessible to its group or to others (mode \
                     bits {shared:03o} beyond the owner's): whoever can read it can read every \
                     image. Make it readable by the service user only: \
                     `chmod 600 {}` (or 400)",
                    path.display(),
                    path.display()
                );
            }
            let bytes = std::fs::read(&path)
                .with_context(|| format!("reading the master key file {}", path.display()))?;
            let key = decode_key(&bytes)?;
            return Ok(Arc::new(LocalMasterKey::new(
                &key,
                format!("file {}", path.display()),
            )));
        }
        MasterKeySource::Missing => anyhow::bail!(
            "no master key is configured: set keys.master_key_file or KASTELL__KEYS__MASTER_KEY \
             (a generated development key is only used with the embedded local blob store)"
        ),
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
    Ok(Arc::new(LocalMasterKey::new(
        &key,
        format!("development key {}", path.display()),
    )))
}

/// The key ring over the index's tenant keys, with the default tenant's key made.
pub fn key_ring(config: &Config, index: &Index) -> anyhow::Result<Arc<KeyRing>> {
    let ring = Arc::new(tenant_key_ring(config, index)?);
    match ring.ensure_tenant(&config.keys.default_tenant) {
        Ok(_) => {}
        // A shredded tenant stays shredded: serve 410 for its data, store nothing new.
        Err(CryptoError::Shredded(_)) => tracing::warn!(
            tenant = %config.keys.default_tenant,
            "the keys of this tenant were shredded: its images answer 410 Gone and nothing new can be stored"
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
        master_key(config)?,
        Arc::new(IndexKeyLoader(index.clone())),
    ))
}
