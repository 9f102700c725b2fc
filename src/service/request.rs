//! What callers ask of the service layer, as plain data: which instances a
//! retrieval or deletion covers ([`Scope`]) and a QIDO search
//! ([`SearchRequest`]). The HTTP layer builds them; the index takes them as its
//! input (the one thing the index imports from the service layer), and gives
//! them their SQL meaning there. Imports nothing internal.

use dicom_core::Tag;

/// Which instances a retrieval covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Study {
        study: String,
    },
    Series {
        study: String,
        series: String,
    },
    Instance {
        study: String,
        series: String,
        instance: String,
    },
}

/// The six QIDO resources (PS3.18 Table 10.6.1-1), with the UIDs of their path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Studies,
    StudySeries { study: String },
    StudyInstances { study: String },
    Series,
    SeriesInstances { study: String, series: String },
    Instances,
}

/// One `attribute=value` query parameter, attribute already resolved to a tag path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchKey {
    pub name: String,
    pub path: Vec<Tag>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncludeField {
    All,
    Path { name: String, path: Vec<Tag> },
}

impl SearchRequest {
    /// Everything of `resource`: no match keys, no includefields, no paging.
    pub fn new(resource: Resource) -> Self {
        Self {
            resource,
            matches: Vec::new(),
            include: Vec::new(),
            fuzzy: false,
            empty_value_matching: false,
            multiple_value_matching: false,
            limit: None,
            offset: 0,
        }
    }
}

/// A search as the HTTP layer parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub resource: Resource,
    pub matches: Vec<MatchKey>,
    pub include: Vec<IncludeField>,
    pub fuzzy: bool,
    /// `emptyvaluematching=true`: a key of `""` matches empty values.
    pub empty_value_matching: bool,
    /// `multiplevaluematching=true`: a key of backslash-separated values
    /// matches an entity holding every one of them (PS3.4 C.2.2.2.8).
    pub multiple_value_matching: bool,
    pub limit: Option<u64>,
    pub offset: u64,
}
