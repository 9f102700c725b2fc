//! The profile applied to DICOM JSON data sets (PS3.18 Annex F): QIDO results
//! and metadata served to a caller who may only ever see de-identified data.
//! The same table and options decide as for files (`Profile::act`); what JSON
//! adds: a BulkDataURI names the original UIDs in its path, so it is dropped
//! (bulk data is not served de-identified), and private attributes all go
//! (their creators may not be in the same response).

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as Json};

use super::values::{dummy, shift_date};
use super::{Act, Profile, ProfileOption, EDITION};
use crate::dicom::json::{attribute, values_from_text};

/// An identifier a JSON data set was given instead of its original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedValue {
    pub original: String,
    pub mapped: String,
    /// `patient`, `study`, `series`, `instance` or `other`.
    pub level: &'static str,
}

fn key_tag(key: &str) -> Option<Tag> {
    // Exactly eight hex digits (`from_str_radix` alone would take a sign).
    if key.len() != 8 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u32::from_str_radix(key, 16).ok()?;
    Some(Tag((value >> 16) as u16, (value & 0xFFFF) as u16))
}

fn first_string(dataset: &Map<String, Json>, tag: Tag) -> Option<String> {
    let value = dataset.get(&format!("{:04X}{:04X}", tag.group(), tag.element()))?;
    match value.get("Value")?.get(0)? {
        Json::String(text) => Some(text.trim().to_string()),
        Json::Object(name) => name.get("Alphabetic")?.as_str().map(str::to_string),
        other => Some(other.to_string()),
    }
}

fn level_of(tag: Tag) -> &'static str {
    match tag {
        tags::STUDY_INSTANCE_UID => "study",
        tags::SERIES_INSTANCE_UID => "series",
        tags::SOP_INSTANCE_UID => "instance",
        _ => "other",
    }
}

/// An element's value as a JSON attribute (text VRs only: what `dummy` and
/// `shift_date` make).
fn element_json(element: &DataElement<InMemDicomObject>) -> Json {
    let vr = element.vr();
    let values = match element.value().primitive() {
        Some(PrimitiveValue::Empty) | None => None,
        Some(_) => element
            .to_str()
            .ok()
            .and_then(|text| values_from_text(vr, &text)),
    };
    attribute(vr, values)
}

fn strings(attribute: &Json) -> Vec<String> {
    attribute
        .get("Value")
        .and_then(Json::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Profile {
    /// De-identifies one DICOM JSON data set in place; returns the identifiers
    /// it replaced (the top level's UIDs and the patient's pseudonym), so that
    /// what they stand for can be recorded. Dates move by the offset of the
    /// data set's PatientID: include it for consistent dates.
    pub fn deidentify_json(&self, dataset: &mut Map<String, Json>) -> Vec<MappedValue> {
        let patient = first_string(dataset, tags::PATIENT_ID).unwrap_or_default();
        let mut mapped = Vec::new();
        self.walk_json(dataset, self.date_offset_days(&patient), &mut mapped, true);
        let pseudonym = self.pseudonym(&patient);
        mapped.push(MappedValue {
            original: patient,
            mapped: pseudonym.clone(),
            level: "patient",
        });
        let text = |vr: VR, value: &str| attribute(vr, values_from_text(vr, value));
        dataset.insert("00100020".into(), text(VR::LO, &pseudonym));
        dataset.insert("00100010".into(), text(VR::PN, &pseudonym));
        dataset.insert("00120062".into(), text(VR::CS, "YES"));
        dataset.insert(
            "00120063".into(),
            text(
                VR::LO,
                &format!("Kastell: PS3.15 {EDITION} Table E.1-1 Basic Profile"),
            ),
        );
        mapped
    }

    fn walk_json(
        &self,
        dataset: &mut Map<String, Json>,
        date_offset: i64,
        mapped: &mut Vec<MappedValue>,
        top: bool,
    ) {
        let keys: Vec<String> = dataset.keys().cloned().collect();
        for key in keys {
            let Some(tag) = key_tag(&key) else {
                dataset.remove(&key);
                continue;
            };
            let vr = dataset
                .get(&key)
                .and_then(|a| a.get("vr"))
                .and_then(Json::as_str)
                .and_then(|vr| vr.parse::<VR>().ok());
            let Some(vr) = vr else {
                dataset.remove(&key);
                continue;
            };
            // UN is opaque; a URL (Retrieve URL and the like) names the
            // original UIDs in its path.
            if tag.group() % 2 == 1 || vr == VR::UN || vr == VR::UR {
                dataset.remove(&key);
                continue;
            }
            let (act, _) = self.act(tag, vr);
            let Some(attribute_json) = dataset.get_mut(&key) else {
                continue;
            };
            match act {
                Act::Remove => {
                    dataset.remove(&key);
                    continue;
                }
                Act::Empty => *attribute_json = attribute(vr, None),
                Act::Dummy => *attribute_json = element_json(&dummy(tag, vr)),
                Act::Uid if vr == VR::UI && !self.options.contains(&ProfileOption::RetainUids) => {
                    let originals = strings(attribute_json);
                    let new: Vec<Json> = originals
                        .iter()
                        .map(|uid| {
                            let new = self.map_uid(uid);
                            if top {
                                mapped.push(MappedValue {
                                    original: uid.clone(),
                                    mapped: new.clone(),
                                    level: level_of(tag),
                                });
                            }
                            Json::String(new)
                        })
                        .collect();
                    *attribute_json = attribute(vr, Some(new));
                }
                Act::Uid if vr == VR::SQ || vr == VR::UI => {}
                Act::Uid => *attribute_json = attribute(vr, None),
                Act::ShiftDate => {
                    let values = strings(attribute_json).join("\\");
                    let element = DataElement::<InMemDicomObject>::new(
                        tag,
                        vr,
                        PrimitiveValue::from(values.as_str()),
                    );
                    *attribute_json = element_json(&shift_date(element, date_offset));
                }
                Act::Keep => {}
            }
            if let Some(object) = attribute_json.as_object_mut() {
                // A bulk value's URI names the original UIDs.
                if object.remove("BulkDataURI").is_some() || object.remove("InlineBinary").is_some()
                {
                    object.remove("Value");
                }
                if vr == VR::SQ {
                    if let Some(items) = object.get_mut("Value").and_then(Json::as_array_mut) {
                        for item in items.iter_mut().filter_map(Json::as_object_mut) {
                            self.walk_json(item, date_offset, mapped, false);
                        }
                    }
                }
            }
        }
    }
}
