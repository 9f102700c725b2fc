//! The one error type of the service layer. It says its own HTTP status, the
//! message a client may see, when to retry and the DICOM failure reason, so the
//! HTTP layer maps one flat type and never looks inside index, store or DICOM
//! errors.

use crate::dicom::DicomError;
use crate::index::IndexError;
use crate::store::StoreError;

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
    /// What the request reads is in an offline tier and not restored yet:
    /// 503 with `Retry-After` and a `Warning` saying where the restore stands.
    #[error("the requested data is in an offline archive tier")]
    Archived {
        retry_after_secs: u64,
        state: super::restore::Waiting,
    },
    /// The tenant exists but is disabled.
    #[error("this tenant is disabled")]
    TenantDisabled,
    /// The caller may not have this, whatever it asks (403): identified data
    /// for a caller who may only receive de-identified data.
    #[error("{0}")]
    Forbidden(String),
    /// The request names something invalid (400).
    #[error("{0}")]
    Invalid(String),
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

impl ServiceError {
    /// The HTTP status this error is answered with: the service layer says it,
    /// so the HTTP layer maps one flat type and never looks inside the index,
    /// store or DICOM errors.
    pub fn status(&self) -> u16 {
        match self.outage() {
            Some(Outage::Unavailable(_)) => return 503,
            Some(Outage::Full) => return 507,
            None => {}
        }
        match self {
            ServiceError::TooLarge(_) => 400,
            ServiceError::Busy { .. } => 503,
            ServiceError::Archived { .. } => 503,
            ServiceError::Store(StoreError::Archived) => 503,
            ServiceError::NotFound(_) => 404,
            ServiceError::Gone(_) => 410,
            ServiceError::NotAcceptable(_) => 406,
            ServiceError::TenantDisabled => 403,
            ServiceError::Forbidden(_) => 403,
            ServiceError::Invalid(_) => 400,
            ServiceError::Index(IndexError::Query(_)) => 400,
            ServiceError::Index(IndexError::Protected(_)) => 409,
            ServiceError::Store(StoreError::Shredded) => 410,
            ServiceError::Store(StoreError::KeyUnavailable(_)) => 503,
            ServiceError::Store(StoreError::KeyRevoked(_)) => 410,
            ServiceError::Dicom(DicomError::OutsideImage) => 400,
            ServiceError::Dicom(DicomError::CannotDecode(_)) => 406,
            _ => 500,
        }
    }

    /// What the client is told: the reason for a fault of the request, a
    /// generic sentence for a fault of ours (the details go to the log).
    pub fn public_message(&self) -> String {
        match self.outage() {
            Some(Outage::Unavailable(what)) => {
                return format!("the {what} is unavailable; retry later")
            }
            Some(Outage::Full) => {
                return "there is not enough storage space for this request".to_string()
            }
            None => {}
        }
        match self {
            ServiceError::NotFound(what) => format!("{what} not found"),
            ServiceError::Gone(what) => format!("this {what} was deleted"),
            ServiceError::NotAcceptable(why) => why.clone(),
            ServiceError::TenantDisabled => "this tenant is disabled".into(),
            ServiceError::TooLarge(_)
            | ServiceError::Busy { .. }
            | ServiceError::Forbidden(_)
            | ServiceError::Invalid(_) => self.to_string(),
            ServiceError::Archived { .. } | ServiceError::Store(StoreError::Archived) => self
                .warning()
                .unwrap_or_else(|| "the requested data is in an offline archive tier".into()),
            ServiceError::Dicom(
                error @ (DicomError::OutsideImage | DicomError::CannotDecode(_)),
            ) => error.to_string(),
            ServiceError::Index(IndexError::Query(e)) => e.to_string(),
            ServiceError::Index(IndexError::Protected(why)) => why.clone(),
            ServiceError::Store(StoreError::Shredded) => {
                "this data was erased: its encryption key was destroyed".to_string()
            }
            // Neither says more than that: the provider's own words go to the log.
            ServiceError::Store(StoreError::KeyUnavailable(_)) => {
                "the key provider holding this tenant's key-encryption key (HSM or KMS) is \
                 unavailable; retry later"
                    .to_string()
            }
            ServiceError::Store(StoreError::KeyRevoked(_)) => {
                "this tenant's key-encryption key was revoked or destroyed by its holder: its \
                 data cannot be read or written while it is"
                    .to_string()
            }
            ServiceError::Store(StoreError::Integrity(_)) => {
                "the stored object failed its integrity check; the incident is logged".to_string()
            }
            _ => "internal server error".to_string(),
        }
    }

    /// How long a client should wait before retrying, for the errors that say
    /// "later": a spent budget says its own; a backend outage gets
    /// [`OUTAGE_RETRY_AFTER_SECS`].
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ServiceError::Busy { retry_after_secs }
            | ServiceError::Archived {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ if self.status() == 503 => Some(OUTAGE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The text of the `Warning` header that explains a 503 for data in an
    /// offline tier (RFC 7234 warn-code 299, as PS3.18 uses it).
    pub fn warning(&self) -> Option<String> {
        use super::restore::Waiting;
        let text = match self {
            ServiceError::Archived { state, .. } => match state {
                Waiting::Started => {
                    "The requested data is in an offline archive tier; a restore was started"
                }
                Waiting::InProgress => {
                    "The requested data is in an offline archive tier; its restore is in progress"
                }
                Waiting::QueueFull => {
                    "The requested data is in an offline archive tier; too many restores are \
                     waiting, so none was started: retry later"
                }
            },
            ServiceError::Store(StoreError::Archived) => {
                "The requested data is in an offline archive tier and was not restored"
            }
            _ => return None,
        };
        Some(text.to_string())
    }

    /// The failure reason of a Store Instances Response for an instance this
    /// error stopped (PS3.18 Table I.2-2; see `stow::reason`).
    pub fn failure_reason(&self) -> u16 {
        match self {
            ServiceError::Dicom(error) => super::stow::reason_for(error),
            _ => super::stow::reason::PROCESSING_FAILURE,
        }
    }
}

/// What a 503 for a backend outage tells clients to wait, in seconds: long
/// enough for a database fail-over or a network blip, short enough for a
/// modality's retry loop.
pub const OUTAGE_RETRY_AFTER_SECS: u64 = 5;
