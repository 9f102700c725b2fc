//! Moving objects between stores (issue 15): a byte-for-byte copy, since the
//! encryption binds the object's uuid (which the copy keeps) and not its store,
//! and a full read that checks the copy decrypts before anything points at it.

use futures_util::StreamExt;
use object_store::WriteMultipart;

use super::{BlobKey, BlobStore, StoreError};
use crate::telemetry::metrics::StoreTimer;

impl BlobStore {
    /// Copies the object `from` to `to` (the same object in another store),
    /// streaming, with `to`'s store's storage class. Returns the bytes copied.
    #[tracing::instrument(name = "store.copy", skip_all)]
    pub async fn copy_object(&self, from: &BlobKey, to: &BlobKey) -> Result<u64, StoreError> {
        let _timer = StoreTimer::start("copy", &self.description);
        if from.path() != to.path() {
            return Err(StoreError::InvalidKey(format!("{from} -> {to}")));
        }
        let source = self.backend(from)?.get(&from.path()).await?;
        let upload = self
            .backend(to)?
            .put_multipart_opts(&to.path(), self.put_options(to))
            .await?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, self.options.part_bytes);
        let mut stream = source.into_stream();
        let mut copied = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    upload
                        .wait_for_capacity(self.options.concurrency.max(1))
                        .await?;
                    copied += chunk.len() as u64;
                    upload.put(chunk);
                }
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e.into());
                }
            }
        }
        upload.finish().await?;
        self.sync_local(to).await?;
        Ok(copied)
    }

    /// Moves the object `from` to the store of `to` that shares its place (a
    /// tier of the same bucket prefix): S3 changes the object's storage class
    /// in place, the bytes unchanged (an object above 5 GiB is rewritten by a
    /// streamed upload). Checks the object keeps its size; returns it.
    #[tracing::instrument(name = "store.move_in_place", skip_all)]
    pub async fn move_in_place(&self, from: &BlobKey, to: &BlobKey) -> Result<u64, StoreError> {
        let _timer = StoreTimer::start("move_in_place", &self.description);
        if !self.same_object(from, to) {
            return Err(StoreError::InvalidKey(format!("{from} -> {to}")));
        }
        let size = self.stored_size(from).await?;
        let s3 = [to.store(), from.store()]
            .into_iter()
            .flatten()
            .find_map(|store| self.named.get(store).and_then(|n| n.s3.clone()))
            .ok_or_else(|| StoreError::InvalidKey(format!("{from} -> {to}")))?;
        let class = to
            .store()
            .and_then(|store| self.named.get(store))
            .and_then(|named| named.storage_class.clone())
            .unwrap_or_else(|| "STANDARD".into());
        if size > super::archive::MAX_COPY_IN_PLACE {
            self.copy_object(from, to).await?;
        } else {
            s3.copy_in_place(&to.path(), &class).await?;
        }
        if self.stored_size(to).await? != size {
            self.incident(to, "the object changed size when its class changed");
            return Err(StoreError::Integrity(
                "the object changed size when its storage class changed",
            ));
        }
        Ok(size)
    }

    /// The size of `key`'s object as stored (a HEAD: works in offline tiers).
    #[tracing::instrument(name = "store.stored_size", skip_all)]
    pub async fn stored_size(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let _timer = StoreTimer::start("stored_size", &self.description);
        Ok(self.backend(key)?.head(&key.path()).await?.size)
    }

    /// Reads the object whole, decrypting and authenticating every segment;
    /// returns its plaintext length. What a move checks before the index
    /// points at the copy.
    #[tracing::instrument(name = "store.check", skip_all)]
    pub async fn check_decrypts(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let mut stream = self.read_stream(key).await?;
        let mut length = 0u64;
        while let Some(chunk) = stream.next().await {
            length += chunk?.len() as u64;
        }
        Ok(length)
    }
}
