//! The DICOM JSON model (PS3.18 Annex F), written by hand rather than with the
//! `dicom-json` crate because DICOMweb needs control it does not give: BulkDataURI
//! for bulk values (resolvable through our bulkdata resource), IS/DS as numbers, and
//! the same value rules for index rows (QIDO) and full data sets (metadata).

use base64::Engine;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_object::InMemDicomObject;
use serde_json::{json, Map, Number, Value as Json};

use super::attributes::hex;
use super::instance::keeps_leading_spaces;
use super::text::trim_value;

/// Values of these VRs are never inlined as JSON values; they become a BulkDataURI.
pub fn is_bulk_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

/// `{"vr": "XX"}` plus `Value` when there is one.
pub fn attribute(vr: VR, values: Option<Vec<Json>>) -> Json {
    let mut object = Map::new();
    object.insert("vr".into(), Json::String(vr.to_string().into()));
    if let Some(values) = values.filter(|v| !v.is_empty()) {
        object.insert("Value".into(), Json::Array(values));
    }
    Json::Object(object)
}

/// The JSON `Value` array of a value held as DICOM text (values separated by `\`).
/// `None` for an empty value.
pub fn values_from_text(vr: VR, text: &str) -> Option<Vec<Json>> {
    if text.is_empty() {
        return None;
    }
    let keep_leading = keeps_leading_spaces(vr);
    // LT, ST, UT and UR are single-valued: a backslash is part of the text.
    let parts: Vec<&str> = if matches!(vr, VR::LT | VR::ST | VR::UT | VR::UR) {
        vec![text]
    } else {
        text.split('\\').collect()
    };
    let values = parts
        .into_iter()
        .map(|part| {
            let part = trim_value(part, keep_leading);
            if part.is_empty() {
                return Json::Null;
            }
            text_value(vr, part)
        })
        .collect::<Vec<_>>();
    if values.iter().all(Json::is_null) {
        None
    } else {
        Some(values)
    }
}

fn text_value(vr: VR, part: &str) -> Json {
    match vr {
        VR::PN => person_name(part),
        VR::IS | VR::SV | VR::UV | VR::SS | VR::US | VR::SL | VR::UL => part
            .parse::<i64>()
            .map(Json::from)
            .or_else(|_| part.parse::<u64>().map(Json::from))
            .unwrap_or_else(|_| Json::String(part.into())),
        VR::DS | VR::FL | VR::FD => part
            .parse::<f64>()
            .ok()
            .and_then(number_from_f64)
            .unwrap_or_else(|| Json::String(part.into())),
        _ => Json::String(part.into()),
    }
}

fn number_from_f64(value: f64) -> Option<Json> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        return Some(Json::from(value as i64));
    }
    Number::from_f64(value).map(Json::Number)
}

/// A PN value as an object with its non-empty component groups.
pub fn person_name(value: &str) -> Json {
    let mut object = Map::new();
    for (group, name) in value
        .splitn(3, '=')
        .zip(["Alphabetic", "Ideographic", "Phonetic"])
    {
        let group = group.trim_end_matches([' ', '^']);
        if !group.is_empty() {
            object.insert(name.into(), Json::String(group.into()));
        }
    }
    Json::Object(object)
}

/// Converts a data set to DICOM JSON. `bulk_uri` turns the path of a bulk element
/// (`GGGGEEEE[/item/GGGGEEEE...]`) into its BulkDataURI.
pub fn dataset_to_json(
    dataset: &InMemDicomObject,
    bulk_uri: &dyn Fn(&str) -> String,
) -> Map<String, Json> {
    write_dataset(dataset, "", bulk_uri)
}

fn write_dataset(
    dataset: &InMemDicomObject,
    path: &str,
    bulk_uri: &dyn Fn(&str) -> String,
) -> Map<String, Json> {
    let mut object = Map::new();
    for element in dataset.iter() {
        let tag = element.header().tag;
        // PS3.18 F.2: no group lengths, no file meta group.
        if tag.1 == 0x0000 || tag.0 == 0x0002 {
            continue;
        }
        let key = hex(tag);
        let element_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}/{key}")
        };
        let vr = element.vr();
        let json = match element.value() {
            Value::Sequence(sequence) => {
                let items: Vec<Json> = sequence
                    .items()
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        Json::Object(write_dataset(
                            item,
                            &format!("{element_path}/{i}"),
                            bulk_uri,
                        ))
                    })
                    .collect();
                attribute(VR::SQ, Some(items))
            }
            Value::PixelSequence(_) => json!({"vr": "OB", "BulkDataURI": bulk_uri(&element_path)}),
            Value::Primitive(value) => primitive(vr, value, &element_path, bulk_uri),
        };
        object.insert(key, json);
    }
    object
}

fn primitive(
    vr: VR,
    value: &PrimitiveValue,
    path: &str,
    bulk_uri: &dyn Fn(&str) -> String,
) -> Json {
    if matches!(value, PrimitiveValue::Empty) {
        return attribute(vr, None);
    }
    if is_bulk_vr(vr) {
        let mut object = Map::new();
        object.insert("vr".into(), Json::String(vr.to_string().into()));
        object.insert("BulkDataURI".into(), Json::String(bulk_uri(path)));
        return Json::Object(object);
    }
    let values: Option<Vec<Json>> = match (vr, value) {
        (VR::AT, PrimitiveValue::Tags(tags)) => {
            Some(tags.iter().map(|t: &Tag| Json::String(hex(*t))).collect())
        }
        (_, PrimitiveValue::F32(v)) => Some(v.iter().map(|x| float(*x as f64)).collect()),
        (_, PrimitiveValue::F64(v)) => Some(v.iter().map(|x| float(*x)).collect()),
        (_, PrimitiveValue::U16(v)) => Some(v.iter().map(|x| Json::from(*x)).collect()),
        (_, PrimitiveValue::I16(v)) => Some(v.iter().map(|x| Json::from(*x)).collect()),
        (_, PrimitiveValue::U32(v)) => Some(v.iter().map(|x| Json::from(*x)).collect()),
        (_, PrimitiveValue::I32(v)) => Some(v.iter().map(|x| Json::from(*x)).collect()),
        (_, PrimitiveValue::U64(v)) => Some(v.iter().map(|x| Json::from(*x)).collect()),
        (_, PrimitiveValue::I64(v)) => Some(v.iter().map(|x| Json::from(*x)).collect()),
        (_, PrimitiveValue::U8(bytes)) => {
            // Binary in a non-bulk VR (rare): send it inline.
            let mut object = Map::new();
            object.insert("vr".into(), Json::String(vr.to_string().into()));
            object.insert(
                "InlineBinary".into(),
                Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
            return Json::Object(object);
        }
        _ => {
            let texts = value.to_multi_str();
            let joined = texts.join("\\");
            values_from_text(vr, &joined)
        }
    };
    attribute(vr, values)
}

fn float(value: f64) -> Json {
    number_from_f64(value).unwrap_or_else(|| Json::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue};
    use dicom_dictionary_std::tags;

    #[test]
    fn text_values_follow_annex_f() {
        assert_eq!(
            values_from_text(VR::IS, "12\\ 3 "),
            Some(vec![json!(12), json!(3)])
        );
        assert_eq!(
            values_from_text(VR::DS, "1.5\\2"),
            Some(vec![json!(1.5), json!(2)])
        );
        assert_eq!(
            values_from_text(VR::CS, "ORIGINAL\\\\AXIAL"),
            Some(vec![json!("ORIGINAL"), Json::Null, json!("AXIAL")])
        );
        assert_eq!(values_from_text(VR::LO, ""), None);
        assert_eq!(values_from_text(VR::LT, "a\\b"), Some(vec![json!("a\\b")]));
        assert_eq!(
            values_from_text(VR::PN, "Yamada^Tarou=山田^太郎=やまだ^たろう"),
            Some(vec![
                json!({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"})
            ])
        );
        assert_eq!(attribute(VR::PN, None), json!({"vr": "PN"}));
    }

    #[test]
    fn dataset_keys_sorted_and_bulk_as_uri() {
        let mut ds = InMemDicomObject::new_empty();
        ds.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("Doe^John"),
        ));
        ds.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(512_u16),
        ));
        ds.put(DataElement::new(
            Tag(0x0009, 0x1010),
            VR::OB,
            PrimitiveValue::from(vec![1u8, 2]),
        ));
        ds.put(DataElement::new(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            PrimitiveValue::Empty,
        ));
        let json = dataset_to_json(&ds, &|p| format!("http://x/bulkdata/{p}"));
        let keys: Vec<&String> = json.keys().collect();
        assert_eq!(keys, ["0008103E", "00091010", "00100010", "00280010"]);
        assert_eq!(
            json["00100010"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]})
        );
        assert_eq!(json["00280010"], json!({"vr": "US", "Value": [512]}));
        assert_eq!(json["0008103E"], json!({"vr": "LO"}));
        assert_eq!(
            json["00091010"],
            json!({"vr": "OB", "BulkDataURI": "http://x/bulkdata/00091010"})
        );
    }
}
