//! The store's one error type, and how backend and crypto failures map onto it
//! (outage, full disk, tampering, shredded key).

use crate::crypto::CryptoError;

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
    /// The holder of the tenant's key-encryption key (HSM, KMS) cannot be reached.
    #[error("the key provider is unavailable: {0}")]
    KeyUnavailable(String),
    /// The holder of the tenant's key-encryption key refuses it or destroyed it.
    #[error("the key was revoked by its holder: {0}")]
    KeyRevoked(String),
    #[error("key error: {0}")]
    Key(CryptoError),
    #[error("range {start}..{end} outside the blob's {len} bytes")]
    OutOfRange { start: u64, end: u64, len: u64 },
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    /// A key names a store the configuration no longer declares.
    #[error("blob store {0:?} is not configured (storage.stores)")]
    UnknownStore(String),
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
    /// The object is in an offline tier (S3 Glacier Flexible Retrieval, Deep
    /// Archive) and was not restored: it cannot be read until it is.
    #[error("the object is in an offline archive tier and must be restored first")]
    Archived,
    #[error("blob store I/O failure: {0}")]
    Io(#[from] std::io::Error),
}

impl From<CryptoError> for StoreError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Integrity(what) => StoreError::Integrity(what),
            CryptoError::Format(what) => StoreError::Integrity(what),
            CryptoError::Shredded(_) => StoreError::Shredded,
            CryptoError::Unavailable(why) => StoreError::KeyUnavailable(why),
            CryptoError::Revoked(why) => StoreError::KeyRevoked(why),
            other => StoreError::Key(other),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        if let object_store::Error::NotFound { .. } = e {
            return StoreError::NotFound;
        }
        // S3 answers a read of an object in an archive class that was not
        // restored with 403 InvalidObjectState; Azure a read of a blob in the
        // Archive tier with 409 BlobArchived.
        let archived = match &e {
            object_store::Error::PermissionDenied { .. } => {
                e.to_string().contains("InvalidObjectState")
            }
            object_store::Error::AlreadyExists { .. } => e.to_string().contains("BlobArchived"),
            _ => false,
        };
        if archived {
            return StoreError::Archived;
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
