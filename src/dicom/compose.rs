//! Building a PS3.10 file from DICOM JSON metadata and bulk data: STOW-RS with
//! `multipart/related; type="application/dicom+json"` (PS3.18 §10.5.1.4,
//! DICOMWEB.md rule 33). The metadata becomes the data set (parsed by the
//! `dicom-json` crate); each top-level attribute that names a bulk data part by
//! its BulkDataURI takes that part's bytes as its value. Pixel Data is not held
//! here: [`compose`] writes what comes before it and what comes after it, and the
//! caller streams the pixel bulk data in between, with the element and item
//! headers this module makes.

use dicom_core::header::Header;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, IMPLEMENTATION_CLASS_UID};
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
use serde_json::{Map, Value as Json};

use super::transfer_syntax::{compressed_media_type, EXPLICIT_VR_LE};
use super::DicomError;

/// The top-level pixel data elements, whose bulk data is streamed.
const PIXEL_TAGS: [Tag; 3] = [
    tags::PIXEL_DATA,
    tags::FLOAT_PIXEL_DATA,
    tags::DOUBLE_FLOAT_PIXEL_DATA,
];

/// One data set of a metadata part.
#[derive(Debug)]
pub struct JsonInstance {
    /// Every attribute given by value (bulk data references removed).
    pub dataset: InMemDicomObject,
    /// The top-level attributes whose value is a bulk data part.
    pub bulk: Vec<BulkReference>,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// An attribute whose value is in a bulk data part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkReference {
    pub tag: Tag,
    pub vr: VR,
    pub uri: String,
}

impl BulkReference {
    pub fn is_pixel_data(&self) -> bool {
        PIXEL_TAGS.contains(&self.tag)
    }
}

/// The data sets of a metadata part: a JSON array of DICOM JSON objects (a
/// single object is taken as an array of one, as dicomweb-client does).
pub fn metadata_datasets(part: &[u8]) -> Result<Vec<Json>, DicomError> {
    super::guard::check_json_depth(part, &super::guard::ParseLimits::current())?;
    match serde_json::from_slice::<Json>(part) {
        Ok(Json::Array(datasets)) => Ok(datasets),
        Ok(object @ Json::Object(_)) => Ok(vec![object]),
        Ok(_) => Err(DicomError::Malformed(
            "the metadata part is not an array of DICOM JSON data sets".into(),
        )),
        Err(error) => Err(DicomError::Malformed(format!(
            "the metadata part is not JSON (line {}, column {})",
            error.line(),
            error.column()
        ))),
    }
}

/// The SOP Class and SOP Instance UIDs a data set claims, as far as they can be
/// read: for the failure report of a data set that cannot be stored.
pub fn claimed_uids(dataset: &Json) -> (String, String) {
    let uid = |tag: &str| {
        dataset
            .get(tag)
            .and_then(|a| a.get("Value"))
            .and_then(|v| v.get(0))
            .and_then(Json::as_str)
            .unwrap_or_default()
            .trim_end_matches('\0')
            .trim()
            .to_string()
    };
    (uid("00080016"), uid("00080018"))
}

impl JsonInstance {
    /// Reads one data set: the attributes that reference bulk data are taken
    /// out (only top-level ones are supported), the file meta group (which
    /// metadata must not carry) is dropped, and the rest parsed.
    pub fn from_json(dataset: Json) -> Result<Self, DicomError> {
        let Json::Object(mut attributes) = dataset else {
            return Err(DicomError::Malformed(
                "a metadata data set is not a JSON object".into(),
            ));
        };
        attributes.retain(|key, _| !key.to_ascii_uppercase().starts_with("0002"));
        let mut bulk = Vec::new();
        let mut by_value = Map::new();
        for (key, attribute) in attributes {
            let tag = parse_tag(&key)?;
            match attribute.get("BulkDataURI") {
                Some(uri) => {
                    let uri = uri.as_str().ok_or_else(|| {
                        DicomError::Malformed(format!("the BulkDataURI of {key} is not a string"))
                    })?;
                    let vr = attribute
                        .get("vr")
                        .and_then(Json::as_str)
                        .and_then(|vr| vr.parse::<VR>().ok())
                        .ok_or_else(|| {
                            DicomError::Malformed(format!("attribute {key} has no valid vr"))
                        })?;
                    bulk.push(BulkReference {
                        tag,
                        vr,
                        uri: uri.to_string(),
                    });
                }
                None => {
                    if mentions_bulk_data(&attribute) {
                        return Err(DicomError::Malformed(format!(
                            "attribute {key} holds a BulkDataURI inside a sequence; only \
                             top-level attributes can reference bulk data"
                        )));
                    }
                    by_value.insert(key, attribute);
                }
            }
        }
        // serde's messages quote the offending value, which may be a patient's
        // name: only where it is goes into the error (and so into logs).
        let dataset: InMemDicomObject =
            dicom_json::from_value(Json::Object(by_value)).map_err(|error| {
                DicomError::Malformed(format!("invalid DICOM JSON ({:?} error)", error.classify()))
            })?;
        let sop_class_uid = required_uid(&dataset, tags::SOP_CLASS_UID, "SOPClassUID")?;
        let sop_instance_uid = required_uid(&dataset, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
        Ok(JsonInstance {
            dataset,
            bulk,
            sop_class_uid,
            sop_instance_uid,
        })
    }

    /// The reference of the pixel data, if the pixels come as bulk data.
    pub fn pixel_reference(&self) -> Option<&BulkReference> {
        self.bulk.iter().find(|b| b.is_pixel_data())
    }

    /// The byte count of native pixel data its image description asks for;
    /// `None` when the description is incomplete (nothing to check against).
    pub fn expected_native_pixel_bytes(&self) -> Option<u64> {
        let number = |tag: Tag| -> Option<u64> {
            let value = self.dataset.get(tag)?.value().to_str().ok()?;
            value.split('\\').next()?.trim().parse().ok()
        };
        let rows = number(tags::ROWS)?;
        let columns = number(tags::COLUMNS)?;
        let bits = number(tags::BITS_ALLOCATED)?;
        let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let frames = number(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
        Some((rows * columns * samples * frames * bits).div_ceil(8))
    }
}

fn parse_tag(key: &str) -> Result<Tag, DicomError> {
    let bad = || DicomError::Malformed(format!("{key:?} is not an 8-digit hexadecimal tag"));
    if key.len() != 8 {
        return Err(bad());
    }
    let group = u16::from_str_radix(&key[..4], 16).map_err(|_| bad())?;
    let element = u16::from_str_radix(&key[4..], 16).map_err(|_| bad())?;
    Ok(Tag(group, element))
}

fn mentions_bulk_data(value: &Json) -> bool {
    match value {
        Json::Object(map) => {
            map.contains_key("BulkDataURI") || map.values().any(mentions_bulk_data)
        }
        Json::Array(items) => items.iter().any(mentions_bulk_data),
        _ => false,
    }
}

fn required_uid(
    dataset: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<String, DicomError> {
    let value = dataset
        .get(tag)
        .and_then(|e| e.value().to_str().ok())
        .map(|v| v.trim_end_matches('\0').trim().to_string())
        .unwrap_or_default();
    if value.is_empty() {
        Err(DicomError::MissingAttribute(name))
    } else {
        Ok(value)
    }
}

/// The transfer syntax a compressed bulk data part is in: its `transfer-syntax`
/// parameter, which must belong to its media type, or else the media type's
/// default (PS3.18 Table 8.7.3-5). `None` for `application/octet-stream`:
/// native little-endian pixels.
pub fn bulk_transfer_syntax(
    media_type: &str,
    transfer_syntax: Option<&str>,
) -> Result<Option<String>, DicomError> {
    let media_type = media_type.to_ascii_lowercase();
    if media_type == "application/octet-stream" {
        return match transfer_syntax {
            None | Some(EXPLICIT_VR_LE) => Ok(None),
            Some(other) => Err(DicomError::UnsupportedTransferSyntax(format!(
                "{other} for application/octet-stream bulk data (only {EXPLICIT_VR_LE})"
            ))),
        };
    }
    if let Some(uid) = transfer_syntax {
        return match compressed_media_type(uid) {
            Some(owner) if owner.eq_ignore_ascii_case(&media_type) => Ok(Some(uid.to_string())),
            _ => Err(DicomError::UnsupportedTransferSyntax(format!(
                "{uid} is not a transfer syntax of {media_type}"
            ))),
        };
    }
    let default = match media_type.as_str() {
        "image/jpeg" => "1.2.840.10008.1.2.4.70",
        "image/dicom-rle" => "1.2.840.10008.1.2.5",
        "image/jls" => "1.2.840.10008.1.2.4.80",
        "image/jp2" => "1.2.840.10008.1.2.4.90",
        "image/jpx" => "1.2.840.10008.1.2.4.92",
        "image/jphc" => "1.2.840.10008.1.2.4.201",
        "image/jxl" => "1.2.840.10008.1.2.4.110",
        "video/mpeg" => "1.2.840.10008.1.2.4.100",
        "video/mp4" => "1.2.840.10008.1.2.4.102",
        "video/h265" => "1.2.840.10008.1.2.4.107",
        other => {
            return Err(DicomError::UnsupportedTransferSyntax(format!(
                "bulk data of media type {other}"
            )))
        }
    };
    Ok(Some(default.to_string()))
}

/// What [`compose`] writes around the pixel data.
#[derive(Debug)]
pub struct Composed {
    /// Preamble, file meta group and every element before the pixel data
    /// (everything, when there is no pixel bulk data).
    pub head: Vec<u8>,
    /// Every element after the pixel data.
    pub tail: Vec<u8>,
}

/// Encodes `instance` as a PS3.10 file in `transfer_syntax` (Explicit VR Little
/// Endian for the data set, as every syntax but the native odd ones is), with
/// `inline` bulk values (tag, bytes) set, split around the pixel data element.
pub fn compose(
    instance: &JsonInstance,
    inline: Vec<(Tag, VR, Vec<u8>)>,
    transfer_syntax: &str,
) -> Result<Composed, DicomError> {
    let mut dataset = instance.dataset.clone();
    for (tag, vr, mut bytes) in inline {
        if bytes.len() % 2 == 1 {
            bytes.push(if is_text(vr) { b' ' } else { 0 });
        }
        dataset.put(DataElement::new(tag, vr, PrimitiveValue::U8(bytes.into())));
    }
    let split = instance.pixel_reference().map(|p| p.tag);
    let (mut before, mut after) = (InMemDicomObject::new_empty(), InMemDicomObject::new_empty());
    for element in dataset.into_iter() {
        match split {
            Some(pixel) if element.tag() > pixel => after.put(element),
            Some(pixel) if element.tag() == pixel => None,
            _ => before.put(element),
        };
    }
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(instance.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(instance.sop_instance_uid.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .build()
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    let mut head = vec![0u8; 128];
    head.extend_from_slice(b"DICM");
    meta.write(&mut head)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    let ts = EXPLICIT_VR_LITTLE_ENDIAN.erased();
    before
        .write_dataset_with_ts(&mut head, &ts)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    let mut tail = Vec::new();
    after
        .write_dataset_with_ts(&mut tail, &ts)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok(Composed { head, tail })
}

fn is_text(vr: VR) -> bool {
    matches!(vr, VR::UT | VR::LT | VR::ST | VR::UC | VR::UR)
}

/// The header of a native pixel data element of `length` bytes (even).
pub fn native_pixel_header(tag: Tag, vr: VR, length: u32) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[..2].copy_from_slice(&tag.0.to_le_bytes());
    header[2..4].copy_from_slice(&tag.1.to_le_bytes());
    header[4..6].copy_from_slice(vr.to_bytes().as_slice());
    header[8..].copy_from_slice(&length.to_le_bytes());
    header
}

/// The header of encapsulated Pixel Data (OB, undefined length) followed by an
/// empty Basic Offset Table item: frames are found at STOW time without it.
pub fn encapsulated_pixel_header() -> [u8; 20] {
    let mut header = [0u8; 20];
    header[..12].copy_from_slice(&native_pixel_header(tags::PIXEL_DATA, VR::OB, u32::MAX));
    header[12..].copy_from_slice(&item_header(0));
    header
}

/// An item header (FFFE,E000) of `length` bytes (even).
pub fn item_header(length: u32) -> [u8; 8] {
    let mut header = [0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0];
    header[4..].copy_from_slice(&length.to_le_bytes());
    header
}

/// The Sequence Delimitation Item (FFFE,E0DD) that ends encapsulated Pixel Data.
pub const SEQUENCE_DELIMITER: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dataset() -> Json {
        json!({
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
            "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2"]},
            "00280010": {"vr": "US", "Value": [2]},
            "00280011": {"vr": "US", "Value": [3]},
            "00280100": {"vr": "US", "Value": [16]},
            "00280008": {"vr": "IS", "Value": ["2"]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk/1"},
            "FFFAFFFA": {"vr": "SQ", "Value": []}
        })
    }

    #[test]
    fn bulk_references_are_taken_out_and_the_meta_group_dropped() {
        let instance = JsonInstance::from_json(dataset()).unwrap();
        assert_eq!(instance.sop_instance_uid, "1.2.3.4");
        assert_eq!(
            instance.bulk,
            vec![BulkReference {
                tag: tags::PIXEL_DATA,
                vr: VR::OW,
                uri: "http://x/bulk/1".into()
            }]
        );
        assert!(instance.dataset.get(tags::PIXEL_DATA).is_none());
        assert!(instance.dataset.get(tags::TRANSFER_SYNTAX_UID).is_none());
        assert_eq!(instance.expected_native_pixel_bytes(), Some(2 * 3 * 2 * 2));
    }

    #[test]
    fn nested_bulk_data_and_missing_uids_are_refused() {
        let mut nested = dataset();
        nested["00400275"] = json!({"vr": "SQ", "Value": [
            {"00420011": {"vr": "OB", "BulkDataURI": "http://x/bulk/2"}}
        ]});
        assert!(JsonInstance::from_json(nested).is_err());
        let mut missing = dataset();
        missing.as_object_mut().unwrap().remove("00080018");
        assert!(matches!(
            JsonInstance::from_json(missing),
            Err(DicomError::MissingAttribute("SOPInstanceUID"))
        ));
        assert_eq!(claimed_uids(&dataset()).1, "1.2.3.4");
    }

    #[test]
    fn composed_parts_read_back_as_one_file() {
        let instance = JsonInstance::from_json(dataset()).unwrap();
        let composed = compose(&instance, Vec::new(), EXPLICIT_VR_LE).unwrap();
        let pixels = [
            1u8, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 0, 9, 0, 10, 0, 11, 0, 12, 0,
        ];
        let mut file = composed.head.clone();
        file.extend_from_slice(&native_pixel_header(
            tags::PIXEL_DATA,
            VR::OW,
            pixels.len() as u32,
        ));
        file.extend_from_slice(&pixels);
        file.extend_from_slice(&composed.tail);
        let object = dicom_object::from_reader(&file[128..]).unwrap();
        assert_eq!(object.meta().media_storage_sop_instance_uid(), "1.2.3.4");
        assert_eq!(
            object
                .element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            &pixels
        );
        assert!(
            object.element(Tag(0xFFFA, 0xFFFA)).is_ok(),
            "the tail follows"
        );
        assert_eq!(
            object
                .element(tags::PATIENT_NAME)
                .unwrap()
                .to_str()
                .unwrap(),
            "Doe^Jane"
        );
    }

    #[test]
    fn bulk_media_types_name_their_transfer_syntax() {
        assert_eq!(
            bulk_transfer_syntax("application/octet-stream", None).unwrap(),
            None
        );
        assert_eq!(
            bulk_transfer_syntax("image/jpeg", None).unwrap().as_deref(),
            Some("1.2.840.10008.1.2.4.70")
        );
        assert_eq!(
            bulk_transfer_syntax("image/jpeg", Some("1.2.840.10008.1.2.4.50"))
                .unwrap()
                .as_deref(),
            Some("1.2.840.10008.1.2.4.50")
        );
        assert!(bulk_transfer_syntax("image/jpeg", Some("1.2.840.10008.1.2.4.90")).is_err());
        assert!(bulk_transfer_syntax("text/plain", None).is_err());
    }
}
