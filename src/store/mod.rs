//! The blob storage facade. Every blob is written and read through [`BlobStore`], and
//! every object name comes from [`BlobKey`]: names are opaque random ids, so nothing in
//! a bucket listing identifies a patient, a study or an instance.
//!
//! Every byte goes through envelope encryption (see `crate::crypto::format`): what
//! reaches the backend is a header with the wrapped data key and authenticated
//! segments. A byte range is read by fetching only the segments it touches.
//!
//! This module knows nothing of DICOM or SQL.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytes::BytesMut;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};

use crate::crypto::format::{Header, Layout, Opener, Sealer, MAX_HEADER_LEN, SEGMENT_SIZE};
use crate::crypto::{keys, CryptoError, KeyId, KeyRing, SecretKey};
use crate::telemetry::metrics::{self, StoreTimer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob not found")]
    NotFound,
    #[error("unsupported blob store URL {0:?}: expected file:///path, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or memory://")]
    UnsupportedUrl(String),
    /// The object failed authentication: modified, truncated or swapped.
    #[error("blob integrity check failed: {0}")]
    Integrity(&'static str),
    /// The key that protected the object was destroyed.
    #[error("the key of this blob was shredded")]
    Shredded,
    #[error("key error: {0}")]
    Key(CryptoError),
    #[error("range {start}..{end} outside the blob's {len} bytes")]
    OutOfRange { start: u64, end: u64, len: u64 },
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    #[error("blob store failure: {0}")]
    Backend(#[source] object_store::Error),
    /// The backend could not be reached or did not answer in time (connection
    /// refused or cut, timeouts, server errors left after the retries): the same
    /// request may succeed later.
    #[error("blob store unavailable: {0}")]
    Unavailable(#[source] object_store::Error),
    /// The backend has no space left for the write (ENOSPC, quota).
    #[error("blob store out of space: {0}")]
    Full(#[source] object_store::Error),
    #[error("blob store I/O failure: {0}")]
    Io(#[from] std::io::Error),
}

impl From<CryptoError> for StoreError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Integrity(what) => StoreError::Integrity(what),
            CryptoError::Format(what) => StoreError::Integrity(what),
            CryptoError::Shredded(_) => StoreError::Shredded,
            other => StoreError::Key(other),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        if let object_store::Error::NotFound { .. } = e {
            return StoreError::NotFound;
        }
        let io_kinds = io_kinds(&e);
        if io_kinds.iter().copied().any(is_full) {
            return StoreError::Full(e);
        }
        // A cloud backend's generic error is a request that failed on the way or
        // at the server after object_store's retries (its specific answers, such
        // as 404 or 412, have variants of their own).
        let remote = matches!(&e, object_store::Error::Generic { store, .. }
            if !matches!(*store, "LocalFileSystem" | "InMemory"));
        if remote || io_kinds.iter().copied().any(is_network) {
            return StoreError::Unavailable(e);
        }
        StoreError::Backend(e)
    }
}

impl StoreError {
    /// The backend cannot be reached or does not answer in time: retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
            || matches!(self, StoreError::Io(e) if is_network(e.kind()))
    }

    /// The backend has no space left.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full(_))
            || matches!(self, StoreError::Io(e) if is_full(e.kind()))
    }
}

/// The kinds of the I/O errors in an error's chain of sources.
fn io_kinds(error: &(dyn std::error::Error + 'static)) -> Vec<std::io::ErrorKind> {
    let mut kinds = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            kinds.push(io.kind());
        }
        next = error.source();
    }
    kinds
}

fn is_full(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(kind, StorageFull | QuotaExceeded)
}

fn is_network(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// How a cloud backend retries a failed request (connection errors, timeouts, 5xx):
/// bounded, so that a request to a store that went away fails in bounded time
/// (object_store's own default keeps trying for three minutes).
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Retries of one request after its first attempt.
    pub max_retries: usize,
    /// No retry begins later than this after the first attempt.
    pub timeout: Duration,
}

impl Retries {
    fn config(self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
            backoff: object_store::BackoffConfig {
                max_backoff: Duration::from_secs(2),
                ..Default::default()
            },
        }
    }
}

/// The kinds of object Kastell stores; the kind is the first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A stored DICOM instance (PS3.10 file, as received).
    Instance,
    /// Something computed from instances and kept to answer faster: series
    /// metadata, thumbnails. Recorded in the index's `derived_blobs`.
    Derived,
}

impl BlobKind {
    fn prefix(self) -> &'static str {
        match self {
            BlobKind::Instance => "instances",
            BlobKind::Derived => "derived",
        }
    }
}

/// What a listing of the blob store found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlobUsage {
    pub objects: u64,
    /// Bytes as stored: encrypted, with each object's header.
    pub bytes: u64,
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
            (kind == BlobKind::Instance.prefix() || kind == BlobKind::Derived.prefix())
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

    /// The 16 random bytes of the name, which the encrypted object is bound to.
    fn object_id(&self) -> [u8; 16] {
        let hex = self.0.rsplit('/').next().unwrap_or_default();
        let mut id = [0u8; 16];
        if hex::decode_to_slice(hex, &mut id).is_err() {
            unreachable!("keys are validated on creation");
        }
        id
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

/// The backend named by a URL: `file:///absolute/dir`, `memory://`, `s3://bucket/prefix`,
/// `az://container/prefix` (also `azure://`, `abfs://`), `gs://bucket/prefix`. Cloud
/// backends read their settings from `options` (object_store config keys such as
/// `aws_endpoint`, `aws_region`, `aws_virtual_hosted_style_request`) and from the
/// conventional environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
pub fn backend_from_url(
    url: &str,
    options: &[(String, String)],
    retries: Retries,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() || !dir.starts_with('/') {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        }
        std::fs::create_dir_all(dir)?;
        return Ok(Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir)?
                .with_automatic_cleanup(true),
        ));
    }
    if url == "memory://" || url == "memory:///" {
        return Ok(Arc::new(InMemory::new()));
    }
    let parsed = url::Url::parse(url).map_err(|_| StoreError::UnsupportedUrl(url.to_string()))?;
    if !matches!(
        parsed.scheme(),
        "s3" | "s3a" | "az" | "azure" | "abfs" | "abfss" | "adl" | "gs"
    ) {
        return Err(StoreError::UnsupportedUrl(url.to_string()));
    }
    let mut settings = environment_settings();
    settings.extend(options.iter().cloned());
    // What object_store's `parse_url_opts` does, plus the retry policy it cannot set.
    macro_rules! build {
        ($builder:ty) => {{
            let builder = settings.iter().fold(
                <$builder>::new().with_url(parsed.as_str()),
                |builder, (key, value)| match key.parse() {
                    Ok(key) => builder.with_config(key, value),
                    Err(_) => builder,
                },
            );
            // A configuration error, not an outage.
            let store = builder.with_retry(retries.config()).build();
            Arc::new(store.map_err(StoreError::Backend)?) as Arc<dyn ObjectStore>
        }};
    }
    let store = match parsed.scheme() {
        "s3" | "s3a" => build!(object_store::aws::AmazonS3Builder),
        "gs" => build!(object_store::gcp::GoogleCloudStorageBuilder),
        _ => build!(object_store::azure::MicrosoftAzureBuilder),
    };
    // The host is the bucket or container; the path is our prefix. (object_store's
    // own split reads `az://` URLs as `az://account/container/...` and loses it.)
    let prefix = ObjectPath::parse(parsed.path().trim_start_matches('/'))
        .map_err(|_| StoreError::UnsupportedUrl(url.to_string()))?;
    if prefix.as_ref().is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store, prefix,
        )))
    }
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

/// The cloud backends' settings from the conventional environment variables
/// (`AWS_*`, `AZURE_*`, `GOOGLE_*`), names lower-cased into object_store config keys
/// (`AWS_ENDPOINT_URL` → `aws_endpoint_url`). `storage.blob_options` win over them.
pub fn environment_settings() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("AZURE_") || k.starts_with("GOOGLE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// An object opened for reading: its layout and the means to decrypt it.
struct Opened {
    opener: Opener,
    layout: Layout,
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
        }
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

    /// Starts a streamed, encrypted upload. Dropping the writer without `finish`
    /// aborts it.
    pub async fn writer(&self, key: BlobKey) -> Result<BlobWriter, StoreError> {
        // One span and one duration for the whole upload, until finish or abort.
        let span = tracing::info_span!("store.write");
        let timer = StoreTimer::start("write", &self.description);
        let (key_id, tenant_key) = self.keys.active(&self.tenant)?;
        let data_key = SecretKey::generate()?;
        let object_id = key.object_id();
        let header = seal_header(&tenant_key, &data_key, &key_id, object_id)?;
        let upload = self.inner.put_multipart(&key.path()).await?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, self.options.part_bytes);
        upload.put(Bytes::from(header));
        Ok(BlobWriter {
            _span: span,
            timer,
            upload: Some(upload),
            sealer: Some(Sealer::new(&data_key, object_id, SEGMENT_SIZE)),
            concurrency: self.options.concurrency.max(1),
            key,
            written: 0,
        })
    }

    /// Reads and checks an object's header; unwraps its data key.
    async fn open(&self, key: &BlobKey) -> Result<Opened, StoreError> {
        Ok(self.open_prefetching(key, MAX_HEADER_LEN as u64).await?.0)
    }

    /// Like `open`, fetching the first `prefetch` bytes in the same request (at
    /// least the header); returns the bytes fetched after the header, which for a
    /// small object are all of it.
    async fn open_prefetching(
        &self,
        key: &BlobKey,
        prefetch: u64,
    ) -> Result<(Opened, Bytes), StoreError> {
        let (header, total, bytes) = self.fetch_header(key, prefetch).await?;
        if header.object_id != key.object_id() {
            self.incident(key, "the object belongs to another name (swapped)");
            return Err(StoreError::Integrity("the object belongs to another name"));
        }
        let key_id = KeyId::parse(&header.key_id)?;
        let tenant_key = self.keys.key(&key_id)?;
        let prefix =
            Header::authenticated_prefix(header.segment_size, &header.object_id, &header.key_id);
        let data_key =
            keys::unwrap(&tenant_key, &header.wrapped_data_key, &prefix).inspect_err(|_| {
                self.incident(key, "the data key does not unwrap (header modified)");
            })?;
        let layout = Layout::from_ciphertext_len(header.len() as u64, header.segment_size, total)?;
        let after_header = bytes.slice(header.len().min(bytes.len())..);
        Ok((
            Opened {
                opener: Opener::new(&data_key, header.object_id, layout),
                layout,
            },
            after_header,
        ))
    }

    fn incident(&self, key: &BlobKey, what: &str) {
        tracing::error!(blob = %key, incident = what, "blob integrity incident");
    }

    fn checked<T>(&self, key: &BlobKey, result: Result<T, CryptoError>) -> Result<T, StoreError> {
        result.map_err(|e| {
            if let CryptoError::Integrity(what) = &e {
                self.incident(key, what);
            }
            StoreError::from(e)
        })
    }

    /// Reads the first `prefetch` bytes (at least the header) in one request and
    /// decodes the header; returns it, the object's total size and the bytes read.
    async fn fetch_header(
        &self,
        key: &BlobKey,
        prefetch: u64,
    ) -> Result<(Header, u64, Bytes), StoreError> {
        // Ranges past the end are clamped by every backend, so small objects are fine.
        let range = GetRange::Bounded(0..prefetch.max(MAX_HEADER_LEN as u64));
        let result = self
            .inner
            .get_opts(
                &key.path(),
                GetOptions {
                    range: Some(range),
                    ..Default::default()
                },
            )
            .await?;
        let total = result.meta.size;
        let bytes = result.bytes().await?;
        let header = Header::decode(&bytes)?
            .ok_or(StoreError::Integrity("the object header is truncated"))?;
        Ok((header, total, bytes))
    }

    /// The key an object's header names (one small read; nothing is decrypted).
    #[tracing::instrument(name = "store.key_id_of", skip_all)]
    pub async fn key_id_of(&self, key: &BlobKey) -> Result<KeyId, StoreError> {
        let _timer = StoreTimer::start("key_id_of", &self.description);
        let (header, _, _) = self.fetch_header(key, 0).await?;
        Ok(KeyId::parse(&header.key_id)?)
    }

    /// The plaintext size of a blob.
    #[tracing::instrument(name = "store.size", skip_all)]
    pub async fn size(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let _timer = StoreTimer::start("size", &self.description);
        Ok(self.open(key).await?.layout.plaintext_len)
    }

    /// The whole blob, decrypted, as a stream of segments.
    #[tracing::instrument(name = "store.read_stream", skip_all)]
    pub async fn read_stream(
        &self,
        key: &BlobKey,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let _timer = StoreTimer::start("read_stream", &self.description);
        // One request brings the header and the first segment: a small object needs
        // no second one.
        let first_segment = (SEGMENT_SIZE as u64) + crate::crypto::format::TAG_LEN;
        let (opened, prefetched) = self
            .open_prefetching(key, MAX_HEADER_LEN as u64 + first_segment)
            .await?;
        let layout = opened.layout;
        let all = 0..layout.segments;
        let range = layout.ciphertext_range(&all);
        let fetched_to = range.start + prefetched.len() as u64;
        let rest: BoxStream<'static, Result<Bytes, object_store::Error>> = if fetched_to < range.end
        {
            self.inner
                .get_opts(
                    &key.path(),
                    GetOptions {
                        range: Some(GetRange::Bounded(fetched_to..range.end)),
                        ..Default::default()
                    },
                )
                .await?
                .into_stream()
        } else {
            futures_util::stream::empty().boxed()
        };
        let body = futures_util::stream::once(async move { Ok(prefetched) })
            .chain(rest)
            .boxed();
        let sealed_len = (layout.segment_size + crate::crypto::format::TAG_LEN) as usize;
        let last_len =
            (range.end - range.start) as usize - (layout.segments as usize - 1) * sealed_len;
        let store = self.clone();
        let key = key.clone();
        let state = (body, BytesMut::new(), 0u64, opened.opener);
        Ok(futures_util::stream::try_unfold(
            state,
            move |(mut inner, mut buffer, index, opener)| {
                let store = store.clone();
                let key = key.clone();
                async move {
                    let segments = opener.layout().segments;
                    if index == segments {
                        return Ok(None);
                    }
                    let need = if index + 1 == segments {
                        last_len
                    } else {
                        sealed_len
                    };
                    while buffer.len() < need {
                        match inner.next().await {
                            Some(chunk) => buffer.extend_from_slice(&chunk?),
                            None => {
                                store.incident(&key, "the object is shorter than its layout");
                                return Err(StoreError::Integrity("the object is truncated"));
                            }
                        }
                    }
                    let mut segment = buffer.split_to(need);
                    store.checked(&key, opener.open_in_place(index, &mut segment))?;
                    metrics::opened(&store.description, segment.len() as u64);
                    Ok(Some((segment.freeze(), (inner, buffer, index + 1, opener))))
                }
            },
        )
        .boxed())
    }

    /// One byte range of a blob's plaintext; only the segments it touches are
    /// fetched from the backend (after the header).
    #[tracing::instrument(name = "store.read_range", skip_all)]
    pub async fn read_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let _timer = StoreTimer::start("read_range", &self.description);
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        let opened = self.open(key).await?;
        let layout = opened.layout;
        if range.end > layout.plaintext_len || range.start > range.end {
            return Err(StoreError::OutOfRange {
                start: range.start,
                end: range.end,
                len: layout.plaintext_len,
            });
        }
        let segments = layout.segments_for(&range);
        let sealed = self
            .inner
            .get_range(&key.path(), layout.ciphertext_range(&segments))
            .await?;
        let plain = self.checked(key, opened.opener.open(segments.start, &sealed))?;
        metrics::opened(&self.description, plain.len() as u64);
        let skip = (range.start - segments.start * layout.segment_size) as usize;
        Ok(Bytes::from(plain).slice(skip..skip + (range.end - range.start) as usize))
    }

    /// The whole blob in memory. Only for single objects whose processing needs all
    /// of it (re-encoding one instance); never for a study.
    #[tracing::instrument(name = "store.read_all", skip_all)]
    pub async fn read_all(&self, key: &BlobKey) -> Result<Bytes, StoreError> {
        let _timer = StoreTimer::start("read_all", &self.description);
        let mut stream = self.read_stream(key).await?;
        let mut all = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all.freeze())
    }

    /// Re-wraps an object's data key under the tenant's active key: a new header on
    /// the same ciphertext segments (nothing is re-encrypted). Returns false if the
    /// object already uses the active key.
    #[tracing::instrument(name = "store.rewrap", skip_all)]
    pub async fn rewrap(&self, key: &BlobKey) -> Result<bool, StoreError> {
        let _timer = StoreTimer::start("rewrap", &self.description);
        let (header, _, _) = self.fetch_header(key, 0).await?;
        let old_id = KeyId::parse(&header.key_id)?;
        let (active_id, active_key) = self.keys.active(&self.tenant)?;
        if old_id == active_id || old_id.tenant != self.tenant {
            return Ok(false);
        }
        let old_key = self.keys.key(&old_id)?;
        let prefix =
            Header::authenticated_prefix(header.segment_size, &header.object_id, &header.key_id);
        let data_key = self.checked(
            key,
            keys::unwrap(&old_key, &header.wrapped_data_key, &prefix),
        )?;
        let new_header = seal_header(&active_key, &data_key, &active_id, header.object_id)?;
        // Stream the segments unchanged behind the new header.
        let body = self
            .inner
            .get_opts(
                &key.path(),
                GetOptions {
                    range: Some(GetRange::Offset(header.len() as u64)),
                    ..Default::default()
                },
            )
            .await?;
        let upload = self.inner.put_multipart(&key.path()).await?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, self.options.part_bytes);
        upload.put(Bytes::from(new_header));
        let mut stream = body.into_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    upload
                        .wait_for_capacity(self.options.concurrency.max(1))
                        .await?;
                    upload.put(chunk);
                }
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e.into());
                }
            }
        }
        upload.finish().await?;
        Ok(true)
    }

    #[tracing::instrument(name = "store.delete", skip_all)]
    pub async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        let _timer = StoreTimer::start("delete", &self.description);
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

    /// Keys of every blob of `kind` last modified before `now - grace`.
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
                if entry.metadata().await?.modified()? > cutoff {
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
        match self.inner.list(Some(&prefix)).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
        }
    }
}

/// The header of a new object: the data key wrapped by the tenant key, bound to
/// everything before it.
fn seal_header(
    tenant_key: &SecretKey,
    data_key: &SecretKey,
    key_id: &KeyId,
    object_id: [u8; 16],
) -> Result<Vec<u8>, StoreError> {
    let key_id = key_id.to_string();
    let prefix = Header::authenticated_prefix(SEGMENT_SIZE, &object_id, &key_id);
    let wrapped = keys::wrap(tenant_key, data_key, &prefix)?;
    let header = Header {
        segment_size: SEGMENT_SIZE,
        object_id,
        key_id,
        wrapped_data_key: wrapped,
    };
    Ok(header.encode())
}

/// An upload in progress.
pub struct BlobWriter {
    // Open while the upload is: it ends with the writer.
    _span: tracing::Span,
    timer: StoreTimer,
    upload: Option<WriteMultipart>,
    sealer: Option<Sealer>,
    concurrency: usize,
    key: BlobKey,
    written: u64,
}

impl BlobWriter {
    pub fn key(&self) -> &BlobKey {
        &self.key
    }

    /// Plaintext bytes taken so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Encrypts and queues a chunk, waiting while too many parts are in flight
    /// (back-pressure: a slow backend slows the client rather than filling memory).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let sealer = self.sealer.as_mut().expect("writer used after finish");
        self.written += chunk.len() as u64;
        metrics::sealed(self.timer.backend(), chunk.len() as u64);
        // Encrypt in place when we own the only reference to the chunk.
        let owned = chunk
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let pieces = sealer.push_owned(owned);
        let upload = self.upload.as_mut().expect("writer used after finish");
        for piece in pieces {
            upload.wait_for_capacity(self.concurrency).await?;
            upload.put(piece);
        }
        Ok(())
    }

    /// Completes the upload; the blob is durable when this returns. Returns the
    /// plaintext size.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        let mut upload = self.upload.take().expect("writer finished twice");
        for piece in self.sealer.take().expect("writer finished twice").finish() {
            upload.put(piece);
        }
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
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait_free::CountingStore;

    fn options() -> WriteOptions {
        WriteOptions {
            part_bytes: 5 * 1024 * 1024,
            concurrency: 2,
        }
    }

    fn retries() -> Retries {
        Retries {
            max_retries: 1,
            timeout: Duration::from_secs(1),
        }
    }

    fn keyring() -> Arc<KeyRing> {
        let ring = crate::crypto::keyring::tests::ring();
        ring.ensure_tenant("default").unwrap();
        Arc::new(ring)
    }

    fn memory_store() -> (BlobStore, Arc<CountingStore>) {
        let counting = Arc::new(CountingStore {
            inner: Arc::new(InMemory::new()),
            fetched: AtomicU64::new(0),
        });
        let store =
            BlobStore::with_backend(counting.clone(), options(), "memory", keyring(), "default");
        (store, counting)
    }

    async fn put(store: &BlobStore, data: &[u8]) -> BlobKey {
        let key = BlobKey::new(BlobKind::Instance);
        let mut writer = store.writer(key.clone()).await.unwrap();
        for chunk in data.chunks(1_000_003) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        key
    }

    async fn raw(counting: &CountingStore, key: &BlobKey) -> Vec<u8> {
        counting
            .inner
            .get(&key.path())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn write_then_read_whole_and_ranges() {
        let (store, _) = memory_store();
        let data: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
        let key = put(&store, &data).await;
        assert_eq!(store.read_all(&key).await.unwrap(), data);
        assert_eq!(store.size(&key).await.unwrap(), data.len() as u64);
        let range = store.read_range(&key, 5_000_000..5_000_100).await.unwrap();
        assert_eq!(&range[..], &data[5_000_000..5_000_100]);
        assert!(matches!(
            store.read_range(&key, 0..12_000_001).await,
            Err(StoreError::OutOfRange { .. })
        ));
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.read_all(&key).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn the_backend_only_ever_sees_ciphertext() {
        let (store, counting) = memory_store();
        let secret = b"DICM Doe^John 1.2.840.113619.2.55.3.604688119";
        let mut data = vec![0u8; 300_000];
        data[..secret.len()].copy_from_slice(secret);
        data[200_000..200_000 + secret.len()].copy_from_slice(secret);
        let key = put(&store, &data).await;
        let stored = raw(&counting, &key).await;
        for needle in [&b"DICM"[..], b"Doe^John", b"1.2.840.113619"] {
            assert!(
                !stored.windows(needle.len()).any(|w| w == needle),
                "plaintext {needle:?} in the blob"
            );
        }
    }

    #[tokio::test]
    async fn a_range_fetches_only_its_segments() {
        let (store, counting) = memory_store();
        let data = vec![7u8; 50 * 1024 * 1024];
        let key = put(&store, &data).await;
        counting.fetched.store(0, Ordering::SeqCst);
        // A 100 KiB "frame" in the middle of a 50 MiB object.
        let frame = store
            .read_range(&key, 30_000_000..30_102_400)
            .await
            .unwrap();
        assert_eq!(frame.len(), 102_400);
        let fetched = counting.fetched.load(Ordering::SeqCst);
        // The header read plus at most three 64 KiB segments.
        assert!(
            fetched <= MAX_HEADER_LEN as u64 + 3 * (64 * 1024 + 16),
            "fetched {fetched} bytes"
        );
    }

    #[tokio::test]
    async fn tampering_and_swapping_are_detected() {
        let (store, counting) = memory_store();
        let data = vec![1u8; 200_000];
        let a = put(&store, &data).await;
        let b = put(&store, &data).await;
        let original = raw(&counting, &a).await;
        for position in [10usize, 40, 120, 100_000, original.len() - 1] {
            let mut tampered = original.clone();
            tampered[position] ^= 0x01;
            counting
                .inner
                .put(&a.path(), tampered.into())
                .await
                .unwrap();
            let whole = store.read_all(&a).await;
            assert!(
                matches!(whole, Err(StoreError::Integrity(_))),
                "flip at {position}: {whole:?}"
            );
        }
        // Truncated by one segment.
        counting
            .inner
            .put(&a.path(), original[..original.len() - 1000].to_vec().into())
            .await
            .unwrap();
        assert!(matches!(
            store.read_all(&a).await,
            Err(StoreError::Integrity(_))
        ));
        // B's valid object under A's name.
        let other = raw(&counting, &b).await;
        counting.inner.put(&a.path(), other.into()).await.unwrap();
        assert!(matches!(
            store.read_all(&a).await,
            Err(StoreError::Integrity(_))
        ));
        assert!(matches!(
            store.read_range(&a, 0..10).await,
            Err(StoreError::Integrity(_))
        ));
    }

    #[tokio::test]
    async fn rotation_rewraps_and_shredding_makes_blobs_unreadable() {
        let (store, counting) = memory_store();
        let data = vec![9u8; 100_000];
        let key = put(&store, &data).await;
        let before = raw(&counting, &key).await;
        store.keys.rotate("default").unwrap();
        assert!(store.rewrap(&key).await.unwrap());
        assert!(
            !store.rewrap(&key).await.unwrap(),
            "already under the active key"
        );
        let after = raw(&counting, &key).await;
        let header = Header::decode(&after).unwrap().unwrap();
        assert_eq!(header.key_id, "default/2");
        // Same segments: nothing was re-encrypted.
        let old_header_len = Header::decode(&before).unwrap().unwrap().len();
        assert_eq!(&after[header.len()..], &before[old_header_len..]);
        assert_eq!(store.read_all(&key).await.unwrap(), data);
        store.keys.shred("default").unwrap();
        assert!(matches!(
            store.read_all(&key).await,
            Err(StoreError::Shredded)
        ));
        assert!(matches!(
            store.writer(BlobKey::new(BlobKind::Instance)).await.err(),
            Some(StoreError::Shredded)
        ));
    }

    #[tokio::test]
    async fn filesystem_backend_aborted_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store =
            BlobStore::from_url(&url, &[], options(), retries(), keyring(), "default").unwrap();
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
            .keys_older_than(BlobKind::Instance, Duration::ZERO)
            .await
            .unwrap();
        assert!(left.is_empty(), "aborted upload left {left:?}");
    }

    #[tokio::test]
    async fn uploads_cut_off_by_a_killed_process_are_swept_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store =
            BlobStore::from_url(&url, &[], options(), retries(), keyring(), "default").unwrap();
        let done = BlobKey::new(BlobKind::Instance);
        let mut writer = store.writer(done.clone()).await.unwrap();
        writer.write(Bytes::from_static(b"kept")).await.unwrap();
        writer.finish().await.unwrap();
        // An upload with a part written, whose process died: no drop, no abort.
        let cut = BlobKey::new(BlobKind::Instance);
        let mut writer = store.writer(cut.clone()).await.unwrap();
        writer
            .write(Bytes::from(vec![7u8; 11 * 1024 * 1024]))
            .await
            .unwrap();
        std::mem::forget(writer);
        let instances = dir.path().join("instances");
        // The parts already handed to the backend are written by tasks that
        // outlive the forgotten writer; a file still being written is younger
        // than any cutoff, so wait until nothing changes it any more.
        let staging_file = std::fs::read_dir(&instances)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains('#'))
            .expect("the backend stages uploads in files");
        let mut last = None;
        loop {
            let meta = std::fs::metadata(&staging_file).unwrap();
            let now = Some((meta.len(), meta.modified().unwrap()));
            if now == last {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let staged = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains('#')
                })
                .count()
        };
        assert_eq!(staged(&instances), 1, "the backend stages uploads in files");
        std::fs::write(instances.join("notes#1"), b"not ours").unwrap();
        assert_eq!(
            store
                .remove_stale_uploads(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "younger than the grace"
        );
        assert_eq!(store.remove_stale_uploads(Duration::ZERO).await.unwrap(), 1);
        assert_eq!(staged(&instances), 1, "only notes#1, which is not ours");
        assert_eq!(store.read_all(&done).await.unwrap(), &b"kept"[..]);
    }

    #[tokio::test]
    async fn detached_deletions_are_finished_once_no_upload_is_left() {
        let store = BlobStore::with_backend(
            Arc::new(InMemory::new()),
            options(),
            "memory",
            keyring(),
            "default",
        );
        let key = BlobKey::new(BlobKind::Instance);
        let mut writer = store.writer(key.clone()).await.unwrap();
        writer.write(Bytes::from_static(b"x")).await.unwrap();
        writer.finish().await.unwrap();
        let guard = store.upload_guard();
        // A drop guard running where no runtime is left: nothing is spawned.
        let detached = store.clone();
        let deleted = key.clone();
        std::thread::spawn(move || detached.delete_detached(vec![deleted]))
            .join()
            .unwrap();
        assert!(store.read_all(&key).await.is_ok());
        // An upload still in progress may yet commit: nothing is deleted.
        assert_eq!(store.finish_detached(Duration::ZERO).await, 0);
        drop(guard);
        assert_eq!(store.finish_detached(Duration::ZERO).await, 1);
        assert!(matches!(
            store.read_all(&key).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.finish_detached(Duration::ZERO).await, 0);
    }

    #[test]
    fn keys_are_opaque_and_validated() {
        let key = BlobKey::new(BlobKind::Instance);
        assert!(key.as_str().starts_with("instances/"));
        assert_eq!(BlobKey::parse(key.as_str()).unwrap(), key);
        assert!(BlobKey::parse("instances/../etc/passwd").is_err());
        assert!(BlobKey::parse("1.2.840.1/abc").is_err());
        assert!(matches!(
            backend_from_url("ftp://x/y", &[], retries()),
            Err(StoreError::UnsupportedUrl(_))
        ));
        assert!(matches!(
            backend_from_url("file://relative", &[], retries()),
            Err(StoreError::UnsupportedUrl(_))
        ));
    }

    /// An object store that counts the bytes reads return.
    mod async_trait_free {
        use super::*;
        use futures_util::stream::BoxStream;
        use object_store::{
            GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions, PutOptions,
            PutPayload, PutResult,
        };

        #[derive(Debug)]
        pub struct CountingStore {
            pub inner: Arc<dyn ObjectStore>,
            pub fetched: AtomicU64,
        }

        impl std::fmt::Display for CountingStore {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "CountingStore")
            }
        }

        #[async_trait::async_trait]
        impl ObjectStore for CountingStore {
            async fn put_opts(
                &self,
                location: &ObjectPath,
                payload: PutPayload,
                opts: PutOptions,
            ) -> object_store::Result<PutResult> {
                self.inner.put_opts(location, payload, opts).await
            }
            async fn put_multipart_opts(
                &self,
                location: &ObjectPath,
                opts: PutMultipartOptions,
            ) -> object_store::Result<Box<dyn MultipartUpload>> {
                self.inner.put_multipart_opts(location, opts).await
            }
            async fn get_opts(
                &self,
                location: &ObjectPath,
                options: GetOptions,
            ) -> object_store::Result<GetResult> {
                let result = self.inner.get_opts(location, options).await?;
                self.fetched
                    .fetch_add(result.range.end - result.range.start, Ordering::SeqCst);
                Ok(result)
            }
            async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
                self.inner.delete(location).await
            }
            fn list(
                &self,
                prefix: Option<&ObjectPath>,
            ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
                self.inner.list(prefix)
            }
            async fn list_with_delimiter(
                &self,
                prefix: Option<&ObjectPath>,
            ) -> object_store::Result<ListResult> {
                self.inner.list_with_delimiter(prefix).await
            }
            async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
                self.inner.copy(from, to).await
            }
            async fn copy_if_not_exists(
                &self,
                from: &ObjectPath,
                to: &ObjectPath,
            ) -> object_store::Result<()> {
                self.inner.copy_if_not_exists(from, to).await
            }
        }
    }
}
