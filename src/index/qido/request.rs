//! The query levels of a QIDO resource (the index's reading of the service
//! layer's [`Resource`]).

use crate::index::catalog::Level;
use crate::service::request::Resource;

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
