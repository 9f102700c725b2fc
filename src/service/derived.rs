//! Derived objects: what Kastell computes from stored instances and keeps to
//! answer faster (per-series metadata JSON, thumbnails). They live in the blob
//! store like everything else (encrypted, opaque names) and are recorded in the
//! index with the etag of their sources; a stale one is rebuilt and replaced.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{ServiceError, Services};
use crate::store::{BlobKey, BlobKind, StoreError};

/// The derived object `(scope_uid, kind, variant)` if it is current for `etag`.
async fn current_key(
    services: &Services,
    scope_uid: &str,
    kind: &'static str,
    variant: &str,
    etag: &str,
) -> Result<Option<BlobKey>, ServiceError> {
    let (uid, variant_owned) = (scope_uid.to_string(), variant.to_string());
    let found = services
        .with_index(move |index| index.derived(&uid, kind, &variant_owned))
        .await?;
    Ok(match found {
        Some((source_etag, key)) if source_etag == etag => Some(BlobKey::parse(&key)?),
        _ => None,
    })
}

/// Whether the derived object `(scope_uid, kind, variant)` is current for `etag`.
pub async fn is_current(
    services: &Services,
    scope_uid: &str,
    kind: &'static str,
    variant: &str,
    etag: &str,
) -> Result<bool, ServiceError> {
    Ok(current_key(services, scope_uid, kind, variant, etag)
        .await?
        .is_some())
}

/// Reads a current derived object whole (small ones: thumbnails).
pub async fn read(
    services: &Services,
    scope_uid: &str,
    kind: &'static str,
    variant: &str,
    etag: &str,
) -> Result<Option<Bytes>, ServiceError> {
    let Some(key) = current_key(services, scope_uid, kind, variant, etag).await? else {
        return Ok(None);
    };
    match services.store.read_all(&key).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) => Ok(unreadable(&key, error)),
    }
}

/// Opens a current derived object as a stream (large ones: series metadata). The
/// first segment is decrypted before returning, so damage shows as an error here.
pub async fn open(
    services: &Services,
    scope_uid: &str,
    kind: &'static str,
    variant: &str,
    etag: &str,
) -> Result<Option<BoxStream<'static, Result<Bytes, StoreError>>>, ServiceError> {
    let Some(key) = current_key(services, scope_uid, kind, variant, etag).await? else {
        return Ok(None);
    };
    let mut body = match services.store.read_stream(&key).await {
        Ok(body) => body,
        Err(error) => return Ok(unreadable(&key, error)),
    };
    match body.next().await {
        Some(Ok(first)) => Ok(Some(
            futures_util::stream::once(async move { Ok(first) })
                .chain(body)
                .boxed(),
        )),
        Some(Err(error)) => Ok(unreadable(&key, error)),
        None => Ok(Some(futures_util::stream::empty().boxed())),
    }
}

/// A derived object that cannot be read is rebuilt from its sources: replaced or
/// removed meanwhile, sealed with a tenant key since retired, or damaged (which
/// is logged, as for any object that fails its integrity check).
fn unreadable<T>(key: &BlobKey, error: StoreError) -> Option<T> {
    match error {
        StoreError::NotFound => {}
        StoreError::Integrity(_) => {
            tracing::error!(blob = %key, %error, "a derived object failed its integrity check; rebuilding it")
        }
        other => {
            tracing::warn!(blob = %key, error = %other, "a derived object is unreadable; rebuilding it")
        }
    }
    None
}

/// Writes a derived object from `body` and records it, removing the one it
/// replaces. An error in `body` abandons the object.
pub async fn write(
    services: &Services,
    scope_uid: &str,
    kind: &'static str,
    variant: &str,
    etag: &str,
    mut body: BoxStream<'static, Result<Bytes, ServiceError>>,
) -> Result<(), ServiceError> {
    let key = BlobKey::new(BlobKind::Derived);
    let mut writer = services.store.writer(key.clone()).await?;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                if let Err(error) = writer.write(chunk).await {
                    writer.abort().await;
                    return Err(error.into());
                }
            }
            Err(error) => {
                writer.abort().await;
                return Err(error);
            }
        }
    }
    writer.finish().await?;
    let (uid, variant, etag, name) = (
        scope_uid.to_string(),
        variant.to_string(),
        etag.to_string(),
        key.as_str().to_string(),
    );
    let replaced = services
        .with_index(move |index| index.record_derived(&uid, kind, &variant, &etag, &name))
        .await;
    let replaced = match replaced {
        Ok(replaced) => replaced,
        Err(error) => {
            let _ = services.store.delete(&key).await;
            return Err(error);
        }
    };
    if let Some(old) = replaced {
        if let Ok(old) = BlobKey::parse(&old) {
            if let Err(error) = services.store.delete(&old).await {
                tracing::warn!(blob = %old, %error, "a replaced derived object could not be removed");
            }
        }
    }
    Ok(())
}

/// A copy of a response body on its way out, written as a derived object once the
/// body has been sent completely (a client that leaves early leaves nothing).
pub struct Tee {
    sender: Option<mpsc::Sender<Option<Bytes>>>,
}

impl Tee {
    /// Starts the background writer.
    pub fn spawn(
        services: Services,
        scope_uid: String,
        kind: &'static str,
        variant: String,
        etag: String,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Option<Bytes>>(64);
        // `None` marks the end; a channel closed without it (the response was
        // dropped half way) abandons the object.
        let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Some(Some(chunk)) => Some((Ok(chunk), receiver)),
                Some(None) => None,
                None => Some((
                    Err(ServiceError::Task(
                        "the response was not sent completely".into(),
                    )),
                    receiver,
                )),
            }
        })
        .boxed();
        tokio::spawn(async move {
            if let Err(error) = write(&services, &scope_uid, kind, &variant, &etag, body).await {
                tracing::debug!(%error, kind, "derived object not kept");
            }
        });
        Self {
            sender: Some(sender),
        }
    }

    /// Copies a chunk (waiting if the writer is behind).
    pub async fn copy(&mut self, chunk: &Bytes) {
        if let Some(sender) = &self.sender {
            if sender.send(Some(chunk.clone())).await.is_err() {
                self.sender = None; // the writer gave up
            }
        }
    }

    /// The body was sent completely.
    pub async fn finish(mut self) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(None).await;
        }
    }
}
