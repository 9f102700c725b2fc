//! Upkeep of the bucket: deleting blobs (now or in the background at a request's
//! death), listing old blobs for the orphan sweep, removing stale local uploads,
//! probing the backend and counting its usage.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;

use super::{backend_from_url, BlobKey, BlobKind, BlobStore, Retries, StoreError, UploadGuard};
use crate::telemetry::metrics::StoreTimer;

/// What a listing of the blob store found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlobUsage {
    pub objects: u64,
    /// Bytes as stored: encrypted, with each object's header.
    pub bytes: u64,
}

/// Counts the objects of the store at `url` and their bytes as stored (encrypted),
/// by listing it: one LIST request per thousand objects on a cloud store. Needs no
/// key: nothing is opened.
pub async fn usage(
    url: &str,
    options: &[(String, String)],
    retries: Retries,
) -> Result<BlobUsage, StoreError> {
    let backend = backend_from_url(url, options, retries)?;
    let mut usage = BlobUsage::default();
    let mut listing = backend.list(None);
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        usage.objects += 1;
        usage.bytes += meta.size;
    }
    Ok(usage)
}

impl BlobStore {
    #[tracing::instrument(name = "store.delete", skip_all)]
    pub async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        let _timer = StoreTimer::start("delete", &self.description);
        self.headers.forget(key);
        match self.backend(key)?.delete(&key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes blobs in the background, logging (not failing) on error: used to clean
    /// up after a request that failed or died.
    pub fn delete_detached(&self, keys: Vec<BlobKey>) {
        if keys.is_empty() {
            return;
        }
        self.detached_set().extend(keys.iter().cloned());
        // Called from drop guards, which may run while a runtime shuts down: then
        // the keys stay listed for `finish_detached` (or the orphan sweep).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            for key in keys {
                match store.delete(&key).await {
                    Ok(()) => {
                        store.detached_set().remove(&key);
                    }
                    Err(error) => {
                        tracing::warn!(blob = %key, %error, "could not remove an unreferenced blob")
                    }
                }
            }
        });
    }

    fn detached_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<BlobKey>> {
        // A panic while holding the lock leaves a set that is still valid.
        self.detached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// See [`UploadGuard`].
    pub fn upload_guard(&self) -> UploadGuard {
        self.uploads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        UploadGuard(self.uploads.clone())
    }

    /// Deletes the blobs whose background deletion has not happened (yet): called
    /// before the process exits, after the last request, so that what drop guards
    /// scheduled is not left to the next start's orphan sweep. First waits, up to
    /// `wait`, for every [`UploadGuard`] to go: an owner still alive may yet commit
    /// its blobs, or hand them over. Returns how many were removed; failures are
    /// logged and left to the sweep.
    pub async fn finish_detached(&self, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        while self.uploads.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "uploads still in progress at exit; the orphan sweep will remove their blobs"
                );
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keys: Vec<BlobKey> = self.detached_set().iter().cloned().collect();
        let mut removed = 0;
        for key in keys {
            match self.delete(&key).await {
                Ok(()) => {
                    self.detached_set().remove(&key);
                    removed += 1;
                }
                Err(error) => {
                    tracing::warn!(blob = %key, %error, "could not remove an unreferenced blob; the orphan sweep will")
                }
            }
        }
        removed
    }

    /// Keys of every blob of `kind` last modified before `now - grace`, in
    /// every store (the primary and the named ones).
    #[tracing::instrument(name = "store.list", skip_all)]
    pub async fn keys_older_than(
        &self,
        kind: BlobKind,
        grace: Duration,
    ) -> Result<Vec<BlobKey>, StoreError> {
        let _timer = StoreTimer::start("list", &self.description);
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let prefix = ObjectPath::from(kind.prefix());
        let mut keys = Vec::new();
        // Stores sharing a place (tiers of one bucket prefix) are listed once,
        // under the first one's name: see `aliases` for the object's others.
        let mut listed = std::collections::HashSet::new();
        for (store, backend) in self.backends() {
            match self.place_of(store) {
                Some(place) if !place.is_empty() && !listed.insert(place.to_string()) => continue,
                _ => {}
            }
            let mut listing = backend.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                if SystemTime::from(meta.last_modified) > cutoff {
                    continue;
                }
                if let Ok(key) = BlobKey::listed(store, meta.location.as_ref()) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    /// Removes what uploads that never completed left on a `file://` store, when
    /// older than `grace`: the local backend writes an upload to `<name>#<id>` and
    /// renames it when complete, so a process killed in between leaves that file,
    /// which no listing shows (and so no orphan sweep finds). Cloud stores keep
    /// such parts as incomplete multipart uploads, for the bucket's lifecycle rule
    /// to abort. Returns how many files were removed.
    pub async fn remove_stale_uploads(&self, grace: Duration) -> Result<usize, StoreError> {
        let Some(root) = &self.local_dir else {
            return Ok(0);
        };
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for kind in [BlobKind::Instance, BlobKind::Derived] {
            let mut entries = match tokio::fs::read_dir(root.join(kind.prefix())).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name();
                // Only the staging files of our own objects' uploads.
                let Some((key, _)) = name.to_str().and_then(|n| n.split_once('#')) else {
                    continue;
                };
                if BlobKey::parse(&format!("{}/{key}", kind.prefix())).is_err() {
                    continue;
                }
                // An upload that completes (is renamed) meanwhile is gone.
                let modified = match entry.metadata().await.and_then(|m| m.modified()) {
                    Ok(modified) => modified,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                if modified > cutoff {
                    continue;
                }
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => removed += 1,
                    // Completed (renamed) or removed meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }

    /// Checks that the backend answers.
    #[tracing::instrument(name = "store.probe", skip_all)]
    pub async fn probe(&self) -> Result<(), StoreError> {
        let _timer = StoreTimer::start("probe", &self.description);
        let prefix = ObjectPath::from(BlobKind::Instance.prefix());
        for (_, backend) in self.backends() {
            if let Some(Err(e)) = backend.list(Some(&prefix)).next().await {
                return Err(e.into());
            }
        }
        Ok(())
    }
}
