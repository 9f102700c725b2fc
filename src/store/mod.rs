//! The blob storage facade. Every blob is written and read through [`BlobStore`], and
//! every object name comes from [`BlobKey`]: names are opaque random ids, so nothing in
//! a bucket listing identifies a patient, a study or an instance.
//!
//! Every byte goes through envelope encryption (see `crate::crypto::format`): what
//! reaches the backend is a header with the wrapped data key and authenticated
//! segments. A byte range is read by fetching only the segments it touches.
//!
//! This module knows nothing of DICOM or SQL.

mod archive;
mod backend;
mod error;
mod header_cache;
mod key;
mod maintenance;
mod read;
mod record;
mod tiers;
mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use object_store::ObjectStore;

use crate::crypto::KeyRing;
use crate::telemetry::metrics::StoreTimer;

pub use archive::RestoreState;
pub use backend::{backend_from_url, environment_settings, Retries};
pub use error::StoreError;
pub use key::{valid_store_name, BlobKey, BlobKind, PRIMARY_STORE};
pub use maintenance::{usage, BlobUsage};
pub use read::SMALL_PLAINTEXT;
pub use write::{BlobWriter, WriteOptions};

/// Asks the key ring on the blocking pool when it would re-read the tenant's
/// wrapped keys from the index (every few seconds), and directly while they
/// are fresh in memory: an async worker never waits on the database.
async fn with_keys<T: Send + 'static>(
    keys: &Arc<KeyRing>,
    tenant: &str,
    ask: impl FnOnce(&KeyRing) -> Result<T, crate::crypto::CryptoError> + Send + 'static,
) -> Result<T, StoreError> {
    if keys.is_fresh(tenant) {
        return Ok(ask(keys)?);
    }
    let keys = keys.clone();
    tokio::task::spawn_blocking(move || ask(&keys))
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
        .map_err(StoreError::from)
}

#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    options: WriteOptions,
    description: String,
    keys: Arc<KeyRing>,
    tenant: String,
    /// Blobs handed to [`BlobStore::delete_detached`] and not deleted yet, shared by
    /// every clone: a background deletion can die with the runtime it was spawned
    /// on (an HTTP worker stopped at shutdown), so [`BlobStore::finish_detached`]
    /// does what is left before the process exits.
    detached: Arc<std::sync::Mutex<std::collections::HashSet<BlobKey>>>,
    /// Owners of blobs not yet referenced by the index (STOW sessions) still
    /// alive: `finish_detached` waits for them, since a request cut off at
    /// shutdown is dropped on its worker's thread, maybe after the server stopped.
    uploads: Arc<std::sync::atomic::AtomicUsize>,
    /// The directory of a `file://` store: its unfinished uploads are files that
    /// no listing shows (see [`BlobStore::remove_stale_uploads`]).
    local_dir: Option<std::path::PathBuf>,
    /// Headers of objects read recently, shared by every clone.
    headers: Arc<header_cache::HeaderCache>,
    /// The named stores beside the primary one (`storage.stores`), by name:
    /// where lifecycle rules move instances as they age (issue 15).
    named: Arc<std::collections::BTreeMap<String, NamedStore>>,
    /// The primary store's place (its URL): stores sharing a place are tiers
    /// of one S3 bucket prefix, whose objects they share.
    place: String,
}

/// A named store: its backend and the storage class its objects are written
/// with (an S3 storage class, an Azure access tier, a GCS class), if any.
#[derive(Clone)]
struct NamedStore {
    backend: Arc<dyn ObjectStore>,
    storage_class: Option<String>,
    /// The S3 requests object_store has no call for (an S3 store's).
    s3: Option<Arc<archive::S3Archive>>,
    /// An Azure store's Archive tier.
    azure: Option<Arc<archive::AzureArchive>>,
    /// Its objects must be restored before they are read.
    offline: bool,
    /// Its URL (see `BlobStore::place`).
    place: String,
}

/// How an offline tier's objects are restored: for how many days, at which
/// retrieval tier, and what a retrieval waiting for one is told.
#[derive(Debug, Clone)]
pub struct OfflineTier {
    pub restore_days: u32,
    pub restore_tier: String,
    pub retry_after: std::time::Duration,
}

/// Held by the owner of blobs the index does not reference yet (a STOW session),
/// from before its first blob until it committed them or handed them to
/// [`BlobStore::delete_detached`].
#[derive(Debug)]
pub struct UploadGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.description)
            .finish()
    }
}

impl BlobStore {
    /// Builds the blob store over the backend named by `url`; every object is
    /// encrypted under `tenant`'s key from `keys`.
    pub fn from_url(
        url: &str,
        options: &[(String, String)],
        write: WriteOptions,
        retries: Retries,
        keys: Arc<KeyRing>,
        tenant: &str,
    ) -> Result<Self, StoreError> {
        let inner = backend_from_url(url, options, retries)?;
        let mut store = Self::with_backend(
            inner,
            write,
            url.split("://").next().unwrap_or("?"),
            keys,
            tenant,
        );
        store.local_dir = url.strip_prefix("file://").map(std::path::PathBuf::from);
        store.place = url.trim_end_matches('/').to_string();
        Ok(store)
    }

    pub fn with_backend(
        inner: Arc<dyn ObjectStore>,
        options: WriteOptions,
        description: &str,
        keys: Arc<KeyRing>,
        tenant: &str,
    ) -> Self {
        Self {
            inner,
            options,
            description: description.to_string(),
            keys,
            tenant: tenant.to_string(),
            detached: Arc::default(),
            uploads: Arc::default(),
            local_dir: None,
            headers: Arc::default(),
            named: Arc::default(),
            place: String::new(),
        }
    }

    /// Adds the named store `name` over the backend at `url`, its objects
    /// written with `storage_class` when given.
    pub fn with_named_store(
        mut self,
        name: &str,
        url: &str,
        options: &[(String, String)],
        storage_class: Option<String>,
        offline: Option<OfflineTier>,
        retries: Retries,
    ) -> Result<Self, StoreError> {
        if !valid_store_name(name) {
            return Err(StoreError::UnknownStore(name.to_string()));
        }
        let backend = backend_from_url(url, options, retries)?;
        let is_s3 = url.starts_with("s3://") || url.starts_with("s3a://");
        let s3 = if is_s3 {
            let (s3, region, bucket, prefix) = backend::s3_client(url, options, retries)?;
            let tier = offline.clone().unwrap_or(OfflineTier {
                restore_days: 1,
                restore_tier: "Standard".into(),
                retry_after: std::time::Duration::from_secs(3600),
            });
            Some(Arc::new(archive::S3Archive::new(
                s3, region, bucket, prefix, &tier,
            )?))
        } else {
            None
        };
        let azure = match (&offline, is_s3) {
            (Some(tier), false) => {
                let (azure, account, prefix) = backend::azure_client(url, options, retries)?;
                Some(Arc::new(archive::AzureArchive::new(
                    azure, account, prefix, tier,
                )?))
            }
            _ => None,
        };
        let mut named = (*self.named).clone();
        named.insert(
            name.to_string(),
            NamedStore {
                backend,
                storage_class: storage_class.filter(|c| !c.is_empty()),
                s3,
                azure,
                offline: offline.is_some(),
                place: url.trim_end_matches('/').to_string(),
            },
        );
        self.named = Arc::new(named);
        Ok(self)
    }

    /// The backend a key's object is in.
    fn backend(&self, key: &BlobKey) -> Result<&Arc<dyn ObjectStore>, StoreError> {
        match key.store() {
            None => Ok(&self.inner),
            Some(store) => self
                .named
                .get(store)
                .map(|named| &named.backend)
                .ok_or_else(|| StoreError::UnknownStore(store.to_string())),
        }
    }

    /// The offline tier `key`'s object is in, if its store is one.
    fn archive(&self, key: &BlobKey) -> Option<archive::Archive<'_>> {
        let named = self.named.get(key.store()?)?;
        if !named.offline {
            return None;
        }
        match (&named.s3, &named.azure) {
            (Some(s3), _) => Some(archive::Archive::S3(s3)),
            (None, Some(azure)) => Some(archive::Archive::Azure(azure)),
            (None, None) => None,
        }
    }

    /// The place (URL) of a store: None for the primary.
    fn place_of(&self, store: Option<&str>) -> Option<&str> {
        match store {
            None => Some(self.place.as_str()),
            Some(name) => self.named.get(name).map(|n| n.place.as_str()),
        }
    }

    /// Whether `a` and `b` name one object in two stores sharing a place
    /// (tiers of one bucket prefix): a move between them is a change of
    /// storage class in place, and neither may be deleted for the other.
    pub fn same_object(&self, a: &BlobKey, b: &BlobKey) -> bool {
        a.store() != b.store()
            && a.path() == b.path()
            && self.place_of(a.store()).is_some_and(|p| !p.is_empty())
            && self.place_of(a.store()) == self.place_of(b.store())
    }

    /// The names `key`'s object goes by in every store sharing its place
    /// (itself included).
    pub fn aliases(&self, key: &BlobKey) -> Vec<BlobKey> {
        let place = self.place_of(key.store());
        let mut aliases = vec![key.clone()];
        if place.is_none_or(str::is_empty) {
            return aliases;
        }
        let stores = std::iter::once(None).chain(self.named.keys().map(|n| Some(n.as_str())));
        for store in stores {
            if store != key.store() && self.place_of(store) == place {
                aliases.push(key.in_store(store));
            }
        }
        aliases
    }

    /// Whether `key`'s object is in an offline tier (restored before a read).
    pub fn is_offline(&self, key: &BlobKey) -> bool {
        self.archive(key).is_some()
    }

    /// Whether the named store `store` is an offline tier.
    pub fn is_offline_store(&self, store: &str) -> bool {
        self.named.get(store).is_some_and(|s| s.offline)
    }

    /// Whether any store is an offline tier.
    pub fn has_offline_stores(&self) -> bool {
        self.named.values().any(|s| s.offline)
    }

    /// What a retrieval waiting for the restore of `key` is told to wait.
    pub fn restore_retry_after(&self, key: &BlobKey) -> Option<std::time::Duration> {
        self.archive(key).map(|a| a.retry_after())
    }

    /// Where `key`'s object stands (Online when its store is not offline).
    #[tracing::instrument(name = "store.restore_state", skip_all)]
    pub async fn restore_state(&self, key: &BlobKey) -> Result<RestoreState, StoreError> {
        let _timer = StoreTimer::start("restore_state", &self.description);
        match self.archive(key) {
            Some(archive) => archive.state(&key.path()).await,
            None => Ok(RestoreState::Online),
        }
    }

    /// Asks for the restore of `key`'s object (nothing when its store is not
    /// offline); says where it stands afterwards.
    #[tracing::instrument(name = "store.request_restore", skip_all)]
    pub async fn request_restore(&self, key: &BlobKey) -> Result<RestoreState, StoreError> {
        let _timer = StoreTimer::start("request_restore", &self.description);
        match self.archive(key) {
            Some(archive) => archive.request(&key.path()).await,
            None => Ok(RestoreState::Online),
        }
    }

    /// Puts `key`'s object back in its offline tier after a restore whose
    /// time is up (Azure; S3 expires a restored copy itself).
    #[tracing::instrument(name = "store.rearchive", skip_all)]
    pub async fn rearchive(&self, key: &BlobKey) -> Result<(), StoreError> {
        let _timer = StoreTimer::start("rearchive", &self.description);
        match self.archive(key) {
            Some(archive) => archive.rearchive(&key.path()).await,
            None => Ok(()),
        }
    }

    /// Every store: its name (None for the primary) and backend.
    fn backends(&self) -> impl Iterator<Item = (Option<&str>, &Arc<dyn ObjectStore>)> {
        std::iter::once((None, &self.inner)).chain(
            self.named
                .iter()
                .map(|(name, named)| (Some(name.as_str()), &named.backend)),
        )
    }

    /// How an object of `key`'s store is written: with the store's storage class.
    fn put_options(&self, key: &BlobKey) -> object_store::PutMultipartOptions {
        let mut options = object_store::PutMultipartOptions::default();
        let class = key
            .store()
            .and_then(|store| self.named.get(store))
            .and_then(|named| named.storage_class.clone());
        if let Some(class) = class {
            options
                .attributes
                .insert(object_store::Attribute::StorageClass, class.into());
        }
        options
    }

    /// The same store, encrypting under another tenant's key.
    pub fn for_tenant(&self, tenant: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            ..self.clone()
        }
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The tenant whose key new objects are encrypted under.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}
