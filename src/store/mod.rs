//! The blob storage facade. Every blob is written and read through [`BlobStore`], and
//! every object name comes from [`BlobKey`]: names are opaque random ids, so nothing in
//! a bucket listing identifies a patient, a study or an instance.
//!
//! This module knows nothing of DICOM or SQL.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob not found")]
    NotFound,
    #[error("unsupported blob store URL {0:?}: expected file:///path or memory://")]
    UnsupportedUrl(String),
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    #[error("blob store failure: {0}")]
    Backend(#[source] object_store::Error),
    #[error("blob store I/O failure: {0}")]
    Io(#[from] std::io::Error),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            other => StoreError::Backend(other),
        }
    }
}

/// The kinds of object Kastell stores; the kind is the first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A stored DICOM instance (PS3.10 file, as received).
    Instance,
}

impl BlobKind {
    fn prefix(self) -> &'static str {
        match self {
            BlobKind::Instance => "instances",
        }
    }
}

/// The name of one object in the blob store: `<kind>/<random uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// A fresh, never-used key. Random, so it carries no patient data and two
    /// concurrent uploads of the same instance never write the same object.
    pub fn new(kind: BlobKind) -> Self {
        BlobKey(format!(
            "{}/{}",
            kind.prefix(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// Re-creates a key read back from the index, rejecting anything we would not
    /// have produced ourselves.
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        let valid = raw.split_once('/').is_some_and(|(kind, id)| {
            kind == BlobKind::Instance.prefix()
                && id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if valid {
            Ok(BlobKey(raw.to_string()))
        } else {
            Err(StoreError::InvalidKey(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::from(self.0.as_str())
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tuning of blob writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Bytes per multipart part; bounds the memory one upload holds.
    pub part_bytes: usize,
    /// Parts uploaded concurrently per blob.
    pub concurrency: usize,
}

#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    options: WriteOptions,
    description: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.description)
            .finish()
    }
}

impl BlobStore {
    /// Builds the backend named by `url`: `file:///absolute/dir` or `memory://`.
    pub fn from_url(url: &str, options: WriteOptions) -> Result<Self, StoreError> {
        let inner: Arc<dyn ObjectStore> = if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() || !dir.starts_with('/') {
                return Err(StoreError::UnsupportedUrl(url.to_string()));
            }
            std::fs::create_dir_all(dir)?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)?
                    .with_automatic_cleanup(true),
            )
        } else if url == "memory://" || url == "memory:///" {
            Arc::new(InMemory::new())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        Ok(Self::with_backend(
            inner,
            options,
            url.split("://").next().unwrap_or("?"),
        ))
    }

    pub fn with_backend(
        inner: Arc<dyn ObjectStore>,
        options: WriteOptions,
        description: &str,
    ) -> Self {
        Self {
            inner,
            options,
            description: description.to_string(),
        }
    }

    /// Starts a streamed upload. Dropping the writer without `finish` aborts it.
    pub async fn writer(&self, key: BlobKey) -> Result<BlobWriter, StoreError> {
        let upload = self.inner.put_multipart(&key.path()).await?;
        Ok(BlobWriter {
            upload: Some(WriteMultipart::new_with_chunk_size(
                upload,
                self.options.part_bytes,
            )),
            concurrency: self.options.concurrency.max(1),
            key,
            written: 0,
        })
    }

    /// The whole blob as a stream of chunks.
    pub async fn read_stream(
        &self,
        key: &BlobKey,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let result = self.inner.get(&key.path()).await?;
        Ok(result.into_stream().map_err(StoreError::from).boxed())
    }

    /// One byte range of a blob; only that range is fetched from the backend.
    pub async fn read_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        Ok(self.inner.get_range(&key.path(), range).await?)
    }

    /// The whole blob in memory. Only for single objects whose processing needs all
    /// of it (re-encoding one instance); never for a study.
    pub async fn read_all(&self, key: &BlobKey) -> Result<Bytes, StoreError> {
        Ok(self.inner.get(&key.path()).await?.bytes().await?)
    }

    pub async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        match self.inner.delete(&key.path()).await {
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
        let store = self.clone();
        tokio::spawn(async move {
            for key in keys {
                if let Err(error) = store.delete(&key).await {
                    tracing::warn!(blob = %key, %error, "could not remove an unreferenced blob");
                }
            }
        });
    }

    /// Keys of every instance blob last modified before `now - grace`.
    pub async fn instance_keys_older_than(
        &self,
        grace: Duration,
    ) -> Result<Vec<BlobKey>, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let prefix = ObjectPath::from(BlobKind::Instance.prefix());
        let mut listing = self.inner.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if SystemTime::from(meta.last_modified) > cutoff {
                continue;
            }
            if let Ok(key) = BlobKey::parse(meta.location.as_ref()) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Checks that the backend answers.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let prefix = ObjectPath::from(BlobKind::Instance.prefix());
        match self.inner.list(Some(&prefix)).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
        }
    }
}

/// An upload in progress.
pub struct BlobWriter {
    upload: Option<WriteMultipart>,
    concurrency: usize,
    key: BlobKey,
    written: u64,
}

impl BlobWriter {
    pub fn key(&self) -> &BlobKey {
        &self.key
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Queues a chunk, waiting while too many parts are in flight (back-pressure:
    /// a slow backend slows the client rather than filling memory).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let upload = self.upload.as_mut().expect("writer used after finish");
        upload.wait_for_capacity(self.concurrency).await?;
        self.written += chunk.len() as u64;
        upload.put(chunk);
        Ok(())
    }

    /// Completes the upload; the blob is durable when this returns.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        let upload = self.upload.take().expect("writer finished twice");
        upload.finish().await?;
        Ok(self.written)
    }

    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(error) = upload.abort().await {
                tracing::warn!(blob = %self.key, %error, "aborting an upload failed");
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // A request that died mid-part: abort the upload so no staged parts linger.
        if let Some(upload) = self.upload.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = upload.abort().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WriteOptions {
        WriteOptions {
            part_bytes: 5 * 1024 * 1024,
            concurrency: 2,
        }
    }

    #[tokio::test]
    async fn write_then_read_whole_and_ranges() {
        let store = BlobStore::from_url("memory://", options()).unwrap();
        let key = BlobKey::new(BlobKind::Instance);
        let mut writer = store.writer(key.clone()).await.unwrap();
        let data: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(1_000_003) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        assert_eq!(store.read_all(&key).await.unwrap(), data);
        let range = store.read_range(&key, 5_000_000..5_000_100).await.unwrap();
        assert_eq!(&range[..], &data[5_000_000..5_000_100]);
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.read_all(&key).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn filesystem_backend_aborted_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = BlobStore::from_url(&url, options()).unwrap();
        let key = BlobKey::new(BlobKind::Instance);
        let mut writer = store.writer(key.clone()).await.unwrap();
        writer
            .write(Bytes::from(vec![7u8; 6 * 1024 * 1024]))
            .await
            .unwrap();
        writer.abort().await;
        assert!(matches!(
            store.read_all(&key).await,
            Err(StoreError::NotFound)
        ));
        let left = store
            .instance_keys_older_than(Duration::ZERO)
            .await
            .unwrap();
        assert!(left.is_empty(), "aborted upload left {left:?}");
    }

    #[test]
    fn keys_are_opaque_and_validated() {
        let key = BlobKey::new(BlobKind::Instance);
        assert!(key.as_str().starts_with("instances/"));
        assert_eq!(BlobKey::parse(key.as_str()).unwrap(), key);
        assert!(BlobKey::parse("instances/../etc/passwd").is_err());
        assert!(BlobKey::parse("1.2.840.1/abc").is_err());
    }
}
