//! The records that go in and out of the index: an instance to store and what
//! became of it, where a stored instance's blob is, QIDO hits, and the blobs a
//! deletion leaves to remove. (What a request asks for, `Scope` and
//! `SearchRequest`, is the service layer's: `crate::service::request`.)

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use super::catalog::{Attr, InstanceRow, SeriesRow, StudyRow};

/// One instance to add to the index, with its blob already durable.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub blob_key: String,
    pub blob_size: i64,
    pub content_sha256: String,
    pub header_length: i64,
    pub pixel_data_offset: Option<i64>,
    pub pixel_data_length: Option<i64>,
    /// Encapsulated pixel data: the frame boundaries in the blob (see the
    /// `frame_offsets` column), when they could be told while storing.
    pub frame_offsets: Option<String>,
    /// The instance's metadata, sealed (see `store::record`), kept in
    /// `instance_metadata` when present.
    pub metadata: Option<Vec<u8>>,
    /// Values of the catalog attributes stored from the header, as DICOM text
    /// (the Request Attributes Sequence as DICOM JSON).
    pub values: Vec<(&'static Attr, Option<String>)>,
    /// (ScheduledProcedureStepID, RequestedProcedureID) of each request item.
    pub request_items: Vec<(Option<String>, Option<String>)>,
}

/// What happened to one instance of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    /// The same bytes were stored before: nothing changed.
    AlreadyStored,
    /// Overwrite is enabled and the instance replaced an older object.
    Replaced {
        old_blob_key: String,
    },
    /// A different object is stored under this SOP Instance UID.
    Conflict,
    /// The series exists, but in another study.
    SeriesInOtherStudy,
}

/// The blobs a deletion leaves to remove.
#[derive(Debug, Default)]
pub struct DeletedBlobs {
    pub instances: Vec<String>,
    pub derived: Vec<String>,
}

/// Where a stored instance is, for retrieval.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredInstance {
    #[diesel(sql_type = Text)]
    pub study_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub series_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub sop_instance_uid: String,
    #[diesel(sql_type = Text)]
    pub sop_class_uid: String,
    #[diesel(sql_type = Text)]
    pub transfer_syntax_uid: String,
    #[diesel(sql_type = Text)]
    pub blob_key: String,
    #[diesel(sql_type = BigInt)]
    pub blob_size: i64,
    #[diesel(sql_type = BigInt)]
    pub header_length: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub pixel_data_offset: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub pixel_data_length: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub number_of_frames: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub bits_allocated: Option<i64>,
    #[diesel(sql_type = Text)]
    pub content_sha256: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub frame_offsets: Option<String>,
}

/// The attributes a search asks for that the index does not keep: the service
/// reads them from a stored instance of each result (see `service::qido`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredFields {
    /// `includefield=all`: every attribute of the result's levels.
    pub all: bool,
    /// Attributes named by tag or keyword (top-level tags; a path into a
    /// sequence asks for the whole sequence).
    pub tags: Vec<dicom_core::Tag>,
}

impl StoredFields {
    pub fn is_empty(&self) -> bool {
        !self.all && self.tags.is_empty()
    }
}

/// One QIDO match with the rows of its levels.
#[derive(Debug, Clone)]
pub struct Hit {
    pub study: StudyRow,
    pub series: Option<SeriesRow>,
    pub instance: Option<InstanceRow>,
}

#[derive(Debug)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Whether matches follow this page (not how many: see `Index::search`).
    pub more: bool,
    pub requested: Vec<&'static Attr>,
    /// What `includefield` asks for beyond the index's columns.
    pub stored: StoredFields,
    pub ignored: Vec<String>,
}

/// A row of one blob key (also the shape of other one-text-column queries).
#[derive(QueryableByName)]
pub(super) struct BlobKeyRow {
    #[diesel(sql_type = Text)]
    pub(super) blob_key: String,
}
