//! The write path: sealing a new object's header, the streaming encrypted
//! [`BlobWriter`], and re-wrapping an object's data key after a key rotation.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, WriteMultipart};

use super::{BlobKey, BlobStore, StoreError};
use crate::crypto::format::{Header, Sealer, SEGMENT_SIZE};
use crate::crypto::{keys, KeyId, SecretKey};
use crate::telemetry::metrics::{self, StoreTimer};

/// Tuning of blob writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Bytes per multipart part; bounds the memory one upload holds.
    pub part_bytes: usize,
    /// Parts uploaded concurrently per blob.
    pub concurrency: usize,
}

impl BlobStore {
    /// Starts a streamed, encrypted upload. Dropping the writer without `finish`
    /// aborts it.
    pub async fn writer(&self, key: BlobKey) -> Result<BlobWriter, StoreError> {
        // One span and one duration for the whole upload, until finish or abort.
        let span = tracing::info_span!("store.write");
        let timer = StoreTimer::start("write", &self.description);
        let tenant = self.tenant.clone();
        let (key_id, tenant_key) =
            super::with_keys(&self.keys, &self.tenant, move |keys| keys.active(&tenant)).await?;
        let data_key = SecretKey::generate()?;
        let object_id = key.object_id();
        let header = seal_header(&tenant_key, &data_key, &key_id, object_id)?;
        let upload = self
            .backend(&key)?
            .put_multipart_opts(&key.path(), self.put_options(&key))
            .await?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, self.options.part_bytes);
        upload.put(Bytes::from(header));
        // object_store's file backend writes and renames but never syncs.
        let synced_file = if key.is_instance() {
            self.local_file(&key)
        } else {
            None
        };
        Ok(BlobWriter {
            synced_file,
            _span: span,
            timer,
            upload: Some(upload),
            sealer: Some(Sealer::new(&data_key, object_id, SEGMENT_SIZE)),
            concurrency: self.options.concurrency.max(1),
            key,
            written: 0,
        })
    }

    /// Re-wraps an object's data key under the tenant's active key: a new header on
    /// the same ciphertext segments (nothing is re-encrypted). Returns false if the
    /// object already uses the active key.
    #[tracing::instrument(name = "store.rewrap", skip_all)]
    pub async fn rewrap(&self, key: &BlobKey) -> Result<bool, StoreError> {
        let _timer = StoreTimer::start("rewrap", &self.description);
        let (header, _, _) = self.fetch_header(key, 0).await?;
        let old_id = KeyId::parse(&header.key_id)?;
        let tenant = self.tenant.clone();
        let (active_id, active_key) =
            super::with_keys(&self.keys, &self.tenant, move |keys| keys.active(&tenant)).await?;
        if old_id == active_id || old_id.tenant != self.tenant {
            return Ok(false);
        }
        let id = old_id.clone();
        let old_key =
            super::with_keys(&self.keys, &old_id.tenant, move |keys| keys.key(&id)).await?;
        let prefix =
            Header::authenticated_prefix(header.segment_size, &header.object_id, &header.key_id);
        let data_key = self.checked(
            key,
            keys::unwrap(&old_key, &header.wrapped_data_key, &prefix),
        )?;
        let new_header = seal_header(&active_key, &data_key, &active_id, header.object_id)?;
        // Stream the segments unchanged behind the new header.
        let body = self
            .backend(key)?
            .get_opts(
                &key.path(),
                GetOptions {
                    range: Some(GetRange::Offset(header.len() as u64)),
                    ..Default::default()
                },
            )
            .await?;
        let upload = self
            .backend(key)?
            .put_multipart_opts(&key.path(), self.put_options(key))
            .await?;
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
        self.sync_local(key).await?;
        self.headers.forget(key);
        Ok(true)
    }
}

/// The header of a new object: the data key wrapped by the tenant key, bound to
/// everything before it.
pub(super) fn seal_header(
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
    /// Where an instance written to the file store lands: synced (its data,
    /// then its directory's entry) before `finish` returns, so that an
    /// acknowledged instance survives a power cut, not only a crash of the
    /// process. Derived objects are not: they are rebuilt when missing.
    synced_file: Option<std::path::PathBuf>,
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
        let (Some(sealer), Some(upload)) = (self.sealer.as_mut(), self.upload.as_mut()) else {
            return Err(StoreError::Io(std::io::Error::other(
                "blob writer used after finish",
            )));
        };
        self.written += chunk.len() as u64;
        metrics::sealed(self.timer.backend(), chunk.len() as u64);
        // Encrypt in place when we own the only reference to the chunk.
        let owned = chunk
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let pieces = sealer.push_owned(owned);
        for piece in pieces {
            upload.wait_for_capacity(self.concurrency).await?;
            upload.put(piece);
        }
        Ok(())
    }

    /// Completes the upload; the blob is durable when this returns. Returns the
    /// plaintext size.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        let (Some(mut upload), Some(sealer)) = (self.upload.take(), self.sealer.take()) else {
            return Err(StoreError::Io(std::io::Error::other(
                "blob writer finished twice",
            )));
        };
        for piece in sealer.finish() {
            upload.put(piece);
        }
        upload.finish().await?;
        if let Some(path) = self.synced_file.take() {
            sync_file_and_entry(path).await?;
        }
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

impl BlobStore {
    /// Where `key`'s object lies when its store is a `file://` one.
    pub(super) fn local_file(&self, key: &BlobKey) -> Option<std::path::PathBuf> {
        let dir = match key.store() {
            None => self.local_dir.clone()?,
            Some(store) => {
                std::path::PathBuf::from(self.named.get(store)?.place.strip_prefix("file://")?)
            }
        };
        Some(dir.join(key.path().as_ref()))
    }

    /// Syncs `key`'s object and its directory entry when it is a file: after
    /// object_store's file backend wrote it (it renames without syncing).
    pub(super) async fn sync_local(&self, key: &BlobKey) -> Result<(), StoreError> {
        match self.local_file(key) {
            Some(path) => sync_file_and_entry(path).await,
            None => Ok(()),
        }
    }
}

/// Makes a renamed file durable: its data, then the directory entry the rename
/// made (without the latter a power cut can undo the rename).
/// Blocking calls, on the blocking pool.
async fn sync_file_and_entry(path: std::path::PathBuf) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path)?.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(())
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
