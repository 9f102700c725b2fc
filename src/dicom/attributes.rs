//! Naming attributes the way DICOMweb query parameters do: a keyword
//! (`PatientName`), an 8-hex tag (`00100010`), or a dotted path through sequences
//! (`RequestAttributesSequence.RequestedProcedureID`).

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Resolves one path component (keyword or hex tag). Keywords are case-sensitive
/// (PS3.18 §8.3.1); hex digits are not.
pub fn resolve(name: &str) -> Option<Tag> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let group = u16::from_str_radix(&name[..4], 16).ok()?;
        let element = u16::from_str_radix(&name[4..], 16).ok()?;
        return Some(Tag(group, element));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric()) || name.is_empty() {
        return None;
    }
    let entry = StandardDataDictionary.by_name(name)?;
    // The dictionary matches names loosely; the standard wants exact keywords.
    (entry.alias() == name).then(|| entry.tag_range().inner())
}

/// Resolves a dotted attribute path.
pub fn resolve_path(path: &str) -> Option<Vec<Tag>> {
    path.split('.').map(resolve).collect()
}

/// The VR the data dictionary gives a tag (`UN` for unknown and private tags).
pub fn vr_of(tag: Tag) -> VR {
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
        Some(VirtualVr::Exact(vr)) => vr,
        Some(VirtualVr::Xs) => VR::US,
        Some(VirtualVr::Ox) | Some(VirtualVr::Px) => VR::OW,
        Some(VirtualVr::Lt) => VR::OW,
        _ => VR::UN,
    }
}

/// `GGGGEEEE`, the form DICOM JSON keys and BulkDataURI paths use.
pub fn hex(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.0, tag.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_tags() {
        assert_eq!(resolve("PatientName"), Some(Tag(0x0010, 0x0010)));
        assert_eq!(resolve("00100010"), Some(Tag(0x0010, 0x0010)));
        assert_eq!(resolve("0020000d"), Some(Tag(0x0020, 0x000D)));
        assert_eq!(resolve("patientname"), None);
        assert_eq!(resolve("NoSuchKeyword"), None);
        assert_eq!(
            resolve_path("RequestAttributesSequence.RequestedProcedureID"),
            Some(vec![Tag(0x0040, 0x0275), Tag(0x0040, 0x1001)])
        );
        assert_eq!(vr_of(Tag(0x0010, 0x0010)), VR::PN);
        assert_eq!(hex(Tag(0x7FE0, 0x0010)), "7FE00010");
    }
}
