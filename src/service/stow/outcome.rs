//! What a STOW request did with each part, and the Store Instances Response
//! (PS3.18 Annex I) that says it.

use serde_json::{json, Map, Value as Json};

use crate::dicom::json as dicom_json;

#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// The part it belongs to, in the order the parts were begun.
    pub(super) part: usize,
    pub(super) sop_class_uid: String,
    pub(super) sop_instance_uid: String,
    pub(super) reason: u16,
    /// Why, in words: for operators (the bulk import's summary), never sent to
    /// DICOMweb clients, which get the reason code.
    pub(super) detail: String,
}

/// What became of one part of a session. The HTTP response says the same in DICOM
/// JSON; callers that feed parts from their own sources (the bulk import) need it
/// per part, in the order they began them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    Stored,
    /// The same bytes were stored before: nothing changed.
    AlreadyStored,
    /// Overwrite is enabled and an older, different object was replaced.
    Replaced,
    /// Not stored: the Store Instances Response reason code and why in words.
    Failed {
        reason: u16,
        detail: String,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Referenced {
    pub(super) study_uid: String,
    pub(super) series_uid: String,
    pub(super) sop_class_uid: String,
    pub(super) sop_instance_uid: String,
}

/// The outcome of a whole STOW request.
#[derive(Debug)]
pub struct StowOutcome {
    pub(super) referenced: Vec<Referenced>,
    pub(super) failed: Vec<Failure>,
    pub(super) parts: Vec<PartOutcome>,
}

impl StowOutcome {
    /// The outcome of each part, indexed by the order in which they were begun.
    pub fn parts(&self) -> &[PartOutcome] {
        &self.parts
    }

    pub fn stored_count(&self) -> usize {
        self.referenced.len()
    }

    pub fn failed_count(&self) -> usize {
        self.failed.len()
    }

    /// The stored instances grouped by study (for the audit trail).
    pub fn stored_by_study(&self) -> Vec<(String, Vec<String>)> {
        let mut studies: Vec<(String, Vec<String>)> = Vec::new();
        for item in &self.referenced {
            match studies
                .iter_mut()
                .find(|(study, _)| *study == item.study_uid)
            {
                Some((_, instances)) => instances.push(item.sop_instance_uid.clone()),
                None => studies.push((item.study_uid.clone(), vec![item.sop_instance_uid.clone()])),
            }
        }
        studies
    }

    /// The study URL when everything stored belongs to one study.
    pub fn single_study(&self) -> Option<&str> {
        let first = self.referenced.first()?;
        self.referenced
            .iter()
            .all(|r| r.study_uid == first.study_uid)
            .then_some(first.study_uid.as_str())
    }

    /// The Store Instances Response Module (PS3.18 Annex I) as DICOM JSON.
    pub fn response(&self, base_url: &str) -> Json {
        let mut body = Map::new();
        let retrieve_url = self
            .single_study()
            .map(|s| format!("{base_url}/studies/{s}"));
        body.insert(
            "00081190".into(),
            dicom_json::attribute(dicom_core::VR::UR, retrieve_url.map(|u| vec![json!(u)])),
        );
        if !self.failed.is_empty() {
            let items: Vec<Json> = self
                .failed
                .iter()
                .map(|f| {
                    json!({
                        "00081150": uid(&f.sop_class_uid),
                        "00081155": uid(&f.sop_instance_uid),
                        "00081197": {"vr": "US", "Value": [f.reason]},
                    })
                })
                .collect();
            body.insert("00081198".into(), json!({"vr": "SQ", "Value": items}));
        }
        if !self.referenced.is_empty() {
            let items: Vec<Json> = self
                .referenced
                .iter()
                .map(|r| {
                    json!({
                        "00081150": uid(&r.sop_class_uid),
                        "00081155": uid(&r.sop_instance_uid),
                        "00081190": {"vr": "UR", "Value": [format!(
                            "{base_url}/studies/{}/series/{}/instances/{}",
                            r.study_uid, r.series_uid, r.sop_instance_uid
                        )]},
                    })
                })
                .collect();
            body.insert("00081199".into(), json!({"vr": "SQ", "Value": items}));
        }
        Json::Object(body)
    }
}

fn uid(value: &str) -> Json {
    dicom_json::attribute(
        dicom_core::VR::UI,
        (!value.is_empty()).then(|| vec![json!(value)]),
    )
}
