//! What a QIDO search asks for, as the HTTP layer parsed it: the resource with
//! the UIDs of its path, the match keys, the includefields, paging and flags.

use dicom_core::Tag;

use crate::index::catalog::Level;

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

impl Resource {
    /// The level whose entities are returned.
    pub fn level(&self) -> Level {
        match self {
            Resource::Studies => Level::Study,
            Resource::StudySeries { .. } | Resource::Series => Level::Series,
            _ => Level::Instance,
        }
    }

    /// The levels whose attributes each result carries (PS3.18 §10.6.3.3).
    pub fn result_levels(&self) -> &'static [Level] {
        match self {
            Resource::Studies => &[Level::Study],
            Resource::StudySeries { .. } => &[Level::Series],
            Resource::Series => &[Level::Study, Level::Series],
            Resource::StudyInstances { .. } => &[Level::Series, Level::Instance],
            Resource::SeriesInstances { .. } => &[Level::Instance],
            Resource::Instances => &[Level::Study, Level::Series, Level::Instance],
        }
    }
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

/// A search as the HTTP layer parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub resource: Resource,
    pub matches: Vec<MatchKey>,
    pub include: Vec<IncludeField>,
    pub fuzzy: bool,
    /// `emptyvaluematching=true`: a key of `""` matches empty values.
    pub empty_value_matching: bool,
    pub limit: Option<u64>,
    pub offset: u64,
}
