//! The pipelines behind the DICOMweb transactions: store (validate → write blob →
//! index), search, retrieve. No HTTP here: handlers call these with typed inputs.

mod error;

pub mod deid;
pub mod delete;
pub mod derived;
pub mod events;
pub mod lifecycle;
pub mod qido;
pub mod render;
pub mod request;
pub mod restore;
pub mod retention;
pub mod stow;
pub mod tenants;
pub mod tiering;
pub mod wado;
pub mod warm;

use std::sync::Arc;
use std::time::Duration;

use crate::index::{Index, IndexError};
use crate::store::BlobStore;

/// What callers of the service layer name: which instances a request covers,
/// a QIDO search, and the record of a stored instance the retrievals hand
/// back. The HTTP layer takes them from here, never from the index.
pub use crate::index::StoredInstance;
pub use error::{Outage, ServiceError, OUTAGE_RETRY_AFTER_SECS};
pub use request::{IncludeField, MatchKey, Resource, Scope, SearchRequest};

/// Settings the pipelines need.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub max_header_bytes: usize,
    /// Blobs of one STOW request completed at once (`storage.upload_completions_per_request`).
    pub upload_completions: usize,
    pub overwrite_existing: bool,
    pub qido_max_results: u64,
    pub orphan_grace: Duration,
    pub limits: crate::config::LimitsConfig,
    /// Decoded pixel bytes in flight across every rendering and transcoding.
    pub decoding: DecodingBudget,
    /// Builds series metadata once a series is quiet after STOW.
    pub warmer: warm::MetadataWarmer,
    /// STOW seals each instance's metadata into the index (`dicomweb.metadata_in_index`).
    pub metadata_in_index: bool,
    /// Retention rules and the lifecycle clock (`[lifecycle]`).
    pub lifecycle: crate::config::LifecycleConfig,
    /// Whether a move rule looks at the time since a study's last retrieval
    /// (then retrievals note the day: see `restore::note_retrieved`).
    pub lifecycle_uses_retrieval: bool,
    /// The studies noted as retrieved today.
    pub retrievals: Arc<restore::RetrievalMarks>,
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

/// Whether the backends a tenant's requests need answer (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub index: bool,
    pub blob_store: bool,
}

impl Services {
    /// Probes the index and the blob store.
    pub async fn readiness(&self) -> Readiness {
        let index = self.with_index(|index| index.probe()).await.is_ok();
        let blob_store = self.store.probe().await.is_ok();
        Readiness { index, blob_store }
    }

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
