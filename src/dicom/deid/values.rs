//! The values de-identification writes: empty, dummy and date-shifted values,
//! and attributes received as UN read by the dictionary.

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_object::InMemDicomObject;

/// A standard attribute received as UN, read as its dictionary's VR where that
/// is text or a plain number (the bytes of a UN value are its value in little
/// endian): then the table applies to it like to any other. A sequence, or a
/// VR the dictionary leaves open, stays UN (and is removed).
pub(super) fn reinterpret_unknown(
    element: &DataElement<InMemDicomObject>,
) -> Option<DataElement<InMemDicomObject>> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    let tag = element.tag();
    let VirtualVr::Exact(vr) = dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)?
        .vr()
    else {
        return None;
    };
    let bytes = element.to_bytes().ok()?;
    let value = match vr {
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::LT
        | VR::PN
        | VR::SH
        | VR::ST
        | VR::TM
        | VR::UC
        | VR::UI
        | VR::UR
        | VR::UT => {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim_end_matches(['\0', ' ']);
            PrimitiveValue::Strs(text.split('\\').map(str::to_string).collect())
        }
        VR::US => PrimitiveValue::U16(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        VR::SS => PrimitiveValue::I16(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        VR::UL => PrimitiveValue::U32(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        VR::SL => PrimitiveValue::I32(
            bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        VR::AT => PrimitiveValue::Tags(
            bytes
                .chunks_exact(4)
                .map(|b| {
                    Tag(
                        u16::from_le_bytes([b[0], b[1]]),
                        u16::from_le_bytes([b[2], b[3]]),
                    )
                })
                .collect(),
        ),
        _ => return None,
    };
    Some(DataElement::new(tag, vr, value))
}

pub(super) fn empty(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    if vr == VR::SQ {
        return DataElement::new(
            tag,
            VR::SQ,
            DataSetSequence::<InMemDicomObject>::from(Vec::new()),
        );
    }
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

/// A value of the VR that says nothing of anyone.
pub(super) fn dummy(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    let text = match vr {
        VR::DA => "19000101",
        VR::TM => "000000",
        VR::DT => "19000101000000",
        VR::PN => "ANONYMOUS",
        VR::AS => "000Y",
        VR::IS | VR::DS => "0",
        VR::UI => "2.25.0",
        VR::AE | VR::CS | VR::LO | VR::SH | VR::LT | VR::ST | VR::UT | VR::UC | VR::UR => {
            "ANONYMIZED"
        }
        VR::SQ => return empty(tag, vr),
        VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD | VR::UV | VR::SV => {
            return DataElement::new(tag, vr, PrimitiveValue::from(0_u16))
        }
        _ => return empty(tag, vr),
    };
    DataElement::new(tag, vr, PrimitiveValue::from(text))
}

/// Moves a DA or DT value `days` back (a TM is left as it is: a time of day
/// identifies no one once the date moved).
pub(super) fn shift_date(
    element: DataElement<InMemDicomObject>,
    days: i64,
) -> DataElement<InMemDicomObject> {
    let tag = element.tag();
    let vr = element.vr();
    if vr == VR::TM {
        return element;
    }
    let Ok(text) = element.to_str() else {
        return empty(tag, vr);
    };
    let shifted: Vec<String> = text
        .split('\\')
        .map(|value| {
            let value = value.trim();
            // Not `split_at`: a hostile value may put a multi-byte character
            // across byte 8 (found by the `deidentify` fuzz target).
            let (date, rest) = match value.get(..8) {
                Some(date) => (date, &value[8..]),
                None => (value, ""),
            };
            chrono::NaiveDate::parse_from_str(date, "%Y%m%d")
                .ok()
                .and_then(|d| d.checked_sub_signed(chrono::Duration::days(days)))
                .map(|d| format!("{}{rest}", d.format("%Y%m%d")))
                .unwrap_or_default()
        })
        .collect();
    DataElement::new(tag, vr, PrimitiveValue::Strs(shifted.into_iter().collect()))
}
