//! The read path: opening an object (header, key unwrap, layout) and decrypting it
//! whole, as a stream of segments, or by byte range fetching only the segments needed.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange};

use super::header_cache::KnownHeader;
use super::{BlobKey, BlobStore, StoreError};
use crate::crypto::format::{Header, Layout, Opener, MAX_HEADER_LEN};
use crate::crypto::{keys, CryptoError, KeyId, SecretKey};
use crate::telemetry::metrics::{self, StoreTimer};

/// An object opened for reading: its layout and the means to decrypt it.
struct Opened {
    opener: Opener,
    layout: Layout,
}

impl BlobStore {
    /// An object's header, checked, and its data key unwrapped: from the header
    /// cache when the object was read recently (no request), else fetched.
    /// `true` with a cached header, which may be stale (see `read_range`).
    async fn open(&self, key: &BlobKey) -> Result<(Opened, bool), StoreError> {
        if let Some(known) = self.headers.get(key) {
            match self.opened(key, &known.header, known.total).await {
                Ok(opened) => return Ok((opened, true)),
                // Named a key since retired (the object was re-wrapped): fetch it.
                Err(_) => self.headers.forget(key),
            }
        }
        let (header, total, _) = self.fetch_header(key, 0).await?;
        let opened = self.opened(key, &header, total).await?;
        self.headers.insert(key, KnownHeader { header, total });
        Ok((opened, false))
    }

    /// Checks that `header` is this object's and unwraps its data key.
    async fn opened(
        &self,
        key: &BlobKey,
        header: &Header,
        total: u64,
    ) -> Result<Opened, StoreError> {
        if header.object_id != key.object_id() {
            self.incident(key, "the object belongs to another name (swapped)");
            return Err(StoreError::Integrity("the object belongs to another name"));
        }
        let data_key = self
            .unwrap_data_key(
                key,
                header,
                "the data key does not unwrap (header modified)",
            )
            .await?;
        let layout = Layout::from_ciphertext_len(header.len() as u64, header.segment_size, total)?;
        Ok(Opened {
            opener: Opener::new(&data_key, header.object_id, layout),
            layout,
        })
    }

    /// The data key `header` wraps, unwrapped by the tenant key it names; one
    /// that does not unwrap (the header was modified) is an incident, `what`.
    pub(super) async fn unwrap_data_key(
        &self,
        key: &BlobKey,
        header: &Header,
        what: &str,
    ) -> Result<SecretKey, StoreError> {
        let key_id = KeyId::parse(&header.key_id)?;
        let tenant = key_id.tenant.clone();
        let tenant_key =
            super::with_keys(&self.keys, &tenant, move |keys| keys.key(&key_id)).await?;
        let prefix =
            Header::authenticated_prefix(header.segment_size, &header.object_id, &header.key_id);
        Ok(keys::unwrap(&tenant_key, &header.wrapped_data_key, &prefix)
            .inspect_err(|_| self.incident(key, what))?)
    }

    pub(super) fn incident(&self, key: &BlobKey, what: &str) {
        tracing::error!(blob = %key, incident = what, "blob integrity incident");
    }

    pub(super) fn checked<T>(
        &self,
        key: &BlobKey,
        result: Result<T, CryptoError>,
    ) -> Result<T, StoreError> {
        result.map_err(|e| {
            if let CryptoError::Integrity(what) = &e {
                self.incident(key, what);
            }
            StoreError::from(e)
        })
    }

    /// Reads the first `prefetch` bytes (at least the header) in one request and
    /// decodes the header; returns it, the object's total size and the bytes read.
    pub(super) async fn fetch_header(
        &self,
        key: &BlobKey,
        prefetch: u64,
    ) -> Result<(Header, u64, Bytes), StoreError> {
        // Ranges past the end are clamped by every backend, so small objects are fine.
        let range = GetRange::Bounded(0..prefetch.max(MAX_HEADER_LEN as u64));
        let result = self
            .backend(key)?
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
        Ok(self.open(key).await?.0.layout.plaintext_len)
    }

    /// The whole blob, decrypted, as a stream of segments: one request, the
    /// header first.
    #[tracing::instrument(name = "store.read_stream", skip_all)]
    pub async fn read_stream(
        &self,
        key: &BlobKey,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let _timer = StoreTimer::start("read_stream", &self.description);
        let (total, body) = self.ciphertext_stream(key).await?;
        self.decrypted(key, total, body).await
    }

    /// Whether [`BlobStore::read_small_objects`] reads `key`'s object together
    /// with others (it lies in a `file://` store); elsewhere each is one
    /// request anyway, and a caller opens them one by one.
    pub fn reads_together(&self, key: &BlobKey) -> bool {
        self.local_file(key).is_some()
    }

    /// Several objects whole, in order, for a caller that knows them small
    /// (the instances of a study, from their sizes in the index): the objects
    /// of `file://` stores are read in one blocking call — one hand-off to the
    /// blocking pool for all of them, not one each — and held until their
    /// streams are read; a file larger than [`SMALL_OBJECT`] (its size was not
    /// what the caller thought) is streamed as by [`BlobStore::read_stream`].
    /// Objects elsewhere are opened one request each, concurrently.
    #[tracing::instrument(name = "store.read_small_objects", skip_all)]
    pub async fn read_small_objects(
        &self,
        keys: &[BlobKey],
    ) -> Vec<Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>> {
        let _timer = StoreTimer::start("read_small_objects", &self.description);
        let paths: Option<Vec<std::path::PathBuf>> =
            keys.iter().map(|key| self.local_file(key)).collect();
        let Some(paths) = paths else {
            return futures_util::future::join_all(keys.iter().map(|key| self.read_stream(key)))
                .await;
        };
        let files = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|path| read_small_file(path))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(files) = files else {
            let failed = || StoreError::Io(std::io::Error::other("the blocking read failed"));
            return keys.iter().map(|_| Err(failed())).collect();
        };
        let mut opened = Vec::with_capacity(keys.len());
        for (key, file) in keys.iter().zip(files) {
            opened.push(match file {
                Ok(Some(bytes)) => {
                    let total = bytes.len() as u64;
                    let body = futures_util::stream::once(async move { Ok(bytes) }).boxed();
                    self.decrypted(key, total, body).await
                }
                Ok(None) => self.read_stream(key).await,
                Err(error) => Err(error),
            });
        }
        opened
    }

    /// The plaintext of an object from its stored bytes (`total` of them, in
    /// `body`): the header is checked and its data key unwrapped first, then
    /// each segment is decrypted as the stream is read.
    async fn decrypted(
        &self,
        key: &BlobKey,
        total: u64,
        mut body: BoxStream<'static, Result<Bytes, StoreError>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let mut buffer = BytesMut::new();
        let header = loop {
            if let Some(header) = Header::decode(&buffer)? {
                break header;
            }
            match body.next().await {
                Some(chunk) if buffer.is_empty() => buffer = BytesMut::from(chunk?),
                Some(chunk) => buffer.extend_from_slice(&chunk?),
                None => return Err(StoreError::Integrity("the object header is truncated")),
            }
        };
        let opened = self.opened(key, &header, total).await?;
        let _ = buffer.split_to(header.len());
        self.headers.insert(key, KnownHeader { header, total });
        let layout = opened.layout;
        let sealed_len = (layout.segment_size + crate::crypto::format::TAG_LEN) as usize;
        let body_len = (total - layout.header_len) as usize;
        let last_len = body_len - (layout.segments as usize - 1) * sealed_len;
        let store = self.clone();
        let key = key.clone();
        let state = (body, buffer, 0u64, opened.opener);
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
                            Some(chunk) if buffer.is_empty() => buffer = BytesMut::from(chunk?),
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

    /// A whole object as stored, and its size. A file of a `file://` store is
    /// read here in large chunks, one blocking call each (the first also opens
    /// it): object_store's file backend reads 8 KiB per blocking call, five
    /// for an instance of 9 KB, which made a whole-study retrieval of small
    /// instances cost more in thread hand-offs than in decryption.
    async fn ciphertext_stream(
        &self,
        key: &BlobKey,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, StoreError>>), StoreError> {
        if let Some(path) = self.local_file(key) {
            return local_chunks(path).await;
        }
        let result = self
            .backend(key)?
            .get_opts(&key.path(), GetOptions::default())
            .await?;
        let total = result.meta.size;
        Ok((
            total,
            result.into_stream().map_err(StoreError::from).boxed(),
        ))
    }

    /// One byte range of a blob's plaintext; only the segments it touches are
    /// fetched from the backend (after the header, unless it is cached).
    #[tracing::instrument(name = "store.read_range", skip_all)]
    pub async fn read_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let _timer = StoreTimer::start("read_range", &self.description);
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        let (opened, cached) = self.open(key).await?;
        match self.read_opened_range(key, &opened, &range, !cached).await {
            Err(error) if cached && !matches!(error, StoreError::NotFound) => {
                // The cached header may be stale: a rotation re-wrapped the
                // object since (its header can change length). Once more, fresh.
                self.headers.forget(key);
                let (opened, _) = self.open(key).await?;
                self.read_opened_range(key, &opened, &range, true).await
            }
            result => result,
        }
    }

    /// The plaintext `range` of an opened object; integrity failures are
    /// reported as incidents when `report`.
    async fn read_opened_range(
        &self,
        key: &BlobKey,
        opened: &Opened,
        range: &Range<u64>,
        report: bool,
    ) -> Result<Bytes, StoreError> {
        let layout = opened.layout;
        if range.end > layout.plaintext_len || range.start > range.end {
            return Err(StoreError::OutOfRange {
                start: range.start,
                end: range.end,
                len: layout.plaintext_len,
            });
        }
        let segments = layout.segments_for(range);
        let sealed = self
            .backend(key)?
            .get_range(&key.path(), layout.ciphertext_range(&segments))
            .await?;
        let plain = opened.opener.open(segments.start, &sealed);
        let plain = if report {
            self.checked(key, plain)?
        } else {
            plain?
        };
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
}

/// Bytes read from a local file per blocking call: four sealed segments, so a
/// typical instance is one read, and what a stream holds ahead stays small.
const LOCAL_READ_CHUNK: usize =
    4 * (crate::crypto::format::SEGMENT_SIZE as usize + crate::crypto::format::TAG_LEN as usize);

/// A local object's size and its bytes in chunks of [`LOCAL_READ_CHUNK`]
/// (fewer at the end), read on the blocking pool. A missing file is `NotFound`,
/// as object_store says it.
async fn local_chunks(
    path: std::path::PathBuf,
) -> Result<(u64, BoxStream<'static, Result<Bytes, StoreError>>), StoreError> {
    let (file, total, first) = tokio::task::spawn_blocking(move || {
        let mut file = match std::fs::File::open(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound)
            }
            opened => opened?,
        };
        let total = file.metadata()?.len();
        let first = read_chunk(&mut file, total)?;
        Ok((file, total, first))
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
    let left = total - first.len() as u64;
    let rest = futures_util::stream::try_unfold((file, left), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = read_chunk(&mut file, left)?;
            Ok::<_, StoreError>((file, chunk))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        let left = left - chunk.len() as u64;
        Ok(Some((chunk, (file, left))))
    });
    let first = futures_util::stream::once(async move { Ok(first) });
    Ok((total, first.chain(rest).boxed()))
}

/// The largest object [`BlobStore::read_small_objects`] holds whole (as stored,
/// header and tags included); a caller groups instances whose plaintext is at
/// most [`SMALL_PLAINTEXT`].
const SMALL_OBJECT: u64 = 2 * LOCAL_READ_CHUNK as u64;

/// The largest plaintext a caller of [`BlobStore::read_small_objects`] should
/// take for small: its object stays well under [`SMALL_OBJECT`].
pub const SMALL_PLAINTEXT: u64 = LOCAL_READ_CHUNK as u64;

/// A whole file when it is at most [`SMALL_OBJECT`] long, `None` when longer.
fn read_small_file(path: &std::path::Path) -> Result<Option<Bytes>, StoreError> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound)
        }
        opened => opened?,
    };
    let length = file.metadata()?.len();
    if length > SMALL_OBJECT {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(length as usize);
    file.by_ref().take(length).read_to_end(&mut bytes)?;
    Ok(Some(Bytes::from(bytes)))
}

/// The next chunk of a file with `left` bytes still to read; a file shorter
/// than it was is an error (the decryption would find it truncated anyway).
fn read_chunk(file: &mut std::fs::File, left: u64) -> Result<Bytes, StoreError> {
    use std::io::Read;
    let want = left.min(LOCAL_READ_CHUNK as u64) as usize;
    let mut chunk = vec![0; want];
    file.read_exact(&mut chunk)?;
    Ok(Bytes::from(chunk))
}
