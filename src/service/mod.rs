//! The pipelines behind the DICOMweb transactions: store (validate → write blob →
//! index), search, retrieve. No HTTP here: handlers call these with typed inputs.

pub mod delete;
pub mod derived;
pub mod qido;
pub mod render;
pub mod stow;
pub mod tenants;
pub mod wado;

use std::sync::Arc;
use std::time::Duration;

use crate::dicom::DicomError;
use crate::index::{Index, IndexError};
use crate::store::{BlobStore, StoreError};

/// Settings the pipelines need.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub max_header_bytes: usize,
    pub overwrite_existing: bool,
    pub qido_max_results: u64,
    pub orphan_grace: Duration,
    pub limits: crate::config::LimitsConfig,
    /// Decoded pixel bytes in flight across every rendering and transcoding.
    pub decoding: DecodingBudget,
}

/// A byte budget shared by every decoding in flight (rendering, transcoding):
/// a request that would take it past the configured total is refused with 503
/// rather than queued, so concurrent large decodes cannot exhaust memory.
#[derive(Debug, Clone)]
pub struct DecodingBudget {
    available: Arc<std::sync::atomic::AtomicU64>,
    total: u64,
    retry_after_secs: u64,
}

/// Bytes taken from a [`DecodingBudget`], given back when dropped.
#[derive(Debug)]
pub struct DecodingPermit {
    available: Arc<std::sync::atomic::AtomicU64>,
    bytes: u64,
}

impl DecodingBudget {
    pub fn new(total: u64, retry_after_secs: u64) -> Self {
        Self {
            available: Arc::new(std::sync::atomic::AtomicU64::new(total)),
            total,
            retry_after_secs,
        }
    }

    /// Takes `bytes`, or says the server is busy.
    pub fn take(&self, bytes: u64) -> Result<DecodingPermit, ServiceError> {
        use std::sync::atomic::Ordering;
        if bytes > self.total {
            return Err(ServiceError::TooLarge(format!(
                "decoding this needs {bytes} bytes; the server decodes at most {} at once",
                self.total
            )));
        }
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .map_err(|_| ServiceError::Busy {
                retry_after_secs: self.retry_after_secs,
            })?;
        Ok(DecodingPermit {
            available: self.available.clone(),
            bytes,
        })
    }
}

impl Drop for DecodingPermit {
    fn drop(&mut self) {
        self.available
            .fetch_add(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What every pipeline works with; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    pub index: Index,
    pub store: BlobStore,
    pub settings: Arc<ServiceSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// It existed and was deleted (PS3.18 §8.5: 410 Gone).
    #[error("{0} was deleted")]
    Gone(&'static str),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error("the requested representation cannot be produced: {0}")]
    NotAcceptable(String),
    #[error("background task failed: {0}")]
    Task(String),
    /// The request asks for more than a configured limit allows (400).
    #[error("{0}")]
    TooLarge(String),
    /// A shared budget (decoding memory) is spent: try again later (503).
    #[error("the server is busy; try again later")]
    Busy { retry_after_secs: u64 },
    /// The tenant exists but is disabled.
    #[error("this tenant is disabled")]
    TenantDisabled,
}

/// A failure of a backend rather than of the request, which the HTTP layer
/// answers with 503 (retry later) or 507.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The named backend ("index", "blob store") cannot be reached, lost the
    /// connection or did not answer in time.
    Unavailable(&'static str),
    /// No space left where the request's data would go.
    Full,
}

impl ServiceError {
    /// Whether this is a backend outage rather than a fault of the request.
    pub fn outage(&self) -> Option<Outage> {
        match self {
            ServiceError::Index(e) if e.is_full() => Some(Outage::Full),
            ServiceError::Store(e) if e.is_full() => Some(Outage::Full),
            ServiceError::Index(e) if e.is_unavailable() => Some(Outage::Unavailable("index")),
            ServiceError::Store(e) if e.is_unavailable() => Some(Outage::Unavailable("blob store")),
            _ => None,
        }
    }
}

impl Services {
    /// Runs blocking index work on the blocking pool.
    pub async fn with_index<T, F>(&self, work: F) -> Result<T, ServiceError>
    where
        F: FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
        T: Send + 'static,
    {
        let index = self.index.clone();
        // The blocking thread continues the caller's span: index spans are the
        // request's children.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&index)))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))?
            .map_err(ServiceError::from)
    }
}
